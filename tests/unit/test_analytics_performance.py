"""Performance metrics against values worked out by hand on tiny equity curves."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from quantum_trader.analytics.performance import (
    PerformanceReport,
    compute_report,
    periods_per_year,
)
from quantum_trader.domain.enums import Side
from quantum_trader.domain.records import ClosedTrade

T0 = 1_577_836_800_000
DAY = 86_400_000


def days(n: int) -> np.ndarray:
    return T0 + np.arange(n, dtype=np.int64) * DAY


def trade(realized: float, fees: float = 0.0, funding: float = 0.0) -> ClosedTrade:
    return ClosedTrade(id="t", symbol="BTCUSDT", side=Side.BUY, quantity=1.0, entry_price=100.0,
                       exit_price=101.0, opened_ts=T0, closed_ts=T0 + DAY,
                       realized_pnl=realized, fees=fees, funding=funding,
                       exit_reason="signal", trace_id="x")


def report(equity: list[float], trades: list[ClosedTrade] | None = None,
           timeframe: str = "1d") -> PerformanceReport:
    return compute_report(days(len(equity)), np.array(equity), trades or [], fees_paid=3.5,
                          funding_paid=1.0, exposure_ratio=0.6, timeframe=timeframe)


def test_hand_computed_metrics() -> None:
    # Daily returns: +10 %, -10 %, 0 %, +10 %.
    trades = [trade(32.0, 1.5, 0.5), trade(-9.0, 1.0), trade(5.0), trade(-4.0, 0.5, 0.5)]
    r = report([100.0, 110.0, 99.0, 99.0, 108.9], trades)

    assert r.initial_equity == 100.0
    assert r.final_equity == 108.9
    assert r.total_return == pytest.approx(0.089)
    assert r.bars == 5
    assert (r.start_ts, r.end_ts) == (T0, T0 + 4 * DAY)
    assert r.cagr == pytest.approx(1.089 ** (365 / 4) - 1)

    # mean 0.025; sample variance (0.075² + 0.125² + 0.025² + 0.075²) / 3 = 0.0275 / 3
    assert r.sharpe == pytest.approx(0.025 / math.sqrt(0.0275 / 3) * math.sqrt(365))
    assert r.sharpe == pytest.approx(4.98866, abs=1e-4)
    # downside deviation sqrt((-0.1)² / 4) = 0.05
    assert r.sortino == pytest.approx(0.025 / 0.05 * math.sqrt(365))
    assert r.annual_volatility == pytest.approx(math.sqrt(0.0275 / 3) * math.sqrt(365))

    # 110 -> 99 is the deepest fall (10 %); 108.9 never gets back to 110.
    assert r.max_drawdown == pytest.approx(0.1)
    assert r.max_drawdown_peak_ts == T0 + DAY
    assert r.max_drawdown_trough_ts == T0 + 2 * DAY
    assert r.max_drawdown_recovered is False
    assert r.max_drawdown_duration_ms == 3 * DAY

    # Net PnL: +30, -10, +5, -5.
    assert r.trades == 4
    assert r.win_rate == 0.5
    assert r.gross_profit == pytest.approx(35.0)
    assert r.gross_loss == pytest.approx(15.0)
    assert r.profit_factor == pytest.approx(35.0 / 15.0)
    assert r.avg_trade == pytest.approx(5.0)
    assert (r.exposure, r.fees_paid, r.funding_paid) == (0.6, 3.5, 1.0)


def test_drawdown_duration_runs_to_recovery() -> None:
    r = report([100.0, 120.0, 90.0, 130.0, 125.0])
    assert r.max_drawdown == pytest.approx(0.25)
    assert r.max_drawdown_recovered is True
    assert r.max_drawdown_peak_ts == T0 + DAY
    assert r.max_drawdown_duration_ms == 2 * DAY  # 120 at day 1, back above at day 3


def test_cagr_uses_wall_clock_span() -> None:
    ts = np.array([T0, T0 + 365 * DAY, T0 + 730 * DAY], dtype=np.int64)
    r = compute_report(ts, np.array([100.0, 150.0, 121.0]), [], 0.0, 0.0, 0.0, "1d")
    assert r.cagr == pytest.approx(0.10)


def test_annualization_follows_the_timeframe() -> None:
    assert periods_per_year("1d") == 365
    assert periods_per_year("30m") == 365 * 48
    equity = [100.0, 101.0, 100.5, 102.0]
    daily = report(equity, timeframe="1d")
    half_hourly = report(equity, timeframe="30m")
    assert half_hourly.sharpe == pytest.approx(daily.sharpe * math.sqrt(48))  # type: ignore[operator]


def test_no_losses_gives_infinite_profit_factor_and_json_safe_dict() -> None:
    r = report([100.0, 101.0, 102.0], [trade(5.0), trade(2.0)])
    assert r.profit_factor == math.inf
    d = r.to_dict()
    assert d["profit_factor"] == "∞"
    text = json.dumps(d, allow_nan=False)  # raises on inf / NaN
    assert json.loads(text)["trades"] == 2


def test_undefined_metrics_are_none() -> None:
    flat = report([100.0, 100.0, 100.0])
    assert flat.sharpe is None
    assert flat.sortino is None
    assert flat.max_drawdown == 0.0
    assert flat.max_drawdown_duration_ms == 0
    assert flat.trades == 0
    assert flat.win_rate is None
    assert flat.profit_factor is None
    assert flat.avg_trade is None
    single = report([100.0])
    assert single.cagr is None
    assert single.sharpe is None
    assert single.total_return == 0.0
    json.dumps(single.to_dict(), allow_nan=False)


def test_no_downside_gives_infinite_sortino() -> None:
    r = report([100.0, 101.0, 103.0, 104.0])
    assert r.sortino == math.inf
    assert r.sharpe is not None
    assert r.sharpe > 0
    assert r.to_dict()["sortino"] == "∞"


def test_wipe_out_does_not_produce_nan() -> None:
    r = report([100.0, 50.0, 0.0, 0.0])
    assert r.max_drawdown == pytest.approx(1.0)
    assert r.cagr == -1.0
    assert r.sharpe is not None
    assert math.isfinite(r.sharpe)


@pytest.mark.parametrize(("ts", "eq", "exposure", "fragment"), [
    (days(3), np.array([1.0, 2.0]), 0.5, "same length"),
    (days(0), np.array([]), 0.5, "empty"),
    (days(2), np.array([0.0, 1.0]), 0.5, "initial equity must be positive"),
    (days(2), np.array([1.0, np.nan]), 0.5, "NaN"),
    (days(2)[::-1].copy(), np.array([1.0, 2.0]), 0.5, "strictly increasing"),
    (days(2), np.array([1.0, 2.0]), 1.5, "exposure_ratio"),
])
def test_bad_input(ts: np.ndarray, eq: np.ndarray, exposure: float, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        compute_report(ts, eq, [], 0.0, 0.0, exposure, "1d")
