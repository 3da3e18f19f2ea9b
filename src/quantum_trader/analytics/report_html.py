"""The interactive backtest report: one HTML file that needs nothing but a browser.

Everything is in the file: plotly.js (from the installed ``plotly`` package, embedded once),
the data, the styles. A Content-Security-Policy in the page forbids every fetch, so the report
opens the same offline, from a mail attachment or from a directory served by anyone.

What it shows: the candles of each symbol with every trade's entry and exit marked (one panel
per symbol, a shared time axis with the equity and drawdown panels below; zoom, pan and hover;
the y axes follow the zoom), when trading halted and why, the headline figures, the per-pair
table, monthly and yearly returns, exits by reason, how long trades lasted, and the best and
worst trades.

Large runs stay usable: each symbol's candles are resampled to at most ``CANDLES`` candles of a
round duration (each the OHLC of the bars in it), and the equity and drawdown curves keep each
bucket's minimum and maximum (``charts.minmax_indices``); the markers are not resampled (each
sits at its trade's exact time and price). The report says when this was done.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from quantum_trader.analytics.charts import drawdown_pct, minmax_indices
from quantum_trader.analytics.performance import (
    PairResult,
    PerformanceReport,
    best_and_worst,
    duration_stats,
    exit_reasons,
    monthly_returns,
    trade_durations,
    yearly_returns,
)
from quantum_trader.analytics.runs import SeriesLike
from quantum_trader.analytics.tables import fmt_duration, fmt_num, fmt_pct, fmt_ts
from quantum_trader.domain.enums import Side
from quantum_trader.domain.models import timeframe_ms
from quantum_trader.domain.records import AuditEvent, ClosedTrade

CANDLES = 3_000  # per symbol, at most
CURVE_POINTS = 5_000  # equity and drawdown, about
BEST_WORST = 5
# Round candle durations to resample to, in minutes (then doubling).
_NICE_MINUTES = (1, 3, 5, 15, 30, 60, 120, 240, 360, 480, 720, 1440, 2880, 4320, 10080,
                 20160, 43200)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Inline script and style only; nothing may be fetched (plotly.js is embedded).
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; "
        "style-src 'unsafe-inline'; img-src data: blob:; font-src data:")


@dataclass(frozen=True)
class ReportInput:
    """What the report is drawn from (a backtest's result and its bars)."""

    title: str
    series: Sequence[SeriesLike]
    trades: Sequence[ClosedTrade]
    equity_ts: npt.NDArray[np.int64]
    equity: npt.NDArray[np.float64]
    report: PerformanceReport
    pairs: Sequence[PairResult] = ()
    basket_buy_and_hold: float | None = None
    state_changes: Sequence[AuditEvent] = ()
    rejections: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # run id, source, code, data, config


# --- candles -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candles:
    """Candles for display: ``start`` is each candle's start (epoch ms), ``width_ms`` its
    span, ``bars`` how many source bars it holds."""

    start: npt.NDArray[np.int64]
    width_ms: int
    open: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]
    low: npt.NDArray[np.float64]
    close: npt.NDArray[np.float64]
    bars: npt.NDArray[np.int64]
    source_bars: int
    source_ms: int

    @property
    def resampled(self) -> bool:
        return self.width_ms != self.source_ms


def _widths(tf_ms: int) -> Iterator[int]:
    last = tf_ms
    for minutes in _NICE_MINUTES:
        w = minutes * 60_000
        if w > tf_ms and w % tf_ms == 0:
            last = w
            yield w
    while True:
        last *= 2
        yield last


def resample_ohlc(series: SeriesLike, max_candles: int = CANDLES) -> Candles:
    """``series``' bars as at most ``max_candles`` candles: the bars themselves when they are
    few enough, else candles of the shortest round duration (a multiple of the timeframe,
    aligned to UTC) that brings the count under the bound, each the open of its first bar,
    the highest high, the lowest low and the close of its last bar."""
    if max_candles < 1:
        raise ValueError(f"max_candles must be at least 1, got {max_candles}")
    tf = timeframe_ms(series.timeframe)
    ts = np.asarray(series.ts, dtype=np.int64)
    o, h, lo, c = (np.asarray(a, dtype=np.float64)
                   for a in (series.open, series.high, series.low, series.close))
    n = len(ts)
    if n <= max_candles:
        return Candles(ts, tf, o, h, lo, c, np.ones(n, dtype=np.int64), n, tf)
    for width in _widths(tf):
        keys = ts // width
        first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        if len(first) <= max_candles:
            break
    last = np.r_[first[1:] - 1, n - 1]
    return Candles(keys[first] * width, width, o[first], np.maximum.reduceat(h, first),
                   np.minimum.reduceat(lo, first), c[last], np.diff(np.r_[first, n]), n, tf)


