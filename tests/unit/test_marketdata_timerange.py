"""``--timerange``: every form parses to the moments it names (UTC, start inclusive, end
exclusive on open times) and a bad one names what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from quantum_trader.marketdata.series import BarSeries
from quantum_trader.marketdata.timerange import TimeRange, parse_timerange

JAN1 = 1_514_764_800_000  # 2018-01-01T00:00:00Z
DAY = 86_400_000


@pytest.mark.parametrize(("text", "start", "end"), [
    ("20180101-20180201", JAN1, JAN1 + 31 * DAY),
    ("20180101-", JAN1, None),
    ("-20180102", None, JAN1 + DAY),
    ("2018-01-01..2018-01-02", JAN1, JAN1 + DAY),
    ("2018-01-01T12:00..", JAN1 + DAY // 2, None),
    ("..2018-01-01T00:30:00Z", None, JAN1 + 1_800_000),
    ("1514764800-1514851200", JAN1, JAN1 + DAY),
    ("1514764800000-", JAN1, None),
])
def test_each_form_names_its_moments(text: str, start: int | None, end: int | None) -> None:
    assert parse_timerange(text) == TimeRange(start, end)


@pytest.mark.parametrize(("text", "says"), [
    ("2018", "use START-END"),
    ("-", "give a start, an end or both"),
    ("20180201-20180101", "the start must be before the end"),
    ("20180101-20180101", "the start must be before the end"),
    ("2018-13-01..", "'2018-13-01' is not a date"),
    ("20181301-", "start '20181301' is not a date"),
    ("yesterday..today", "'yesterday' is not a date"),
])
def test_a_bad_range_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match="--timerange") as caught:
        parse_timerange(text)
    assert says in str(caught.value)


def test_select_keeps_the_bars_opened_in_the_range() -> None:
    ts = JAN1 + np.arange(10, dtype=np.int64) * 1_800_000
    px = np.linspace(1.0, 2.0, 10)
    s = BarSeries("XRPUSDT", "30m", ts, px, px, px, px, px)
    part = TimeRange(int(ts[2]), int(ts[5])).select(s)
    assert part.ts.tolist() == ts[2:5].tolist()  # start inclusive, end exclusive
    assert TimeRange(None, int(ts[0])).select(s).ts.tolist() == []
    assert TimeRange(int(ts[7]) + 1, None).select(s).ts.tolist() == ts[8:].tolist()
