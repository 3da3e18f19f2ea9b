"""``backtest``, ``run`` (embedded paper trading) and ``trades``.

``backtest`` and ``run`` trade the configured signal source, or the plugin strategy that
``--strategy`` names with ``--param`` values (docs/strategies.md): the command line replaces
``strategy.path``, keeps ``strategy.params`` only for that same strategy, and its values win.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
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
    account_rows,
    check_writable_dir,
    check_writable_file,
    console,
    err,
    fmt_ts,
    holding_state_dir,
    progress_bar,
    say_if_halted,
    settings,
    state_overrides,
    stdout_json,
)
from quantum_trader.config import Settings

CHART_SUFFIXES = (".png", ".html")

StrategyOpt = Annotated[str | None, typer.Option(
    "--strategy", "-s", metavar="SPEC",
    help="Plugin strategy: FILE.py[:Class], package.module:Class or an installed NAME "
         "(default: strategy.path, else the configured source)")]
ParamOpt = Annotated[list[str] | None, typer.Option(
    "--param", "-p", metavar="NAME=VALUE",
    help="A plugin strategy's parameter value, checked against its declared range; repeat")]


@dataclass(frozen=True)
class SourceChoice:
    """The settings with the command line's strategy in them, and where each part came from
    (for the loader's error messages)."""

    settings: Settings
    origin: str = "strategy.path"
    param_origins: dict[str, str] = field(default_factory=dict)

    def param_origin(self, name: str) -> str:
        return self.param_origins.get(name, f"strategy.params.{name}")


def with_strategy(cfg: Settings, strategy: str | None, params: list[str] | None
                  ) -> SourceChoice:
    """``cfg`` with ``--strategy``/``--param`` applied (module docstring)."""
    if strategy is None and not params:
        return SourceChoice(cfg)
    if strategy is not None and not strategy.strip():
        raise UserError("--strategy: empty; give FILE.py[:Class], package.module:Class or an "
                        "installed strategy's name")
    s = cfg.strategy
    values: dict[str, Any] = dict(s.params) if strategy in (None, s.path) else {}
    origins: dict[str, str] = {}
    for item in params or []:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name:
            raise UserError(f"--param {item}: write NAME=VALUE, e.g. --param fast=10")
        if name in origins:
            raise UserError(f"--param {item}: {name} is given twice")
        values[name], origins[name] = value, f"--param {item}"
    path = strategy if strategy is not None else s.path
    if not path:
        raise UserError(f"--param {params[0] if params else ''}: there is no plugin strategy to "
                        "set it on: name one with --strategy (or strategy.path in the config; "
                        "the baseline's parameters are strategy.fast, strategy.slow, ...)")
    changed = s.model_copy(update={"path": path, "params": values, "kind": "auto"})
    return SourceChoice(cfg.model_copy(update={"strategy": changed}),
                        "--strategy" if strategy is not None else "strategy.path", origins)


TimeRangeOpt = Annotated[str | None, typer.Option(
    "--timerange", metavar="START-END",
    help="Only bars opened in [START, END): 20180101-20180630, 20180101-, -20180630, or "
         "2018-01-01..2018-06-30T12:00 (UTC)")]


def load_series(specs: list[str], timeframe: str | None,
                timerange: str | None = None, cfg: Settings | None = None) -> list[Any]:
    """The bars of every ``--data`` (within ``timerange``); a symbol we know no exchange
    filters for is named, since its sizes and prices are then rounded to generic steps."""
    from quantum_trader.domain.instruments import DEFAULT_INSTRUMENTS, Instrument
    from quantum_trader.marketdata.sample import resolve_source
    from quantum_trader.marketdata.timerange import parse_timerange

    window = parse_timerange(timerange) if timerange is not None else None
    series = [resolve_source(spec, timeframe=timeframe) for spec in specs]
    if window is not None:
        chosen = [window.select(s) for s in series]
        for spec, s, part in zip(specs, series, chosen, strict=True):
            if len(part) == 0:
                have = (f"{fmt_ts(int(s.ts[0]))} to {fmt_ts(int(s.ts[-1]))}" if len(s)
                        else "no bars")
                raise UserError(f"--timerange {timerange} selects no bars of {spec} (it "
                                f"has {have})")
        series = chosen
    stored = file_instruments(specs, series)
    for spec, s in zip(specs, series, strict=True):
        if s.symbol not in DEFAULT_INSTRUMENTS and s.symbol not in stored and (
                cfg is None or s.symbol not in cfg.instruments):
            g = Instrument(s.symbol)
            err.print(f"[yellow]note:[/] {escape(spec)}: no exchange filters known for "
                      f"{escape(s.symbol)}; using generic ones (tick {g.tick_size:g}, step "
                      f"{g.step_size:g}, min notional {g.min_notional:g}). If the bars are "
                      f"another symbol's, say which: {escape(spec)}@SYMBOL; else give its "
                      f"filters under instruments: in the config", soft_wrap=True)
    return series


def file_instruments(specs: list[str], series: list[Any]) -> dict[str, Any]:
    """The exchange filters stored in the data files (``data download`` keeps the venue's),
    by symbol."""
    from quantum_trader.marketdata.files import file_instrument

    out = {}
    for spec, s in zip(specs, series, strict=True):
        path = spec.rsplit("@", 1)[0] if "@" in spec and not Path(spec).exists() else spec
        inst = file_instrument(Path(path).expanduser())
        if inst is not None:
            out[s.symbol] = inst
    return out


def with_file_instruments(cfg: Settings, specs: list[str], series: list[Any]) -> Settings:
    """``cfg`` with the data files' filters for symbols ``instruments:`` does not name (the
    config's own word wins)."""
    from quantum_trader.config import InstrumentSection

    found = {sym: InstrumentSection(**{k: getattr(inst, k) for k in (
        "tick_size", "step_size", "min_qty", "min_notional", "max_leverage",
        "maintenance_margin_rate")}) for sym, inst in file_instruments(specs, series).items()
        if sym not in cfg.instruments}
    if not found:
        return cfg
    return cfg.model_copy(update={"instruments": {**cfg.instruments, **found}})


def configured_specs(cfg: Settings) -> list[str]:
    """What to trade when no --data is given: the pair list ``data.symbols``, else
    ``data.source``."""
    from quantum_trader.marketdata.sample import specs_for_symbols

    if cfg.data.symbols:
        return specs_for_symbols(cfg.data.symbols, cfg.data.dir, cfg.data.timeframe)
    return [cfg.data.source]


def choose_source(choice: SourceChoice) -> tuple[Any, str]:
    """The chosen signal source and why it is that one."""
    from quantum_trader.ai.production import choose_signal_source

    return choose_signal_source(choice.settings, origin=choice.origin,
                                param_origin=choice.param_origin)


def say_source(why: str) -> None:
    err.print(f"signal source: {escape(why)}", soft_wrap=True, emoji=False)


def signal_source(choice: SourceChoice, quiet: bool = False) -> Any:
    """The chosen signal source; says which on stderr."""
    source, why = choose_source(choice)
    if not quiet:
        say_source(why)
    return source


def note_low_confidence(cfg: Settings, signals: int, rejections: dict[str, int]) -> None:
    """The gate's confidence floor is the rule a new strategy most often trips on: say so."""
    low = rejections.get("LOW_CONFIDENCE", 0)
    if low:
        err.print(f"[yellow]note:[/] {low:,} of {signals:,} signals were rejected with "
                  f"LOW_CONFIDENCE: their confidence was below risk.min_confidence "
                  f"({cfg.risk.min_confidence:g}); see docs/strategies.md", soft_wrap=True)


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
    timerange: TimeRangeOpt = None,
    chart: Annotated[Path | None, typer.Option(
        help="Also write the equity/drawdown chart here (.png or .html); the run's directory "
             "has equity.png (without --json)")] = None,
    as_json: JsonOpt = False,
    trades_shown: Annotated[int, typer.Option("--trades", min=0, help="Trades to list")] = 20,
    strategy: StrategyOpt = None,
    param: ParamOpt = None,
    html_report: Annotated[bool | None, typer.Option(
        "--report/--no-report", help="The interactive HTML report in the run's directory "
                                     "(default: yes, but not with --json)",
        show_default=False)] = None,
) -> None:
    """Backtest on historical bars: simulated clock, simulated exchange, full risk gate."""
    from quantum_trader.ai.production import in_sample_overlaps
    from quantum_trader.analytics.tables import pairs_table, report_table, trades_table
    from quantum_trader.cli.live import replay_note
    from quantum_trader.cli.reports import save_run
    from quantum_trader.runtime.backtest import run_backtest

    choice = with_strategy(settings(config), strategy, param)
    cfg = choice.settings
    replay_note(cfg, "a backtest")
    if chart is not None:
        check_writable_file(chart, "--chart", CHART_SUFFIXES)
    check_writable_dir(cfg.paths.reports_dir, "reports directory (paths.reports_dir)")
    specs = data or configured_specs(cfg)
    series = load_series(specs, timeframe, timerange, cfg)
    cfg = with_file_instruments(cfg, specs, series)
    name = "-".join(s.symbol for s in series)
    total = sum(len(s) for s in series)
    source = signal_source(choice, quiet=as_json)
    if as_json:
        result = run_backtest(series, cfg, source)
    else:
        with progress_bar() as prog:
            task = prog.add_task("backtest", total=total, rate="")
            result = run_backtest(series, cfg, source,
                                  progress=lambda n: prog.update(task, advance=n))
    changes = [(a.ts, f"{a.detail.get('to')}: {a.detail.get('reason')}")
               for a in result.state_changes]
    # --json is for speed: no chart or HTML unless asked for (--chart, --report).
    in_sample = in_sample_overlaps(source, series)
    for line in in_sample:
        err.print(f"[bold yellow]IN-SAMPLE:[/] {escape(line)}: these results flatter the "
                  "model (backtest on bars it was not trained on, e.g. --timerange)",
                  soft_wrap=True)
    saved = save_run(cfg, specs, series, result, chart=chart, marks=changes, png=not as_json,
                     html=not as_json if html_report is None else html_report,
                     in_sample=in_sample)
    if as_json:
        stdout_json(json.dumps(saved.output, indent=2))
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
    note_low_confidence(cfg, result.signals, result.rejections)
    for when, what in changes:
        err.print(f"[yellow]trading {escape(what)}[/] at {fmt_ts(when)}: the risk gate "
                  "refused new entries from then on (the chart marks it; the limits are "
                  "under risk: in the config)", soft_wrap=True)
    console.print(f"{result.bars:,} bars in {result.elapsed_s:.2f}s "
                  f"({result.bars_per_second:,.0f} bars/s)."
                  + (f" Chart: {escape(str(chart))}" if chart else ""))
    files = ", ".join(sorted(p.name for p in saved.path.iterdir()))
    console.print(f"Run {saved.run_id} saved in {escape(str(saved.path))}/ ({files})",
                  soft_wrap=True)


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


