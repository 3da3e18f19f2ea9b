"""``rich`` tables for the performance report and the trade list (the CLI prints them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from rich.table import Table
from rich.text import Text

from quantum_trader.analytics.performance import PerformanceReport
from quantum_trader.domain.records import ClosedTrade


def fmt_num(value: float | None, digits: int = 2) -> str:
    """Plain number with thousands separators; "∞" for infinity, "—" when undefined."""
    if value is None or math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:,.{digits}f}"


def fmt_pct(value: float | None, digits: int = 2, signed: bool = False) -> str:
    """A ratio as percent (0.1234 -> "12.34%")."""
    if value is None or math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value * 100:{'+' if signed else ''},.{digits}f}%"


def fmt_ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def fmt_duration(ms: int) -> str:
    minutes = ms // 60_000
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {mins}m" if hours else f"{mins}m"


def _signed(value: float, text: str) -> Text:
    return Text(text, style="green" if value > 0 else "red" if value < 0 else "")


def report_table(report: PerformanceReport, title: str = "Performance") -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    r = report
    dd_end = "" if r.max_drawdown_recovered else ", not recovered"
    rows: list[tuple[str, str | Text]] = [
        ("Period", f"{fmt_ts(r.start_ts)} → {fmt_ts(r.end_ts)} ({r.bars:,} × {r.timeframe} bars)"),
        ("Initial equity", fmt_num(r.initial_equity)),
        ("Final equity", fmt_num(r.final_equity)),
        ("Total return", _signed(r.total_return, fmt_pct(r.total_return, signed=True))),
        ("CAGR", _signed(r.cagr or 0.0, fmt_pct(r.cagr, signed=True))),
        ("Sharpe (annualized)", fmt_num(r.sharpe)),
        ("Sortino (annualized)", fmt_num(r.sortino)),
        ("Volatility (annualized)", fmt_pct(r.annual_volatility)),
        ("Max drawdown", Text(fmt_pct(-r.max_drawdown), style="red" if r.max_drawdown else "")),
        ("Max drawdown duration", fmt_duration(r.max_drawdown_duration_ms) + dd_end),
        ("Trades", f"{r.trades:,}"),
        ("Win rate", fmt_pct(r.win_rate, 1)),
        ("Profit factor", fmt_num(r.profit_factor)),
        ("Average trade", _signed(r.avg_trade or 0.0, fmt_num(r.avg_trade))),
        ("Exposure", fmt_pct(r.exposure, 1)),
        ("Fees paid", fmt_num(r.fees_paid)),
        ("Funding paid", fmt_num(r.funding_paid)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def trades_table(trades: Sequence[ClosedTrade], limit: int | None = None,
                 title: str = "Trades") -> Table:
    """One row per trade; with ``limit`` only the most recent ``limit`` trades are shown."""
    shown = list(trades) if limit is None else list(trades)[-limit:] if limit > 0 else []
    caption = f"last {len(shown)} of {len(trades)} trades" if len(shown) < len(trades) else None
    table = Table(title=title, caption=caption, header_style="bold")
    for name in ("Symbol", "Side", "Qty", "Entry", "Exit", "Opened", "Closed", "Net PnL",
                 "Fees", "Funding", "Exit reason"):
        numeric = name in ("Qty", "Entry", "Exit", "Net PnL", "Fees", "Funding")
        table.add_column(name, justify="right" if numeric else "left")
    for t in shown:
        table.add_row(
            t.symbol, str(t.side), f"{t.quantity:,.8g}", f"{t.entry_price:,.8g}",
            f"{t.exit_price:,.8g}", fmt_ts(t.opened_ts), fmt_ts(t.closed_ts),
            _signed(t.net_pnl, fmt_num(t.net_pnl)), fmt_num(t.fees), fmt_num(t.funding),
            t.exit_reason,
        )
    return table
