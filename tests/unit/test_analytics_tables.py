"""Rich tables for the report and the trade list."""

from __future__ import annotations

import math

import numpy as np
from rich.console import Console, RenderableType

from quantum_trader.analytics.performance import compute_report
from quantum_trader.analytics.tables import (
    FittedTable,
    fmt_duration,
    fmt_num,
    fmt_pct,
    report_table,
    trades_table,
)
from quantum_trader.domain.enums import Side
from quantum_trader.domain.records import ClosedTrade

T0 = 1_577_836_800_000
DAY = 86_400_000


def render(table: RenderableType) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def trade(i: int, realized: float) -> ClosedTrade:
    return ClosedTrade(id=f"t{i}", symbol="ETHUSDT", side=Side.SELL, quantity=0.5,
                       entry_price=2000.0 + i, exit_price=1990.0, opened_ts=T0 + i * DAY,
                       closed_ts=T0 + i * DAY + 3_600_000, realized_pnl=realized, fees=0.25,
                       funding=0.05, exit_reason="take_profit", trace_id="x")


def test_report_table_shows_every_metric_and_infinity() -> None:
    ts = T0 + np.arange(4, dtype=np.int64) * DAY
    r = compute_report(ts, np.array([100.0, 110.0, 99.0, 120.0]), [trade(0, 5.0)], 1.25, 0.5,
                       0.3, "1d")
    assert r.profit_factor == math.inf
    table = report_table(r, title="Backtest")
    assert isinstance(table, FittedTable)
    text = render(table)
    for label in ("Total return", "CAGR", "Sharpe", "Sortino", "Max drawdown",
                  "Max drawdown duration", "Win rate", "Profit factor", "Trades",
                  "Average trade", "Exposure", "Fees paid", "Funding paid"):
        assert label in text
    assert "∞" in text
    assert "+20.00%" in text  # total return
    assert "-10.00%" in text  # max drawdown
    assert "30.0%" in text  # exposure


def test_trades_table_limits_to_the_latest() -> None:
    trades = [trade(i, float(i - 2)) for i in range(5)]
    text = render(trades_table(trades, limit=2))
    assert "last 2 of 5 trades" in text
    assert "2,004" in text  # entry of the last trade
    assert "2,001" not in text
    assert "take_profit" in text
    assert "SELL" in text
    full = render(trades_table(trades))
    assert "last" not in full
    assert full.count("ETHUSDT") == 5


def test_formatters() -> None:
    assert fmt_num(math.inf) == "∞"
    assert fmt_num(None) == "—"
    assert fmt_num(1234.5) == "1,234.50"
    assert fmt_pct(0.1234) == "12.34%"
    assert fmt_pct(-0.05, 1, signed=True) == "-5.0%"
    assert fmt_pct(None) == "—"
    assert fmt_duration(3 * DAY + 2 * 3_600_000) == "3d 2h"
    assert fmt_duration(90 * 60_000) == "1h 30m"
