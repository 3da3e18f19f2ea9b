"""Training entry point: walk-forward evaluation, leakage checks, final fit, registry artifact.

``train(series, settings, ai_settings, registry)`` is deterministic: the same bars, settings and
seed give the same model file and the same ``manifest_hash``. Several series are pooled into one
model (see ``train``).
"""

from __future__ import annotations

import hashlib
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantum_trader.ai.features import FeatureState, compute_features
from quantum_trader.ai.labels import cost_threshold, make_labels
from quantum_trader.ai.models import make_model
from quantum_trader.ai.registry import ModelRegistry, gate_reasons
from quantum_trader.ai.settings import AISettings
from quantum_trader.ai.walkforward import (
    BASELINES,
    LIMITED,
    WalkForwardResult,
    make_splits,
    walk_forward,
)
from quantum_trader.config import Settings
from quantum_trader.marketdata.series import BarSeries

if TYPE_CHECKING:
    from quantum_trader.analytics.tables import FittedTable

Progress = Callable[[str], None]


def data_fingerprint(series: BarSeries) -> str:
    h = hashlib.sha256(f"{series.symbol}|{series.timeframe}|{len(series)}".encode())
    for col in (series.ts, series.open, series.high, series.low, series.close, series.volume):
        h.update(np.ascontiguousarray(col).tobytes())
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import lightgbm
    import sklearn

    return {"python": platform.python_version(), "numpy": np.__version__,
            "lightgbm": lightgbm.__version__, "scikit-learn": sklearn.__version__}


def perturb_after(series: BarSeries, t: int, seed: int = 0) -> BarSeries:
    """A copy whose bars after index ``t`` are randomly rescaled (still valid bars)."""
    rng = np.random.default_rng(seed)
    n = len(series) - t - 1
    f = np.ones(len(series))
    g = np.ones(len(series))
    if n > 0:
        f[t + 1:] = np.exp(rng.normal(0, 0.05, n))
        g[t + 1:] = np.exp(rng.normal(0, 0.5, n))
    return BarSeries(series.symbol, series.timeframe, series.ts.copy(), series.open * f,
                     series.high * f, series.low * f, series.close * f, series.volume * g)


