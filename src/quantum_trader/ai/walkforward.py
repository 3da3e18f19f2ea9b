"""Walk-forward evaluation: purged, embargoed, forward-only splits; out-of-sample metrics and
backtests of the model next to baselines (buy-and-hold, flat, the rule-based strategy, and the
same model trained on shuffled labels).

Fold backtests run without the drawdown halt and the daily loss limit (``without_halt``): a
halt inside a fold censors its losses and not its gains. The model under the configured
limits is reported beside it (``model_risk_limits``).

Splits: bars ``[min_train_bars, n)`` are cut into ``folds`` contiguous test folds. A fold trains
on the bars before it (all of them when ``expanding``; the last ``train_bars`` when
``rolling``), minus
* **purged** rows — a training row whose label window ``t+1 .. t+h`` reaches into the test fold;
* **embargoed** rows — the ``embargo_bars`` bars right after each earlier test fold;
* rows still in feature warm-up and rows without a label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from quantum_trader.ai.artifact import ModelArtifact
from quantum_trader.ai.features import FloatArray
from quantum_trader.ai.models import make_model
from quantum_trader.ai.settings import AISettings
from quantum_trader.ai.signals import ModelSignalSource
from quantum_trader.config import Settings
from quantum_trader.marketdata.series import BarSeries

IntArray = npt.NDArray[np.int64]
Progress = Callable[[str], None]

BASELINES = ("buy_and_hold", "flat", "rule_based", "shuffled")
#: The model under the configured risk limits (its drawdown halt included), next to the
#: uncensored "model" the gate judges.
LIMITED = "model_risk_limits"


def without_halt(settings: Settings) -> Settings:
    """``settings`` with the drawdown breaker and the daily loss limit out of the way: a fold
    backtest judges the signals, and a halt would censor losses (every losing fold reads the
    breaker's -20%) and never gains."""
    risk = settings.risk.model_copy(update={"max_drawdown": 1.0, "daily_loss_limit": 1.0})
    return settings.model_copy(update={"risk": risk})


@dataclass(frozen=True)
class Split:
    fold: int
    train: IntArray  # row indices (before warm-up/label masking)
    test_start: int
    test_end: int  # exclusive


def fold_edges(n: int, folds: int, min_train: int) -> IntArray:
    """Where each test fold starts (and, last, where the data ends), in bars."""
    if n - min_train < folds:
        raise ValueError(f"{n} bars are too few for {folds} folds after {min_train} "
                         f"training bars")
    return np.linspace(min_train, n, folds + 1).astype(np.int64)


def splits_from_edges(edges: IntArray, horizon: int, embargo: int, mode: str = "expanding",
                      train_bars: int | None = None) -> list[Split]:
    out = []
    for k in range(len(edges) - 1):
        s, e = int(edges[k]), int(edges[k + 1])
        lo = 0 if mode == "expanding" else max(0, s - int(train_bars or s))
        idx = np.arange(lo, s, dtype=np.int64)
        keep = idx + horizon < s  # purge: label window t+1..t+h must end before the fold
        for j in range(k):
            ej = int(edges[j + 1])
            keep &= ~((idx >= ej) & (idx < ej + embargo))
        out.append(Split(k, idx[keep], s, e))
    return out


def make_splits(n: int, folds: int, min_train: int, horizon: int, embargo: int,
                mode: str = "expanding", train_bars: int | None = None) -> list[Split]:
    return splits_from_edges(fold_edges(n, folds, min_train), horizon, embargo, mode,
                             train_bars)


def pooled_splits(timelines: Sequence[IntArray], folds: int, min_train: int, horizon: int,
                  embargo: int, mode: str = "expanding",
                  train_bars: int | None = None) -> list[list[Split]]:
    """Per series, its splits on one shared calendar: the fold edges are cut on the union of
    the series' bar times, so test fold k is the same period in every series (a model pooled
    over symbols never trains on one symbol's bars from a period it is tested on in another).
    Purge and embargo then apply within each series. One series: ``make_splits``."""
    grid = timelines[0] if len(timelines) == 1 else np.unique(np.concatenate(timelines))
    edges = fold_edges(len(grid), folds, min_train)
    cuts = np.append(grid[edges[:-1]], grid[-1] + 1)  # the bar time each fold starts at
    return [splits_from_edges(np.searchsorted(ts, cuts, side="left").astype(np.int64),
                              horizon, embargo, mode, train_bars) for ts in timelines]


def reliability(y: FloatArray, p: FloatArray, bins: int = 10) -> list[dict[str, float]]:
    """The reliability curve: per bin of predicted probability, how many rows, their mean
    prediction and how often the label was 1 (a calibrated model has the two equal)."""
    m = ~np.isnan(y)
    y, p = y[m], p[m]
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        if n:
            out.append({"low": b / bins, "high": (b + 1) / bins, "n": float(n),
                        "mean_p": float(p[sel].mean()), "observed": float(y[sel].mean())})
    return out


def classification_metrics(y: FloatArray, p: FloatArray) -> dict[str, float]:
    """AUC, accuracy (p > 0.5), Brier score and row count over labelled rows."""
    from sklearn.metrics import roc_auc_score

    m = ~np.isnan(y)
    y, p = y[m], p[m]
    if len(y) == 0:
        return {"auc": math.nan, "accuracy": math.nan, "brier": math.nan, "n": 0.0}
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else math.nan
    return {"auc": auc, "accuracy": float(np.mean((p > 0.5) == (y > 0.5))),
            "brier": float(np.mean((p - y) ** 2)), "n": float(len(y))}


@dataclass
class BacktestSummary:
    total_return: float
    sharpe: float | None
    max_drawdown: float
    trades: int
    fees: float

    def to_dict(self) -> dict[str, Any]:
        return {"total_return": self.total_return, "sharpe": self.sharpe,
                "max_drawdown": self.max_drawdown, "trades": self.trades, "fees": self.fees}


@dataclass
class Curve:
    ts: IntArray
    equity: FloatArray  # starts at 1.0
    trades: int = 0
    fees: float = 0.0  # as a fraction of the initial balance


@dataclass
class FoldResult:
    fold: int
    train_rows: int
    test_rows: int
    train_first_ts: int
    train_last_ts: int
    test_first_ts: int
    test_last_ts: int
    metrics: dict[str, dict[str, float]]  # "model" / "shuffled" -> auc, accuracy, brier, n
    backtests: dict[str, BacktestSummary] = field(default_factory=dict)
    curves: dict[str, Curve] = field(default_factory=dict)
    importance: dict[str, float] = field(default_factory=dict)  # feature -> share, this fold


@dataclass
class WalkForwardResult:
    folds: list[FoldResult]
    overall: dict[str, dict[str, float]]  # "model" / "shuffled" -> metrics over all folds
    backtests: dict[str, BacktestSummary]  # "model" and each baseline, folds chained
    curves: dict[str, Curve]
    oos_index: IntArray
    oos_p: FloatArray
    calibration: list[dict[str, float]] = field(default_factory=list)

    def importance(self) -> dict[str, float]:
        """Each feature's share, averaged over the folds, largest first."""
        names = {n for f in self.folds for n in f.importance}
        mean = {n: sum(f.importance.get(n, 0.0) for f in self.folds) / len(self.folds)
                for n in names} if self.folds else {}
        return dict(sorted(mean.items(), key=lambda kv: (-kv[1], kv[0])))

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall,
            "calibration": self.calibration,
            "importance": self.importance(),
            "backtests": {k: v.to_dict() for k, v in self.backtests.items()},
            "folds": [{"fold": f.fold, "train_rows": f.train_rows, "test_rows": f.test_rows,
                       "train_first_ts": f.train_first_ts, "train_last_ts": f.train_last_ts,
                       "test_first_ts": f.test_first_ts, "test_last_ts": f.test_last_ts,
                       "metrics": f.metrics, "importance": f.importance,
                       "backtests": {k: v.to_dict() for k, v in f.backtests.items()}}
                      for f in self.folds],
        }


