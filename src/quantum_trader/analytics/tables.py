"""``rich`` tables for the performance report and the trade list (the CLI prints them).

``FittedTable`` is the CLI's table: it never truncates a figure. In a narrow terminal it hides its
least important columns (and says which), and when even its essential columns do not fit it
prints one ``header: value`` block per row instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, JustifyMethod, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from quantum_trader.analytics.performance import PairResult, PerformanceReport
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


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # every time we print: ISO 8601 UTC, one word (never wraps)


def fmt_time(ts_s: float | None) -> str:
    """A time in seconds since the epoch, as every table and message prints one."""
    return "-" if ts_s is None else datetime.fromtimestamp(ts_s, tz=UTC).strftime(TIME_FORMAT)


def fmt_ts(ms: int | None) -> str:
    """A time in epoch milliseconds (bars, orders, trades), in the same format."""
    return fmt_time(None if ms is None else ms / 1000)


def fmt_duration(ms: int) -> str:
    minutes = ms // 60_000
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {mins}m" if hours else f"{mins}m"


def _signed(value: float, text: str) -> Text:
    return Text(text, style="green" if value > 0 else "red" if value < 0 else "")


Cell = str | Text  # a str is console markup, as in a rich Table


@dataclass(frozen=True)
class FitColumn:
    """A ``FittedTable`` column.

    ``priority``: lower is more important; the columns sharing the lowest value are essential
    (rather than hide one of them the table goes vertical). ``wrap``: free text that may wrap at
    spaces, never inside a word, so a figure in it stays whole; a column of figures must not wrap.
    ``wrap_min``: how narrow a wrapping column may be squeezed before columns are hidden.
    """

    header: str
    justify: JustifyMethod = "left"
    priority: int = 0
    wrap: bool = False
    wrap_min: int = 16


# What a column costs besides its content in the Table we render (HEAVY_HEAD box, edges shown,
# padding (0, 1)): one space each side and one rule; the left edge is one more rule.
_PER_COLUMN = 3
_EDGE = 1


@dataclass(frozen=True)
class _Fit:
    widest: int  # widest body cell (the least a figure column may be)
    natural: int  # unwrapped width, header included
    minimum: int  # narrowest without cutting a figure or a word


@dataclass(frozen=True)
class _Layout:
    widths: dict[int, int]  # kept column index -> content width
    hidden: list[int]


def _width(text: Text) -> int:
    return max((cell_len(line) for line in text.plain.split("\n")), default=0)


def _longest_word(text: Text) -> int:
    return max((cell_len(word) for word in text.plain.split()), default=0)


class FittedTable:
    """A rich renderable table that never truncates a figure, whatever the console width.

    At render time it measures every cell and hides the least important columns until the rest
    fit (a caption names them); non-wrapping columns get ``no_wrap`` and at least their widest
    cell as width. If not even the essential columns fit it prints one ``header: value`` block
    per row, where long values wrap but nothing is cut.
    """

    def __init__(self, columns: Sequence[FitColumn], rows: Iterable[Sequence[Cell]] = (), *,
                 title: str | None = None, caption: str | None = None,
                 header_style: str = "bold",
                 hidden_hint: str | None = "widen the terminal or use --json") -> None:
        if not columns:
            raise ValueError("a FittedTable needs at least one column")
        self.columns = list(columns)
        self.rows: list[list[Cell]] = []
        self.title = title
        self.caption = caption
        self.header_style = header_style
        self.hidden_hint = hidden_hint
        for row in rows:
            self.add_row(*row)

    def add_row(self, *cells: Cell) -> None:
        if len(cells) > len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([*cells, *[""] * (len(self.columns) - len(cells))])

    def _texts(self, console: Console) -> list[list[Text]]:
        return [[c if isinstance(c, Text) else console.render_str(c, highlight=False) for c in row]
                for row in self.rows]

    def _fits(self, rows: list[list[Text]]) -> list[_Fit]:
        fits = []
        for i, col in enumerate(self.columns):
            header = Text(col.header)
            cells = [row[i] for row in rows]
            widest = max((_width(c) for c in cells), default=0)
            natural = max(header.cell_len, widest)
            if col.wrap:
                words = max([_longest_word(header), *(_longest_word(c) for c in cells)])
                minimum = max(min(natural, col.wrap_min), words)
            else:
                # A header may wrap at its spaces; its words and every cell stay whole.
                minimum = max(widest, _longest_word(header))
            fits.append(_Fit(widest, natural, max(1, minimum)))
        return fits

    def _by_importance(self) -> list[int]:
        return sorted(range(len(self.columns)), key=lambda i: (self.columns[i].priority, i))

    def _essential(self) -> list[int]:
        top = min(c.priority for c in self.columns)
        return [i for i, c in enumerate(self.columns) if c.priority == top]

    @staticmethod
    def _cost(fits: list[_Fit], kept: Sequence[int]) -> int:
        return sum(fits[i].minimum + _PER_COLUMN for i in kept) + _EDGE

    def _layout(self, fits: list[_Fit], max_width: int) -> _Layout | None:
        """Column widths for ``max_width``, or None when only the vertical layout fits."""
        kept = self._by_importance()
        essential = len(self._essential())
        while len(kept) > essential and self._cost(fits, kept) > max_width:
            kept.pop()
        spare = max_width - self._cost(fits, kept)
        if spare < 0:
            return None
        widths = {i: fits[i].minimum for i in kept}
        # Spare width goes to wrapped text first (it saves a line on every row it unwraps), then
        # to headers wrapped to their longest word (that saves a line once).
        for wrapping in (True, False):
            for i in (i for i in kept if self.columns[i].wrap is wrapping):
                grow = min(spare, fits[i].natural - widths[i])
                widths[i] += grow
                spare -= grow
        return _Layout(widths, sorted(set(range(len(self.columns))) - set(kept)))

    def _table(self, console: Console, rows: list[list[Text]], fits: list[_Fit],
               layout: _Layout) -> RenderResult:
        title = console.render_str(self.title, style="table.title", highlight=False) \
            if self.title else None
        captions = [console.render_str(self.caption, style="table.caption", highlight=False)] \
            if self.caption else []
        if layout.hidden:
            hidden = "hidden: " + ", ".join(self.columns[i].header for i in layout.hidden)
            hint = f" — {self.hidden_hint}" if self.hidden_hint else ""
            captions.append(Text(hidden + hint, style="table.caption"))
        caption = Text("\n").join(captions) if captions else None
        # Rich wraps title and caption to the table's width, folding a longer word; one that
        # would fold (a column name, a version) is printed outside at the console's width.
        width = sum(layout.widths.values()) + _PER_COLUMN * len(layout.widths) + _EDGE
        title_outside = title is not None and _longest_word(title) > width
        caption_outside = caption is not None and _longest_word(caption) > width
        table = Table(title=None if title_outside else title,
                      caption=None if caption_outside else caption,
                      header_style=self.header_style, box=box.HEAVY_HEAD, show_edge=True,
                      padding=(0, 1), expand=False)
        kept = sorted(layout.widths)
        for i in kept:
            col = self.columns[i]
            # overflow="fold": should a width ever be short, characters move, none become "…".
            table.add_column(Text(col.header, no_wrap=False, overflow="fold"),
                             justify=col.justify, width=layout.widths[i], no_wrap=not col.wrap,
                             min_width=None if col.wrap else fits[i].widest, overflow="fold")
        for row in rows:
            table.add_row(*(row[i] for i in kept))
        if title is not None and title_outside:
            yield title
        yield table
        if caption is not None and caption_outside:
            yield caption

    def _vertical(self, console: Console, rows: list[list[Text]]) -> RenderResult:
        # Blank lines set off the title, each block and the end, where box rules would have.
        if self.title:
            yield console.render_str(self.title, style="table.title", highlight=False)
            yield Text("")
        for row in rows:
            for col, cell in zip(self.columns, row, strict=True):
                # "default": wrap without padding each line out to the console width.
                yield Text.assemble((f"{col.header}:", self.header_style), " ", cell,
                                    justify="default", overflow="fold", no_wrap=False)
            yield Text("")
        if self.caption:
            yield console.render_str(self.caption, style="table.caption", highlight=False)
            yield Text("")

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        rows = self._texts(console)
        fits = self._fits(rows)
        layout = self._layout(fits, options.max_width)
        if layout is None:
            yield from self._vertical(console, rows)
        else:
            yield from self._table(console, rows, fits, layout)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        fits = self._fits(self._texts(console))
        every = range(len(self.columns))
        natural = sum(fits[i].natural + _PER_COLUMN for i in every) + _EDGE
        return Measurement(min(self._cost(fits, self._essential()), natural), natural)


def report_table(report: PerformanceReport, title: str = "Performance") -> FittedTable:
    # Value may wrap: its figures are single words, and only the Period line is long enough.
    table = FittedTable([FitColumn("Metric"), FitColumn("Value", "right", wrap=True)],
                        title=title)
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


# Which trade it was and what it made come first; when and what it cost can be hidden.
_TRADE_COLUMNS = (
    FitColumn("Symbol"), FitColumn("Side"), FitColumn("Qty", "right"),
    FitColumn("Entry", "right"), FitColumn("Exit", "right"),
    FitColumn("Opened", priority=2), FitColumn("Closed", priority=1),
    FitColumn("Net PnL", "right"), FitColumn("Fees", "right", priority=3),
    FitColumn("Funding", "right", priority=4), FitColumn("Exit reason", priority=5, wrap=True),
)


def trades_table(trades: Sequence[ClosedTrade], limit: int | None = None,
                 title: str = "Trades") -> FittedTable:
    """One row per trade; with ``limit`` only the most recent ``limit`` trades are shown."""
    shown = list(trades) if limit is None else list(trades)[-limit:] if limit > 0 else []
    caption = f"last {len(shown)} of {len(trades)} trades" if len(shown) < len(trades) else None
    table = FittedTable(_TRADE_COLUMNS, title=title, caption=caption)
    for t in shown:
        # Text, not str: a symbol or an exit reason is data, not console markup.
        table.add_row(
            Text(t.symbol), str(t.side), f"{t.quantity:,.8g}", f"{t.entry_price:,.8g}",
            f"{t.exit_price:,.8g}", fmt_ts(t.opened_ts), fmt_ts(t.closed_ts),
            _signed(t.net_pnl, fmt_num(t.net_pnl)), fmt_num(t.fees), fmt_num(t.funding),
            Text(t.exit_reason),
        )
    return table


def pairs_table(pairs: Sequence[PairResult], basket: float | None,
                title: str = "Per pair") -> FittedTable:
    """A portfolio run's symbols side by side, and holding each (and the basket) instead."""
    table = FittedTable([
        FitColumn("Symbol"), FitColumn("Trades", "right"), FitColumn("Win rate", "right"),
        FitColumn("Net PnL", "right"), FitColumn("Buy & hold", "right"),
        FitColumn("Exposure", "right", priority=1), FitColumn("Fees", "right", priority=2),
        FitColumn("Funding", "right", priority=2), FitColumn("Bars", "right", priority=3)],
        title=title, caption=None if basket is None else
        f"buy & hold of the basket (equal weights): {fmt_pct(basket, signed=True)}")
    for p in pairs:
        table.add_row(p.symbol, f"{p.trades:,}", fmt_pct(p.win_rate, 1),
                      _signed(p.net_pnl, fmt_num(p.net_pnl)),
                      _signed(p.buy_and_hold, fmt_pct(p.buy_and_hold, signed=True)),
                      fmt_pct(p.exposure, 1), fmt_num(p.fees), fmt_num(p.funding),
                      f"{p.bars:,}")
    return table
