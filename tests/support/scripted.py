"""A signal source that says what the test tells it to, at the bars the test names."""

from __future__ import annotations

from quantum_trader.domain.enums import Direction
from quantum_trader.domain.models import Bar, Signal


class ScriptedSource:
    def __init__(self, script: dict[int, Direction], confidence: float = 0.9,
                 stop_distance: float = 0.02, ttl_ms: int = 60_000) -> None:
        self.name = "scripted"
        self.script = script  # bar index (per symbol) -> direction
        self.confidence = confidence
        self.stop_distance = stop_distance
        self.ttl_ms = ttl_ms
        self.seen: dict[str, int] = {}

    def on_bar(self, bar: Bar) -> Signal | None:
        i = self.seen.get(bar.symbol, 0)
        self.seen[bar.symbol] = i + 1
        direction = self.script.get(i)
        if direction is None:
            return None
        sid = f"{bar.symbol}-{bar.close_ts}-scripted"
        return Signal(sid, bar.symbol, direction, self.confidence, bar.close_ts,
                      bar.close_ts + self.ttl_ms, bar.close, self.name, sid, bar.timeframe,
                      self.stop_distance)
