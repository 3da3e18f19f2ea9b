"""Data-quality vocabulary shared by the loaders: the error a bad file raises, and the gaps a
good file may still have (reported, never filled: a filled bar would be an invented price)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quantum_trader.domain.models import timeframe_ms
from quantum_trader.marketdata.series import BarSeries, IntArray


class DataError(ValueError):
    """A market-data file that cannot be loaded as it is.

    ``row`` is the row as the user sees it in the file (for CSV the header is row 1, so the first
    data row is row 2; for parquet the first data row is row 1); ``column`` is the column's name as
    spelled in the file. Either is None when the problem is not about one cell.
    """

    def __init__(self, message: str, *, path: str = "", row: int | None = None,
                 column: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.row = row
        self.column = column


@dataclass(frozen=True, slots=True)
class Gap:
    """Missing bars between two consecutive bars: ``after_ts`` and ``next_ts`` are open times."""

    after_ts: int
    next_ts: int
    missing_bars: int


@dataclass(frozen=True, slots=True)
class DataQuality:
    """What a loader found and did: rows it read, exact duplicates it dropped, gaps it left."""

    source: str
    rows_read: int
    rows_loaded: int
    exact_duplicates_dropped: int
    gaps: tuple[Gap, ...] = field(default_factory=tuple)

    @property
    def missing_bars(self) -> int:
        return sum(g.missing_bars for g in self.gaps)

    @property
    def largest_gap_bars(self) -> int:
        return max((g.missing_bars for g in self.gaps), default=0)


def find_gaps(series: BarSeries) -> tuple[Gap, ...]:
    """Spacings larger than one timeframe, in order; a partial bar of missing time counts as one."""
    return gaps_in(series.ts, timeframe_ms(series.timeframe))


def gaps_in(ts: IntArray, step_ms: int) -> tuple[Gap, ...]:
    if len(ts) < 2:
        return ()
    diffs = np.diff(ts)
    where = np.flatnonzero(diffs > step_ms)
    missing = (diffs[where] - 1) // step_ms
    return tuple(Gap(int(ts[i]), int(ts[i + 1]), int(m))
                 for i, m in zip(where.tolist(), missing.tolist(), strict=True))
