"""Wall-clock time in epoch milliseconds: the one place services read the real clock."""

from __future__ import annotations

import time


def wall_ms() -> int:
    return time.time_ns() // 1_000_000