def _span(ms: int) -> str:
    """A duration as a timeframe would be written: 30m, 4h, 1d, 2w."""
    minutes = ms // 60_000
    for unit, size in (("w", 10080), ("d", 1440), ("h", 60)):
        if minutes >= size and minutes % size == 0:
            return f"{minutes // size}{unit}"
    return f"{minutes}m"


# --- page pieces ---------------------------------------------------------------------------------
def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cls(value: float | None) -> str:
    if value is None or math.isnan(value) or value == 0:
        return ""
    return "pos" if value > 0 else "neg"


def _table(headers: Sequence[str], rows: Sequence[Sequence[tuple[str, str] | str]],
           caption: str | None = None, cls: str = "") -> str:
    """An HTML table; a cell is text, or (text, css class). Text is escaped here."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            text, css = cell if isinstance(cell, tuple) else (cell, "")
            cells.append(f'<td class="{css}">{_e(text)}</td>' if css else f"<td>{_e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    return (f'<table class="{cls}">{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _signed_pct(v: float | None) -> tuple[str, str]:
    return fmt_pct(v, signed=True), _cls(v)


def _signed_num(v: float | None) -> tuple[str, str]:
    return fmt_num(v), _cls(v)


def _dur(ms: float | None) -> str:
    return "—" if ms is None else fmt_duration(int(ms))


def _cards(r: PerformanceReport) -> str:
    items = [("Return", *_signed_pct(r.total_return)), ("CAGR", *_signed_pct(r.cagr)),
             ("Sharpe", fmt_num(r.sharpe), ""), ("Sortino", fmt_num(r.sortino), ""),
             ("Max drawdown", fmt_pct(-r.max_drawdown), "neg" if r.max_drawdown else ""),
             ("Trades", f"{r.trades:,}", ""), ("Win rate", fmt_pct(r.win_rate, 1), ""),
             ("Profit factor", fmt_num(r.profit_factor), ""),
             ("Exposure", fmt_pct(r.exposure, 1), ""), ("Fees", fmt_num(r.fees_paid), "")]
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v {c}">{_e(v)}</div></div>'
        for k, v, c in items) + "</div>"


def _metrics_table(r: PerformanceReport) -> str:
    dd_end = "" if r.max_drawdown_recovered else ", not recovered"
    rows: list[list[tuple[str, str] | str]] = [
        ["Period", f"{fmt_ts(r.start_ts)} → {fmt_ts(r.end_ts)}"],
        ["Bars", f"{r.bars:,} × {r.timeframe}"],
        ["Initial equity", fmt_num(r.initial_equity)],
        ["Final equity", fmt_num(r.final_equity)],
        ["Total return", _signed_pct(r.total_return)],
        ["CAGR", _signed_pct(r.cagr)],
        ["Sharpe (annualized)", fmt_num(r.sharpe)],
        ["Sortino (annualized)", fmt_num(r.sortino)],
        ["Volatility (annualized)", fmt_pct(r.annual_volatility)],
        ["Max drawdown", (fmt_pct(-r.max_drawdown), "neg" if r.max_drawdown else "")],
        ["Max drawdown peak → trough",
         f"{fmt_ts(r.max_drawdown_peak_ts)} → {fmt_ts(r.max_drawdown_trough_ts)}"],
        ["Max drawdown duration", fmt_duration(r.max_drawdown_duration_ms) + dd_end],
        ["Trades", f"{r.trades:,}"],
        ["Win rate", fmt_pct(r.win_rate, 1)],
        ["Profit factor", fmt_num(r.profit_factor)],
        ["Average trade", _signed_num(r.avg_trade)],
        ["Gross profit / loss", f"{fmt_num(r.gross_profit)} / {fmt_num(r.gross_loss)}"],
        ["Exposure", fmt_pct(r.exposure, 1)],
        ["Fees paid", fmt_num(r.fees_paid)],
        ["Funding paid", fmt_num(r.funding_paid)],
    ]
    return _table(["Metric", "Value"], rows, cls="kv")


def _pairs_table(pairs: Sequence[PairResult], basket: float | None) -> str:
    rows: list[list[tuple[str, str] | str]] = [
        [p.symbol, f"{p.trades:,}", fmt_pct(p.win_rate, 1), _signed_num(p.net_pnl),
         _signed_pct(p.buy_and_hold), fmt_pct(p.exposure, 1), fmt_num(p.fees),
         fmt_num(p.funding), f"{p.bars:,}"] for p in pairs]
    caption = None if basket is None else \
        f"Buy & hold of the basket (equal weights): {fmt_pct(basket, signed=True)}"
    return _table(["Symbol", "Trades", "Win rate", "Net PnL", "Buy & hold", "Exposure", "Fees",
                   "Funding", "Bars"], rows, caption=caption)


def _heat(ret: float, scale: float) -> str:
    """A cell's background: green for gains, red for losses, stronger for larger ones."""
    a = 0.12 + 0.6 * min(1.0, abs(ret) / scale) if scale > 0 else 0.12
    rgb = "26,152,80" if ret > 0 else "215,48,39" if ret < 0 else "150,150,150"
    return f"background:rgba({rgb},{a:.2f})"


