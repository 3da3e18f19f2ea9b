"""``--timerange``: which part of the data a backtest or a training run uses.

``START-END`` with compact dates (``20180101-20180630``, Freqtrade's form), either side open
(``20180101-``, ``-20180630``), or ``START..END`` with ISO dates or times
(``2018-01-01..2018-06-30T12:00``). Epoch seconds (10 digits) or milliseconds (13) work on
either side. Times are UTC. START is inclusive and END exclusive, on bar open times:
``20180101-20180201`` is every bar of January 2018.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from quantum_trader.marketdata.series import BarSeries

_COMPACT = re.compile(r"^(\d*)-(\d*)$")
_FORMATS = ("%Y%m%d", "%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y%m%dT%H%M",
            "%Y%m%dT%H%M%S")


@dataclass(frozen=True, slots=True)
class TimeRange:
    start_ms: int | None  # inclusive
    end_ms: int | None  # exclusive

    def select(self, series: BarSeries) -> BarSeries:
        """The bars whose open time is in the range."""
        lo = 0 if self.start_ms is None else int(series.ts.searchsorted(self.start_ms, "left"))
        hi = len(series) if self.end_ms is None else int(
            series.ts.searchsorted(self.end_ms, "left"))
        return series.slice(lo, hi)


def _moment(text: str, what: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if text.isdigit() and len(text) in (10, 13):
        return int(text) * (1000 if len(text) == 10 else 1)
    for fmt in _FORMATS:
        try:
            parsed = datetime.strptime(text.removesuffix("Z"), fmt)
        except ValueError:
            continue
        return int(parsed.replace(tzinfo=UTC).timestamp() * 1000)
    raise ValueError(f"{what} {text!r} is not a date (YYYYMMDD, YYYY-MM-DD[THH:MM[:SS]], or "
                     "epoch seconds/milliseconds)")


def parse_timerange(text: str) -> TimeRange:
    """Parse ``text``; a ValueError names what is wrong with it."""
    raw = text.strip()
    if ".." in raw:
        start, _, end = raw.partition("..")
    elif (m := _COMPACT.match(raw)) is not None:
        start, end = m.group(1), m.group(2)
    else:
        raise ValueError(f"--timerange {text!r}: use START-END with YYYYMMDD dates "
                         "(20180101-20180630, either side may be empty) or START..END with "
                         "ISO dates (2018-01-01..2018-06-30)")
    try:
        tr = TimeRange(_moment(start, "start"), _moment(end, "end"))
    except ValueError as exc:
        raise ValueError(f"--timerange {text!r}: {exc}") from None
    if tr.start_ms is None and tr.end_ms is None:
        raise ValueError(f"--timerange {text!r}: give a start, an end or both")
    if tr.start_ms is not None and tr.end_ms is not None and tr.start_ms >= tr.end_ms:
        raise ValueError(f"--timerange {text!r}: the start must be before the end")
    return tr
