"""FittedTable: in any console width a figure is printed whole or not at all."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.text import Text

from quantum_trader.ai.training import TrainingReport
from quantum_trader.ai.walkforward import BacktestSummary, FoldResult, WalkForwardResult
from quantum_trader.analytics.performance import compute_report
from quantum_trader.analytics.tables import FitColumn, FittedTable, report_table, trades_table
from quantum_trader.domain.enums import Side
from quantum_trader.domain.records import ClosedTrade

T0 = 1_704_067_200_000  # 2024-01-01
DAY = 86_400_000
HOUR = 3_600_000


def render(renderable: RenderableType, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


def flat(text: str) -> str:
    """The text with line breaks and runs of spaces as one space (captions wrap)."""
    return " ".join(text.split())


def words(text: str) -> set[str]:
    """The words of a text, table rules aside: a word is whole if it is in here."""
    return set(text.replace("│", " ").split())


def assert_fits(text: str, width: int) -> None:
    assert "…" not in text
    assert max(cell_len(line) for line in text.splitlines()) <= width


def wide_trades() -> list[ClosedTrade]:
    return [
        ClosedTrade(id="a", symbol="1000SHIBUSDT", side=Side.BUY, quantity=1_234_567.0,
                    entry_price=0.023456, exit_price=0.0212, opened_ts=T0,
                    closed_ts=T0 + 5 * HOUR, realized_pnl=-1_511.25, fees=12.5, funding=-0.75,
                    exit_reason="stop_loss", trace_id="x"),
        ClosedTrade(id="b", symbol="BTCUSDT", side=Side.SELL, quantity=0.5,
                    entry_price=104_250.5, exit_price=101_999.25, opened_ts=T0 + DAY,
                    closed_ts=T0 + DAY + 7 * HOUR, realized_pnl=1_125.6, fees=104.25,
                    funding=3.1, exit_reason="trailing_stop after partial take profit",
                    trace_id="y"),
    ]


# Each shown trade figure as trades_table formats it, by column.
KEPT_AT_80 = {
    "Symbol": ["1000SHIBUSDT", "BTCUSDT"], "Side": ["BUY", "SELL"],
    "Qty": ["1,234,567", "0.5"], "Entry": ["0.023456", "104,250.5"],
    "Exit": ["0.0212", "101,999.25"], "Net PnL": ["-1,523.00", "1,018.25"],
}
HIDDEN_AT_80 = {
    "Opened": ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"],
    "Closed": ["2024-01-01T05:00:00Z", "2024-01-02T07:00:00Z"],
    "Fees": ["12.50", "104.25"], "Funding": ["-0.75", "3.10"],
    "Exit reason": ["stop_loss", "trailing_stop"],
}


def test_trades_at_80_columns_keep_the_important_figures_whole() -> None:
    text = render(trades_table(wide_trades(), title="Last 2 of 2 trades"), 80)
    assert_fits(text, 80)
    header = next(line for line in text.splitlines() if "Symbol" in line)
    for name, figures in KEPT_AT_80.items():
        assert name in header
        for figure in figures:
            assert figure in text, figure
    assert ("hidden: Opened, Closed, Fees, Funding, Exit reason — widen the terminal or use "
            "--json") in flat(text)
    for figures in HIDDEN_AT_80.values():  # not at all, rather than cut
        for figure in figures:
            assert figure not in text, figure


def test_trades_at_200_columns_hide_nothing() -> None:
    text = render(trades_table(wide_trades()), 200)
    assert_fits(text, 200)
    assert "hidden" not in text
    for figures in (*KEPT_AT_80.values(), *HIDDEN_AT_80.values()):
        for figure in figures:
            assert figure in text, figure
    assert "trailing_stop after partial take profit" in text  # room enough: not even wrapped


def test_trades_at_30_columns_go_vertical_with_every_figure_whole() -> None:
    text = render(trades_table(wide_trades(), limit=2), 30)
    assert_fits(text, 30)
    assert "┃" not in text
    assert "│" not in text
    lines = text.splitlines()
    for name, figures in (*KEPT_AT_80.items(), *HIDDEN_AT_80.items()):
        for figure in figures:
            if name == "Exit reason":
                continue  # free text may wrap; checked below
            assert f"{name}: {figure}" in lines, (name, figure)
    assert "Exit reason: stop_loss" in lines
    assert words("trailing_stop after partial take profit") <= words(text)
    assert "hidden" not in text


def test_trades_caption_is_kept_along_with_the_hidden_one() -> None:
    trades = wide_trades() * 3
    narrow = flat(render(trades_table(trades, limit=2), 80))
    assert "last 2 of 6 trades" in narrow
    assert "hidden: Opened" in narrow
    assert "last 2 of 6 trades" in flat(render(trades_table(trades, limit=2), 30))


def test_priority_decides_what_is_hidden_not_width() -> None:
    # "detail" is the widest column but more important than "note", so "note" goes first.
    table = FittedTable([FitColumn("id"), FitColumn("detail", priority=1),
                         FitColumn("note", priority=2)])
    table.add_row("7", "d" * 50, "n" * 30)
    text = render(table, 70)
    assert_fits(text, 70)
    assert "d" * 50 in text
    assert "nnn" not in text
    assert "note" not in next(line for line in text.splitlines() if "┃ id" in line)
    assert "hidden: note —" in flat(text)
    # Narrower still: both are hidden, the essential column stays.
    text = render(table, 40)
    assert "hidden: detail, note" in flat(text)
    assert "┃ id" in text


def test_equal_priority_is_hidden_from_the_right_and_essentials_never() -> None:
    table = FittedTable([FitColumn("key"), FitColumn("a", priority=1),
                         FitColumn("b", priority=1), FitColumn("value", "right")])
    table.add_row("k", "a" * 10, "b" * 10, "12,345.67")
    text = render(table, 38)
    assert_fits(text, 38)
    assert "hidden: b —" in flat(text)
    assert "a" * 10 in text
    # The essentials (key, value) alone are 19 wide; below that the layout is vertical.
    assert "value: 12,345.67" in render(table, 18).splitlines()
    assert "hidden: a, b —" in flat(render(table, 19))
    assert "12,345.67" in render(table, 19)
    assert "┃" in render(table, 19)


def test_headers_wrap_at_spaces_rather_than_hide_a_column() -> None:
    table = FittedTable([FitColumn("n"), FitColumn("model Sharpe", "right"),
                         FitColumn("shuffled AUC", "right")])
    table.add_row("1", "-1.23", "0.4987")
    # Unwrapped headers need 35 columns; wrapped to their words, 25.
    text = render(table, 28)
    assert_fits(text, 28)
    assert "hidden" not in text
    assert "-1.23" in text
    assert "0.4987" in text
    assert "shuffled" in text
    assert "Sharpe" in text
    assert "model Sharpe" not in text
    assert "model Sharpe" in render(table, 35)
    assert "shuffled AUC" in render(table, 35)


def test_markup_and_text_cells_are_measured_by_what_they_show() -> None:
    table = FittedTable([FitColumn("status"), FitColumn("pnl", "right")])
    table.add_row("[green]PASS[/]", Text("-1,234.56", style="red"))
    text = render(table, 22)  # 6 + 9 + 7: exactly enough, with the markup not counted
    assert_fits(text, 22)
    assert "┃ status ┃       pnl ┃" in text
    assert "│ PASS   │ -1,234.56 │" in text
    assert "[green]" not in text


def test_wrapping_text_never_breaks_a_word() -> None:
    table = FittedTable([FitColumn("check"), FitColumn("detail", wrap=True, wrap_min=8)])
    detail = "changed at cuts [1200, 4800] of 104,250.5 bars"
    table.add_row("labels", detail)
    assert "┃" in render(table, 30)  # still a table: the detail wraps instead
    assert "┃" in render(table, 22)  # the detail as narrow as its longest word, 104,250.5
    assert "┃" not in render(table, 21)
    for width in range(14, 60):
        text = render(table, width)
        assert_fits(text, width)
        assert words(detail) <= words(text), width


def test_report_table_keeps_every_figure_whole_at_any_width() -> None:
    ts = T0 + np.arange(4, dtype=np.int64) * DAY
    trade = wide_trades()[1]
    r = compute_report(ts, np.array([100.0, 110.0, 99.0, 120.0]), [trade], 1.25, 0.5, 0.3,
                       "1d")
    period = "2024-01-01T00:00:00Z → 2024-01-04T00:00:00Z (4 × 1d bars)"
    for width in (30, 50, 80, 200):
        text = render(report_table(r, title="Backtest"), width)
        assert_fits(text, width)
        assert "hidden" not in text  # two essential columns: wrap or go vertical, never hide
        assert words(period) <= words(text), width
        for figure in ("+20.00%", "-10.00%", "30.0%", "1,018.25", "1.25", "0.50"):
            assert figure in text, (width, figure)


def fake_training_report() -> TrainingReport:
    def bt(ret: float, sharpe: float | None, dd: float, trades: int) -> BacktestSummary:
        return BacktestSummary(ret, sharpe, dd, trades, 0.001)

    folds = [
        FoldResult(i, 123_450 + i, 20_160, T0, T0 + DAY, T0 + i * 30 * DAY,
                   T0 + (i * 30 + 29) * DAY,
                   {"model": {"auc": 0.5123 + i / 100, "accuracy": 0.5012, "brier": 0.2499},
                    "shuffled": {"auc": 0.4987, "accuracy": 0.5, "brier": 0.25}},
                   {"model": bt(-0.1623, -1.23, -0.2, 40), "rule_based": bt(0.0456, 0.5, -0.1, 12),
                    "buy_and_hold": bt(2.0345, 3.21, -0.3, 1)})
        for i in (1, 2, 3)]
    overall = {"model": {"auc": 0.5211, "accuracy": 0.5033, "brier": 0.2497},
               "shuffled": {"auc": 0.4991, "accuracy": 0.5, "brier": 0.25}}
    backtests = {"model": bt(-0.1623, -1.23, -0.2012, 120),
                 "buy_and_hold": bt(2.0345, 3.21, -0.3, 1), "flat": bt(0.0, None, 0.0, 0),
                 "rule_based": bt(0.0456, 0.5, -0.1, 36), "shuffled": bt(-0.3012, -2.5, -0.35, 118)}
    wf = WalkForwardResult(folds, overall, backtests, {}, np.arange(3), np.zeros(3))
    leakage = {"passed": False, "checks": {
        "features": {"passed": True, "detail": "rows <= t unchanged"},
        "labels": {"passed": False, "detail": "labels changed at cuts [1200, 4800]; folds [2] "
                                              "train on labels reaching their test fold"},
        "feature_parity": {"passed": True}}}
    return TrainingReport("default", "20240101T000000", {"manifest_hash": "ab" * 32}, wf,
                          leakage, 12.3, Path("/tmp/artifact"))


def test_train_fold_table_at_80_columns_has_no_cut_figure() -> None:
    folds, overall, _importance, _calibration, leak = fake_training_report().tables()
    text = render(folds, 80)
    assert_fits(text, 80)
    header = flat(text)
    for name in ("fold", "AUC", "model ret", "B&H ret"):
        assert name in header
    assert "Sharpe" in text
    for figure in ("0.5223", "0.5323", "0.5423", "-16.23%", "-1.23", "+203.45%"):
        assert figure in text, figure
    assert "hidden: train rows, test rows, test window" in flat(text)
    assert "123451" not in text  # train rows: hidden, not cut
    text = render(overall, 80)
    assert_fits(text, 80)
    for figure in ("0.5211", "-16.23%", "+203.45%", "-20.12%", "buy_and_hold", "118"):
        assert figure in text, figure
    text = render(leak, 80)
    assert_fits(text, 80)
    assert "FAIL" in text
    assert "[1200, 4800];" in text


def test_train_report_renders_whole_at_every_width() -> None:
    report = fake_training_report()
    for width in range(24, 161, 17):
        text = render(report.render(), width)
        assert_fits(text, width)
        assert "-16.23%" in text
        assert "+203.45%" in text


@pytest.mark.parametrize("width", range(24, 221, 11))  # 24: the widest figure, a time
def test_every_column_is_shown_whole_or_named_hidden(width: int) -> None:
    table = trades_table(wide_trades())
    text = render(table, width)
    assert_fits(text, width)
    hidden = flat(text).split("hidden: ", 1)[1].split(" —")[0].split(", ") \
        if "hidden: " in text else []
    for name, figures in (*KEPT_AT_80.items(), *HIDDEN_AT_80.items()):
        if name in hidden or name == "Exit reason":
            continue
        for figure in figures:
            assert figure in text, (width, name, figure)
    assert not {"Symbol", "Side", "Qty", "Entry", "Exit", "Net PnL"} & set(hidden)


def test_measure_is_the_unwrapped_width() -> None:
    console = Console(width=300, file=io.StringIO())
    table = trades_table(wide_trades())
    measured = Measurement.get(console, console.options, table)
    rendered = render(table, 300).splitlines()
    assert measured.maximum == max(cell_len(line.rstrip()) for line in rendered if "┃" in line)
    assert measured.minimum < measured.maximum


def test_a_row_with_too_many_cells_is_refused() -> None:
    table = FittedTable([FitColumn("a")])
    with pytest.raises(ValueError, match="2 cells for 1 columns"):
        table.add_row("1", "2")
