"""``optimize``: nested walk-forward parameter optimisation on Optuna; ``optimize resume``
continues a study; ``optimize apply`` writes the chosen parameters into a config, through the
gate. The method is in ``research/optimize.py``; docs/cli.md and docs/strategies.md say what
each writes."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from quantum_trader.analytics.tables import FitColumn, FittedTable
from quantum_trader.cli.common import (
    EXIT_NO,
    ConfigOpt,
    DataOpt,
    ErrorBoundaryGroup,
    JsonOpt,
    UserError,
    check_writable_dir,
    check_writable_file,
    console,
    err,
    progress_bar,
    settings,
    stdout_json,
)
from quantum_trader.cli.trading import (
    StrategyOpt,
    TimeRangeOpt,
    configured_specs,
    load_series,
)
from quantum_trader.config import Settings

optimize_app = typer.Typer(
    cls=ErrorBoundaryGroup, invoke_without_command=True, no_args_is_help=False,
    help="Walk-forward parameter optimisation (Optuna): optimize, resume, apply.")

StorageOpt = Annotated[str | None, typer.Option(
    "--storage", metavar="URL",
    help="Optuna storage shared by every worker and host: postgresql://…, sqlite:///…, or a "
         "journal FILE (default: a journal in the study's directory)")]
StudyOpt = Annotated[str | None, typer.Option(
    "--study", metavar="NAME", help="Study name (default: derived from the settings and data)")]
MaxPboOpt = Annotated[float, typer.Option(
    "--max-pbo", help="Gate: the probability of backtest overfitting must be below this")]
MinDsrOpt = Annotated[float, typer.Option(
    "--min-dsr", help="Gate: the deflated Sharpe ratio must be above this")]
JobsOpt = Annotated[int, typer.Option("--jobs", "-j", min=1, max=256,
                                      help="Worker processes on this host")]

RESULT = "result.json"
JOURNAL = "journal.log"


def _parse_space(items: list[str] | None, declared: Any) -> dict[str, list[Any]]:
    from quantum_trader.domain.strategy import ChoiceParam, FloatParam, IntParam

    out: dict[str, list[Any]] = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name:
            raise UserError(f"--space {item}: write NAME=LOW..HIGH or NAME=A,B,C")
        p = declared.get(name)
        if p is None:
            raise UserError(f"--space {item}: no parameter {name!r} (parameters: "
                            f"{', '.join(declared)})")
        try:
            if isinstance(p, ChoiceParam):
                out[name] = [p.coerce(v) for v in value.split(",")]
            else:
                lo, dots, hi = value.partition("..")
                if not dots:
                    raise ValueError("write LOW..HIGH")
                a, b = p.coerce(lo), p.coerce(hi)
                if not a < b:
                    raise ValueError(f"{lo} is not below {hi}")
                out[name] = [a, b]
            assert isinstance(p, (ChoiceParam, IntParam, FloatParam))
        except ValueError as exc:
            raise UserError(f"--space {item}: {exc}") from None
    return out


def _parse_fixed(items: list[str] | None, declared: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name:
            raise UserError(f"--param {item}: write NAME=VALUE, e.g. --param allow_short=false")
        if name in out:
            raise UserError(f"--param {item}: {name} is given twice")
        p = declared.get(name)
        if p is None:
            raise UserError(f"--param {item}: no parameter {name!r} (parameters: "
                            f"{', '.join(declared)})")
        try:
            out[name] = p.coerce(value)
        except ValueError as exc:
            raise UserError(f"--param {item}: {exc}") from None
    return out


def _study_dir(cfg: Settings, study: str) -> Path:
    return cfg.paths.reports_dir / "optimize" / study


def _check_name(study: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", study):
        raise UserError(f"--study {study!r}: use letters, digits, '.', '_' and '-' (up to "
                        "100, starting with a letter or digit)")
    return study


def _run(spec: Any, cfg: Settings, series: list[Any], storage: str | None, study: str,
         jobs: int, as_json: bool, fingerprint: dict[str, Any], resumed: bool) -> None:
    from quantum_trader.analytics.runs import code_version, trading_config, write_json_atomic
    from quantum_trader.research.optimize import (
        make_windows,
        masked,
        open_meta,
        optimize_window,
        storage_for,
        summarize,
    )

    out_dir = _study_dir(cfg, study)
    check_writable_dir(out_dir, "study directory (paths.reports_dir)")
    windows = make_windows(series, spec)
    url = storage or str(out_dir / JOURNAL)
    if storage is None:
        out_dir.mkdir(parents=True, exist_ok=True)
    store = storage_for(url)
    spec, _ = open_meta(store, study, spec, fingerprint["sha256"])
    if resumed:
        from quantum_trader.research.optimize import fail_running

        gone = fail_running(store, study, spec.windows)
        if gone:
            err.print(f"resume: {gone} trial(s) left RUNNING by a gone worker marked FAIL")
    err.print(f"study [bold]{escape(study)}[/] in {escape(masked(url))}: {spec.windows} "
              f"windows × {spec.trials} trials, {jobs} worker(s), objective {spec.objective}",
              soft_wrap=True)
    t0 = time.perf_counter()
    results = []
    with progress_bar() as prog:
        task = prog.add_task("optimize", total=spec.windows * spec.trials, rate="")
        for w in windows:
            def tick(k: int, done: int, best: float | None, base: int = (w.index - 1)
                     * spec.trials) -> None:
                shown = "–" if best is None or best <= -1e5 else f"{best:.3g}"
                prog.update(task, completed=base + min(done, spec.trials),
                            rate=f"window {k}/{spec.windows} best {spec.objective} {shown}")

            results.append(optimize_window(w, spec, cfg, series, url, study, jobs,
                                           storage is not None, tick))
    elapsed = time.perf_counter() - t0
    from dataclasses import asdict

    report = summarize(results, spec, cfg, series[0].timeframe)
    saved = {"format": 1, "study": study, "storage": masked(url),
             "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "spec": asdict(spec), "strategy": spec.strategy or "ema_cross",
             **report, "data": fingerprint, "code": code_version(),
             "config": trading_config(cfg.model_dump(mode="json")),
             "elapsed_s": round(elapsed, 3)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / RESULT, saved)
    if as_json:
        stdout_json(json.dumps({**saved, "result": str(out_dir / RESULT)}, indent=2))
        return
    _print_report(saved)
    console.print(f"Result saved in {escape(str(out_dir / RESULT))} ({elapsed:.1f}s). "
                  f"`quantum-trader optimize apply {escape(str(out_dir / RESULT))} --config "
                  "FILE` writes the chosen parameters if the gate passes.", soft_wrap=True)


def _f(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and v <= -1e5:
        return "infeasible"
    return f"{float(v):.2%}" if pct else f"{float(v):.3g}"


def _params(p: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in p.items())


def _print_report(r: dict[str, Any]) -> None:
    obj = r["objective"]
    t = FittedTable([FitColumn("window", "right"), FitColumn("test", priority=2),
                     FitColumn("best parameters", wrap=True),
                     FitColumn(f"in-sample {obj}", "right"), FitColumn(f"OOS {obj}", "right"),
                     FitColumn(f"defaults OOS {obj}", "right", priority=1),
                     FitColumn("PBO", "right", priority=1)],
                    title=f"optimize {r['strategy']} — {r['study']}")
    for w in r["windows"]:
        t.add_row(str(w["window"]), f"{w['test']['first']} → {w['test']['end']}",
                  _params(w["best_params"]), _f(w["in_sample"]), _f(w["out_of_sample"]),
                  _f(w["defaults_out_of_sample"]), _f((w["pbo"] or {}).get("pbo")))
    console.print(t)
    o = FittedTable([FitColumn("out of sample, chained"), FitColumn("return", "right"),
                     FitColumn("sharpe", "right"), FitColumn("max drawdown", "right"),
                     FitColumn("trades", "right", priority=1)],
                    title="Out of sample (every test window chained, after fees)")
    names = {"tuned": "tuned", "defaults": "untuned defaults", "buy_and_hold": "buy-and-hold",
             "tuned_configured": "tuned, configured risk limits"}
    for k, label in names.items():
        m = r["oos"][k]
        halts = f" ({m['halts']} halt(s))" if m.get("halts") else ""
        o.add_row(label + halts, _f(m["return"], True), _f(m["sharpe"]),
                  _f(m["max_drawdown"], True), str(m["trades"]))
    console.print(o)
    stab = ", ".join(f"{k} cv {_f(v['cv'])}" if "cv" in v else
                     f"{k} {v['mode']} in {v['mode_share']:.0%}" for k, v in
                     r["stability"].items())
    console.print(f"Parameter stability across windows: {stab}", soft_wrap=True)
    d = r["deflated_sharpe"]
    console.print(f"Probability of backtest overfitting (CSCV, mean over windows): "
                  f"{_f(r['pbo']['pbo'])}; deflated Sharpe ratio {_f(d['dsr'])} "
                  f"({r['trials_total']} trials, OOS Sharpe per bar {_f(d['sharpe'])} vs "
                  f"{_f(d['benchmark'])} expected of the best unskilled trial)", soft_wrap=True)
    console.print(f"Chosen (the last window's best): {_params(r['chosen_params'])}",
                  soft_wrap=True)


@optimize_app.callback()
def optimize(
    ctx: typer.Context,
    strategy: StrategyOpt = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", metavar="NAME=VALUE", help="Fix a parameter (not tuned); repeat")]
        = None,
    space: Annotated[list[str] | None, typer.Option(
        "--space", metavar="NAME=LOW..HIGH", help="Narrow a parameter's search range (or "
        "NAME=A,B for choices); repeat")] = None,
    data: DataOpt = None,
    timeframe: Annotated[str | None, typer.Option(help="Timeframe of FILE data")] = None,
    timerange: TimeRangeOpt = None,
    config: ConfigOpt = None,
    trials: Annotated[int, typer.Option(min=1, max=100_000, help="Trials per window")] = 50,
    jobs: JobsOpt = 1,
    sampler: Annotated[str, typer.Option(help="tpe, random or grid")] = "tpe",
    objective: Annotated[str, typer.Option(
        help="sharpe, sortino, calmar, profit_factor or return")] = "sharpe",
    max_drawdown: Annotated[float | None, typer.Option(
        "--max-drawdown", help="Constraint: a trial deeper than this (0..1) is infeasible")]
        = None,
    min_trades: Annotated[int, typer.Option(
        "--min-trades", min=0, help="Constraint: a trial with fewer trades is infeasible")] = 5,
    windows: Annotated[int, typer.Option(min=1, max=100, help="Walk-forward windows")] = 4,
    mode: Annotated[str, typer.Option(help="anchored (all bars before a window) or rolling "
                                      "(--train-bars)")] = "anchored",
    train_bars: Annotated[int | None, typer.Option(
        "--train-bars", min=2, help="Rolling: bars in each train part")] = None,
    purge: Annotated[int, typer.Option(min=0, help="Bars left out between train and test")]
        = 48,
    embargo: Annotated[int, typer.Option(
        min=0, help="Bars left out of training after each earlier test window")] = 0,
    warmup: Annotated[int, typer.Option(
        min=0, help="Bars fed (muted) before each backtest so indicators are warm")] = 500,
    slices: Annotated[int, typer.Option(min=2, max=16, help="CSCV time slices (even)")] = 10,
    seed: Annotated[int, typer.Option(min=0, help="Sampler seed")] = 0,
    storage: StorageOpt = None,
    study: StudyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Nested walk-forward optimisation: per window, Optuna tunes the strategy's declared
    parameters on the train part, and the best are scored out of sample on the test part."""
    if ctx.invoked_subcommand is not None:
        return
    from quantum_trader.analytics.runs import data_fingerprint
    from quantum_trader.research.optimize import (
        MODES,
        OBJECTIVES,
        SAMPLERS,
        OptimizeSpec,
        strategy_parameters,
        tuned_space,
    )

    for opt, value, allowed in (("--sampler", sampler, SAMPLERS),
                                ("--objective", objective, OBJECTIVES),
                                ("--mode", mode, MODES)):
        if value not in allowed:
            raise UserError(f"{opt} {value}: use one of {', '.join(allowed)}")
    if max_drawdown is not None and not 0 < max_drawdown <= 1:
        raise UserError(f"--max-drawdown {max_drawdown:g}: must be in (0, 1]")
    if slices % 2:
        raise UserError(f"--slices {slices}: must be even (CSCV splits them in halves)")
    if mode == "rolling" and train_bars is None:
        raise UserError("--mode rolling needs --train-bars")
    if study is not None:
        _check_name(study)
    if storage is not None and not storage.strip():
        raise UserError("--storage: empty; give a database URL or a journal file")
    if storage is not None and "://" not in storage:
        check_writable_file(Path(storage), "--storage")
    cfg = settings(config)
    spec_text = strategy
    if spec_text is not None and not spec_text.strip():
        raise UserError("--strategy: empty; give FILE.py[:Class], package.module:Class or an "
                        "installed strategy's name (or omit it for the built-in ema_cross)")
    if spec_text is None and cfg.strategy.path:
        spec_text = cfg.strategy.path
    declared, _ = strategy_parameters(spec_text)
    fixed = _parse_fixed(param, declared)
    narrowed = _parse_space(space, declared)
    specs = data or configured_specs(cfg)
    series = load_series(specs, timeframe, timerange, cfg)
    if len({s.timeframe for s in series}) > 1:
        raise UserError("--data: one study needs one timeframe, got " + ", ".join(
            f"{d} ({s.timeframe})" for d, s in zip(specs, series, strict=True)))
    spec = OptimizeSpec(list(specs), timeframe, timerange, spec_text, fixed, narrowed,
                        objective, max_drawdown, min_trades, windows, mode, train_bars, None,
                        purge, embargo, warmup, trials, sampler, seed, slices)
    try:
        tuned_space(spec)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    fingerprint = data_fingerprint(series)
    name = study or "opt-" + hashlib.sha256(
        f"{spec.to_json()}\n{fingerprint['sha256']}".encode()).hexdigest()[:10]
    _run(spec, cfg, series, storage, name, jobs, as_json, fingerprint, resumed=False)