def _monthly_table(equity_ts: npt.NDArray[np.int64], equity: npt.NDArray[np.float64]) -> str:
    months = monthly_returns(equity_ts, equity)
    years = {y.year: y for y in yearly_returns(equity_ts, equity)}
    if not months:
        return "<p>No equity curve.</p>"
    scale = max(abs(m.ret) for m in months) or 1.0
    by = {(m.year, m.month): m.ret for m in months}
    head = "".join(f"<th>{m}</th>" for m in (*_MONTHS, "Year"))
    rows = []
    for year in sorted(years):
        cells = []
        for month in range(1, 13):
            ret = by.get((year, month))
            cells.append("<td></td>" if ret is None else
                         f'<td style="{_heat(ret, scale)}">{_e(fmt_pct(ret, 1, signed=True))}'
                         "</td>")
        y = years[year].ret
        cells.append(f'<td class="{_cls(y)} year">{_e(fmt_pct(y, 1, signed=True))}</td>')
        rows.append(f"<tr><th>{year}</th>{''.join(cells)}</tr>")
    return (f'<table class="monthly"><thead><tr><th></th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
            '<p class="note">Each month: its last equity point over the last one before it '
            "(UTC calendar months; the first over the starting equity). Compounded they give "
            "the total return.</p>")


def _trade_rows(trades: Sequence[tuple[int, ClosedTrade]]) -> list[list[tuple[str, str] | str]]:
    return [[f"#{n}", t.symbol, "long" if t.side == Side.BUY else "short", fmt_ts(t.opened_ts),
             fmt_duration(t.closed_ts - t.opened_ts), f"{t.entry_price:,.8g}",
             f"{t.exit_price:,.8g}", _signed_num(t.net_pnl), t.exit_reason]
            for n, t in trades]


_TRADE_HEAD = ["Trade", "Symbol", "Side", "Opened", "Held", "Entry", "Exit", "Net PnL",
               "Exit reason"]


# --- the figures (plotly.js specs) ---------------------------------------------------------------
def _hover_trade(n: int, t: ClosedTrade) -> str:
    side = "long" if t.side == Side.BUY else "short"
    return (f"<b>#{n} {_e(t.symbol)} {side}</b><br>"
            f"entry {fmt_ts(t.opened_ts)} @ {t.entry_price:,.8g}<br>"
            f"exit {fmt_ts(t.closed_ts)} @ {t.exit_price:,.8g} ({_e(t.exit_reason)})<br>"
            f"qty {t.quantity:,.8g} · held {fmt_duration(t.closed_ts - t.opened_ts)}<br>"
            f"net {t.net_pnl:+,.2f} (fees {t.fees:,.2f}, funding {t.funding:,.2f})")