def walk_forward(series: Sequence[BarSeries], X: Sequence[FloatArray],
                 valid: Sequence[npt.NDArray[np.bool_]], y: Sequence[FloatArray],
                 settings: Settings, ai: AISettings,
                 progress: Progress | None = None) -> WalkForwardResult:
    """Out-of-sample evaluation of one model over ``series`` (one symbol, or several pooled:
    their rows trained on together, tested fold by fold on one calendar, backtested as one
    portfolio). ``X``, ``valid`` and ``y`` are per series."""
    wf = ai.walkforward
    splits = pooled_splits([s.ts for s in series], wf.folds, wf.min_train_bars,
                           ai.labels.horizon, wf.embargo_bars, wf.mode, wf.train_bars)
    usable = [v & ~np.isnan(t) for v, t in zip(valid, y, strict=True)]
    names = ai.features.names
    rng = np.random.default_rng(ai.seed)
    folds: list[FoldResult] = []
    oos_idx: list[IntArray] = []
    oos_y: list[FloatArray] = []
    oos_p: list[FloatArray] = []
    oos_ps: list[FloatArray] = []
    for k in range(wf.folds):
        sps = [per_series[k] for per_series in splits]
        if progress:
            progress(f"fold {k + 1}/{wf.folds}: training")
        trs = [sp.train[u[sp.train]] for sp, u in zip(sps, usable, strict=True)]
        tes = [np.arange(sp.test_start, sp.test_end, dtype=np.int64) for sp in sps]
        tes = [te[v[te]] for te, v in zip(tes, valid, strict=True)]
        X_tr = np.concatenate([x[tr] for x, tr in zip(X, trs, strict=True)])
        y_tr = np.concatenate([t[tr] for t, tr in zip(y, trs, strict=True)])
        X_te = np.concatenate([x[te] for x, te in zip(X, tes, strict=True)])
        y_te = np.concatenate([t[te] for t, te in zip(y, tes, strict=True)])
        model = make_model(ai.model, ai.seed, names)
        model.fit(X_tr, y_tr)
        shuffled = make_model(ai.model, ai.seed, names)
        shuffled.fit(X_tr, rng.permutation(y_tr))
        p = model.predict_proba(X_te)
        ps = shuffled.predict_proba(X_te)
        oos_idx.extend(tes)
        oos_y.append(y_te)
        oos_p.append(p)
        oos_ps.append(ps)
        trained = [(s, tr) for s, tr in zip(series, trs, strict=True) if len(tr)]
        tested = [(s, sp) for s, sp in zip(series, sps, strict=True)
                  if sp.test_end > sp.test_start]
        fr = FoldResult(
            k, len(y_tr), len(y_te), min(int(s.ts[tr[0]]) for s, tr in trained),
            max(int(s.ts[tr[-1]]) for s, tr in trained),
            min(int(s.ts[sp.test_start]) for s, sp in tested),
            max(int(s.ts[sp.test_end - 1]) for s, sp in tested),
            {"model": classification_metrics(y_te, p),
             "shuffled": classification_metrics(y_te, ps)},
            importance=dict(zip(names, (float(v) for v in model.importance()), strict=True)))
        if ai.backtest_folds:
            if progress:
                progress(f"fold {k + 1}/{wf.folds}: backtests")
            fold_bars = [s.slice(sp.test_start, sp.test_end) for s, sp in tested]
            warm = [s.slice(max(0, sp.test_start - 10 * ai.features.warmup), sp.test_start)
                    for s, sp in tested]
            free = without_halt(settings)
            for label, m in (("model", model), ("shuffled", shuffled)):
                art = ModelArtifact(m, ai.features, ai.signals, ai.model_name,
                                    f"{label}-fold{k}", ai.labels.horizon)
                fr.curves[label] = model_backtest(fold_bars, warm, art, free)
                if label == "model":
                    fr.curves[LIMITED] = model_backtest(fold_bars, warm, art, settings)
            fr.curves["rule_based"] = rule_based_backtest(fold_bars, free)
            fr.curves["buy_and_hold"] = buy_and_hold(fold_bars, settings.exchange.taker_fee)
            ts = fold_bars[0].ts if len(fold_bars) == 1 else \
                np.unique(np.concatenate([b.ts for b in fold_bars]))
            fr.curves["flat"] = Curve(ts + _tf(fold_bars[0]), np.ones(len(ts)))
            fr.backtests = {key: summarize(c, series[0].timeframe)
                            for key, c in fr.curves.items()}
        folds.append(fr)
    idx = np.concatenate(oos_idx)
    p_all = np.concatenate(oos_p)
    y_all = np.concatenate(oos_y)
    overall = {"model": classification_metrics(y_all, p_all),
               "shuffled": classification_metrics(y_all, np.concatenate(oos_ps))}
    curves: dict[str, Curve] = {}
    backtests: dict[str, BacktestSummary] = {}
    if ai.backtest_folds:
        for key in ("model", LIMITED, *BASELINES):
            curves[key] = chain([f.curves[key] for f in folds])
            backtests[key] = summarize(curves[key], series[0].timeframe)
    return WalkForwardResult(folds, overall, backtests, curves, idx, p_all,
                             reliability(y_all, p_all))


