"""A weighted rate limiter for Binance-style limits: ``limit`` weight per fixed window.

Binance counts request weight per IP in fixed one-minute windows and reports the count so far
in ``X-MBX-USED-WEIGHT-1M``. The limiter keeps its own count, takes the venue's count when it is
higher (another process on the same IP, requests we did not see), spends only ``headroom`` of
the limit, and stops sending entirely while a 429/418 ``Retry-After`` runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class WeightLimiter:
    def __init__(self, limit: int = 2400, window_s: float = 60.0, headroom: float = 0.9,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if limit <= 0 or window_s <= 0 or not 0 < headroom <= 1:
            raise ValueError("limit and window must be positive, headroom in (0, 1]")
        self.limit = limit
        self.window_s = window_s
        self.budget = max(1, int(limit * headroom))
        self._clock = clock
        self._sleep = sleep
        self._idx = self._index(clock())
        self._used = 0
        self._blocked_until = 0.0
        self.waited_s = 0.0  # total time spent waiting (for metrics and benchmarks)

    def _index(self, now: float) -> int:
        return int(now // self.window_s)

    def _roll(self, now: float) -> None:
        idx = self._index(now)
        if idx != self._idx:
            self._idx = idx
            self._used = 0

    @property
    def used(self) -> int:
        self._roll(self._clock())
        return self._used

    @property
    def blocked_for(self) -> float:
        return max(0.0, self._blocked_until - self._clock())

    async def acquire(self, weight: int = 1) -> None:
        """Wait until ``weight`` fits in the current window (and no Retry-After runs)."""
        weight = min(weight, self.budget)  # a request heavier than the budget waits for a window
        while True:
            now = self._clock()
            self._roll(now)
            if now < self._blocked_until:
                delay = self._blocked_until - now
            elif self._used + weight <= self.budget:
                self._used += weight  # no await between the check and the spend: atomic
                return
            else:
                delay = (self._idx + 1) * self.window_s - now + 0.005
            self.waited_s += delay
            await self._sleep(delay)

    def observe(self, used: int) -> None:
        """The venue's count for the current window (``X-MBX-USED-WEIGHT-1M``)."""
        self._roll(self._clock())
        self._used = max(self._used, used)

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
    if tail in ("openOrders", "openAlgoOrders", "premiumIndex"):
        return 1 if "symbol" in params else 40
    if tail in ("account", "balance", "positionRisk", "userTrades"):
        return 5
    if tail == "income":
        return 30
    return 1


__all__ = ["WeightLimiter", "binance_weight"]