def _price_figure(data: ReportInput, numbered: list[tuple[int, ClosedTrade]],
                  candles: list[Candles]) -> dict[str, Any]:
    n_sym = len(data.series)
    # Panel heights in px, top to bottom: each symbol's candles, equity, drawdown.
    heights = [300] * n_sym + [220, 120]
    gap = 30
    total = sum(heights) + gap * (len(heights) - 1)
    layout: dict[str, Any] = {
        "height": total + 90, "margin": {"l": 70, "r": 20, "t": 30, "b": 40},
        "hovermode": "closest", "dragmode": "zoom", "showlegend": False,
        "paper_bgcolor": "#fff", "plot_bgcolor": "#fff",
        "xaxis": {"type": "date", "rangeslider": {"visible": False}, "showspikes": True,
                  "spikemode": "across", "spikethickness": 1, "spikedash": "dot",
                  "gridcolor": "#eee", "anchor": f"y{n_sym + 2}"},
        "shapes": [], "annotations": [],
    }
    traces: list[dict[str, Any]] = []
    top = 1.0
    names = []
    for i, h in enumerate(heights):
        frac = h / total
        lo = max(0.0, top - frac)
        name = "y" if i == 0 else f"y{i + 1}"
        names.append(name)
        axis: dict[str, Any] = {"domain": [round(lo, 5), round(top, 5)], "gridcolor": "#eee",
                                "anchor": "x", "fixedrange": False}
        if i < n_sym:
            axis["title"] = {"text": _e(data.series[i].symbol)}
        elif i == n_sym:
            axis["title"] = {"text": "Equity"}
            axis["tickformat"] = ",.0f"
        else:
            axis["title"] = {"text": "Drawdown %"}
            axis["ticksuffix"] = "%"
        layout["yaxis" if i == 0 else f"yaxis{i + 1}"] = axis
        top = lo - gap / total

    for i, (s, cd) in enumerate(zip(data.series, candles, strict=True)):
        y = names[i]
        if cd.resampled:
            x = cd.start + cd.width_ms // 2  # centred on its span, where its trades fall
            label = [f"{fmt_ts(int(a))} + {_span(cd.width_ms)} ({int(b)} bars)"
                     for a, b in zip(cd.start, cd.bars, strict=True)]
        else:
            x = cd.start  # a bar at its open time, where fills at its open are marked
            label = [fmt_ts(int(a)) for a in cd.start]
        traces.append({"type": "candlestick", "name": s.symbol, "xaxis": "x", "yaxis": y,
                       "x": x.tolist(), "open": cd.open.tolist(), "high": cd.high.tolist(),
                       "low": cd.low.tolist(), "close": cd.close.tolist(), "text": label,
                       "hoverinfo": "y+text", "uid": f"candles-{s.symbol}",
                       "increasing": {"line": {"color": "#26a69a", "width": 1}},
                       "decreasing": {"line": {"color": "#ef5350", "width": 1}}})
        own = [(n, t) for n, t in numbered if t.symbol == s.symbol]
        path_x: list[int | None] = []
        path_y: list[float | None] = []
        for _, t in own:
            path_x += [t.opened_ts, t.closed_ts, None]
            path_y += [t.entry_price, t.exit_price, None]
        traces.append({"type": "scatter", "mode": "lines", "name": "trades", "xaxis": "x",
                       "yaxis": y, "x": path_x, "y": path_y, "hoverinfo": "skip",
                       "connectgaps": False, "uid": f"paths-{s.symbol}",
                       "line": {"color": "rgba(60,60,60,0.55)", "width": 1, "dash": "dot"}})
        hover = [_hover_trade(n, t) for n, t in own]
        long_ = [t.side == Side.BUY for _, t in own]
        traces.append({
            "type": "scatter", "mode": "markers", "name": "entries", "meta": "entries",
            "uid": f"entries-{s.symbol}", "xaxis": "x", "yaxis": y,
            "x": [t.opened_ts for _, t in own], "y": [t.entry_price for _, t in own],
            "text": hover, "hoverinfo": "text",
            "marker": {"size": 11, "line": {"width": 1, "color": "#fff"},
                       "symbol": ["triangle-up" if b else "triangle-down" for b in long_],
                       "color": ["#1f5fa8" if b else "#e67e22" for b in long_]}})
        traces.append({
            "type": "scatter", "mode": "markers", "name": "exits", "meta": "exits",
            "uid": f"exits-{s.symbol}", "xaxis": "x", "yaxis": y,
            "x": [t.closed_ts for _, t in own], "y": [t.exit_price for _, t in own],
            "text": hover, "hoverinfo": "text",
            "marker": {"size": 9, "symbol": "x",
                       "line": {"width": 1, "color": "#fff"},
                       "color": ["#1a9850" if t.net_pnl > 0 else "#d73027" for _, t in own]}})

    ts = np.asarray(data.equity_ts, dtype=np.int64)
    eq = np.asarray(data.equity, dtype=np.float64)
    dd = drawdown_pct(eq)
    ei, di = minmax_indices(eq, CURVE_POINTS), minmax_indices(dd, CURVE_POINTS)
    traces.append({"type": "scatter", "mode": "lines", "name": "equity", "xaxis": "x",
                   "yaxis": names[n_sym], "x": ts[ei].tolist(), "y": eq[ei].tolist(),
                   "uid": "equity", "line": {"color": "#1f5fa8", "width": 1.4},
                   "hovertemplate": "%{x|%Y-%m-%dT%H:%MZ}<br>equity %{y:,.2f}<extra></extra>"})
    traces.append({"type": "scatter", "mode": "lines", "name": "drawdown", "xaxis": "x",
                   "yaxis": names[n_sym + 1], "x": ts[di].tolist(),
                   "y": np.round(dd[di], 4).tolist(), "fill": "tozeroy", "uid": "drawdown",
                   "line": {"color": "#c0392b", "width": 0.8},
                   "fillcolor": "rgba(192,57,43,0.35)",
                   "hovertemplate": "%{x|%Y-%m-%dT%H:%MZ}<br>drawdown %{y:.2f}%<extra></extra>"})
    for a in data.state_changes:
        to = str(a.detail.get("to", "?"))
        reason = str(a.detail.get("reason", ""))
        layout["shapes"].append({"type": "line", "xref": "x", "yref": "paper", "x0": a.ts,
                                 "x1": a.ts, "y0": 0, "y1": 1,
                                 "line": {"color": "#7f3fbf", "width": 1.5, "dash": "dash"}})
        layout["annotations"].append({
            "x": a.ts, "xref": "x", "y": 1, "yref": "paper", "yanchor": "bottom",
            "text": f"<b>{_e(to)}</b>", "showarrow": False, "font": {"color": "#7f3fbf"},
            "hovertext": _e(f"{fmt_ts(a.ts)}: trading {to}: {reason}")})
    return {"data": traces, "layout": layout}


