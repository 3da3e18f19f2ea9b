"""``train`` and the model registry: ``models list|show|promote|rollback``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from quantum_trader.analytics.tables import FitColumn, FittedTable
from quantum_trader.cli.common import (
    EXIT_NO,
    ConfigOpt,
    ErrorBoundaryGroup,
    JsonOpt,
    UserError,
    check_writable_dir,
    console,
    err,
    progress_bar,
    settings,
    stdout_json,
)
from quantum_trader.cli.trading import (
    TimeRangeOpt,
    configured_specs,
    load_series,
    with_file_instruments,
)
from quantum_trader.config import Settings

models_app = typer.Typer(cls=ErrorBoundaryGroup, no_args_is_help=True,
                         help="Model registry: list, show, promote (through the gate), rollback.")

ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Registry model name "
                                              "(default: ai.model_name)")]


def _ai_settings(cfg: Settings, **changes: Any) -> Any:
    """``settings.ai`` with CLI overrides applied and validated."""
    from pydantic import ValidationError

    ai = cfg.ai
    raw = ai.model_dump()
    for dotted, value in changes.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
    try:
        return type(ai).model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "ai." + ".".join(str(p) for p in first["loc"])
        raise UserError(f"{where}: {first['msg']}") from None


def _registry(cfg: Settings) -> Any:
    from quantum_trader.ai.production import registry_for

    return registry_for(cfg)


def train(
    data: Annotated[list[str] | None, typer.Option(
        "--data", "-d", metavar="SPEC",
        help="FILE (CSV/parquet) or sample:XRP|BTC|ETH|EOS|LTC; repeat to pool symbols into "
             "one model")] = None,
    timeframe: Annotated[str | None, typer.Option(
        help="Timeframe of FILE data (sample data is 30m; refused if the bars are not)")] = None,
    config: ConfigOpt = None,
    timerange: TimeRangeOpt = None,
    model: ModelOpt = None,
    kind: Annotated[str | None, typer.Option(help="lightgbm (default) or logistic")] = None,
    folds: Annotated[int | None, typer.Option(min=1, help="Walk-forward test folds")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Random seed (same seed, same "
                                             "model)")] = None,
    promote: Annotated[bool, typer.Option("--promote", help="Promote to production if it "
                                          "passes the promotion gate")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON")] = False,
    per_symbol: Annotated[bool, typer.Option(
        "--per-symbol", help="One model per symbol, named <model>-<SYMBOL> (default with "
                             "several --data: one model pooled over them)")] = False,
) -> None:
    """Walk-forward train a model, check it for leakage, and store it in the registry.
    Several symbols pool into one model, or with --per-symbol train one each."""
    from quantum_trader.ai.registry import PromotionRefused
    from quantum_trader.ai.training import train as train_model

    cfg = settings(config)
    ai = _ai_settings(cfg, model_name=model, seed=seed, **{"model.kind": kind,
                                                          "walkforward.folds": folds})
    check_writable_dir(cfg.paths.registry_dir, "model registry (paths.registry_dir)")
    specs = data or configured_specs(cfg)
    tf = timeframe or (None if data else cfg.data.timeframe)
    pool = load_series(specs, tf, timerange, cfg)
    cfg = with_file_instruments(cfg, specs, pool)
    if len({s.timeframe for s in pool}) > 1:
        raise UserError("--data: a pooled model learns from one timeframe, got "
                        + ", ".join(f"{spec} ({s.timeframe})"
                                    for spec, s in zip(specs, pool, strict=True)))
    repeated = sorted({s.symbol for s in pool if [p.symbol for p in pool].count(s.symbol) > 1})
    if repeated:
        raise UserError(f"--data: {', '.join(repeated)} given more than once")
    registry = _registry(cfg)
    what = pool[0].symbol if len(pool) == 1 else \
        f"{len(pool)} symbols pooled ({', '.join(s.symbol for s in pool)})"
    err.print(f"training [bold]{ai.model_name}[/] ({ai.model.kind}) on {what} "
              f"{pool[0].timeframe}: {sum(len(s) for s in pool):,} bars → {registry.root}")
    if per_symbol:
        _train_per_symbol(pool, cfg, ai, registry, promote, as_json)
        return
    series = pool[0] if len(pool) == 1 else pool
    with training_progress(ai, len(pool)) as step:
        report = train_model(series, cfg, ai, registry, progress=step)
    if as_json:
        stdout_json(json.dumps(report.manifest, indent=2))
    else:
        console.print(report.render())
        if report.chart_path is not None:
            console.print(f"chart: {report.chart_path}")
    if promote:
        try:
            registry.promote(report.version, ai.model_name)
        except PromotionRefused as exc:
            err.print(f"[bold yellow]not promoted:[/] {exc}")
            raise typer.Exit(EXIT_NO) from None
        err.print(f"[bold green]promoted[/] {ai.model_name}@{report.version} to production")


@contextmanager
def training_progress(ai: Any, n_series: int) -> Iterator[Callable[[str], None]]:
    """A progress bar over training's steps (features, each fold's fit and backtests, the
    leakage checks, the final fit), named by the step it is on."""
    folds = ai.walkforward.folds * (2 if ai.backtest_folds else 1)
    total = 3 + folds + 2 * n_series
    with progress_bar() as prog:
        task = prog.add_task("training", total=total, rate="")

        def step(message: str) -> None:
            prog.update(task, advance=1, description=f"training: {message}")

        yield step
        prog.update(task, completed=total, description="training: done")


def _train_per_symbol(pool: list[Any], cfg: Settings, ai: Any, registry: Any, promote: bool,
                      as_json: bool) -> None:
    """``train --per-symbol``: each symbol's own model, ``<model>-<SYMBOL>``; a table of
    them (or their manifests); with ``--promote`` each goes through the gate on its own."""
    from quantum_trader.ai.per_symbol import per_symbol_name
    from quantum_trader.ai.registry import PromotionRefused
    from quantum_trader.ai.training import train as train_model

    reports = []
    for s in pool:
        one = ai.model_copy(update={"model_name": per_symbol_name(ai.model_name, s.symbol)})
        err.print(f"[bold]{one.model_name}[/]: {len(s):,} bars")
        with training_progress(one, 1) as step:
            reports.append((one, train_model(s, cfg, one, registry, progress=step)))
    refused: list[str] = []
    promoted: list[str] = []
    if promote:
        for one, report in reports:
            try:
                registry.promote(report.version, one.model_name)
                promoted.append(f"{one.model_name}@{report.version}")
            except PromotionRefused as exc:
                refused.append(f"{one.model_name}@{report.version}: {exc}")
    if as_json:
        stdout_json(json.dumps([r.manifest for _one, r in reports], indent=2))
    else:
        table = FittedTable([FitColumn("model"), FitColumn("version"), FitColumn("AUC", "right"),
                             FitColumn("model ret", "right"), FitColumn("B&H ret", "right"),
                             FitColumn("gate", wrap=True)], title="One model per symbol")
        for one, r in reports:
            auc = r.walkforward.overall["model"].get("auc")
            bt = r.walkforward.backtests
            table.add_row(one.model_name, r.version, "-" if auc is None else f"{auc:.4f}",
                          f"{bt['model'].total_return:+.2%}" if "model" in bt else "-",
                          f"{bt['buy_and_hold'].total_return:+.2%}"
                          if "buy_and_hold" in bt else "-",
                          "would pass" if not r.gate else "; ".join(r.gate))
        console.print(table)
    for line in promoted:
        err.print(f"[bold green]promoted[/] {line} to production")
    for line in refused:
        err.print(f"[bold yellow]not promoted:[/] {line}")
    if refused:
        raise typer.Exit(EXIT_NO)


@models_app.command("list")
def models_list(config: ConfigOpt = None, model: ModelOpt = None,
                as_json: JsonOpt = False) -> None:
    """Every stored version (production marked with *)."""
    registry = _registry(settings(config))
    infos = registry.list_versions(model)
    if as_json:
        stdout_json(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return
    table = FittedTable([FitColumn(""), FitColumn("model"), FitColumn("version"),
                         FitColumn("created", priority=2), FitColumn("kind", priority=1),
                         FitColumn("OOS AUC", "right"), FitColumn("OOS Sharpe", "right"),
                         FitColumn("manifest hash", priority=3)],
                        title=f"models in {registry.root}")
    for i in infos:
        table.add_row("*" if i.production else "", i.name, i.version, i.created_at, i.kind,
                      "-" if i.auc is None else f"{i.auc:.4f}",
                      "-" if i.sharpe is None else f"{i.sharpe:.2f}", i.manifest_hash[:12])
    console.print(table)


@models_app.command("show")
def models_show(version: Annotated[str | None, typer.Argument(help="Version (default: "
                                                              "production)")] = None,
                config: ConfigOpt = None, model: ModelOpt = None) -> None:
    """A version's manifest (hashes verified), and what the promotion gate says about it."""
    from quantum_trader.ai.registry import gate_reasons

    cfg = settings(config)
    name = _ai_settings(cfg, model_name=model).model_name
    registry = _registry(cfg)
    manifest = registry.show(name, version)
    registry.verify(name, str(manifest["version"]))
    stdout_json(json.dumps(manifest, indent=2))
    reasons = gate_reasons(manifest, registry.gate)
    err.print("promotion gate: " + ("[green]passes[/]" if not reasons
                                     else "[yellow]refuses[/] — " + "; ".join(reasons)))


@models_app.command("promote")
def models_promote(version: Annotated[str, typer.Argument(help="Version to make production")],
                   config: ConfigOpt = None, model: ModelOpt = None) -> None:
    """Make a version production, if it passes the promotion gate (exit 1 if it does not)."""
    from quantum_trader.ai.registry import PromotionRefused

    cfg = settings(config)
    name = _ai_settings(cfg, model_name=model).model_name
    try:
        _registry(cfg).promote(version, name)
    except PromotionRefused as exc:
        err.print("[bold yellow]promotion refused:[/]")
        for reason in exc.reasons:
            err.print(f"  - {reason}")
        raise typer.Exit(EXIT_NO) from None
    console.print(f"{name}@{version} is now production")


@models_app.command("rollback")
def models_rollback(config: ConfigOpt = None, model: ModelOpt = None) -> None:
    """Back to the version that was production before the current one."""
    cfg = settings(config)
    name = _ai_settings(cfg, model_name=model).model_name
    previous = _registry(cfg).rollback(name)
    console.print(f"{name}: production rolled back to {previous}")


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.add_typer(models_app, name="models")
