"""The HTML backtest report, without a browser: candle resampling by hand, what the page
holds (figures, markers, halts, tables), that it references nothing outside itself, and that
a million bars stay small and quick. tests/integration/test_backtest_reports.py opens it in
Chromium."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from quantum_trader.analytics.performance import compute_report, pair_results
from quantum_trader.analytics.report_html import (
    CANDLES,
    ReportInput,
    render_report,
    resample_ohlc,
    write_report_html,
)
from quantum_trader.domain.enums import Side
from quantum_trader.domain.records import AuditEvent, ClosedTrade
from quantum_trader.marketdata.series import BarSeries
from quantum_trader.marketdata.synthetic import synthetic_series

T0 = 1_704_067_200_000  # 2024-01-01T00:00Z
M30 = 1_800_000


def bars(n: int, start: int = T0, symbol: str = "BTCUSDT") -> BarSeries:
    i = np.arange(n, dtype=np.float64)
    o = 100.0 + i
    return BarSeries(symbol, "30m", start + np.arange(n, dtype=np.int64) * M30, o,
                     o + 5.0 + (i % 3), o - 4.0 - (i % 2), o + 0.5, np.ones(n))


def test_few_bars_are_shown_as_they_are() -> None:
    s = bars(10)
    c = resample_ohlc(s, max_candles=10)
    assert not c.resampled
    assert c.width_ms == M30
    assert c.start.tolist() == s.ts.tolist()
    assert c.high.tolist() == s.high.tolist()


def test_candles_are_resampled_to_a_round_span_by_hand() -> None:
    s = bars(10)
    # 1h would make 5 candles (more than 4); 2h makes 3: bars 0-3, 4-7, 8-9.
    c = resample_ohlc(s, max_candles=4)
    assert c.resampled
    assert c.width_ms == 4 * M30
    assert c.start.tolist() == [T0, T0 + 4 * M30, T0 + 8 * M30]
    assert c.bars.tolist() == [4, 4, 2]
    assert c.open.tolist() == [s.open[0], s.open[4], s.open[8]]
    assert c.close.tolist() == [s.close[3], s.close[7], s.close[9]]
    assert c.high.tolist() == [s.high[0:4].max(), s.high[4:8].max(), s.high[8:].max()]
    assert c.low.tolist() == [s.low[0:4].min(), s.low[4:8].min(), s.low[8:].min()]


def test_resampled_candles_are_aligned_to_utc() -> None:
    s = bars(10, start=T0 + M30)  # from 00:30: 00:30-01:30 | 02:00-03:30 | 04:00-05:00
    c = resample_ohlc(s, max_candles=4)
    assert c.start.tolist() == [T0, T0 + 4 * M30, T0 + 8 * M30]
    assert c.bars.tolist() == [3, 4, 3]
    with pytest.raises(ValueError, match="max_candles"):
        resample_ohlc(s, max_candles=0)


def test_a_million_bars_become_a_bounded_number_of_candles() -> None:
    s = synthetic_series(1_000_000, "BTCUSDT", "1m", seed=3)
    t = time.perf_counter()
    c = resample_ohlc(s)
    assert time.perf_counter() - t < 2.0
    assert len(c.start) <= CANDLES
    assert c.width_ms == 6 * 3_600_000  # 694 days: 6h candles are the first round span to fit
    assert c.bars.sum() == len(s)
    assert c.high.max() == s.high.max()
    assert c.low.min() == s.low.min()
    assert (c.open[0], c.close[-1]) == (s.open[0], s.close[-1])


def _trade(n: int, symbol: str, side: Side, opened: int, closed: int, entry: float,
           exit_: float, reason: str) -> ClosedTrade:
    pnl = (exit_ - entry) * (1 if side == Side.BUY else -1)
    return ClosedTrade(id=f"t{n}", symbol=symbol, side=side, quantity=1.0, entry_price=entry,
                       exit_price=exit_, opened_ts=opened, closed_ts=closed,
                       realized_pnl=pnl, fees=0.1, funding=0.0, exit_reason=reason,
                       trace_id=f"x{n}")


def report_input(n_bars: int = 400, title: str = "Backtest — test") -> ReportInput:
    a, b = bars(n_bars, symbol="BTCUSDT"), bars(n_bars, symbol="ETHUSDT")
    trades = [
        _trade(1, "BTCUSDT", Side.BUY, T0 + 2 * M30, T0 + 9 * M30, 102.0, 110.0, "take_profit"),
        _trade(2, "ETHUSDT", Side.SELL, T0 + 5 * M30, T0 + 20 * M30, 105.0, 111.0,
               "stop_loss"),
        _trade(3, "BTCUSDT", Side.SELL, T0 + 30 * M30, T0 + 31 * M30, 130.0, 128.0,
               "signal_exit"),
    ]
    eq_ts = a.ts + M30
    eq = 10_000.0 + np.cumsum(np.sin(np.arange(n_bars) / 7.0))
    rep = compute_report(eq_ts, eq, trades, 0.3, 0.0, 0.2, "30m")
    pairs = pair_results(trades, {"BTCUSDT": n_bars, "ETHUSDT": n_bars},
                         {"BTCUSDT": 10, "ETHUSDT": 5},
                         {"BTCUSDT": (100.0, 500.0), "ETHUSDT": (100.0, 90.0)})
    halt = AuditEvent("trading_state", int(T0 + 40 * M30),
                      {"from": "ACTIVE", "to": "HALTED", "reason": "max drawdown <breached>"})
    return ReportInput(title=title, series=[a, b], trades=trades, equity_ts=eq_ts, equity=eq,
                       report=rep, pairs=pairs, basket_buy_and_hold=0.5,
                       state_changes=[halt], rejections={"COOLDOWN": 3},
                       meta={"run_id": "20240101T000000Z-abcdef12", "source": "ema_cross",
                             "code": {"quantum_trader": "0.1.0", "git_commit": "f" * 40},
                             "data": {"sha256": "d" * 64, "series": []},
                             "config": {"strategy": {"fast": 5}}})


def figures(page: str) -> dict[str, dict[str, object]]:
    raw = re.search(r'<script type="application/json" id="qt-data">(.*?)</script>', page, re.S)
    assert raw is not None
    return json.loads(raw.group(1).replace("<\\/", "</"))["figures"]  # type: ignore[no-any-return]


def test_the_page_holds_every_section_and_the_figures() -> None:
    data = report_input()
    page = render_report(data)
    for section in ("price", "performance", "monthly", "exits", "durations", "best-worst",
                    "halts", "run"):
        assert f'<section id="{section}">' in page, section
    figs = figures(page)
    assert set(figs) == {"qt-price", "qt-exits", "qt-durations"}
    traces = figs["qt-price"]["data"]
    assert isinstance(traces, list)
    by_uid = {t["uid"]: t for t in traces}
    # Every trade has one entry and one exit marker, on its own symbol's panel, exactly.
    assert len(by_uid["entries-BTCUSDT"]["x"]) == len(by_uid["exits-BTCUSDT"]["x"]) == 2
    assert by_uid["entries-ETHUSDT"]["x"] == [T0 + 5 * M30]
    assert by_uid["exits-ETHUSDT"]["y"] == [111.0]
    assert by_uid["entries-ETHUSDT"]["marker"]["symbol"] == ["triangle-down"]  # a short
    assert by_uid["entries-BTCUSDT"]["yaxis"] == "y"
    assert by_uid["entries-ETHUSDT"]["yaxis"] == "y2"
    # The halt: a line and a label across the panels.
    layout = figs["qt-price"]["layout"]
    assert isinstance(layout, dict)
    assert [s["x0"] for s in layout["shapes"]] == [T0 + 40 * M30]
    assert "HALTED" in layout["annotations"][0]["text"]
    assert "max drawdown &lt;breached&gt;" in page  # the halts table, escaped
    # Exit reasons and durations.
    exits = figs["qt-exits"]["data"][0]  # type: ignore[index]
    assert sorted(exits["x"]) == ["signal_exit", "stop_loss", "take_profit"]
    assert "How long trades were held" in page
    assert "Buy &amp; hold of the basket (equal weights): +50.00%" in page
    assert "20240101T000000Z-abcdef12" in page
    assert "commit ffffffffffff" in page


def test_the_page_fetches_nothing() -> None:
    page = render_report(report_input(title="A <b>run</b>"))
    assert "<title>A &lt;b&gt;run&lt;/b&gt;</title>" in page
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert csp is not None
    assert "default-src 'none'" in csp.group(1)
    # plotly.js is embedded (its own source mentions URLs); the rest of the page none at all.
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert "plotly.js v" in scripts[0][:200]
    rest = page.replace(scripts[0], "")
    assert not re.search(r"https?://|//cdn|src=|href=", rest)


def test_a_run_without_trades_says_so() -> None:
    data = report_input()
    empty = ReportInput(title="t", series=data.series[:1], trades=[],
                        equity_ts=data.equity_ts, equity=data.equity,
                        report=compute_report(data.equity_ts, data.equity, [], 0, 0, 0, "30m"))
    page = render_report(empty)
    assert "No trades were closed." in page
    assert "Trading stayed ACTIVE throughout" in page
    assert set(figures(page)) == {"qt-price"}


def test_a_million_bars_stay_small_and_quick(tmp_path: Path) -> None:
    s = synthetic_series(1_000_000, "BTCUSDT", "1m", seed=4)
    eq_ts = s.ts + 60_000
    eq = 10_000.0 * s.close / s.close[0]
    trades = [_trade(i, "BTCUSDT", Side.BUY, int(s.ts[k]), int(s.ts[k + 30]), float(s.open[k]),
                     float(s.open[k + 30]), "signal_exit")
              for i, k in enumerate(range(100, 999_000, 2_000))]
    data = ReportInput(title="big", series=[s], trades=trades, equity_ts=eq_ts, equity=eq,
                       report=compute_report(eq_ts, eq, trades, 0, 0, 0.1, "1m"))
    t = time.perf_counter()
    path = write_report_html(tmp_path / "big" / "report.html", data)
    assert time.perf_counter() - t < 10.0
    page = path.read_text(encoding="utf-8")
    assert len(page) < 10_000_000
    figs = figures(page)
    by_uid = {t["uid"]: t for t in figs["qt-price"]["data"]}  # type: ignore[union-attr]
    assert len(by_uid["candles-BTCUSDT"]["x"]) <= CANDLES
    assert len(by_uid["equity"]["x"]) <= 5_002
    assert len(by_uid["entries-BTCUSDT"]["x"]) == len(trades)  # markers are never resampled
    assert "1,000,000 × 1m bars shown as" in page
    assert "6h" in page