@optimize_app.command("resume")
def resume(
    storage: Annotated[str, typer.Option("--storage", metavar="URL",
                                         help="The study's Optuna storage")],
    study: Annotated[str, typer.Option("--study", metavar="NAME", help="The study")],
    config: ConfigOpt = None,
    jobs: JobsOpt = 1,
    as_json: JsonOpt = False,
) -> None:
    """Continue a study after a crash: its stored settings and data, to its trial count
    (trials its gone workers left RUNNING are marked FAIL and run again)."""
    from quantum_trader.analytics.runs import data_fingerprint
    from quantum_trader.research.optimize import open_meta, storage_for

    _check_name(study)
    cfg = settings(config)
    if not storage.strip():
        raise UserError("--storage: empty; give the study's database URL or journal file")
    if "://" not in storage and not Path(storage).is_file():
        raise UserError(f"--storage {storage}: no such journal file")
    spec, stored_fp = open_meta(storage_for(storage), study, None, None)
    series = load_series(spec.data, spec.timeframe, spec.timerange, cfg)
    fingerprint = data_fingerprint(series)
    if fingerprint["sha256"] != stored_fp:
        raise UserError(f"--study {study}: the data ({', '.join(spec.data)}) is not what the "
                        "study was started on")
    _run(spec, cfg, series, storage, study, jobs, as_json, fingerprint, resumed=True)


