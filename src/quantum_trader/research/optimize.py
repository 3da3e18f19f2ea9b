"""Nested walk-forward parameter optimisation on Optuna.

The bars (one calendar for every pair: the union of their bar times) are cut into ``windows``
consecutive test windows with ``ai.walkforward``'s ``fold_edges``/``splits_from_edges``; each
window's train part is everything before it (``anchored``) or the last ``train_bars``
(``rolling``), minus the ``purge`` bars right before the test window (and, with ``embargo``,
the bars right after each earlier test window). Window k's Optuna study (``<study>.w<k>``)
searches the strategy's declared parameter space on its train part; the best parameters
are then backtested on the test part, which no trial has seen (out of sample).

Scoring backtests run with the drawdown halt and the daily loss limit switched off
(``risk.max_drawdown`` and ``risk.daily_loss_limit`` 1.0): a halted run reads about the
halt's drawdown whatever its parameters, so a halt would censor the search. The final
out-of-sample chain is also run with the configured limits, and reported beside it.

Every backtest of a window starts ``warmup`` bars before the window with the strategy's
signals muted (its indicators warm up, nothing trades), and its equity is counted from the
window's first bar.

Workers: the trials of a study are run by any number of processes, on this host or others,
that share its Optuna storage. A worker only starts a trial while fewer than ``trials`` are
COMPLETE or running ahead of it (by trial number), so a study ends with exactly ``trials``
COMPLETE trials; a trial that was not needed is recorded PRUNED and counted nowhere.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from quantum_trader.ai.walkforward import Curve, buy_and_hold, chain, fold_edges, splits_from_edges
from quantum_trader.config import Settings
from quantum_trader.domain.models import Bar, Signal, timeframe_ms
from quantum_trader.domain.records import ClosedTrade
from quantum_trader.domain.strategy import (
    ChoiceParam,
    EmaCrossStrategy,
    FloatParam,
    IntParam,
    Param,
    ParamValue,
    SignalSource,
)
from quantum_trader.marketdata.series import BarSeries
from quantum_trader.research.stats import (
    deflated_sharpe,
    pbo_cscv,
    slice_stats,
    stability,
)

OBJECTIVES = ("sharpe", "sortino", "calmar", "profit_factor", "return")
SAMPLERS = ("tpe", "random", "grid")
MODES = ("anchored", "rolling")
WORST = -1e6  # an infeasible trial's score: below any feasible one
PF_CAP = 100.0  # a profit factor with no losing trade
BUILTIN = "ema_cross"
SPEC_FORMAT = 1


class OptimizeError(ValueError):
    """A study that cannot be run or continued as asked; the message names what."""


# --- what is optimised -------------------------------------------------------------------------
@dataclass(frozen=True)
class OptimizeSpec:
    """Everything a study's result depends on; stored with the study so that ``resume`` and
    other hosts run the same one. JSON-able."""

    data: list[str]
    timeframe: str | None = None
    timerange: str | None = None
    strategy: str | None = None  # a plugin spec; None: the built-in EMA cross
    fixed: dict[str, ParamValue] = field(default_factory=dict)  # not tuned
    space: dict[str, list[Any]] = field(default_factory=dict)  # narrowed ranges / choices
    objective: str = "sharpe"
    max_drawdown: float | None = None  # a constraint: trials deeper than this are infeasible
    min_trades: int = 1
    windows: int = 4
    mode: str = "anchored"
    train_bars: int | None = None  # rolling: the train part's length
    min_train_bars: int | None = None  # default: as many bars as one test window
    purge: int = 48
    embargo: int = 0
    warmup: int = 500
    trials: int = 50
    sampler: str = "tpe"
    seed: int = 0
    slices: int = 10  # CSCV time slices per study

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> OptimizeSpec:
        raw = json.loads(text)
        return cls(**raw)


def strategy_parameters(spec: str | None) -> tuple[Mapping[str, Param[Any]], Any]:
    """The declared parameters of the strategy ``spec`` names (None: the built-in), and its
    loaded class (None for the built-in)."""
    if spec is None:
        return EmaCrossStrategy.parameters, None
    from quantum_trader.strategies.loader import load_strategy

    loaded = load_strategy(spec, {}, origin="--strategy")
    return loaded.cls.parameters, loaded.cls


def builtin_configured(cfg: Settings) -> dict[str, ParamValue]:
    s = cfg.strategy
    return {"fast": s.fast, "slow": s.slow, "atr_period": s.atr_period,
            "atr_mult": s.atr_mult, "allow_short": s.allow_short}


def default_params(spec: OptimizeSpec, cfg: Settings) -> dict[str, ParamValue]:
    """The untuned values: the configured ones (strategy.* for the built-in; strategy.params
    when strategy.path names this strategy), else the declared defaults; fixed ones win."""
    declared, _ = strategy_parameters(spec.strategy)
    values: dict[str, ParamValue] = {n: p.default for n, p in declared.items()}
    if spec.strategy is None:
        values.update(builtin_configured(cfg))
    elif cfg.strategy.path == spec.strategy:
        values.update({k: declared[k].coerce(v) for k, v in cfg.strategy.params.items()
                       if k in declared})
    values.update(spec.fixed)
    return values


def tuned_space(spec: OptimizeSpec) -> dict[str, Param[Any]]:
    """The parameters searched, with their (possibly narrowed) ranges."""
    declared, _ = strategy_parameters(spec.strategy)
    out: dict[str, Param[Any]] = {}
    for name, p in declared.items():
        if name in spec.fixed:
            continue
        narrowed = spec.space.get(name)
        if narrowed is None:
            out[name] = p
        elif isinstance(p, IntParam):
            out[name] = IntParam(int(narrowed[0]), int(narrowed[0]), int(narrowed[1]))
        elif isinstance(p, FloatParam):
            out[name] = FloatParam(float(narrowed[0]), float(narrowed[0]), float(narrowed[1]))
        else:
            out[name] = ChoiceParam(narrowed[0], tuple(narrowed))
    if not out:
        raise OptimizeError("nothing to tune: every parameter is fixed with --param")
    return out


def make_source(spec: OptimizeSpec, params: Mapping[str, ParamValue], cfg: Settings
                ) -> SignalSource:
    """A fresh signal source with ``params``; raises ``ValueError`` for values (or a
    combination) the strategy refuses."""
    ttl = cfg.strategy.signal_ttl_ms
    if spec.strategy is None:
        p = dict(params)
        return EmaCrossStrategy(fast=int(p["fast"]), slow=int(p["slow"]),
                                atr_period=int(p["atr_period"]), atr_mult=float(p["atr_mult"]),
                                signal_ttl_ms=ttl, allow_short=bool(p["allow_short"]))
    from quantum_trader.strategies.adapter import StrategySource

    _, cls = strategy_parameters(spec.strategy)
    from quantum_trader.domain.strategy import resolve_params

    try:
        return StrategySource(cls, resolve_params(cls.parameters, params), ttl)
    except ValueError:
        raise
    except Exception as exc:  # setup() refusing a combination
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def scoring_settings(cfg: Settings) -> Settings:
    """``cfg`` with the drawdown halt and the daily loss limit off (module docstring)."""
    risk = cfg.risk.model_copy(update={"max_drawdown": 1.0, "daily_loss_limit": 1.0})
    return cfg.model_copy(update={"risk": risk})


# --- windows -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    index: int  # 1-based
    train: list[tuple[int, int]]  # [start, end) open times of each contiguous train part
    test: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"train": [list(t) for t in self.train], "test": list(self.test)}


def calendar(series: Sequence[BarSeries]) -> np.ndarray:
    return series[0].ts if len(series) == 1 else np.unique(np.concatenate([s.ts for s in
                                                                          series]))


def make_windows(series: Sequence[BarSeries], spec: OptimizeSpec) -> list[Window]:
    grid = calendar(series)
    n = len(grid)
    tf = timeframe_ms(series[0].timeframe)
    min_train = spec.min_train_bars or max(1, n // (spec.windows + 1))
    try:
        edges = fold_edges(n, spec.windows, min_train)
    except ValueError as exc:
        raise OptimizeError(f"--windows {spec.windows}: {exc}") from None
    mode = "expanding" if spec.mode == "anchored" else "rolling"
    out = []
    for sp in splits_from_edges(edges, spec.purge, spec.embargo, mode, spec.train_bars):
        idx = sp.train
        if len(idx) < 2:
            raise OptimizeError(f"--windows {spec.windows}: window {sp.fold + 1} has no train "
                                f"bars left after --purge {spec.purge} and --embargo "
                                f"{spec.embargo}: use fewer windows, a shorter purge or more "
                                "data")
        breaks = np.flatnonzero(np.diff(idx) > 1)
        starts = np.concatenate(([0], breaks + 1))
        ends = np.concatenate((breaks, [len(idx) - 1]))
        train = [(int(grid[idx[a]]), int(grid[idx[b]]) + tf) for a, b in zip(starts, ends,
                                                                           strict=True)]
        test_end = int(grid[sp.test_end - 1]) + tf
        out.append(Window(sp.fold + 1, train, (int(grid[sp.test_start]), test_end)))
    return out


# --- backtests of a period ---------------------------------------------------------------------
class Muted:
    """A source whose signals are dropped before ``until`` (its indicators still see every
    bar): the warm-up before a window."""

    def __init__(self, inner: SignalSource, until: int) -> None:
        self.inner = inner
        self.until = until
        self.name = inner.name

    def on_bar(self, bar: Bar) -> Signal | None:
        out = self.inner.on_bar(bar)
        return None if bar.ts < self.until else out


@dataclass
class Period:
    curve: Curve  # equity from 1.0
    trades: list[ClosedTrade]
    halts: int = 0


def backtest_period(series: Sequence[BarSeries], start: int, end: int, warmup: int,
                    cfg: Settings, source: SignalSource) -> Period:
    """``source`` trading the bars opened in [start, end), after ``warmup`` muted bars."""
    from quantum_trader.runtime.backtest import run_backtest

    parts = []
    for s in series:
        i0 = int(np.searchsorted(s.ts, start, side="left"))
        i1 = int(np.searchsorted(s.ts, end, side="left"))
        if i1 > i0:
            parts.append(s.slice(max(0, i0 - warmup), i1))
    if not parts:
        raise OptimizeError("a window without bars")
    res = run_backtest(parts, cfg, Muted(source, start))
    tf = timeframe_ms(series[0].timeframe)
    keep = res.equity_ts >= start + tf
    eq = res.equity[keep] / cfg.initial_balance
    return Period(Curve(res.equity_ts[keep], eq, len(res.trades),
                        float(res.report.fees_paid) / cfg.initial_balance),
                  list(res.trades), len(res.state_changes))


def backtest_parts(series: Sequence[BarSeries], parts: Sequence[tuple[int, int]], warmup: int,
                   cfg: Settings, make: Callable[[], SignalSource]) -> Period:
    """Several periods, each with a fresh source and account, chained."""
    done = [backtest_period(series, a, b, warmup, cfg, make()) for a, b in parts]
    if len(done) == 1:
        return done[0]
    return Period(chain([p.curve for p in done]), [t for p in done for t in p.trades],
                  sum(p.halts for p in done))


def returns_of(curve: Curve) -> np.ndarray:
    eq = np.concatenate(([1.0], curve.equity))
    return np.diff(eq) / eq[:-1]


def metrics(curve: Curve, trades: Sequence[ClosedTrade] | None, timeframe: str
            ) -> dict[str, Any]:
    """Return, Sharpe, Sortino (annualised), CAGR, Calmar, max drawdown, profit factor and
    trade count of a curve from 1.0 (``trades`` None: no trade list, e.g. buy-and-hold)."""
    from quantum_trader.analytics.performance import periods_per_year

    r = returns_of(curve)
    ppy = periods_per_year(timeframe)
    eq = curve.equity
    total = float(eq[-1] - 1.0) if len(eq) else 0.0
    sd = float(np.std(r, ddof=1)) if len(r) > 1 else 0.0
    sharpe = float(np.mean(r)) / sd * math.sqrt(ppy) if sd > 1e-15 else None
    down = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2))) if len(r) else 0.0
    sortino = float(np.mean(r)) / down * math.sqrt(ppy) if down > 1e-15 else None
    peak = np.maximum.accumulate(np.concatenate(([1.0], eq)))
    mdd = float(np.max(1.0 - np.concatenate(([1.0], eq)) / peak)) if len(eq) else 0.0
    years = len(r) / ppy
    cagr = (float(eq[-1]) ** (1.0 / years) - 1.0) if years > 0 and len(eq) and eq[-1] > 0 \
        else None
    calmar = cagr / mdd if cagr is not None and mdd > 1e-12 else None
    pf: float | None = None
    n_trades = curve.trades
    if trades is not None:
        n_trades = len(trades)
        wins = sum(t.net_pnl for t in trades if t.net_pnl > 0)
        losses = -sum(t.net_pnl for t in trades if t.net_pnl < 0)
        pf = (min(wins / losses, PF_CAP) if losses > 0 else (PF_CAP if wins > 0 else None))
    return {"return": total, "sharpe": sharpe, "sortino": sortino, "cagr": cagr,
            "calmar": calmar, "max_drawdown": mdd, "profit_factor": pf, "trades": n_trades,
            "fees": curve.fees, "bars": len(eq)}


def score(m: Mapping[str, Any], spec: OptimizeSpec) -> tuple[float, str | None]:
    """The objective's value, or ``WORST`` and why the result is infeasible."""
    if m["trades"] < spec.min_trades:
        return WORST, f"{m['trades']} trades < --min-trades {spec.min_trades}"
    if spec.max_drawdown is not None and m["max_drawdown"] > spec.max_drawdown:
        return WORST, f"max drawdown {m['max_drawdown']:.1%} > --max-drawdown " \
                      f"{spec.max_drawdown:.1%}"
    value = m[spec.objective]
    if value is None or not math.isfinite(value):
        return WORST, f"{spec.objective} undefined"
    return float(value), None


