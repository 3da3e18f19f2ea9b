"""The report's breakdowns (monthly and yearly returns, trade durations, exits by reason, best
and worst trades) against values worked out by hand; the report's JSON round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from quantum_trader.analytics.performance import (
    PerformanceReport,
    best_and_worst,
    compute_report,
    duration_stats,
    exit_reasons,
    monthly_returns,
    trade_durations,
    yearly_returns,
)
from quantum_trader.domain.enums import Side
from quantum_trader.domain.records import ClosedTrade

HOUR = 3_600_000


def utc(text: str) -> int:
    return int(np.datetime64(text, "ms").astype(np.int64))


def trade(net: float, hours: float, reason: str = "signal_exit", fees: float = 0.0,
          n: int = 0) -> ClosedTrade:
    opened = utc("2024-01-01T00:00") + n * 24 * HOUR
    return ClosedTrade(id=f"t{n}", symbol="BTCUSDT", side=Side.BUY, quantity=1.0,
                       entry_price=100.0, exit_price=100.0 + net, opened_ts=opened,
                       closed_ts=opened + int(hours * HOUR), realized_pnl=net + fees,
                       fees=fees, funding=0.0, exit_reason=reason, trace_id="x")


def test_monthly_and_yearly_returns_by_hand() -> None:
    ts = np.array([utc("2024-01-10"), utc("2024-01-31T12:00"), utc("2024-02-15"),
                   utc("2024-02-29T23:59"), utc("2024-04-02"), utc("2025-01-01")])
    eq = np.array([100.0, 110.0, 99.0, 121.0, 108.9, 130.68])
    months = monthly_returns(ts, eq)
    # Jan 110/100, Feb 121/110, no point in March, Apr 108.9/121, Jan 2025 130.68/108.9.
    assert [(m.year, m.month) for m in months] == [(2024, 1), (2024, 2), (2024, 4), (2025, 1)]
    assert [m.ret for m in months] == pytest.approx([0.1, 0.1, -0.1, 0.2])
    assert [(m.start_equity, m.end_equity) for m in months] == [
        (100.0, 110.0), (110.0, 121.0), (121.0, 108.9), (108.9, 130.68)]
    years = yearly_returns(ts, eq)
    assert [(y.year, y.month) for y in years] == [(2024, None), (2025, None)]
    assert [y.ret for y in years] == pytest.approx([0.089, 0.2])
    # Compounded they give the total return.
    assert math.prod(1 + m.ret for m in months) == pytest.approx(130.68 / 100.0)
    assert months[0].to_dict() == {"year": 2024, "month": 1, "ret": pytest.approx(0.1),
                                   "start_equity": 100.0, "end_equity": 110.0}


def test_monthly_returns_edges() -> None:
    assert monthly_returns(np.array([], dtype=np.int64), np.array([])) == []
    (only,) = monthly_returns(np.array([utc("2024-03-05")]), np.array([50.0]))
    assert (only.year, only.month, only.ret) == (2024, 3, 0.0)
    # A wipe-out leaves nothing to return on: 0, not a division by zero.
    ts = np.array([utc("2024-01-01"), utc("2024-02-01"), utc("2024-03-01")])
    wiped = monthly_returns(ts, np.array([100.0, 0.0, 0.0]))
    assert [m.ret for m in wiped] == [0.0, -1.0, 0.0]
    with pytest.raises(ValueError, match="shape"):
        monthly_returns(ts, np.array([1.0]))


def test_durations_by_hand() -> None:
    trades = [trade(10.0, 1, n=0), trade(-5.0, 2, n=1), trade(3.0, 3, n=2),
              trade(-1.0, 10, n=3)]
    assert trade_durations(trades).tolist() == [HOUR, 2 * HOUR, 3 * HOUR, 10 * HOUR]
    st = duration_stats(trades)
    assert st.trades == 4
    assert st.mean_ms == 4 * HOUR  # (1 + 2 + 3 + 10) / 4
    assert st.median_ms == 2.5 * HOUR
    assert (st.min_ms, st.max_ms) == (HOUR, 10 * HOUR)
    assert st.mean_win_ms == 2 * HOUR  # (1 + 3) / 2
    assert st.mean_loss_ms == 6 * HOUR  # (2 + 10) / 2
    none = duration_stats([])
    assert none.trades == 0
    assert none.mean_ms is None
    assert none.median_ms is None
    assert duration_stats([trade(1.0, 5)]).mean_loss_ms is None


def test_exit_reasons_by_hand() -> None:
    # Net PnL counts fees: the 1.0 realized with 2.0 fees is a loss.
    trades = [trade(10.0, 1, "take_profit"), trade(-4.0, 1, "stop_loss"),
              trade(5.0, 1, "take_profit"), trade(-6.0, 1, "stop_loss"),
              trade(-1.0, 1, "stop_loss", fees=2.0), trade(1.0, 1, "signal_exit")]
    stats = exit_reasons(trades)
    assert [s.reason for s in stats] == ["stop_loss", "take_profit", "signal_exit"]
    sl, tp, sig = stats
    assert (sl.trades, sl.share, sl.wins, sl.win_rate) == (3, 0.5, 0, 0.0)
    assert (sl.net_pnl, sl.avg_pnl) == pytest.approx((-11.0, -11.0 / 3))
    assert (tp.trades, tp.wins, tp.win_rate, tp.net_pnl, tp.avg_pnl) == (2, 2, 1.0, 15.0, 7.5)
    assert tp.share == pytest.approx(1 / 3)
    assert (sig.trades, sig.net_pnl) == (1, 1.0)
    assert sum(s.trades for s in stats) == len(trades)
    assert exit_reasons([]) == []
    # Equal counts: by name.
    tie = exit_reasons([trade(1.0, 1, "b"), trade(1.0, 1, "a")])
    assert [s.reason for s in tie] == ["a", "b"]
    assert json.dumps([s.to_dict() for s in stats])


def test_best_and_worst() -> None:
    trades = [trade(float(p), 1, n=i) for i, p in enumerate([3, -7, 12, 0, -2, 8, 5])]
    best, worst = best_and_worst(trades, 3)
    assert [t.net_pnl for t in best] == [12, 8, 5]
    assert [t.net_pnl for t in worst] == [-7, -2, 0]
    assert best_and_worst([], 3) == ([], [])


def test_the_report_round_trips_through_json() -> None:
    ts = np.array([utc("2024-01-01"), utc("2024-01-02"), utc("2024-01-03")])
    wins = [trade(5.0, 1), trade(2.0, 1)]
    rep = compute_report(ts, np.array([100.0, 105.0, 107.0]), wins, 1.0, 0.5, 0.5, "1d")
    assert rep.profit_factor == math.inf
    text = json.dumps(rep.to_dict(), allow_nan=False)
    assert PerformanceReport.from_dict(json.loads(text)) == rep
    with pytest.raises(ValueError, match="sharpe"):
        PerformanceReport.from_dict({k: v for k, v in rep.to_dict().items() if k != "sharpe"})
