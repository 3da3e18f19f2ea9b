"""A weighted rate limiter for Binance-style limits: ``limit`` weight per fixed window.

Binance counts request weight per IP in fixed one-minute windows and reports the count so far
in ``X-MBX-USED-WEIGHT-1M``. The limiter keeps two counts per window: its own spend, held to
``headroom`` of the limit (this process's share when several processes use one IP, so that
together they stay under the limit even when the venue's count cannot be read, e.g. while
requests go unanswered), and the IP's count as the venue last reported it, held to
``ip_headroom`` of the limit (other users of the IP). It stops sending entirely while a 429/418
``Retry-After`` runs.

Two classes of request share the budget. *Urgent* ones (placing and cancelling orders) may
spend all of it, never paced. *Routine* ones (polls, queries) may spend only ``1 - reserve``
of it and are paced evenly across the window, so a fast poller slows down instead of burning
the window in seconds and then leaving orders (and its own polls) stuck until the window ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class WeightLimiter:
    def __init__(self, limit: int = 2400, window_s: float = 60.0, headroom: float = 0.9,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 reserve: float = 0.25, burst_s: float = 5.0, ip_headroom: float = 0.9) -> None:
        if limit <= 0 or window_s <= 0 or not 0 < headroom <= 1 or not 0 < ip_headroom <= 1:
            raise ValueError("limit and window must be positive, headroom in (0, 1]")
        if not 0 <= reserve < 1 or burst_s <= 0:
            raise ValueError("reserve must be in [0, 1) and burst_s positive")
        self.window_s = window_s
        self.headroom, self.reserve, self.burst_s, self.ip_headroom = (
            headroom, reserve, burst_s, ip_headroom)
        self.set_limit(limit)
        self._clock = clock
        self._sleep = sleep
        self._idx = self._index(clock())
        self._used = 0  # our own spend in this window
        self._ip_used = 0  # the IP's count in this window: ours, or the venue's if higher
        self._tokens = self._capacity
        self._refilled = clock()
        self._blocked_until = 0.0
        self._routine_queue = asyncio.Lock()
        self.waited_s = 0.0  # total time spent waiting (for metrics and benchmarks)

    def set_limit(self, limit: int) -> None:
        """Budget for a venue limit of ``limit`` weight per window (e.g. what the venue
        advertises in exchangeInfo's rateLimits)."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.budget = max(1, int(limit * self.headroom))
        self.routine_budget = max(1, int(self.budget * (1 - self.reserve)))
        self.ip_budget = max(1, int(limit * self.ip_headroom))
        self._ip_routine = max(1, int(self.ip_budget * (1 - self.reserve)))
        self._rate = self.routine_budget / self.window_s  # routine weight per second
        self._capacity = max(1.0, self._rate * self.burst_s)  # how far routine may run ahead

    def _index(self, now: float) -> int:
        return int(now // self.window_s)

    def _roll(self, now: float) -> None:
        idx = self._index(now)
        if idx != self._idx:
            self._idx = idx
            self._used = 0
            self._ip_used = 0

    @property
    def used(self) -> int:
        """The IP's weight used in this window, as far as we know."""
        self._roll(self._clock())
        return self._ip_used

    @property
    def own_used(self) -> int:
        self._roll(self._clock())
        return self._used

    @property
    def blocked_for(self) -> float:
        return max(0.0, self._blocked_until - self._clock())

    async def acquire(self, weight: int = 1, urgent: bool = True) -> None:
        """Wait until ``weight`` fits in the current window (and no Retry-After runs); a
        routine request (``urgent=False``) also waits for its pace, in arrival order (one
        busy poller cannot starve a reconciliation round)."""
        if urgent:
            await self._acquire(weight, urgent)
            return
        async with self._routine_queue:  # asyncio.Lock wakes waiters first come, first served
            await self._acquire(weight, urgent)

    async def _acquire(self, weight: int, urgent: bool) -> None:
        cap = self.budget if urgent else self.routine_budget
        ip_cap = self.ip_budget if urgent else self._ip_routine
        weight = min(weight, cap, ip_cap)  # heavier than the budget: waits for a window
        while True:
            now = self._clock()
            self._roll(now)
            if now < self._blocked_until:
                delay = self._blocked_until - now
            elif self._used + weight > cap or self._ip_used + weight > ip_cap:
                delay = (self._idx + 1) * self.window_s - now + 0.005
            elif urgent:
                self._spend(weight)  # no await between the check and the spend: atomic
                return
            else:
                self._tokens = min(self._capacity,
                                   self._tokens + (now - self._refilled) * self._rate)
                self._refilled = now
                need = min(float(weight), self._capacity)
                if self._tokens >= need - 1e-9:  # float slack: a wait must end in a spend
                    self._tokens = max(0.0, self._tokens - need)
                    self._spend(weight)
                    return
                delay = (need - self._tokens) / self._rate
            self.waited_s += delay
            await self._sleep(delay)

    def _spend(self, weight: int) -> None:
        self._used += weight
        self._ip_used += weight

    def observe(self, used: int) -> None:
        """The venue's count for the current window (``X-MBX-USED-WEIGHT-1M``)."""
        self._roll(self._clock())
        self._ip_used = max(self._ip_used, used)

    def block_for(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (a 429's or 418's Retry-After)."""
        self._blocked_until = max(self._blocked_until, self._clock() + seconds)


def binance_weight(path: str, params: dict[str, str]) -> int:
    """Request weight of a USDⓈ-M endpoint (the simulator charges it, the client budgets it).

    Binance gives new orders 0 IP weight (they have order-count limits instead); here they weigh
    1 so one budget governs everything.
    """
    tail = path.rsplit("/", 1)[-1]
    if tail == "klines":
        limit = int(params.get("limit", "500") or 500)
        return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
    if tail in ("openOrders", "openAlgoOrders", "premiumIndex", "24hr"):
        return 1 if "symbol" in params else 40
    if tail in ("account", "balance", "positionRisk", "userTrades"):
        return 5
    if tail == "income":
        return 30
    return 1


__all__ = ["WeightLimiter", "binance_weight"]