# --- storage and studies -----------------------------------------------------------------------
def storage_for(url: str) -> Any:
    """An Optuna storage: a database URL (``postgresql://…``, ``sqlite:///…``) or a journal
    file (any other path)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if "://" in url:
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        import time
        import warnings

        import sqlalchemy.exc

        # Workers started together on a new database race to create Optuna's tables; the
        # loser's CREATE fails on PostgreSQL's catalog (pg_type_typname_nsp_index) and, once
        # the winner is done, the tables are there: try again.
        for attempt in range(5):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, heartbeat_interval=15,
                                                      grace_period=60)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(url))


def masked(url: str) -> str:
    """A storage URL without its password."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in creds else ''}@{host}"


def window_study_name(study: str, k: int) -> str:
    return f"{study}.w{k}"


def open_meta(storage: Any, study: str, spec: OptimizeSpec | None, fingerprint: str | None
              ) -> tuple[OptimizeSpec, str]:
    """The study's stored spec and data fingerprint; with ``spec`` given, stores it on a new
    study, or checks that an existing one ran the same (so hosts and resumes agree)."""
    import optuna

    if spec is None:
        try:
            meta = optuna.load_study(study_name=study, storage=storage)
        except KeyError:
            raise OptimizeError(f"--study {study}: no such study in that storage") from None
        attrs = meta.user_attrs
        if "spec" not in attrs:
            raise OptimizeError(f"--study {study}: not a quantum-trader optimize study")
        return OptimizeSpec.from_json(attrs["spec"]), str(attrs["fingerprint"])
    meta = optuna.create_study(study_name=study, storage=storage, load_if_exists=True,
                               direction="maximize")
    attrs = meta.user_attrs
    if "spec" not in attrs:
        meta.set_user_attr("spec", spec.to_json())
        meta.set_user_attr("fingerprint", fingerprint)
        meta.set_user_attr("format", SPEC_FORMAT)
        return spec, str(fingerprint)
    stored = OptimizeSpec.from_json(attrs["spec"])
    if stored != spec:
        mine, theirs = asdict(spec), asdict(stored)
        diff = ", ".join(f"{k}: {theirs[k]!r} there, {mine[k]!r} here" for k in mine
                         if mine[k] != theirs[k])
        raise OptimizeError(f"--study {study} exists with other settings ({diff}): use "
                            f"another --study, or `optimize resume` to continue it")
    if attrs.get("fingerprint") != fingerprint:
        raise OptimizeError(f"--study {study} was started on other bars (data sha256 "
                            f"{str(attrs.get('fingerprint'))[:12]}…, here "
                            f"{str(fingerprint)[:12]}…): every host must have the same data")
    return stored, str(fingerprint)