def _exits_figure(data: ReportInput) -> dict[str, Any] | None:
    stats = exit_reasons(data.trades)
    if not stats:
        return None
    return {"data": [{
        "type": "bar", "x": [s.reason for s in stats], "y": [s.trades for s in stats],
        "marker": {"color": ["#1a9850" if s.net_pnl > 0 else "#d73027" for s in stats]},
        "text": [f"{s.trades} ({s.share:.0%})" for s in stats], "textposition": "auto",
        "hovertext": [f"{_e(s.reason)}: {s.trades} trades, win rate {s.win_rate:.0%}<br>"
                      f"net {s.net_pnl:+,.2f} (avg {s.avg_pnl:+,.2f})" for s in stats],
        "hoverinfo": "text"}],
        "layout": {"height": 300, "margin": {"l": 50, "r": 20, "t": 20, "b": 60},
                   "yaxis": {"title": {"text": "trades"}, "gridcolor": "#eee"},
                   "paper_bgcolor": "#fff", "plot_bgcolor": "#fff"}}


def _durations_figure(data: ReportInput) -> dict[str, Any] | None:
    if not data.trades:
        return None
    hours = trade_durations(data.trades) / 3_600_000
    win = np.array([t.net_pnl > 0 for t in data.trades])
    st = duration_stats(data.trades)
    shapes, notes = [], []
    for what, ms, dash, y in (("mean", st.mean_ms, "dash", 1.0),
                              ("median", st.median_ms, "dot", 0.92)):
        if ms is None:
            continue
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": ms / 3_600_000,
                       "x1": ms / 3_600_000, "y0": 0, "y1": 1,
                       "line": {"color": "#333", "width": 1.2, "dash": dash}})
        notes.append({"x": ms / 3_600_000, "xref": "x", "y": y, "yref": "paper",
                      "xanchor": "left", "yanchor": "bottom", "showarrow": False,
                      "text": f"{what} {fmt_duration(int(ms))}"})
    hist = {"type": "histogram", "nbinsx": 40, "opacity": 0.85}
    return {"data": [
        {**hist, "name": "winners", "x": np.round(hours[win], 4).tolist(),
         "marker": {"color": "#1a9850"}},
        {**hist, "name": "losers", "x": np.round(hours[~win], 4).tolist(),
         "marker": {"color": "#d73027"}}],
        "layout": {"height": 300, "barmode": "stack", "shapes": shapes, "annotations": notes,
                   "margin": {"l": 50, "r": 20, "t": 30, "b": 50},
                   "xaxis": {"title": {"text": "hours held"}, "gridcolor": "#eee"},
                   "yaxis": {"title": {"text": "trades"}, "gridcolor": "#eee"},
                   "legend": {"orientation": "h", "x": 1, "xanchor": "right", "y": 1.15},
                   "paper_bgcolor": "#fff", "plot_bgcolor": "#fff"}}


