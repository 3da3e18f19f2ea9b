"""``lookahead`` (put a signal source through the checks of ``strategies/checks.py``) and
``new-strategy`` (write a strategy that runs as it is). docs/strategies.md is the manual."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from quantum_trader.analytics.tables import FitColumn, FittedTable
from quantum_trader.cli.common import (
    EXIT_NO,
    ConfigOpt,
    DataOpt,
    JsonOpt,
    UserError,
    check_writable_dir,
    console,
    err,
    settings,
    stdout_json,
)
from quantum_trader.cli.trading import (
    ParamOpt,
    StrategyOpt,
    configured_specs,
    load_series,
    with_strategy,
)
from quantum_trader.domain.strategy import SignalSource


def lookahead(
    strategy: StrategyOpt = None,
    param: ParamOpt = None,
    data: DataOpt = None,
    timeframe: Annotated[str | None, typer.Option(
        help="Timeframe of FILE data (inferred if omitted; refused if the bars are not)")] = None,
    warmup: Annotated[int | None, typer.Option(
        min=0, help="Bars the recursive check lets the indicators warm up (default: the "
                    "strategy's warmup())")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a strategy for lookahead: change the future and see that no earlier signal moves;
    start the history later and see that the signals agree after the warm-up; run it twice.
    Exit 1 when it fails, naming the first bar where it differs."""
    from quantum_trader.ai.production import choose_signal_source, plugin_strategy
    from quantum_trader.strategies.checks import CheckResult, bars_needed, check_source, show

    choice = with_strategy(settings(config), strategy, param)
    cfg = choice.settings
    specs = data or configured_specs(cfg)
    series = load_series(specs, timeframe, cfg=cfg)
    plugin = plugin_strategy(cfg, choice.origin, choice.param_origin)
    if plugin is not None:
        ttl = cfg.strategy.signal_ttl_ms

        def make() -> SignalSource:
            # One class for every pass: what it keeps at class level is shared between them,
            # as between the backtests of one process.
            return plugin.source(ttl)

        why = f"strategy {plugin.describe()}"
    else:
        def make() -> SignalSource:
            return choose_signal_source(cfg)[0]

        why = choose_signal_source(cfg)[1]
    probe = make()
    name = probe.name
    declared = getattr(probe, "warmup", None)
    warm = warmup if warmup is not None else int(declared()) if callable(declared) else 0
    for spec, s in zip(specs, series, strict=True):
        if len(s) < bars_needed(warm):
            given = "--warmup" if warmup is not None else f"{name}'s warmup()"
            raise UserError(f"--data {spec}: {len(s)} bars are too few for a warm-up of {warm} "
                            f"bars ({given}); the checks need at least {bars_needed(warm)}")
    if not as_json:
        err.print(f"checking: {escape(why)}; warm-up {warm} bars", soft_wrap=True)
    results: list[CheckResult] = []
    for s in series:
        results += check_source(make, s, warm)
    failed = [r for r in results if not r.passed]
    if as_json:
        stdout_json(json.dumps({
            "source": name, "description": why, "warmup": warm, "passed": not failed,
            "checks": [{"check": r.check, "symbol": r.symbol, "condition": r.condition,
                        "bars": r.bars, "signals": r.signals, "passed": r.passed,
                        "first_difference": None if r.passed else {
                            "bar": _time(r.bar_ts), "expected": show(r.expected),
                            "got": show(r.got)},
                        "message": None if r.passed else r.explain(name)} for r in results]},
            indent=2))
    else:
        table = FittedTable([FitColumn("check"), FitColumn("symbol", priority=2),
                             FitColumn("what changed", wrap=True, priority=1),
                             FitColumn("bars", "right", priority=1),
                             FitColumn("signals", "right", priority=1), FitColumn("result")],
                            title=f"Lookahead checks — {name}")
        for r in results:
            table.add_row(r.check, r.symbol, r.condition, f"{r.bars:,}", f"{r.signals:,}",
                          "same" if r.passed else f"differs at {_time(r.bar_ts)}")
        console.print(table)
        for r in failed:
            console.print(escape(r.explain(name)), soft_wrap=True, highlight=False)
        if not failed:
            console.print(f"{name}: no lookahead found, the signals forget where the history "
                          f"started after {warm} bars, and it is deterministic")
        if not any(r.signals for r in results):
            err.print("[yellow]note:[/] it gave no signals on these bars, so the checks "
                      "compared nothing; try more or other --data", soft_wrap=True)
    if failed:
        raise typer.Exit(EXIT_NO)


def _time(ms: int | None) -> str:
    from quantum_trader.cli.common import fmt_ts

    return fmt_ts(ms)


def new_strategy(
    name: Annotated[str, typer.Argument(help="Class name (MyBreakout) or file name "
                                             "(my_breakout)")],
    directory: Annotated[Path, typer.Option(
        "--dir", help="Where to write <name>.py (made if missing)")] = Path("."),
) -> None:
    """Write a strategy file that runs as it is (a moving-average cross), to edit into yours."""
    from quantum_trader.strategies.template import names, render

    try:
        cls, stem = names(name)
    except ValueError as exc:
        raise UserError(f"NAME {exc}") from None
    check_writable_dir(directory, "--dir")
    path = directory / f"{stem}.py"
    if path.exists():
        raise UserError(f"{path}: exists; choose another NAME or --dir (new-strategy never "
                        "overwrites a file)")
    directory.mkdir(parents=True, exist_ok=True)
    with path.open("x") as f:  # "x": a file made meanwhile is not overwritten either
        f.write(render(cls, str(path)))
    console.print(f"wrote {escape(str(path))} (class {cls}). Try it:\n"
                  f"  quantum-trader backtest --strategy {escape(str(path))}:{cls} "
                  "--data sample:XRP\n"
                  f"  quantum-trader lookahead --strategy {escape(str(path))}:{cls} "
                  "--data sample:XRP", soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(lookahead)
    app.command("new-strategy")(new_strategy)
