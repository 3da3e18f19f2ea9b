"""The signal-source contract and the rule-based baseline strategy.

Any signal source (the EMA-cross baseline here, the AI engine later) sees one closed bar at a
time and may answer with a ``Signal``. It must only use bars it has been given: that is what
makes backtests free of lookahead.
"""

from __future__ import annotations

import math
from typing import Protocol

from quantum_trader.domain.enums import Direction
from quantum_trader.domain.models import Bar, Signal


class SignalSource(Protocol):
    name: str

    def on_bar(self, bar: Bar) -> Signal | None:
        """Called once per closed bar, in time order, per symbol."""


class EmaCrossStrategy:
    """Long when the fast EMA crosses above the slow one, short when it crosses below.

    Confidence is ``0.5 + 0.5 * tanh(|close - slow EMA| / ATR)``: a cross with price already
    well away from the slow average is a stronger one. The stop distance it suggests is
    ``atr_mult`` average true ranges, so sizing follows volatility.
    """

    def __init__(self, fast: int = 12, slow: int = 26, atr_period: int = 14,
                 atr_mult: float = 2.0, signal_ttl_ms: int = 60_000,
                 allow_short: bool = True) -> None:
        if not 1 <= fast < slow:
            raise ValueError(f"need 1 <= fast < slow, got fast={fast} slow={slow}")
        self.name = f"ema_cross_{fast}_{slow}"
        self._af = 2.0 / (fast + 1)
        self._as = 2.0 / (slow + 1)
        self._aa = 1.0 / atr_period
        self._warmup = slow
        self._atr_mult = atr_mult
        self._ttl = signal_ttl_ms
        self._allow_short = allow_short
        self._state: dict[str, list[float]] = {}  # symbol -> [fast, slow, atr, prev_close, n]
        self._seq = 0

    def on_bar(self, bar: Bar) -> Signal | None:
        st = self._state.get(bar.symbol)
        c = bar.close
        if st is None:
            self._state[bar.symbol] = [c, c, bar.high - bar.low, c, 1.0]
            return None
        fast, slow, atr, prev_close, n = st
        was_above = fast > slow
        fast += self._af * (c - fast)
        slow += self._as * (c - slow)
        tr = max(bar.high, prev_close) - min(bar.low, prev_close)
        atr += self._aa * (tr - atr)
        n += 1.0
        st[0], st[1], st[2], st[3], st[4] = fast, slow, atr, c, n
        if n <= self._warmup:
            return None
        above = fast > slow
        if above == was_above:
            return None
        direction = Direction.LONG if above else (
            Direction.SHORT if self._allow_short else Direction.FLAT)
        self._seq += 1
        ts = bar.close_ts
        sid = f"{bar.symbol}-{ts}-{self.name}"
        return Signal(
            id=sid,
            symbol=bar.symbol,
            direction=direction,
            confidence=0.5 + 0.5 * math.tanh(abs(c - slow) / atr) if atr > 0 else 0.5,
            ts=ts,
            expires_at=ts + self._ttl,
            price=c,
            source=self.name,
            trace_id=sid,
            timeframe=bar.timeframe,
            stop_distance=self._atr_mult * atr / c if atr > 0 else None,
        )