# --- the page ------------------------------------------------------------------------------------
def _downsampling_note(data: ReportInput, candles: list[Candles]) -> str:
    parts = []
    for s, cd in zip(data.series, candles, strict=True):
        if cd.resampled:
            parts.append(f"{s.symbol}: {cd.source_bars:,} × {s.timeframe} bars shown as "
                         f"{len(cd.start):,} candles of {_span(cd.width_ms)} (each the OHLC "
                         "of its bars)")
        else:
            parts.append(f"{s.symbol}: all {cd.source_bars:,} × {s.timeframe} bars")
    n = len(data.equity)
    curve = (f"equity and drawdown: {n:,} points, drawn with each of {CURVE_POINTS // 2:,} "
             "buckets' lowest and highest" if n > CURVE_POINTS else
             f"equity and drawdown: all {n:,} points")
    text = "; ".join(parts) + "; " + curve + "."
    if any(cd.resampled for cd in candles):
        text += (" Markers are not resampled: each sits at its trade's exact time and price "
                 "(on a resampled candle, inside the candle's span). Zooming in does not "
                 "bring back single bars; a backtest on a shorter span does.")
    return text


def _page_css() -> str:
    return """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#f6f7f9}
header{background:#1d2733;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:20px}header .sub{color:#b8c4d0;font-size:13px}
main{padding:8px 28px 40px;max-width:1500px}
section{background:#fff;border:1px solid #e3e6ea;border-radius:6px;margin:16px 0;
padding:12px 18px}
h2{font-size:16px;margin:6px 0 10px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:8px 14px;
min-width:110px}
.card .k{font-size:12px;color:#667}.card .v{font-size:20px;font-weight:600}
table{border-collapse:collapse;font-size:13px;margin:6px 0 10px}
th,td{padding:4px 10px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f2f4f6;font-weight:600}td:first-child,th:first-child{text-align:left}
table.kv td:last-child{text-align:right}
caption{caption-side:bottom;text-align:left;color:#667;padding-top:4px}
.pos{color:#1a7f45}.neg{color:#c0392b}
table.monthly td{min-width:56px;text-align:center}table.monthly td.year{font-weight:600}
.row{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
.note{color:#667;font-size:12px;max-width:1100px}
.legend span{margin-right:16px;font-size:13px}
pre{background:#f6f7f9;padding:10px;overflow:auto;font-size:12px}
"""


