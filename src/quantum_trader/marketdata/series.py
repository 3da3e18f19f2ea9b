"""``BarSeries``: a column store of one symbol's bars, the shape loaders return and the
backtester and feature code consume (numpy arrays, no per-bar objects until needed)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from quantum_trader.domain.models import Bar, timeframe_ms

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class BarSeries:
    symbol: str
    timeframe: str
    ts: IntArray  # open time, epoch ms, strictly increasing
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray

    def __post_init__(self) -> None:
        timeframe_ms(self.timeframe)  # raises on unknown timeframes
        n = len(self.ts)
        for name in ("open", "high", "low", "close", "volume"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{self.symbol}: column {name} has {len(getattr(self, name))} "
                                 f"rows, ts has {n}")

    def __len__(self) -> int:
        return len(self.ts)

    def bar(self, i: int) -> Bar:
        return Bar(self.symbol, self.timeframe, int(self.ts[i]), float(self.open[i]),
                   float(self.high[i]), float(self.low[i]), float(self.close[i]),
                   float(self.volume[i]))

    def __iter__(self) -> Iterator[Bar]:
        sym, tf = self.symbol, self.timeframe
        cols = zip(self.ts.tolist(), self.open.tolist(), self.high.tolist(), self.low.tolist(),
                   self.close.tolist(), self.volume.tolist(), strict=True)
        for t, o, h, lo, c, v in cols:
            yield Bar(sym, tf, t, o, h, lo, c, v)

    def slice(self, start: int, stop: int | None = None) -> BarSeries:
        s = slice(start, stop)
        return BarSeries(self.symbol, self.timeframe, self.ts[s], self.open[s], self.high[s],
                         self.low[s], self.close[s], self.volume[s])

    def after(self, ts_exclusive: int) -> BarSeries:
        """The bars whose open time is after ``ts_exclusive`` (for resuming a run)."""
        start = int(np.searchsorted(self.ts, ts_exclusive, side="right"))
        return self.slice(start)
