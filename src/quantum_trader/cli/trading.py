"""``backtest``, ``run`` (embedded paper trading) and ``trades``."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from quantum_trader.analytics.tables import FitColumn, FittedTable
from quantum_trader.cli.common import (
    ConfigOpt,
    DataOpt,
    JsonOpt,
    StateDirOpt,
    UserError,
    check_writable_dir,
    check_writable_file,
    console,
    err,
    fmt_ts,
    progress_bar,
    settings,
    state_overrides,
    stdout_json,
)
from quantum_trader.config import Settings

CHART_SUFFIXES = (".png", ".html")


def load_series(specs: list[str], timeframe: str | None) -> list[Any]:
    """The bars of every ``--data``; a symbol we know no exchange filters for is named, since
    its sizes and prices are then rounded to generic steps."""
    from quantum_trader.domain.instruments import DEFAULT_INSTRUMENTS, Instrument
    from quantum_trader.marketdata.sample import resolve_source

    series = [resolve_source(spec, timeframe=timeframe) for spec in specs]
    for spec, s in zip(specs, series, strict=True):
        if s.symbol not in DEFAULT_INSTRUMENTS:
            g = Instrument(s.symbol)
            err.print(f"[yellow]note:[/] {escape(spec)}: no exchange filters known for "
                      f"{escape(s.symbol)}; using generic ones (tick {g.tick_size:g}, step "
                      f"{g.step_size:g}, min notional {g.min_notional:g}). If the bars are "
                      f"another symbol's, say which: {escape(spec)}@SYMBOL", soft_wrap=True)
    return series


def signal_source(cfg: Settings, quiet: bool = False) -> Any:
    """The configured signal source; says which on stderr."""
    from quantum_trader.ai.production import choose_signal_source

    source, why = choose_signal_source(cfg)
    if not quiet:
        err.print(f"signal source: {why}")
    return source


def trade_dict(t: Any) -> dict[str, Any]:
    return {"symbol": t.symbol, "side": t.side.value, "quantity": t.quantity,
            "entry_price": t.entry_price, "exit_price": t.exit_price,
            "opened": fmt_ts(t.opened_ts), "closed": fmt_ts(t.closed_ts),
            "net_pnl": round(t.net_pnl, 6), "fees": round(t.fees, 6),
            "funding": round(t.funding, 6), "exit_reason": t.exit_reason}


def backtest(
    data: DataOpt = None,
    timeframe: Annotated[str | None, typer.Option(
        help="Timeframe of FILE data (inferred if omitted; refused if the bars are not)")] = None,
    config: ConfigOpt = None,
    chart: Annotated[Path | None, typer.Option(
        help="Equity/drawdown chart (.png or .html); default reports/backtest-<data>.png")
    ] = None,
    as_json: JsonOpt = False,
    trades_shown: Annotated[int, typer.Option("--trades", min=0, help="Trades to list")] = 20,
) -> None:
    """Backtest on historical bars: simulated clock, simulated exchange, full risk gate."""
    from quantum_trader.analytics.charts import write_equity_chart
    from quantum_trader.analytics.tables import pairs_table, report_table, trades_table
    from quantum_trader.cli.live import replay_note
    from quantum_trader.runtime.backtest import run_backtest

    cfg = settings(config)
    replay_note(cfg, "a backtest")
    if chart is not None:
        check_writable_file(chart, "--chart", CHART_SUFFIXES)
    else:
        check_writable_dir(cfg.paths.reports_dir, "reports directory (paths.reports_dir)")
    series = load_series(data or [cfg.data.source], timeframe)
    name = "-".join(s.symbol for s in series)
    chart_path = chart or cfg.paths.reports_dir / f"backtest-{name}.png"
    total = sum(len(s) for s in series)
    source = signal_source(cfg, quiet=as_json)
    if as_json:
        result = run_backtest(series, cfg, source)
    else:
        with progress_bar() as prog:
            task = prog.add_task("backtest", total=total, rate="")
            result = run_backtest(series, cfg, source,
                                  progress=lambda n: prog.update(task, advance=n))
    chart_path.parent.mkdir(parents=True, exist_ok=True)
    changes = [(a.ts, f"{a.detail.get('to')}: {a.detail.get('reason')}")
               for a in result.state_changes]
    write_equity_chart(chart_path, result.equity_ts, result.equity,
                       f"{result.source} on {name} {result.timeframe}", marks=changes)
    if as_json:
        stdout_json(json.dumps({
            "source": result.source, "symbols": result.symbols, "timeframe": result.timeframe,
            "bars": result.bars, "elapsed_s": round(result.elapsed_s, 4),
            "bars_per_second": round(result.bars_per_second), "orders": result.orders,
            "signals": result.signals, "rejections": result.rejections,
            "chart": str(chart_path), "report": result.report.to_dict(),
            "pairs": [p.to_dict() for p in result.pairs],
            "basket_buy_and_hold": result.basket_buy_and_hold,
            "state_changes": [{"time": fmt_ts(a.ts), **a.detail} for a in result.state_changes],
            "trades": [trade_dict(t) for t in result.trades]}, indent=2))
        return
    console.print(report_table(result.report, title=f"Backtest — {result.source} on {name} "
                                                     f"{result.timeframe}"))
    if len(result.pairs) > 1:
        console.print(pairs_table(result.pairs, result.basket_buy_and_hold))
    console.print(trades_table(result.trades[-trades_shown:] if trades_shown else [],
                               title=f"Last {min(trades_shown, len(result.trades))} of "
                                     f"{len(result.trades)} trades"))
    if result.rejections:
        console.print("Risk rejections: " + ", ".join(
            f"{k}={v}" for k, v in sorted(result.rejections.items())))
    for when, what in changes:
        err.print(f"[yellow]trading {escape(what)}[/] at {fmt_ts(when)}: the risk gate "
                  "refused new entries from then on (the chart marks it; the limits are "
                  "under risk: in the config)", soft_wrap=True)
    console.print(f"{result.bars:,} bars in {result.elapsed_s:.2f}s "
                  f"({result.bars_per_second:,.0f} bars/s). Chart: {chart_path}")


def _set_aside(db: Path) -> Path | None:
    """``--fresh``: move the embedded store (and its WAL files) into ``backups/`` beside it,
    so starting over never destroys an account."""
    if not db.exists():
        return None
    dest = db.parent / "backups" / f"{db.stem}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    dest.mkdir(parents=True, exist_ok=True)
    for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if p.exists():
            shutil.move(p, dest / p.name)
    return dest


@contextmanager
def _one_run(state: Path) -> Iterator[None]:
    """Hold the state directory for the whole run; a second run is told who holds it."""
    from quantum_trader.runtime.state_lock import StateDirInUse, StateDirLock

    try:
        with StateDirLock(state):  # only entering can raise StateDirInUse
            yield
    except StateDirInUse as exc:
        raise UserError(f"{exc}: wait for it to finish, stop it, or use --state-dir") from None


def run(
    data: DataOpt = None,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    max_bars: Annotated[int | None, typer.Option(min=1, help="Stop after this many bars")]
        = None,
    speed: Annotated[float | None, typer.Option(
        help="Bars per second, > 0 (default: as fast as possible)")] = None,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Start a new account: the old store is moved to <state_dir>/backups "
                        "first")] = False,
    live: Annotated[bool, typer.Option(
        "--live", help="Dry run on the venue's live closed klines (exchange.kind, "
                       "exchange.base_url): fills simulated locally, no order ever sent")]
        = False,
    symbol: Annotated[list[str] | None, typer.Option(
        "--symbol", metavar="SYMBOL",
        help="With --live: a symbol to trade; repeat for more (default exchange.symbols)")]
        = None,
    duration: Annotated[float | None, typer.Option(
        help="With --live: stop after this many seconds (default: until Ctrl-C)")] = None,
) -> None:
    """Paper trading on real historical bars, embedded: one process, in-memory bus, SQLite.
    Re-running on the same data resumes where the last run stopped. With --live: a dry run
    on the venue's market data until Ctrl-C / SIGTERM."""
    from quantum_trader.cli.live import replay_note, run_live

    if live:
        run_live(config, state_dir, data, speed, max_bars, fresh, symbol, duration)
        return
    if symbol or duration is not None:
        raise UserError(f"{'--symbol' if symbol else '--duration'} goes with --live (a replay "
                        "trades the --data it is given, to its end or --max-bars)")
    from quantum_trader.runtime.paper import (
        DifferentRun,
        RunIdentity,
        check_identity,
        run_paper,
        stored_identity,
    )
    from quantum_trader.store.sql import SqlTradeStore

    if speed is not None and speed <= 0:
        raise UserError(f"--speed {speed:g}: must be more than 0 bars per second")
    cfg = settings(config, state_overrides(state_dir))
    replay_note(cfg, "run without --live")
    state = cfg.paths.state_dir
    check_writable_dir(state, "state directory" if state_dir is None else "--state-dir")
    db = cfg.sqlite_path()
    if fresh and db is None:
        raise UserError("--fresh resets only the embedded SQLite store; this config uses "
                        "store.url (drop that database yourself, or unset store.url)")
    specs = data or [cfg.data.source]
    series = load_series(specs, None)
    identity = RunIdentity.of(specs, series)
    with _one_run(state):
        if fresh and db is not None and (moved := _set_aside(db)) is not None:
            err.print(f"previous store moved to {moved}")
        url = cfg.store_url()

        async def go() -> Any:
            store = SqlTradeStore(url, create=True)
            await store.open()
            try:
                # Before anything is said or written: is this store this data's?
                check_identity(await stored_identity(store), identity)
                source = signal_source(cfg)
                with progress_bar() as prog:
                    task = prog.add_task("paper trading", total=None, rate="")
                    summary = await run_paper(cfg, series, store, source,
                                              progress=lambda n: prog.update(task, advance=n),
                                              max_bars=max_bars, bars_per_second=speed,
                                              identity=identity)
                    prog.update(task, total=summary.bars_processed + summary.bars_skipped)
                counts = await store.counts()
                state_events = await store.audit("trading_state")
            finally:
                await store.close()
            return summary, counts, state_events

        try:
            summary, counts, state_events = asyncio.run(go())
        except DifferentRun as exc:
            raise UserError(f"{exc}: resuming would continue that account on other bars. "
                            "Use --fresh to start a new account (the old store is kept in "
                            "backups/) or --state-dir for a separate one") from None
    table = FittedTable([FitColumn("what"), FitColumn("value", "right", wrap=True)],
                        title="Paper trading — summary")
    table.add_row("store", url.split("///")[-1])
    table.add_row("data", identity.describe())
    table.add_row("resumed from checkpoint", "yes" if summary.resumed else "no")
    table.add_row("bars processed", f"{summary.bars_processed:,}")
    table.add_row("signals", f"{summary.signals:,}")
    table.add_row("trades closed (this run)", f"{summary.trades_closed:,}")
    table.add_row("open positions", ", ".join(
        f"{p.symbol} {p.qty:+g} @ {p.avg_entry:.5g}" for p in summary.open_positions) or "none")
    table.add_row("equity", f"{summary.equity:,.2f}")
    table.add_row("max drawdown", f"{summary.max_drawdown:.2%}")
    last_change = state_events[-1] if state_events else None
    table.add_row("trading state", summary.trading_state if last_change is None else
                  f"{summary.trading_state} since {fmt_ts(last_change.ts)}: "
                  f"{last_change.detail.get('reason', '?')}")
    table.add_row("risk rejections", ", ".join(
        f"{k}={v}" for k, v in sorted(summary.rejections.items())) or "none")
    table.add_row("rows in store", ", ".join(f"{k}={v}" for k, v in counts.items()))
    console.print(table)
    if summary.trading_state != "ACTIVE":
        err.print(f"[yellow]trading is {summary.trading_state}[/]: the risk gate refuses new "
                  "entries in this account. Start a new one with --fresh, or see "
                  "docs/runbook.md, TradingHalted.")


def trades(
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="How many (newest first)")] = 50,
    symbol: Annotated[str | None, typer.Option(help="Only this symbol")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List closed trades from the store (reads only; never creates one)."""
    from quantum_trader.analytics.tables import trades_table
    from quantum_trader.store.sql import SqlTradeStore

    cfg = settings(config, state_overrides(state_dir))
    db = cfg.sqlite_path()
    if db is not None and not db.is_file():
        raise UserError(f"no store at {db}: nothing has run in this state directory yet "
                        "(run `quantum-trader run` first, or pass --state-dir)")

    async def go() -> Any:
        store = SqlTradeStore(cfg.store_url())
        await store.open()
        try:
            return await store.trades(limit=limit, symbol=symbol)
        finally:
            await store.close()

    rows = asyncio.run(go())
    if as_json:
        stdout_json(json.dumps([trade_dict(t) for t in rows], indent=2))
        return
    console.print(trades_table(rows, title=f"{len(rows)} most recent trades"))


def register(app: typer.Typer) -> None:
    app.command()(backtest)
    app.command()(run)
    app.command()(trades)
