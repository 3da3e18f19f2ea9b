"""EMA cross: long when the fast EMA crosses above the slow one, short when it crosses below.

The built-in baseline (``strategy.kind: ema_cross``) written against the public Strategy API
only; on the same bars it gives the same signals.

    quantum-trader backtest --strategy examples/strategies/ema_cross.py:EmaCross --data sample:XRP
"""

from __future__ import annotations

import math

from quantum_trader.strategies import Bar, ChoiceParam, FloatParam, IntParam, Signal, Strategy


class EmaCross(Strategy):
    fast = IntParam(12, low=1, high=200, help="fast EMA span, bars")
    slow = IntParam(26, low=2, high=500, help="slow EMA span, bars")
    atr_period = IntParam(14, low=1, high=200, help="ATR smoothing period, bars")
    atr_mult = FloatParam(2.0, low=0.1, high=20.0, help="stop distance, in ATRs")
    allow_short = ChoiceParam(True, (True, False), help="short on a cross down (else exit)")

    def setup(self) -> None:
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be less than slow ({self.slow})")
        self.bars = 0
        self.fast_ema = self.slow_ema = self.atr = self.prev_close = 0.0

    def warmup(self) -> int:
        # An EMA keeps (1 - 2/(span + 1))**n of its starting value after n bars: ~e**-20
        # after 10 spans, so from then on the signals no longer depend on where data began.
        return 10 * max(self.slow, self.atr_period)

    def on_bar(self, bar: Bar) -> Signal | None:
        c = bar.close
        self.bars += 1
        if self.bars == 1:  # seed every average with the first bar
            self.fast_ema = self.slow_ema = self.prev_close = c
            self.atr = bar.high - bar.low
            return None
        was_above = self.fast_ema > self.slow_ema
        self.fast_ema += 2.0 / (self.fast + 1) * (c - self.fast_ema)
        self.slow_ema += 2.0 / (self.slow + 1) * (c - self.slow_ema)
        true_range = max(bar.high, self.prev_close) - min(bar.low, self.prev_close)
        self.atr += (true_range - self.atr) / self.atr_period
        self.prev_close = c
        above = self.fast_ema > self.slow_ema
        if self.bars <= self.slow or above == was_above:
            return None
        # A cross with the price already far from the slow average (in ATRs) is a surer one.
        confidence = 0.5 + 0.5 * math.tanh(abs(c - self.slow_ema) / self.atr) \
            if self.atr > 0 else 0.5
        stop = min(self.atr_mult * self.atr / c, 0.5) if self.atr > 0 else None
        if above:
            return Signal.long(confidence, stop)
        return Signal.short(confidence, stop) if self.allow_short else Signal.flat()