def fail_running(storage: Any, study: str, windows: int) -> int:
    """Mark the RUNNING trials of a study's windows FAIL (their workers are gone: resume)."""
    import optuna
    from optuna.trial import TrialState

    n = 0
    for k in range(1, windows + 1):
        try:
            st = optuna.load_study(study_name=window_study_name(study, k), storage=storage)
        except KeyError:
            continue
        for t in st.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            n += 1
    return n


def complete_trials(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return list(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


# --- a worker --------------------------------------------------------------------------------
@dataclass
class WorkerJob:
    storage_url: str
    study: str  # the window's study
    spec: OptimizeSpec
    settings: Settings  # the scoring settings
    series: list[BarSeries]
    train: list[tuple[int, int]]
    worker: int = 0
    shared: bool = False  # other hosts may work on it (seeds differ per host)


def _seed(job: WorkerJob) -> int:
    host = zlib.crc32(socket.gethostname().encode()) if job.shared else 0
    return (job.spec.seed + 7919 * job.worker + host + zlib.crc32(job.study.encode())) \
        % (2 ** 31)


def sampler_for(spec: OptimizeSpec, space: Mapping[str, Param[Any]], seed: int) -> Any:
    import optuna

    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "grid":
        grid: dict[str, list[Any]] = {}
        for name, p in space.items():
            if isinstance(p, IntParam):
                # Every value of a short range; else 8 points across it.
                grid[name] = list(range(p.low, p.high + 1)) if p.high - p.low < 16 else \
                    sorted({round(v) for v in np.linspace(p.low, p.high, 8)})
            elif isinstance(p, FloatParam):
                grid[name] = [float(v) for v in np.linspace(p.low, p.high, 5)]
            else:
                grid[name] = list(p.choices)  # type: ignore[attr-defined]
        return optuna.samplers.GridSampler(grid, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2,
                                                                        spec.trials // 3)))


def suggest(trial: Any, space: Mapping[str, Param[Any]]) -> dict[str, ParamValue]:
    out: dict[str, ParamValue] = {}
    for name, p in space.items():
        if isinstance(p, IntParam):
            out[name] = trial.suggest_int(name, p.low, p.high)
        elif isinstance(p, FloatParam):
            out[name] = trial.suggest_float(name, p.low, p.high)
        elif isinstance(p, ChoiceParam):
            out[name] = trial.suggest_categorical(name, list(p.choices))
    return out


def evaluate(job: WorkerJob, params: Mapping[str, ParamValue]) -> tuple[float, dict[str, Any]]:
    """One trial: the train part's backtest with ``params``; its score and what it stores."""
    spec = job.spec
    try:
        make_source(spec, params, job.settings)
    except ValueError as exc:
        return WORST, {"infeasible": f"refused: {' '.join(str(exc).split())}"}
    period = backtest_parts(job.series, job.train, spec.warmup, job.settings,
                            lambda: make_source(spec, params, job.settings))
    m = metrics(period.curve, period.trades, job.series[0].timeframe)
    value, why = score(m, spec)
    r = returns_of(period.curve)
    sd = float(np.std(r, ddof=1)) if len(r) > 1 else 0.0
    attrs: dict[str, Any] = {
        "metrics": {k: v for k, v in m.items() if k != "bars"},
        "slices": slice_stats(r, spec.slices),
        "sr": float(np.mean(r)) / sd if sd > 1e-15 else 0.0,  # per bar, for the DSR
    }
    if why is not None:
        attrs["infeasible"] = why
    return value, attrs


def run_worker(job: WorkerJob, on_trial: Callable[[Any], None] | None = None) -> int:
    """Run trials of ``job.study`` until it has ``spec.trials`` COMPLETE ones (module
    docstring); returns how many this worker completed."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage_for(job.storage_url)
    space = tuned_space(job.spec)
    study = optuna.load_study(study_name=job.study, storage=storage,
                              sampler=sampler_for(job.spec, space, _seed(job)))
    target = job.spec.trials
    me = f"{socket.gethostname()}:{os.getpid()}"
    mine = 0

    def objective(trial: Any) -> float:
        live = study.get_trials(deepcopy=False,
                                states=(TrialState.COMPLETE, TrialState.RUNNING))
        ahead = sum(1 for t in live if t.state == TrialState.COMPLETE
                    or t.number < trial.number)
        if ahead >= target:
            raise optuna.TrialPruned("the study has its trials")
        params = suggest(trial, space)
        value, attrs = evaluate(job, params)
        trial.set_user_attr("worker", me)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        return value

    while True:
        live = study.get_trials(deepcopy=False,
                                states=(TrialState.COMPLETE, TrialState.RUNNING))
        done = sum(1 for t in live if t.state == TrialState.COMPLETE)
        if done >= target:
            return mine
        if len(live) >= target:  # the rest are running in other workers
            if isinstance(storage, optuna.storages.RDBStorage):
                optuna.storages.fail_stale_trials(study)
            time.sleep(0.2)
            continue
        before = len(study.trials)
        study.optimize(objective, n_trials=1, catch=())
        last = study.trials[before:] if len(study.trials) > before else []
        for t in last:
            if t.state == TrialState.COMPLETE and t.user_attrs.get("worker") == me:
                mine += 1
                if on_trial is not None:
                    on_trial(t)


def _worker_main(job: WorkerJob) -> None:  # a spawned process
    run_worker(job)


# --- the nested walk-forward -------------------------------------------------------------------
@dataclass
class WindowResult:
    window: Window
    trials: int
    best_params: dict[str, ParamValue]
    in_sample: float
    in_sample_metrics: dict[str, Any]
    oos: dict[str, Any]  # tuned, defaults, buy_and_hold, tuned_configured: metrics
    oos_score: float
    defaults_score: float
    pbo: dict[str, Any] | None
    curves: dict[str, Curve]
    returns_tuned: np.ndarray
    trial_srs: list[float]


Progress = Callable[[int, int, float | None], None]  # window, COMPLETE trials, best value


def optimize_window(window: Window, spec: OptimizeSpec, cfg: Settings,
                    series: Sequence[BarSeries], storage_url: str, study: str, jobs: int,
                    shared: bool, progress: Progress | None = None) -> WindowResult:
    import multiprocessing

    import optuna

    name = window_study_name(study, window.index)
    storage = storage_for(storage_url)
    st = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                             direction="maximize")
    st.set_user_attr("window", window.to_dict())
    scoring = scoring_settings(cfg)
    job = WorkerJob(storage_url, name, spec, scoring, list(series), window.train, 0, shared)

    def best_value() -> float | None:
        done = complete_trials(st)
        return max(t.value for t in done) if done else None

    if jobs <= 1:
        def tick(_: Any) -> None:
            if progress is not None:
                progress(window.index, len(complete_trials(st)), best_value())

        tick(None)
        run_worker(job, tick)
    else:
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker_main, args=(WorkerJob(
            storage_url, name, spec, scoring, list(series), window.train, i, shared),),
            daemon=True) for i in range(jobs)]
        for p in procs:
            p.start()
        try:
            while any(p.is_alive() for p in procs):
                if progress is not None:
                    progress(window.index, len(complete_trials(st)), best_value())
                time.sleep(0.3)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                p.join()
        bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
        if bad and len(complete_trials(st)) < spec.trials:
            raise OptimizeError(f"study {name}: a worker exited with code {bad[0]} before "
                                f"the study had its {spec.trials} trials (`optimize resume` "
                                "continues it)")
    done = complete_trials(st)
    if progress is not None:
        progress(window.index, len(done), best_value())
    if len(done) < spec.trials:
        raise OptimizeError(f"study {name}: {len(done)} of {spec.trials} trials complete")
    best = max(done, key=lambda t: (t.value, -t.number))
    defaults = default_params(spec, cfg)
    best_params: dict[str, ParamValue] = {**defaults, **best.params}
    tf = series[0].timeframe
    a, b = window.test
    periods = {
        "tuned": backtest_period(series, a, b, spec.warmup, scoring,
                                 make_source(spec, best_params, cfg)),
        "defaults": backtest_period(series, a, b, spec.warmup, scoring,
                                    make_source(spec, defaults, cfg)),
        "tuned_configured": backtest_period(series, a, b, spec.warmup, cfg,
                                            make_source(spec, best_params, cfg)),
    }
    tests = [s.slice(int(np.searchsorted(s.ts, a)), int(np.searchsorted(s.ts, b)))
             for s in series]
    bh = buy_and_hold([t for t in tests if len(t)], cfg.exchange.taker_fee)
    oos: dict[str, Any] = {k: metrics(p.curve, p.trades, tf) for k, p in periods.items()}
    oos["tuned_configured"]["halts"] = periods["tuned_configured"].halts
    oos["buy_and_hold"] = metrics(bh, None, tf)
    curves = {k: p.curve for k, p in periods.items()}
    curves["buy_and_hold"] = bh
    stats = [t.user_attrs["slices"] for t in done if "slices" in t.user_attrs]
    pbo = pbo_cscv(stats).to_dict() if len(stats) >= 2 and spec.slices >= 2 else None
    return WindowResult(window, len(done), best_params, float(best.value),
                        dict(best.user_attrs.get("metrics", {})), oos,
                        score(oos["tuned"], spec)[0], score(oos["defaults"], spec)[0], pbo,
                        curves, returns_of(periods["tuned"].curve),
                        [float(t.user_attrs.get("sr", 0.0)) for t in done])


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        return _clean(v.item())
    return v


def summarize(results: Sequence[WindowResult], spec: OptimizeSpec, cfg: Settings,
              timeframe: str) -> dict[str, Any]:
    """The report: per window, the chained out-of-sample curves, stability, PBO, DSR."""
    from quantum_trader.analytics.tables import fmt_ts

    chained = {k: chain([r.curves[k] for r in results])
               for k in ("tuned", "defaults", "buy_and_hold", "tuned_configured")}
    oos = {k: metrics(c, None, timeframe) for k, c in chained.items()}
    for k in ("tuned", "defaults", "tuned_configured"):
        oos[k]["trades"] = sum(r.oos[k]["trades"] for r in results)
        pfs = [r.oos[k]["profit_factor"] for r in results]
        oos[k]["profit_factor"] = None if any(p is None for p in pfs) else \
            float(np.mean([float(p) for p in pfs]))
    oos["tuned_configured"]["halts"] = sum(r.oos["tuned_configured"]["halts"]
                                           for r in results)
    trials_total = sum(r.trials for r in results)
    variances = [float(np.var(r.trial_srs, ddof=1)) for r in results if len(r.trial_srs) > 1]
    dsr = deflated_sharpe(np.concatenate([r.returns_tuned for r in results]), trials_total,
                          float(np.mean(variances)) if variances else 0.0)
    pbos = [r.pbo["pbo"] for r in results if r.pbo is not None]
    chosen = results[-1].best_params
    cleaned: dict[str, Any] = _clean({
        "objective": spec.objective,
        "windows": [{
            "window": r.window.index,
            "train": [{"first": fmt_ts(a), "end": fmt_ts(b)} for a, b in r.window.train],
            "test": {"first": fmt_ts(r.window.test[0]), "end": fmt_ts(r.window.test[1])},
            "trials": r.trials, "best_params": r.best_params,
            "in_sample": r.in_sample, "out_of_sample": r.oos_score,
            "defaults_out_of_sample": r.defaults_score,
            "in_sample_metrics": r.in_sample_metrics, "oos": r.oos, "pbo": r.pbo,
        } for r in results],
        "oos": oos,
        "chained_equity": {k: {"ts": [int(x) for x in c.ts[:: max(1, len(c.ts) // 500)]],
                               "equity": [float(x) for x in
                                          c.equity[:: max(1, len(c.ts) // 500)]]}
                           for k, c in chained.items()},
        "stability": stability([r.best_params for r in results]),
        "pbo": {"pbo": float(np.mean(pbos)) if pbos else None, "per_window": pbos},
        "deflated_sharpe": dsr.to_dict(),
        "trials_total": trials_total,
        "chosen_params": chosen,
        "defaults": default_params(spec, cfg),
    })
    return cleaned


# --- the gate ----------------------------------------------------------------------------------
def _cmp_key(objective: str) -> str:
    return "return" if objective == "profit_factor" else objective


def gate(result: Mapping[str, Any], max_pbo: float, min_dsr: float) -> list[str]:
    """Every criterion the result fails (empty: it passes)."""
    failed = []
    oos = result["oos"]
    key = _cmp_key(str(result.get("objective", "sharpe")))

    def val(k: str) -> float:
        v = oos[k].get(key)
        return float(v) if v is not None else -math.inf

    tuned = val("tuned")
    for other, label in (("defaults", "the untuned defaults"),
                         ("buy_and_hold", "buy-and-hold")):
        if not tuned > val(other):
            failed.append(f"out of sample the tuned parameters do not beat {label} after fees "
                          f"({key} {_show(oos['tuned'].get(key))} vs "
                          f"{_show(oos[other].get(key))})")
    pbo = result.get("pbo", {}).get("pbo")
    if pbo is None or not pbo < max_pbo:
        failed.append(f"probability of backtest overfitting {_show(pbo)} is not below "
                      f"--max-pbo {max_pbo:g}")
    dsr = result.get("deflated_sharpe", {}).get("dsr")
    if dsr is None or not dsr > min_dsr:
        failed.append(f"deflated Sharpe ratio {_show(dsr)} is not above --min-dsr {min_dsr:g}")
    return failed


def _show(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3g}"