def _tf(series: BarSeries) -> int:
    from quantum_trader.domain.models import timeframe_ms

    return timeframe_ms(series.timeframe)


def model_backtest(bars: Sequence[BarSeries], warm: Sequence[BarSeries],
                   artifact: ModelArtifact, settings: Settings) -> Curve:
    """The model trading ``bars`` (one account over all of them) after warming up on
    ``warm``."""
    from quantum_trader.runtime.backtest import run_backtest

    src = ModelSignalSource(artifact)
    for w in warm:
        src.warm_up(list(w))
    res = run_backtest(list(bars), settings, src)
    return Curve(res.equity_ts, res.equity / settings.initial_balance, len(res.trades),
                 float(res.report.fees_paid) / settings.initial_balance)


def rule_based_backtest(bars: Sequence[BarSeries], settings: Settings) -> Curve:
    from quantum_trader.runtime.backtest import run_backtest

    res = run_backtest(list(bars), settings, None)  # None: the configured rule-based strategy
    return Curve(res.equity_ts, res.equity / settings.initial_balance, len(res.trades),
                 float(res.report.fees_paid) / settings.initial_balance)


def buy_and_hold(bars: Sequence[BarSeries], taker_fee: float) -> Curve:
    """All-in long at the first bar's close, taker fee in and out, marked at each close; for
    several series an equal-weight basket (each held from its own first bar, marked at its
    last close until its next bar)."""
    curves = [_buy_and_hold_one(b, taker_fee) for b in bars]
    if len(curves) == 1:
        return curves[0]
    ts = np.unique(np.concatenate([c.ts for c in curves]))
    eq = np.zeros(len(ts))
    for c in curves:
        at = np.searchsorted(c.ts, ts, side="right") - 1
        eq += np.where(at >= 0, c.equity[np.maximum(at, 0)], 1.0)
    return Curve(ts, eq / len(curves), len(curves), sum(c.fees for c in curves) / len(curves))