_SCRIPT = """
(function(){
  var data = JSON.parse(document.getElementById('qt-data').textContent);
  var config = {responsive: true, displaylogo: false, scrollZoom: true, typesetMath: false,
                modeBarButtonsToRemove: ['select2d', 'lasso2d']};
  function ms(v){
    if (typeof v === 'number') return v;
    var m = String(v).match(
      /^(-?\\d+)-(\\d+)-(\\d+)(?:[ T](\\d+)(?::(\\d+))?(?::(\\d+))?(\\.\\d+)?)?/);
    if (!m) return NaN;
    return Date.UTC(+m[1], +m[2] - 1, +m[3], +(m[4] || 0), +(m[5] || 0), +(m[6] || 0),
                    Math.round(parseFloat(m[7] || '0') * 1000));
  }
  // The y axes follow a zoom of the shared time axis (plotly leaves them where they were).
  function fitY(gd, ev){
    var keys = Object.keys(ev);
    if (!keys.some(function(k){ return k.indexOf('xaxis') === 0; })) return;
    var update = {};
    if (ev['xaxis.autorange']) {
      Object.keys(gd.layout).forEach(function(k){
        if (k.indexOf('yaxis') === 0) update[k + '.autorange'] = true; });
      Plotly.relayout(gd, update); return;
    }
    var r = gd._fullLayout.xaxis.range, lo = ms(r[0]), hi = ms(r[1]), ext = {};
    gd.data.forEach(function(t){
      var ax = t.yaxis || 'y', xs = t.x || [], e = ext[ax] || [Infinity, -Infinity];
      var candle = t.type === 'candlestick';
      var los = candle ? t.low : t.y, his = candle ? t.high : t.y;
      for (var i = 0; i < xs.length; i++) {
        var x = xs[i]; if (x === null || x < lo || x > hi) continue;
        if (los[i] !== null && los[i] < e[0]) e[0] = los[i];
        if (his[i] !== null && his[i] > e[1]) e[1] = his[i];
      }
      if (t.fill === 'tozeroy') { e[1] = Math.max(e[1], 0); }
      ext[ax] = e;
    });
    Object.keys(ext).forEach(function(ax){
      var e = ext[ax]; if (!(e[0] <= e[1])) return;
      var pad = (e[1] - e[0]) * 0.06 || Math.abs(e[1]) * 0.01 || 1;
      update[(ax === 'y' ? 'yaxis' : 'yaxis' + ax.slice(1)) + '.range'] = [e[0] - pad, e[1] + pad];
    });
    Plotly.relayout(gd, update);
  }
  Object.keys(data.figures).forEach(function(id){
    var fig = data.figures[id], gd = document.getElementById(id);
    Plotly.newPlot(gd, fig.data, fig.layout, config).then(function(){
      if (id === 'qt-price') gd.on('plotly_relayout', function(ev){ fitY(gd, ev); });
      gd.setAttribute('data-rendered', 'true');
    });
  });
})();
"""


def plotly_js() -> str:
    """The minified plotly.js that the installed ``plotly`` package ships."""
    try:
        return (resources.files("plotly") / "package_data" / "plotly.min.js").read_text(
            encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise RuntimeError("the HTML report needs the plotly package (pip install plotly), "
                           f"which ships plotly.js: {exc}") from exc


def _script_json(value: Any) -> str:
    # Inside <script>, "</" could end the element: escape it (JSON allows "\/").
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def render_report(data: ReportInput) -> str:
    """The report page as one string."""
    r = data.report
    numbered = list(enumerate(data.trades, start=1))
    candles = [resample_ohlc(s) for s in data.series]
    figures: dict[str, Any] = {"qt-price": _price_figure(data, numbered, candles)}
    exits = _exits_figure(data)
    durations = _durations_figure(data)
    if exits is not None:
        figures["qt-exits"] = exits
    if durations is not None:
        figures["qt-durations"] = durations
    meta = data.meta
    symbols = ", ".join(s.symbol for s in data.series)
    sub = " · ".join(_e(x) for x in (
        f"run {meta.get('run_id', '—')}", f"{symbols} {r.timeframe}",
        f"{fmt_ts(r.start_ts)} → {fmt_ts(r.end_ts)}", f"signal source {meta.get('source', '—')}"))

    out = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(data.title)}</title><style>{_page_css()}</style>",
        f"<script>{plotly_js()}</script></head><body>",
        f"<header><h1>{_e(data.title)}</h1><div class=\"sub\">{sub}</div></header><main>",
        _cards(r),
        '<section id="price"><h2>Price, trades, equity and drawdown</h2>',
        '<div class="legend"><span style="color:#1f5fa8">▲ long entry</span>'
        '<span style="color:#e67e22">▼ short entry</span>'
        '<span style="color:#1a9850">✕ exit, won</span>'
        '<span style="color:#d73027">✕ exit, lost</span>'
        '<span style="color:#7f3fbf">┆ trading state changed</span>'
        "<span>drag to zoom · double-click to reset · hover for details</span></div>",
        '<div id="qt-price" class="plot"></div>',
        f'<p class="note" id="downsampling">{_e(_downsampling_note(data, candles))}</p>',
        "</section>",
        '<section id="performance"><h2>Performance</h2><div class="row">',
        f"<div>{_metrics_table(r)}</div>",
    ]
    if data.pairs:
        out.append(f"<div><h2>Per pair</h2>{_pairs_table(data.pairs, data.basket_buy_and_hold)}"
                   "</div>")
    out.append("</div></section>")
    out.append(f'<section id="monthly"><h2>Monthly returns</h2>'
               f"{_monthly_table(data.equity_ts, data.equity)}</section>")
    out.append(_trades_sections(data, numbered))
    out.append(_halts_section(data))
    out.append(_run_section(data))
    out.append(f'</main><script type="application/json" id="qt-data">'
               f'{_script_json({"figures": figures})}</script>')
    out.append(f"<script>{_SCRIPT}</script></body></html>\n")
    return "\n".join(out)


