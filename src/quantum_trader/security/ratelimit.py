"""Token-bucket rate limits keyed by client IP or API token.

Buckets live in process memory: each service limits its own callers, which is what a solo
VPS needs (nginx adds a coarse per-IP limit in front). The key table is bounded (least
recently used keys are dropped), so a flood of spoofed source addresses cannot grow memory.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Bucket", "RateLimiter"]


@dataclass(slots=True)
class Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``rate`` requests per second per key, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        """Take one request's worth for ``key``: 0.0 if allowed, else the seconds to wait."""
        now = self.clock()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                b = self._buckets[key] = Bucket(float(self.burst), now)
                while len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                b.tokens = min(float(self.burst), b.tokens + (now - b.updated) * self.rate)
                b.updated = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return 0.0
            return (1.0 - b.tokens) / self.rate

    @staticmethod
    def retry_after(wait_s: float) -> str:
        """The Retry-After header value: whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(wait_s)))