def leakage_checks(series: BarSeries, ai: AISettings, taker_fee: float,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Perturb the future and check nothing at or before ``t`` moves.

    * ``features``: rows ``<= t`` of the feature matrix are bit-identical;
    * ``feature_parity``: the incremental features equal the vectorized ones (1e-9);
    * ``labels``: every label whose window ends at ``<= t`` (all a model trained at ``t`` may
      use) is unchanged, and every walk-forward fold's training labels end before its test fold;
    * ``predictions``: a model trained at ``t`` gives identical predictions for rows ``<= t``.
    """
    spec, h = ai.features, ai.labels.horizon
    n = len(series)
    checks: dict[str, dict[str, Any]] = {}
    X, _ = compute_features(series, spec)
    y = make_labels(series, h, taker_fee, ai.labels.margin, ai.labels.mode)
    cuts = sorted({int(c) for c in (spec.warmup + 5, n // 3, n // 2, (2 * n) // 3, n - h - 2)
                   if spec.warmup < c < n - 1})
    feat_bad, label_bad = [], []
    for i, t in enumerate(cuts):
        pert = perturb_after(series, t, seed=ai.seed + i)
        Xp, _ = compute_features(pert, spec)
        if not np.array_equal(X[:t + 1], Xp[:t + 1]):
            feat_bad.append(t)
        yp = make_labels(pert, h, taker_fee, ai.labels.margin, ai.labels.mode)
        m = t - h + 1  # labels of rows < m use bars <= t only
        if m > 0 and not np.array_equal(y[:m], yp[:m], equal_nan=True):
            label_bad.append(t)
    checks["features"] = {"passed": not feat_bad, "cuts": cuts,
                          "detail": f"rows <= t changed at cuts {feat_bad}" if feat_bad
                          else "rows <= t unchanged"}
    wf = ai.walkforward
    bad_folds = []
    try:
        splits = make_splits(n, wf.folds, wf.min_train_bars, h, wf.embargo_bars, wf.mode,
                             wf.train_bars)
        for sp in splits:
            if len(sp.train) and int(sp.train.max()) + h >= sp.test_start:
                bad_folds.append(sp.fold)
    except ValueError:
        splits = []
    checks["labels"] = {"passed": not label_bad and not bad_folds, "cuts": cuts,
                        "detail": (f"labels changed at cuts {label_bad}; " if label_bad else "")
                        + (f"folds {bad_folds} train on labels reaching their test fold"
                           if bad_folds else "train labels end before each test fold")}
    # Incremental vs vectorized on a window of the data.
    m = min(n, spec.warmup + 2_000)
    st = FeatureState(spec)
    worst = 0.0
    for i, bar in enumerate(series.slice(0, m)):
        row = st.update(bar)
        if row is not None:
            worst = max(worst, float(np.max(np.abs(row - X[i]))))
    checks["feature_parity"] = {"passed": worst <= 1e-9, "max_abs_diff": worst,
                                "rows": max(0, m - spec.warmup)}
    # Predictions at <= t from a model trained at t, with and without a perturbed future.
    t = cuts[len(cuts) // 2] if cuts else n // 2
    if progress:
        progress("leakage: prediction check")
    pert = perturb_after(series, t, seed=ai.seed + 99)
    preds: list[np.ndarray] = []
    for s in (series, pert):
        Xs, vs = compute_features(s, spec)
        ys = make_labels(s, h, taker_fee, ai.labels.margin, ai.labels.mode)
        rows = np.arange(n)
        tr = rows[vs & ~np.isnan(ys) & (rows + h <= t)]
        if len(tr) < 50 or len(np.unique(ys[tr])) < 2:
            preds = []
            break
        mdl = make_model(ai.model, ai.seed, spec.names)
        mdl.fit(Xs[tr], ys[tr])
        at = rows[vs & (rows <= t)]
        preds.append(mdl.predict_proba(Xs[at]))
    if preds:
        same = bool(np.array_equal(preds[0], preds[1]))
        checks["predictions"] = {"passed": same, "cut": t,
                                 "detail": "predictions <= t unchanged" if same
                                 else "predictions <= t changed"}
    else:
        checks["predictions"] = {"passed": False, "cut": t,
                                 "detail": "too few labelled rows before t to check"}
    return {"passed": all(c["passed"] for c in checks.values()), "checks": checks}


@dataclass
class TrainingReport:
    name: str
    version: str
    manifest: dict[str, Any]
    walkforward: WalkForwardResult
    leakage: dict[str, Any]
    elapsed_s: float
    artifact_dir: Path
    chart_path: Path | None = None
    gate: list[str] = field(default_factory=list)  # reasons promotion would be refused

    @property
    def manifest_hash(self) -> str:
        return str(self.manifest["manifest_hash"])

    def tables(self) -> list[FittedTable]:
        """Per-fold classification + backtest, overall vs baselines, and the leakage checks."""
        from rich.text import Text

        from quantum_trader.analytics.tables import FitColumn, FittedTable

        wf = self.walkforward
        # Out-of-sample skill and what it earned against buy & hold come first; the fold's size
        # and window, and the secondary scores, are hidden first in a narrow terminal.
        folds = FittedTable([
            FitColumn("fold", "right"), FitColumn("train rows", "right", priority=4),
            FitColumn("test rows", "right", priority=4),
            FitColumn("test window", "right", priority=3), FitColumn("AUC", "right"),
            FitColumn("acc", "right", priority=1), FitColumn("Brier", "right", priority=2),
            FitColumn("shuffled AUC", "right", priority=2), FitColumn("model ret", "right"),
            FitColumn("model Sharpe", "right"), FitColumn("rule ret", "right", priority=1),
            FitColumn("B&H ret", "right"),
        ], title=f"{self.name}@{self.version} walk-forward folds (out of sample)")
        for f in wf.folds:
            m, s, b = f.metrics["model"], f.metrics["shuffled"], f.backtests
            folds.add_row(
                str(f.fold), str(f.train_rows), str(f.test_rows),
                f"{_day(f.test_first_ts)}..{_day(f.test_last_ts)}", _f(m["auc"]),
                _f(m["accuracy"]), _f(m["brier"]), _f(s["auc"]),
                _pct(b["model"].total_return) if b else "-",
                _f(b["model"].sharpe, 2) if b else "-",
                _pct(b["rule_based"].total_return) if b else "-",
                _pct(b["buy_and_hold"].total_return) if b else "-")
        overall = FittedTable([
            FitColumn("source"), FitColumn("AUC", "right"), FitColumn("acc", "right", priority=1),
            FitColumn("Brier", "right", priority=2), FitColumn("return", "right"),
            FitColumn("Sharpe", "right"), FitColumn("max DD", "right"),
            FitColumn("trades", "right", priority=1),
        ], title="overall (all test folds) vs baselines")
        for key in ("model", LIMITED, *BASELINES):
            cm = wf.overall.get(key, {})
            bt = wf.backtests.get(key)
            overall.add_row(key, _f(cm.get("auc")), _f(cm.get("accuracy")),
                            _f(cm.get("brier")),
                            _pct(bt.total_return) if bt else "-",
                            _f(bt.sharpe, 2) if bt else "-",
                            _pct(bt.max_drawdown) if bt else "-",
                            str(bt.trades) if bt else "-")
        imp = FittedTable([FitColumn("feature"), FitColumn("share", "right"),
                           FitColumn("per fold", "right", priority=1)],
                          title="feature importance (out-of-sample models, mean over folds)")
        for name, share in list(wf.importance().items())[:8]:
            imp.add_row(name, f"{share:.1%}", " ".join(
                f"{f.importance.get(name, 0.0):.0%}" for f in wf.folds))
        cal = FittedTable([FitColumn("predicted", "right"), FitColumn("rows", "right"),
                           FitColumn("mean p", "right"), FitColumn("observed", "right")],
                          title="calibration (out of sample): predicted vs observed rate of 1s")
        for row in wf.calibration:
            cal.add_row(f"{row['low']:.1f}-{row['high']:.1f}", f"{int(row['n']):,}",
                        f"{row['mean_p']:.3f}", f"{row['observed']:.3f}")
        leak = FittedTable([FitColumn("check"), FitColumn("result", wrap=True)],
                           title="leakage checks")
        for k, v in self.leakage["checks"].items():
            # Text: a detail such as "cuts [120, 480]" is data, not console markup.
            leak.add_row(k, Text(("pass" if v["passed"] else "FAIL") + f"  {v.get('detail', '')}"))
        return [folds, overall, imp, cal, leak]

    def render(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        gate = ("promotion gate: would pass" if not self.gate
                else "promotion gate: would refuse — " + "; ".join(self.gate))
        return Group(*self.tables(), Text(f"artifact {self.artifact_dir}  manifest_hash "
                                          f"{self.manifest_hash[:16]}  {self.elapsed_s:.1f}s"),
                     Text(gate))

    def save_chart(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(11, 5))
        for key, curve in self.walkforward.curves.items():
            ts = curve.ts.astype("datetime64[ms]")
            ax.plot(ts, curve.equity, label=key, linewidth=1.6 if key == "model" else 0.9)
        for f in self.walkforward.folds:
            x0: Any = np.datetime64(f.test_first_ts, "ms")
            ax.axvline(x0, color="grey", linewidth=0.5, linestyle=":")
        ax.set_title(f"{self.name}@{self.version}: out-of-sample equity (test folds chained)")
        ax.set_ylabel("equity (start = 1)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _day(ts: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts / 1000))


def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f}%"


def pooled_leakage_checks(series: Sequence[BarSeries], ai: AISettings, taker_fee: float,
                          progress: Progress | None = None) -> dict[str, Any]:
    """``leakage_checks`` on every series of a pool; a check passes when it passes on each."""
    if len(series) == 1:
        return leakage_checks(series[0], ai, taker_fee, progress)
    each = {s.symbol: leakage_checks(s, ai, taker_fee, progress) for s in series}
    checks: dict[str, dict[str, Any]] = {}
    for name in next(iter(each.values()))["checks"]:
        parts = {sym: r["checks"][name] for sym, r in each.items()}
        details = [f"{sym}: {c.get('detail') or ('pass' if c['passed'] else 'FAIL')}"
                   for sym, c in parts.items()]
        checks[name] = {"passed": all(c["passed"] for c in parts.values()),
                        "detail": "; ".join(details), "per_symbol": parts}
    return {"passed": all(c["passed"] for c in checks.values()), "checks": checks}


def train(series: BarSeries | Sequence[BarSeries], settings: Settings, ai: AISettings,
          registry: ModelRegistry, progress: Progress | None = None) -> TrainingReport:
    """Walk-forward evaluate, check for leakage, fit on all data, and register the artifact.

    Several series of one timeframe are pooled: one model learns from all their rows (the
    features are scale-free), evaluated fold by fold on one calendar and backtested as one
    portfolio; it then trades any of those symbols."""
    pool = [series] if isinstance(series, BarSeries) else list(series)
    if not pool:
        raise ValueError("train needs at least one series")
    if len({s.timeframe for s in pool}) > 1 or len({s.symbol for s in pool}) < len(pool):
        raise ValueError("a pool is one timeframe and each symbol once, got "
                         f"{', '.join(f'{s.symbol} {s.timeframe}' for s in pool)}")
    t0 = time.perf_counter()
    fee = settings.exchange.taker_fee
    spec, h = ai.features, ai.labels.horizon
    if progress:
        progress(f"features for {sum(len(s) for s in pool)} bars")
    feats = [compute_features(s, spec) for s in pool]
    X = [f[0] for f in feats]
    valid = [f[1] for f in feats]
    y = [make_labels(s, h, fee, ai.labels.margin, ai.labels.mode) for s in pool]
    if progress:
        progress("walk-forward")
    wf = walk_forward(pool, X, valid, y, settings, ai, progress)
    if progress:
        progress("leakage checks")
    leakage = pooled_leakage_checks(pool, ai, fee, progress)
    if progress:
        progress("final fit on all data")
    usable = [np.flatnonzero(v & ~np.isnan(t)) for v, t in zip(valid, y, strict=True)]
    y_fit = np.concatenate([t[u] for t, u in zip(y, usable, strict=True)])
    model = make_model(ai.model, ai.seed, spec.names)
    model.fit(np.concatenate([x[u] for x, u in zip(X, usable, strict=True)]), y_fit)
    held = [(s, u) for s, u in zip(pool, usable, strict=True) if len(u)]
    window = {"first_ts": min(int(s.ts[u[0]]) for s, u in held),
              "last_ts": max(int(s.ts[u[-1]]) for s, u in held),
              "bars": sum(len(s) for s in pool), "rows": len(y_fit)}
    data: dict[str, Any] = {"symbol": pool[0].symbol, "timeframe": pool[0].timeframe,
                            "fingerprint": data_fingerprint(pool[0])}
    if len(pool) > 1:
        prints = [data_fingerprint(s) for s in pool]
        data = {"symbol": ",".join(s.symbol for s in pool), "symbols": [s.symbol for s in pool],
                "timeframe": pool[0].timeframe, "pooled": True,
                "fingerprint": hashlib.sha256("|".join(prints).encode()).hexdigest(),
                "fingerprints": dict(zip([s.symbol for s in pool], prints, strict=True))}
    manifest: dict[str, Any] = {
        "features": {"names": spec.names, "params": spec.model_dump(mode="json")},
        "labels": {**ai.labels.model_dump(mode="json"), "taker_fee": fee,
                   "threshold_log_return": cost_threshold(fee, ai.labels.margin),
                   "positive_rate": float(np.mean(y_fit)) if len(y_fit) else None},
        "model_params": ai.model.model_dump(mode="json"),
        "signals": ai.signals.model_dump(mode="json"),
        "walkforward_settings": ai.walkforward.model_dump(mode="json"),
        "seed": ai.seed,
        "training_window": window,
        "data": data,
        "metrics": wf.to_dict(),
        "leakage": leakage,
        "library_versions": library_versions(),
    }
    full = registry.register(ai.model_name, model, manifest)
    version = str(full["version"])
    vdir = registry.version_dir(ai.model_name, version)
    report = TrainingReport(ai.model_name, version, full, wf, leakage,
                            time.perf_counter() - t0, vdir,
                            gate=gate_reasons(full, registry.gate))
    if ai.chart and wf.curves:
        report.chart_path = report.save_chart(vdir / "equity.png")
    return report