def _load_result(path: Path) -> dict[str, Any]:
    file = path / RESULT if path.is_dir() else path
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such optimize result") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not an optimize result (bad JSON at line {exc.lineno})"
                        ) from None
    if not isinstance(raw, dict) or not all(k in raw for k in ("oos", "chosen_params",
                                                               "spec", "pbo")):
        raise UserError(f"{path}: not an optimize result (no out-of-sample report in it)")
    return raw


@optimize_app.command("apply")
def apply(
    result: Annotated[Path, typer.Argument(help="An optimize result.json (or its directory)")],
    config: Annotated[Path, typer.Option("--config", "-c",
                                         help="The YAML config file to write them into")],
    max_pbo: MaxPboOpt = 0.5,
    min_dsr: MinDsrOpt = 0.95,
    as_json: JsonOpt = False,
) -> None:
    """Write the chosen parameters into a config file, only if the gate passes: they beat the
    untuned defaults and buy-and-hold out of sample, PBO below --max-pbo, deflated Sharpe
    above --min-dsr. Otherwise exit 1 naming each failed criterion."""
    import yaml

    from quantum_trader.research.optimize import gate

    if not 0 < max_pbo <= 1:
        raise UserError(f"--max-pbo {max_pbo:g}: must be in (0, 1]")
    if not 0 <= min_dsr < 1:
        raise UserError(f"--min-dsr {min_dsr:g}: must be in [0, 1)")
    check_writable_file(config, "--config", (".yaml", ".yml"))
    r = _load_result(result)
    data: dict[str, Any] = {}
    if config.exists():
        try:
            loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise UserError(f"--config {config}: cannot be read as YAML "
                            f"({' '.join(str(exc).split())[:120]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"--config {config}: not a mapping of settings")
        data = loaded or {}
        settings(config)  # it must be a valid config before we touch it
    failed = gate(r, max_pbo, min_dsr)
    chosen = dict(r["chosen_params"])
    verdict = {"passed": not failed, "failed": failed, "params": chosen,
               "config": str(config)}
    if failed:
        if as_json:
            stdout_json(json.dumps(verdict, indent=2))
        else:
            for line in failed:
                err.print(f"[bold red]gate:[/] {escape(line)}", soft_wrap=True)
            err.print(f"nothing written to {escape(str(config))}", soft_wrap=True)
        raise typer.Exit(EXIT_NO)
    strategy = data.setdefault("strategy", {}) if isinstance(data.get("strategy", {}), dict) \
        else None
    if strategy is None:
        raise UserError(f"--config {config}: strategy is not a mapping")
    spec_strategy = r["spec"].get("strategy")
    if spec_strategy is None:
        strategy.update(dict(chosen.items()))
    else:
        strategy["path"] = spec_strategy
        strategy["params"] = chosen
        strategy.pop("kind", None) if strategy.get("kind") not in (None, "auto") else None
    text = yaml.safe_dump(data, sort_keys=False)
    tmp = config.with_name(f".{config.name}.optimize-tmp.yaml")
    tmp.write_text(text, encoding="utf-8")
    try:
        settings(tmp)
    except ValueError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"--config {config}: the result would make it invalid: {exc}") from None
    tmp.replace(config)
    if as_json:
        stdout_json(json.dumps(verdict, indent=2))
    else:
        console.print(f"gate passed; wrote {_params(chosen)} into {escape(str(config))}",
                      soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(optimize_app, name="optimize")


