"""Walk-forward evaluation: purged, embargoed, forward-only splits; out-of-sample metrics and
backtests of the model next to baselines (buy-and-hold, flat, the rule-based strategy, and the
same model trained on shuffled labels).

Splits: bars ``[min_train_bars, n)`` are cut into ``folds`` contiguous test folds. A fold trains
on the bars before it (all of them when ``expanding``; the last ``train_bars`` when
``rolling``), minus
* **purged** rows — a training row whose label window ``t+1 .. t+h`` reaches into the test fold;
* **embargoed** rows — the ``embargo_bars`` bars right after each earlier test fold;
* rows still in feature warm-up and rows without a label.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


@dataclass(frozen=True)
class Split:
    fold: int
    train: IntArray  # row indices (before warm-up/label masking)
    test_start: int
    test_end: int  # exclusive


def make_splits(n: int, folds: int, min_train: int, horizon: int, embargo: int,
                mode: str = "expanding", train_bars: int | None = None) -> list[Split]:
    if n - min_train < folds:
        raise ValueError(f"{n} bars are too few for {folds} folds after {min_train} "
                         f"training bars")
    edges = np.linspace(min_train, n, folds + 1).astype(np.int64)
    out = []
    for k in range(folds):
        s, e = int(edges[k]), int(edges[k + 1])
        lo = 0 if mode == "expanding" else max(0, s - int(train_bars or s))
        idx = np.arange(lo, s, dtype=np.int64)
        keep = idx + horizon < s  # purge: label window t+1..t+h must end before the fold
        for j in range(k):
            ej = int(edges[j + 1])
            keep &= ~((idx >= ej) & (idx < ej + embargo))
        out.append(Split(k, idx[keep], s, e))
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


@dataclass
class WalkForwardResult:
    folds: list[FoldResult]
    overall: dict[str, dict[str, float]]  # "model" / "shuffled" -> metrics over all folds
    backtests: dict[str, BacktestSummary]  # "model" and each baseline, folds chained
    curves: dict[str, Curve]
    oos_index: IntArray
    oos_p: FloatArray

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall,
            "backtests": {k: v.to_dict() for k, v in self.backtests.items()},
            "folds": [{"fold": f.fold, "train_rows": f.train_rows, "test_rows": f.test_rows,
                       "train_first_ts": f.train_first_ts, "train_last_ts": f.train_last_ts,
                       "test_first_ts": f.test_first_ts, "test_last_ts": f.test_last_ts,
                       "metrics": f.metrics,
                       "backtests": {k: v.to_dict() for k, v in f.backtests.items()}}
                      for f in self.folds],
        }


def walk_forward(series: BarSeries, X: FloatArray, valid: npt.NDArray[np.bool_], y: FloatArray,
                 settings: Settings, ai: AISettings,
                 progress: Progress | None = None) -> WalkForwardResult:
    wf = ai.walkforward
    splits = make_splits(len(series), wf.folds, wf.min_train_bars, ai.labels.horizon,
                         wf.embargo_bars, wf.mode, wf.train_bars)
    usable = valid & ~np.isnan(y)
    names = ai.features.names
    rng = np.random.default_rng(ai.seed)
    folds: list[FoldResult] = []
    oos_idx: list[IntArray] = []
    oos_p: list[FloatArray] = []
    oos_ps: list[FloatArray] = []
    for sp in splits:
        if progress:
            progress(f"fold {sp.fold + 1}/{len(splits)}: training")
        tr = sp.train[usable[sp.train]]
        te = np.arange(sp.test_start, sp.test_end, dtype=np.int64)
        te = te[valid[te]]
        model = make_model(ai.model, ai.seed, names)
        model.fit(X[tr], y[tr])
        shuffled = make_model(ai.model, ai.seed, names)
        shuffled.fit(X[tr], rng.permutation(y[tr]))
        p = model.predict_proba(X[te])
        ps = shuffled.predict_proba(X[te])
        oos_idx.append(te)
        oos_p.append(p)
        oos_ps.append(ps)
        fr = FoldResult(
            sp.fold, len(tr), len(te), int(series.ts[tr[0]]), int(series.ts[tr[-1]]),
            int(series.ts[sp.test_start]), int(series.ts[sp.test_end - 1]),
            {"model": classification_metrics(y[te], p),
             "shuffled": classification_metrics(y[te], ps)})
        if ai.backtest_folds:
            if progress:
                progress(f"fold {sp.fold + 1}/{len(splits)}: backtests")
            fold_bars = series.slice(sp.test_start, sp.test_end)
            warm = series.slice(max(0, sp.test_start - 10 * ai.features.warmup), sp.test_start)
            for label, m in (("model", model), ("shuffled", shuffled)):
                art = ModelArtifact(m, ai.features, ai.signals, ai.model_name,
                                    f"{label}-fold{sp.fold}", ai.labels.horizon)
                fr.curves[label] = model_backtest(fold_bars, warm, art, settings)
            fr.curves["rule_based"] = rule_based_backtest(fold_bars, settings)
            fr.curves["buy_and_hold"] = buy_and_hold(fold_bars, settings.exchange.taker_fee)
            fr.curves["flat"] = Curve(fold_bars.ts + _tf(fold_bars), np.ones(len(fold_bars)))
            fr.backtests = {k: summarize(c, series.timeframe) for k, c in fr.curves.items()}
        folds.append(fr)
    idx = np.concatenate(oos_idx)
    p_all = np.concatenate(oos_p)
    overall = {"model": classification_metrics(y[idx], p_all),
               "shuffled": classification_metrics(y[idx], np.concatenate(oos_ps))}
    curves: dict[str, Curve] = {}
    backtests: dict[str, BacktestSummary] = {}
    if ai.backtest_folds:
        for key in ("model", *BASELINES):
            curves[key] = chain([f.curves[key] for f in folds])
            backtests[key] = summarize(curves[key], series.timeframe)
    return WalkForwardResult(folds, overall, backtests, curves, idx, p_all)


def _tf(series: BarSeries) -> int:
    from quantum_trader.domain.models import timeframe_ms

    return timeframe_ms(series.timeframe)


def model_backtest(bars: BarSeries, warm: BarSeries, artifact: ModelArtifact,
                   settings: Settings) -> Curve:
    from quantum_trader.runtime.backtest import run_backtest

    src = ModelSignalSource(artifact)
    src.warm_up(list(warm))
    res = run_backtest([bars], settings, src)
    return Curve(res.equity_ts, res.equity / settings.initial_balance, len(res.trades),
                 float(res.report.fees_paid) / settings.initial_balance)


def rule_based_backtest(bars: BarSeries, settings: Settings) -> Curve:
    from quantum_trader.runtime.backtest import run_backtest

    res = run_backtest([bars], settings, None)  # None: the configured rule-based strategy
    return Curve(res.equity_ts, res.equity / settings.initial_balance, len(res.trades),
                 float(res.report.fees_paid) / settings.initial_balance)


def buy_and_hold(bars: BarSeries, taker_fee: float) -> Curve:
    """All-in long at the first bar's close, taker fee in and out, marked at each close."""
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
