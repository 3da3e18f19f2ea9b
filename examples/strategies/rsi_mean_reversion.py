"""RSI mean reversion: buy when the RSI climbs back out of oversold, sell short when it falls
back out of overbought, and get flat when it crosses the middle line.

The RSI is Wilder's (averages of gains and losses smoothed by 1/period, seeded with the simple
mean of the first ``period`` changes). Signals are events (crossings), not states, so they do
not depend on what the strategy did before: the same bars give the same signals whatever the
history before them, once the averages have warmed up.

    quantum-trader backtest --strategy examples/strategies/rsi_mean_reversion.py --data sample:BTC
"""

from __future__ import annotations

from quantum_trader.strategies import Bar, FloatParam, IntParam, Signal, Strategy


class RsiMeanReversion(Strategy):
    period = IntParam(14, low=2, high=100, help="RSI and ATR period, bars")
    oversold = FloatParam(30.0, low=5.0, high=45.0, help="long when the RSI climbs back above")
    overbought = FloatParam(70.0, low=55.0, high=95.0, help="short when it falls back below")
    exit_level = FloatParam(50.0, low=30.0, high=70.0, help="flat when the RSI crosses it")
    atr_mult = FloatParam(2.5, low=0.5, high=10.0, help="stop distance, in ATRs")

    def setup(self) -> None:
        self.prev_close: float | None = None
        self.changes: list[float] = []  # the first period's, for the seed
        self.avg_gain = self.avg_loss = self.atr = 0.0
        self.rsi: float | None = None
        self.extreme = 50.0  # the deepest RSI of the current excursion past a threshold

    def warmup(self) -> int:
        return 20 * self.period  # Wilder smoothing keeps (1 - 1/period)**n of its seed

    def on_bar(self, bar: Bar) -> Signal | None:
        prev = self.prev_close
        self.prev_close = bar.close
        if prev is None:
            self.atr = bar.high - bar.low
            return None
        change = bar.close - prev
        true_range = max(bar.high, prev) - min(bar.low, prev)
        n = self.period
        if len(self.changes) < n:  # seeding: simple means of the first n changes
            self.changes.append(change)
            self.atr += (true_range - self.atr) / len(self.changes)
            if len(self.changes) < n:
                return None
            self.avg_gain = sum(max(x, 0.0) for x in self.changes) / n
            self.avg_loss = sum(max(-x, 0.0) for x in self.changes) / n
        else:
            self.avg_gain += (max(change, 0.0) - self.avg_gain) / n
            self.avg_loss += (max(-change, 0.0) - self.avg_loss) / n
            self.atr += (true_range - self.atr) / n
        rsi = 100.0 if self.avg_loss == 0 else \
            100.0 - 100.0 / (1.0 + self.avg_gain / self.avg_loss)
        before, self.rsi = self.rsi, rsi
        if before is None:
            return None
        if rsi < self.oversold:
            self.extreme = min(self.extreme, rsi) if before < self.oversold else rsi
        elif rsi > self.overbought:
            self.extreme = max(self.extreme, rsi) if before > self.overbought else rsi
        stop = min(self.atr_mult * self.atr / bar.close, 0.5) if self.atr > 0 else None
        if before < self.oversold <= rsi:
            # The deeper the excursion went, the surer the snap back.
            return Signal.long(min(1.0, 0.6 + (self.oversold - self.extreme) / 50.0), stop)
        if before > self.overbought >= rsi:
            return Signal.short(min(1.0, 0.6 + (self.extreme - self.overbought) / 50.0), stop)
        if (before < self.exit_level) != (rsi < self.exit_level):
            return Signal.flat()  # back to the middle: the reversion is done
        return None
