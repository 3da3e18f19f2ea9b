"""Request weight as Binance counts it: per IP, in fixed windows on the wall clock.

Every request adds its weight (``exchange.ratelimit.binance_weight``) to its IP's count for the
current window; the count so far is sent back in ``X-MBX-USED-WEIGHT-1M``. A request that takes
the count past the limit gets 429 with ``Retry-After`` (seconds to the window's end); a client
that sends anything before that Retry-After has run out is banned: 418 for ``ban_seconds``, with
the ban's remaining time as Retry-After. The weight count starts afresh after a ban.
"""

from __future__ import annotations

import threading
import time

from quantum_trader.venue_sim.wire import ApiError


class WeightLimits:
    def __init__(self, limit: int, window_s: float, ban_seconds: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.ban_seconds = ban_seconds
        self._lock = threading.Lock()
        self._window: dict[str, tuple[int, int]] = {}  # ip -> (window index, used weight)
        self._penalty_until: dict[str, float] = {}  # ip -> end of its last 429's Retry-After
        self._banned_until: dict[str, float] = {}

    def charge(self, ip: str, weight: int) -> int:
        """Count ``weight`` against ``ip``; raise 429/418 as Binance would. Returns the IP's
        weight used in this window."""
        now = time.monotonic()
        with self._lock:
            if self._banned_until.get(ip, 0.0) > now:
                left = self._banned_until[ip] - now
                raise ApiError(-1003, f"Way too many requests; IP banned until "
                                      f"{int((time.time() + left) * 1000)}.", 418)
            idx = int(time.time() // self.window_s)
            w_idx, used = self._window.get(ip, (idx, 0))
            if w_idx != idx:
                used = 0
            if self._penalty_until.get(ip, 0.0) > now:
                self._banned_until[ip] = now + self.ban_seconds
                self._penalty_until.pop(ip, None)
                self._window.pop(ip, None)
                raise ApiError(-1003, "Way too many requests; IP banned.", 418)
            used += weight
            self._window[ip] = (idx, used)
            if used > self.limit:
                self._penalty_until[ip] = now + self._retry_after(ip, now)
                raise ApiError(-1003, "Too many requests; current limit of IP is "
                                      f"{self.limit} requests per minute.", 429)
            return used

    def used(self, ip: str) -> int:
        idx = int(time.time() // self.window_s)
        with self._lock:
            w_idx, used = self._window.get(ip, (idx, 0))
        return used if w_idx == idx else 0

    def retry_after(self, ip: str) -> float:
        """Seconds until the IP's ban, or else the current weight window, ends."""
        with self._lock:
            return self._retry_after(ip, time.monotonic())

    def _retry_after(self, ip: str, now: float) -> float:
        ban = self._banned_until.get(ip, 0.0) - now
        if ban > 0:
            return ban
        return self.window_s - (time.time() % self.window_s)

    def ban(self, ip: str, seconds: float) -> None:
        with self._lock:
            self._banned_until[ip] = time.monotonic() + seconds


__all__ = ["WeightLimits"]
