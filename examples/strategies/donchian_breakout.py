"""Donchian breakout (the turtles' rule): long when the close breaks above the highest high
of the last ``entry`` bars, short when it breaks below the lowest low; flat when it crosses
the ``exit`` bars' channel the other way.

Breakouts and exits are events (the close crossing a channel), so the signals depend on the
last bars only, never on what the strategy did before.

    quantum-trader backtest --strategy examples/strategies/donchian_breakout.py --data sample:ETH
"""

from __future__ import annotations

import math
from collections import deque

from quantum_trader.strategies import Bar, ChoiceParam, FloatParam, IntParam, Signal, Strategy


class DonchianBreakout(Strategy):
    entry = IntParam(20, low=5, high=200, help="entry channel, bars")
    exit = IntParam(10, low=2, high=100, help="exit channel, bars (shorter than entry)")
    atr_period = IntParam(20, low=2, high=100, help="ATR smoothing period, bars")
    atr_mult = FloatParam(2.0, low=0.5, high=10.0, help="stop distance, in ATRs")
    allow_short = ChoiceParam(True, (True, False), help="short on a break down")

    def setup(self) -> None:
        if self.exit >= self.entry:
            raise ValueError(f"exit ({self.exit}) must be shorter than entry ({self.entry})")
        self.highs: deque[float] = deque(maxlen=self.entry)  # the bars before this one
        self.lows: deque[float] = deque(maxlen=self.entry)
        self.prev_close: float | None = None
        self.atr = 0.0
        self.bars = 0

    def warmup(self) -> int:
        return max(self.entry, 20 * self.atr_period)  # the ATR's seed fades as (1 - 1/n)**k

    def on_bar(self, bar: Bar) -> Signal | None:
        prev = self.prev_close
        signal = None if prev is None or len(self.highs) < self.entry else self._decide(bar, prev)
        if prev is not None:
            true_range = max(bar.high, prev) - min(bar.low, prev)
            self.bars += 1
            self.atr += (true_range - self.atr) / min(self.bars, self.atr_period)
        self.highs.append(bar.high)
        self.lows.append(bar.low)
        self.prev_close = bar.close
        return signal

    def _decide(self, bar: Bar, prev: float) -> Signal | None:
        c = bar.close
        upper, lower = max(self.highs), min(self.lows)
        recent_highs = list(self.highs)[-self.exit:]
        recent_lows = list(self.lows)[-self.exit:]
        stop = min(self.atr_mult * self.atr / c, 0.5) if self.atr > 0 else None
        if c > upper >= prev:  # broke out on this bar
            return Signal.long(self._confidence(c - upper), stop)
        if c < lower <= prev and self.allow_short:
            return Signal.short(self._confidence(lower - c), stop)
        if c < min(recent_lows) <= prev or c > max(recent_highs) >= prev:
            return Signal.flat()  # through the exit channel: whatever is held, close it
        return None

    def _confidence(self, excess: float) -> float:
        # A break by a whole ATR or more is a clear one; a tick through the channel is not.
        return 0.6 + 0.4 * math.tanh(excess / self.atr) if self.atr > 0 else 0.6
