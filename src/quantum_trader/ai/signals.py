"""``ModelSignalSource``: a ``SignalSource`` that runs a trained model on live bars.

Per symbol an incremental ``FeatureState`` turns each closed bar into a feature row; the model
gives p(up); LONG if p > upper, SHORT if p < lower, otherwise nothing (or FLAT when configured).
Confidence is p for a long and 1 - p for a short; the stop distance is ``atr_mult`` ATRs.
"""

from __future__ import annotations

import time

import numpy as np

from quantum_trader.ai.artifact import ModelArtifact
from quantum_trader.ai.features import FeatureState
from quantum_trader.domain.enums import Direction
from quantum_trader.domain.models import Bar, Signal


class ModelSignalSource:
    def __init__(self, artifact: ModelArtifact, record_latency: bool = False) -> None:
        self.artifact = artifact
        self.name = artifact.source
        self._states: dict[tuple[str, str], FeatureState] = {}
        self.last_p: dict[tuple[str, str], float] = {}
        self.latencies: list[float] | None = [] if record_latency else None

    def state(self, symbol: str, timeframe: str) -> FeatureState:
        key = (symbol, timeframe)
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = FeatureState(self.artifact.features)
        return st

    def adopt_state(self, other: ModelSignalSource) -> None:
        """Continue from ``other``'s feature states (same feature spec required)."""
        if other.artifact.features != self.artifact.features:
            raise ValueError("feature specs differ; warm up from bars instead")
        self._states = other._states

    def warm_up(self, bars: list[Bar]) -> None:
        """Feed history through the feature state without producing signals."""
        for bar in bars:
            self.state(bar.symbol, bar.timeframe).update(bar)

    def is_new(self, bar: Bar) -> bool:
        """False for a bar at or before the last one folded in (a redelivery or a replay)."""
        st = self._states.get((bar.symbol, bar.timeframe))
        return st is None or st.last_ts is None or bar.ts > st.last_ts

    def probability(self, bar: Bar) -> float | None:
        """Fold ``bar`` in and return p(up), or None while the features warm up.

        Bars must come in time order; callers that may see duplicates check ``is_new`` first.
        """
        x = self.state(bar.symbol, bar.timeframe).update(bar)
        if x is None or not np.all(np.isfinite(x)):
            return None
        p = self.artifact.model.predict_one(x)
        self.last_p[(bar.symbol, bar.timeframe)] = p
        return p

    def on_bar(self, bar: Bar) -> Signal | None:
        t0 = time.perf_counter()
        p = self.probability(bar)
        sig = None if p is None else self.decide(bar, p)
        if self.latencies is not None:
            self.latencies.append(time.perf_counter() - t0)
        return sig

    def decide(self, bar: Bar, p: float, always: bool = False) -> Signal | None:
        """The signal for ``bar`` given p(up); ``always`` returns FLAT instead of None."""
        cfg = self.artifact.signals
        if p > cfg.upper:
            direction, conf = Direction.LONG, p
        elif p < cfg.lower and cfg.allow_short:
            direction, conf = Direction.SHORT, 1.0 - p
        elif cfg.emit_flat or always:
            direction, conf = Direction.FLAT, max(p, 1.0 - p)
        else:
            return None
        st = self._states.get((bar.symbol, bar.timeframe))
        atr = st.last_atr if st is not None else 0.0
        ts = bar.close_ts
        sid = f"{bar.symbol}-{ts}-{self.name}"
        return Signal(
            id=sid,
            symbol=bar.symbol,
            direction=direction,
            confidence=conf,
            ts=ts,
            expires_at=ts + cfg.ttl_ms,
            price=bar.close,
            source=self.name,
            trace_id=sid,
            timeframe=bar.timeframe,
            stop_distance=cfg.atr_mult * atr / bar.close if atr > 0 else None,
        )