def confirm_fresh(db: Path | None, fresh: bool, yes: bool) -> None:
    """``--fresh`` sets an account aside: asked on a terminal, else it needs ``--yes``."""
    if not fresh or db is None or not db.exists() or yes:
        return
    if not sys.stdin.isatty():
        raise UserError(f"--fresh sets the account in {db} aside and starts a new one: "
                        "confirm with --yes")
    typer.confirm(f"Set the account in {db} aside (kept in backups/) and start a new one?",
                  abort=True)


def _one_run(state: Path) -> AbstractContextManager[None]:
    """Hold the state directory for the whole run."""
    return holding_state_dir(state, "wait for it to finish, stop it, or use --state-dir")


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
                        "first (asks, unless --yes)")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before --fresh")] = False,
    strategy: StrategyOpt = None,
    param: ParamOpt = None,
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
        run_live(config, state_dir, data, speed, max_bars, fresh, symbol, duration,
                 strategy=strategy, param=param, yes=yes)
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
    choice = with_strategy(settings(config, state_overrides(state_dir)), strategy, param)
    cfg = choice.settings
    replay_note(cfg, "run without --live")
    state = cfg.paths.state_dir
    check_writable_dir(state, "state directory" if state_dir is None else "--state-dir")
    db = cfg.sqlite_path()
    if fresh and db is None:
        raise UserError("--fresh resets only the embedded SQLite store; this config uses "
                        "store.url (drop that database yourself, or unset store.url)")
    specs = data or configured_specs(cfg)
    series = load_series(specs, None, cfg=cfg)
    cfg = with_file_instruments(cfg, specs, series)
    choice = dataclasses.replace(choice, settings=cfg)
    identity = RunIdentity.of(specs, series)
    confirm_fresh(db, fresh, yes)
    source, why = choose_source(choice)  # before the store exists: a bad one writes nothing
    from quantum_trader.ai.production import in_sample_overlaps

    for line in in_sample_overlaps(source, series):
        err.print(f"[bold yellow]IN-SAMPLE:[/] {escape(line)}: paper results on them flatter "
                  "the model", soft_wrap=True)
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
                say_source(why)
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
    account_rows(table, summary, state_events)
    table.add_row("rows in store", ", ".join(f"{k}={v}" for k, v in counts.items()))
    console.print(table)
    note_low_confidence(cfg, summary.signals, summary.rejections)
    say_if_halted(summary.trading_state)


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
