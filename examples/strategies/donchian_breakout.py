"""Donchian breakout (the turtles' entry): long when the close breaks above the highest high
of the last ``entry`` bars, short when it breaks below their lowest low.

Exits are the platform's: the protective stop it suggests (``atr_mult`` ATRs), the take-profit
at ``exits.take_profit_rr`` times the stop, the trailing stop and time exit when configured,
and the opposite breakout (which closes the position before it reverses it). A breakout is an
event (this close beyond the channel, the last close inside the last bar's channel), so the
signals depend on the last bars only, never on what the strategy said before.

    quantum-trader backtest --strategy examples/strategies/donchian_breakout.py --data sample:ETH
"""

from __future__ import annotations

import math
from collections import deque

from quantum_trader.strategies import Bar, ChoiceParam, FloatParam, IntParam, Signal, Strategy


class DonchianBreakout(Strategy):
    entry = IntParam(20, low=5, high=200, help="channel length, bars")
    atr_period = IntParam(20, low=2, high=100, help="ATR smoothing period, bars")
    atr_mult = FloatParam(2.0, low=0.5, high=10.0, help="stop distance, in ATRs")
    allow_short = ChoiceParam(True, (True, False), help="short on a break down")

    def setup(self) -> None:
        self.highs: deque[float] = deque(maxlen=self.entry)  # the bars before this one
        self.lows: deque[float] = deque(maxlen=self.entry)
        self.prev_close: float | None = None
        self.prev_channel: tuple[float, float] | None = None  # the last bar's (upper, lower)
        self.atr = 0.0
        self.bars = 0

    def warmup(self) -> int:
        return max(self.entry, 20 * self.atr_period)  # the ATR's seed fades as (1 - 1/n)**k

    def on_bar(self, bar: Bar) -> Signal | None:
        channel = (max(self.highs), min(self.lows)) if len(self.highs) == self.entry else None
        signal = None
        if channel is not None and self.prev_channel is not None and self.prev_close is not None:
            signal = self._decide(bar.close, channel, self.prev_close, self.prev_channel)
        if self.prev_close is not None:
            true_range = max(bar.high, self.prev_close) - min(bar.low, self.prev_close)
            self.bars += 1
            self.atr += (true_range - self.atr) / min(self.bars, self.atr_period)
        self.highs.append(bar.high)
        self.lows.append(bar.low)
        self.prev_close, self.prev_channel = bar.close, channel
        return signal

    def _decide(self, close: float, channel: tuple[float, float], prev_close: float,
                prev_channel: tuple[float, float]) -> Signal | None:
        upper, lower = channel
        stop = min(self.atr_mult * self.atr / close, 0.5) if self.atr > 0 else None
        if close > upper and prev_close <= prev_channel[0]:
            return Signal.long(self._confidence(close - upper), stop)
        if close < lower and prev_close >= prev_channel[1] and self.allow_short:
            return Signal.short(self._confidence(lower - close), stop)
        return None

    def _confidence(self, excess: float) -> float:
        # A break by a whole ATR or more is a clear one; a tick through the channel is not.
        return 0.6 + 0.4 * math.tanh(excess / self.atr) if self.atr > 0 else 0.6
