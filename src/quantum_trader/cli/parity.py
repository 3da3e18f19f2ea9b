"""``parity``: replay the bars a dry run (or a paper run) saw through the backtester and report
every difference (``runtime/parity.py``). Exit 0 when the node decided as the backtest does,
1 when a signal, risk decision or order differs."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.markup import escape

from quantum_trader.analytics.tables import FitColumn, FittedTable
from quantum_trader.cli.common import (
    EXIT_NO,
    ConfigOpt,
    JsonOpt,
    StateDirOpt,
    UserError,
    console,
    err,
    fmt_ts,
    settings,
    state_overrides,
    stdout_json,
)

SHOWN = 5  # differences listed per category (``--json`` lists them all)


def parse_time(value: str, name: str) -> int:
    """``YYYY-MM-DD[THH:MM[:SS]]`` (UTC unless it says otherwise) or epoch milliseconds."""
    try:
        if value.isdigit():
            return int(value)
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{name} {value!r}: use YYYY-MM-DD[THH:MM] (UTC) or epoch ms") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.10g}"
    return "—" if v is None else str(v)


def parity(
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    since: Annotated[str | None, typer.Option(
        help="Compare only what happened from this time on: YYYY-MM-DD[THH:MM] (UTC) or "
             "epoch ms (the replay still starts at the first bar)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay the bars a dry run (or paper run) saw through the backtester, with the settings
    and signal source it recorded, and list every difference: signals, risk decisions,
    orders, fills (and their slippage against the model), plus the bar-to-decision latency.
    Exit 1 when a decision differs. Reads the store only."""
    from quantum_trader.runtime.parity import CATEGORIES
    from quantum_trader.runtime.parity import parity as run_parity
    from quantum_trader.store.sql import SqlTradeStore

    since_ms = parse_time(since, "--since") if since is not None else None
    cfg = settings(config, state_overrides(state_dir))
    db = cfg.sqlite_path()
    if db is not None and not db.is_file():
        raise UserError(f"no store at {db}: nothing has run in this state directory yet "
                        "(run `quantum-trader run --live` first, or pass --state-dir)")

    async def go() -> Any:
        store = SqlTradeStore(cfg.store_url())
        await store.open()
        try:
            return await run_parity(store, cfg, since_ms)
        finally:
            await store.close()

    report = asyncio.run(go())
    code = EXIT_NO if report.decisions_differ else 0
    if as_json:
        stdout_json(json.dumps(report.to_dict(), indent=2))
        raise typer.Exit(code)
    for note in report.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    head = FittedTable([FitColumn("what"), FitColumn("value", "right", wrap=True)],
                       title=f"Parity — {report.mode} replayed through the backtester")
    head.add_row("signal source", report.source)
    head.add_row("bars", f"{report.bars:,} traded ({', '.join(report.symbols)} "
                         f"{report.timeframe}, {fmt_ts(report.first_bar)} .. "
                         f"{fmt_ts(report.last_bar)}) after {report.warmup_bars:,} of warm-up")
    head.add_row("late bars (no entries, in both)", f"{report.late_bars:,}")
    if since_ms is not None:
        head.add_row("compared from", fmt_ts(since_ms))
    for name, figures in report.latency_ms.items():
        head.add_row(name.replace("_", " ") + " (ms)",
                     f"p50 {figures['p50']:.1f}, p95 {figures['p95']:.1f}, max "
                     f"{figures['max']:.1f} ({int(figures['n'])} bars)")
    sl = report.slippage_bps
    head.add_row("fill slippage vs the model", "no fills" if not sl.get("n") else
                 f"mean {sl['mean']:+.3f} bps, max |{sl['max_abs']:.3f}| bps "
                 f"({int(sl['n'])} fills)")
    console.print(head)
    counts = FittedTable([FitColumn("category"), FitColumn("matched", "right"),
                          FitColumn("differing", "right"), FitColumn("run only", "right"),
                          FitColumn("replay only", "right")], title="Records compared")
    for name in CATEGORIES:
        c = report.categories[name]
        counts.add_row(name, f"{c.matched:,}", f"{c.differing:,}", f"{c.live_only:,}",
                       f"{c.replay_only:,}")
    console.print(counts)
    for name in CATEGORIES:
        c = report.categories[name]
        if not c.differences:
            continue
        t = FittedTable([FitColumn("time"), FitColumn("record", wrap=True),
                         FitColumn("what"), FitColumn("run", "right", wrap=True),
                         FitColumn("replay", "right", wrap=True)],
                        title=f"{name}: first {min(SHOWN, len(c.differences))} of "
                              f"{len(c.differences)} differences")
        for d in c.differences[:SHOWN]:
            t.add_row(fmt_ts(d.ts), d.key, d.what, _show(d.live), _show(d.replay))
        console.print(t)
    verdict = ("the run decided differently from the backtest on the same bars"
               if report.decisions_differ else
               "no differences in decisions: the run decided as the backtest does")
    console.print(verdict)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(parity)
