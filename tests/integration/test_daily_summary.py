"""The daily summary the gateway sends: the day's trades, equity and state from the store."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from quantum_trader.domain.enums import Side
from quantum_trader.domain.portfolio import EquityPoint
from quantum_trader.domain.records import AuditEvent, ClosedTrade
from quantum_trader.observability.notifier import render_daily_summary
from quantum_trader.services.gateway import build_daily_summary
from quantum_trader.store.sql import SqlTradeStore
from quantum_trader.store.urls import sqlite_url

DAY = date(2026, 11, 23)
T0 = 1_795_392_000_000  # 2026-11-23 00:00 UTC


def trade(i: int, pnl: float, closed: int) -> ClosedTrade:
    return ClosedTrade(f"t{i}", "XRPUSDT", Side.BUY, 100.0, 1.0, 1.0 + pnl / 100, closed - 1,
                       closed, pnl, 0.1, 0.0, "take_profit", f"tr{i}")


async def test_summary_counts_only_that_day(tmp_path: Path) -> None:
    store = SqlTradeStore(sqlite_url(tmp_path / "s.db"), create=True)
    await store.open()
    try:
        await store.write([
            trade(1, 5.0, T0 - 1),  # the day before
            trade(2, 3.0, T0 + 1_000), trade(3, -1.0, T0 + 3_600_000),
            trade(4, 2.0, T0 + 86_400_000),  # the day after
            EquityPoint(T0 + 80_000_000, 10_200.0, 10_200.0, 0.0, 0.02, 0.0),
            EquityPoint(T0 + 90_000_000, 10_500.0, 10_500.0, 0.0, 0.0, 0.0),
            AuditEvent("trading_state", T0 + 5_000, {"from": "ACTIVE", "to": "REDUCING"}),
        ])
        s = await build_daily_summary(store, DAY)
    finally:
        await store.close()
    assert (s.trades, s.wins) == (2, 1)
    assert abs(s.pnl - (3.0 - 0.1 - 1.0 - 0.1)) < 1e-9
    assert (s.equity, s.drawdown, s.state) == (10_200.0, 0.02, "REDUCING")
    text = render_daily_summary(s)
    assert "2026-11-23" in text
    assert "REDUCING" in text