def _buy_and_hold_one(bars: BarSeries, taker_fee: float) -> Curve:
    c = np.asarray(bars.close, dtype=np.float64)
    eq = (1.0 - taker_fee) * c / c[0]
    eq[-1] *= 1.0 - taker_fee
    return Curve(bars.ts + _tf(bars), eq, 1, taker_fee * (1.0 + float(eq[-1])))


def chain(curves: list[Curve]) -> Curve:
    """Fold curves joined end to start (each fold starts with the last fold's equity)."""
    ts, eq = [], []
    level = 1.0
    for c in curves:
        ts.append(c.ts)
        eq.append(c.equity * level)
        level *= float(c.equity[-1]) if len(c.equity) else 1.0
    return Curve(np.concatenate(ts), np.concatenate(eq), sum(c.trades for c in curves),
                 sum(c.fees for c in curves))


def summarize(curve: Curve, timeframe: str) -> BacktestSummary:
    from quantum_trader.analytics.performance import periods_per_year

    eq = curve.equity
    if len(eq) < 2:
        return BacktestSummary(0.0, None, 0.0, curve.trades, curve.fees)
    r = np.diff(eq) / eq[:-1]
    sd = float(np.std(r, ddof=1))
    sharpe = None if sd == 0 or not math.isfinite(sd) else \
        float(np.mean(r)) / sd * math.sqrt(periods_per_year(timeframe))
    peak = np.maximum.accumulate(np.concatenate(([1.0], eq)))[1:]
    mdd = float(np.max(1.0 - eq / peak))
    return BacktestSummary(float(eq[-1] - 1.0), sharpe, mdd, curve.trades, curve.fees)