def _trades_sections(data: ReportInput, numbered: list[tuple[int, ClosedTrade]]) -> str:
    if not data.trades:
        return '<section id="exits"><h2>Trades</h2><p>No trades were closed.</p></section>'
    reasons = exit_reasons(data.trades)
    rows: list[list[tuple[str, str] | str]] = [
        [s.reason, f"{s.trades:,}", fmt_pct(s.share, 1), fmt_pct(s.win_rate, 1),
         _signed_num(s.net_pnl), _signed_num(s.avg_pnl)] for s in reasons]
    st = duration_stats(data.trades)
    dur_rows: list[list[tuple[str, str] | str]] = [
        ["Average", _dur(st.mean_ms)], ["Median", _dur(st.median_ms)],
        ["Shortest", _dur(st.min_ms)], ["Longest", _dur(st.max_ms)],
        ["Average, winners", _dur(st.mean_win_ms)], ["Average, losers", _dur(st.mean_loss_ms)]]
    index = {id(t): n for n, t in numbered}
    best, worst = best_and_worst(data.trades, BEST_WORST)
    return "".join([
        '<section id="exits"><h2>Exits by reason</h2><div class="row">',
        _table(["Exit reason", "Trades", "Share", "Win rate", "Net PnL", "Average"], rows),
        '<div id="qt-exits" class="plot" style="flex:1;min-width:420px"></div></div></section>',
        '<section id="durations"><h2>How long trades were held</h2><div class="row">',
        _table(["Held", ""], dur_rows, cls="kv"),
        '<div id="qt-durations" class="plot" style="flex:1;min-width:420px"></div>',
        "</div></section>",
        f'<section id="best-worst"><h2>Best {len(best)} trades</h2>',
        _table(_TRADE_HEAD, _trade_rows([(index[id(t)], t) for t in best])),
        f"<h2>Worst {len(worst)} trades</h2>",
        _table(_TRADE_HEAD, _trade_rows([(index[id(t)], t) for t in worst])),
        '<p class="note">Trade numbers are their order of closing, as in result.json\'s '
        "trades and the chart's hover.</p></section>",
    ])


def _halts_section(data: ReportInput) -> str:
    rows: list[list[tuple[str, str] | str]] = [
        [fmt_ts(a.ts), str(a.detail.get("from", "")), str(a.detail.get("to", "")),
         str(a.detail.get("reason", ""))] for a in data.state_changes]
    body = _table(["Time", "From", "To", "Reason"], rows) if rows else \
        "<p>Trading stayed ACTIVE throughout: no limit was breached.</p>"
    rej = ", ".join(f"{k} {v:,}" for k, v in sorted(data.rejections.items()))
    extra = f'<p class="note">Risk rejections: {_e(rej)}.</p>' if rej else ""
    return f'<section id="halts"><h2>Trading state</h2>{body}{extra}</section>'


def _run_section(data: ReportInput) -> str:
    meta = data.meta
    code = meta.get("code") or {}
    fp = meta.get("data") or {}
    rows: list[list[tuple[str, str] | str]] = [
        ["Run id", str(meta.get("run_id", "—"))],
        ["Signal source", str(meta.get("source", "—"))],
        ["Code", f"quantum-trader {code.get('quantum_trader') or '?'}"
                 + (f", commit {code['git_commit'][:12]}" if code.get("git_commit") else "")],
        ["Data fingerprint", str(fp.get("sha256", "—"))[:16]],
    ]
    for s in fp.get("series", []):
        rows.append([f"  {s.get('symbol')}", f"{s.get('bars', 0):,} × {s.get('timeframe')} "
                                             f"bars, sha256 {str(s.get('sha256', ''))[:16]}"])
    config = meta.get("config")
    cfg = (f"<details><summary>Config</summary><pre>{_e(json.dumps(config, indent=2))}</pre>"
           "</details>") if config else ""
    return f'<section id="run"><h2>Run</h2>{_table(["", ""], rows, cls="kv")}{cfg}</section>'


def write_report_html(path: Path, data: ReportInput) -> Path:
    """Write the report to ``path`` (``.html``)."""
    if not len(data.series):
        raise ValueError("a report needs the bars of at least one symbol")
    text = render_report(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
