"""Registry: deterministic training, tamper detection, promotion gate, rollback; walk-forward
splits are purged and embargoed; predictions ignore the future."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quantum_trader.ai.features import compute_features
from quantum_trader.ai.labels import make_labels
from quantum_trader.ai.models import make_model
from quantum_trader.ai.registry import (
    ArtifactTampered,
    ModelRegistry,
    PromotionRefused,
    RegistryError,
    gate_reasons,
)
from quantum_trader.ai.settings import AISettings
from quantum_trader.ai.training import TrainingReport, leakage_checks, train
from quantum_trader.ai.walkforward import make_splits, walk_forward
from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.marketdata.series import BarSeries

FAST_AI = AISettings.model_validate({
    "model": {"n_estimators": 40, "num_leaves": 7, "min_child_samples": 50},
    "walkforward": {"folds": 2, "min_train_bars": 2_400, "embargo_bars": 8},
    "chart": False,
})


@pytest.fixture(scope="module")
def bars() -> BarSeries:
    return load_sample("XRP").slice(20_000, 24_000)


def passing_metrics() -> dict[str, Any]:
    """Out-of-sample metrics built to clear the default gate (the gate logic itself is real)."""
    return {
        "overall": {"model": {"auc": 0.57, "accuracy": 0.55, "brier": 0.24, "n": 1000.0},
                    "shuffled": {"auc": 0.50, "accuracy": 0.50, "brier": 0.25, "n": 1000.0}},
        "backtests": {"model": {"sharpe": 1.4, "total_return": 0.1, "max_drawdown": 0.05},
                      "rule_based": {"sharpe": 0.3, "total_return": 0.02, "max_drawdown": 0.1},
                      "flat": {"sharpe": None, "total_return": 0.0, "max_drawdown": 0.0}},
    }


def register_quick(reg: ModelRegistry, series: BarSeries, ai: AISettings = FAST_AI,
                   metrics: dict[str, Any] | None = None, leakage_passed: bool = True,
                   shuffle: bool = False) -> str:
    """Fit on ``series`` and register with the given metrics; returns the version."""
    spec = ai.features
    X, valid = compute_features(series, spec)
    y = make_labels(series, ai.labels.horizon, 0.0005, ai.labels.margin, ai.labels.mode)
    rows = np.flatnonzero(valid & ~np.isnan(y))
    yt = y[rows]
    if shuffle:
        yt = np.random.default_rng(ai.seed).permutation(yt)
    model = make_model(ai.model, ai.seed, spec.names)
    model.fit(X[rows], yt)
    manifest = {
        "features": {"names": spec.names, "params": spec.model_dump(mode="json")},
        "labels": ai.labels.model_dump(mode="json"),
        "signals": ai.signals.model_dump(mode="json"),
        "seed": ai.seed,
        "metrics": metrics if metrics is not None else passing_metrics(),
        "leakage": {"passed": leakage_passed,
                    "checks": {"features": {"passed": leakage_passed}}},
    }
    return str(reg.register(ai.model_name, model, manifest)["version"])


@pytest.fixture(scope="module")
def trained(bars: BarSeries, tmp_path_factory: pytest.TempPathFactory) -> TrainingReport:
    reg = ModelRegistry(tmp_path_factory.mktemp("reg1"))
    return train(bars, Settings(), FAST_AI, reg)


def test_training_is_deterministic(bars: BarSeries, trained: TrainingReport,
                                   tmp_path: Path) -> None:
    again = train(bars, Settings(), FAST_AI, ModelRegistry(tmp_path))
    assert again.manifest_hash == trained.manifest_hash
    assert again.manifest["sha256"] == trained.manifest["sha256"]
    assert again.manifest["created_at"]  # wall clock is recorded but not hashed
    m = trained.manifest
    assert m["training_window"]["first_ts"] < m["training_window"]["last_ts"]
    assert m["features"]["names"] == FAST_AI.features.names
    assert set(m["library_versions"]) >= {"lightgbm", "numpy", "scikit-learn"}
    assert len(m["data"]["fingerprint"]) == 64
    assert m["leakage"]["passed"], m["leakage"]
    for key in ("model", "buy_and_hold", "flat", "rule_based", "shuffled"):
        assert key in m["metrics"]["backtests"]
    assert [t.title.split(" ")[0] for t in trained.tables()] == [
        "default@v1", "overall", "feature", "calibration", "leakage"]


def test_report_chart(trained: TrainingReport, tmp_path: Path) -> None:
    out = trained.save_chart(tmp_path / "eq.png")
    assert out.stat().st_size > 1000


def test_tampered_artifact_is_refused(bars: BarSeries, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v = register_quick(reg, bars.slice(0, 1500))
    art = reg.load("default", v)
    assert art.version == v
    assert art.source == f"default@{v}"
    model_file = reg.version_dir("default", v) / "model.txt"
    model_file.write_text(model_file.read_text().replace("learning_rate", "learning_rat3", 1))
    with pytest.raises(ArtifactTampered, match="sha256"):
        reg.load("default", v)


def test_edited_manifest_is_refused(bars: BarSeries, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v = register_quick(reg, bars.slice(0, 1500), metrics={"overall": {}})
    path = reg.version_dir("default", v) / "manifest.json"
    m = json.loads(path.read_text())
    m["metrics"] = passing_metrics()  # someone "improves" the metrics after the fact
    path.write_text(json.dumps(m))
    with pytest.raises(ArtifactTampered, match="manifest"):
        reg.load("default", v)
    with pytest.raises(ArtifactTampered):
        reg.promote(v)


def test_gate_refuses_a_shuffled_label_model(bars: BarSeries, tmp_path: Path) -> None:
    # Honest out-of-sample metrics of a model whose "labels" carry no information.
    X, valid = compute_features(bars, FAST_AI.features)
    y = make_labels(bars, FAST_AI.labels.horizon, 0.0005)
    known = ~np.isnan(y)
    y_shuffled = y.copy()
    y_shuffled[known] = np.random.default_rng(7).permutation(y[known])
    ai = AISettings.model_validate({**FAST_AI.model_dump(), "backtest_folds": True})
    wf = walk_forward([bars], [X], [valid], [y_shuffled], Settings(), ai)
    reg = ModelRegistry(tmp_path)
    v = register_quick(reg, bars.slice(0, 1500), metrics=wf.to_dict(), shuffle=True)
    with pytest.raises(PromotionRefused) as exc:
        reg.promote(v)
    assert any("AUC" in r for r in exc.value.reasons), exc.value.reasons
    assert reg.production("default") is None


def test_gate_accepts_a_passing_model_and_lists_every_failure(bars: BarSeries,
                                                              tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    good = register_quick(reg, bars.slice(0, 1500))
    reg.promote(good)
    assert reg.production("default") == good
    bad_metrics = copy.deepcopy(passing_metrics())
    bad_metrics["overall"]["model"]["auc"] = 0.505  # clears 0.5 + 0.005, not shuffled + 0.01
    bad_metrics["overall"]["shuffled"]["auc"] = 0.51
    bad_metrics["backtests"]["model"]["sharpe"] = 0.1  # below rule-based 0.3
    bad = register_quick(reg, bars.slice(0, 1500), metrics=bad_metrics, leakage_passed=False)
    with pytest.raises(PromotionRefused) as exc:
        reg.promote(bad)
    reasons = exc.value.reasons
    assert any("shuffled" in r for r in reasons)
    assert any("Sharpe" in r and "rule_based" in r for r in reasons)
    assert any("leakage" in r for r in reasons)
    assert reg.production("default") == good  # unchanged
    assert gate_reasons(reg.show("default", good), reg.gate) == []


def test_promote_and_rollback_history(bars: BarSeries, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v1 = register_quick(reg, bars.slice(0, 1500))
    v2 = register_quick(reg, bars.slice(0, 1500))
    assert (v1, v2) == ("v1", "v2")
    with pytest.raises(RegistryError):
        reg.rollback()
    reg.promote(v1)
    reg.promote(v2)
    reg.promote(v2)  # idempotent
    assert reg.production("default") == v2
    assert reg.rollback() == v1
    assert reg.production("default") == v1
    infos = reg.list_versions("default")
    assert [(i.version, i.production) for i in infos] == [("v1", True), ("v2", False)]
    assert reg.models() == ["default"]
    with pytest.raises(RegistryError):
        reg.show("default", "v9")


def test_splits_are_purged_and_embargoed() -> None:
    h, emb = 8, 16
    splits = make_splits(10_000, 4, 4_000, h, emb)
    assert [s.test_start for s in splits] == [4000, 5500, 7000, 8500]
    for sp in splits:
        assert sp.train.max() + h < sp.test_start  # purged
        for prev in splits[: sp.fold]:
            gap = np.arange(prev.test_end, prev.test_end + emb)
            assert not np.isin(gap, sp.train).any()  # embargoed
    rolling = make_splits(10_000, 4, 4_000, h, emb, mode="rolling", train_bars=3_000)
    assert all(sp.train.min() >= sp.test_start - 3_000 for sp in rolling)


def test_leakage_checks_pass_on_real_bars(bars: BarSeries) -> None:
    res = leakage_checks(bars.slice(0, 3_000), FAST_AI, 0.0005)
    assert res["passed"], res
    assert set(res["checks"]) == {"features", "labels", "feature_parity", "predictions"}
