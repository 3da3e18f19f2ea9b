"""Fold backtests are not censored by the drawdown halt: the model is judged on what its
signals do over the whole fold, and reported beside that under the configured limits."""

from __future__ import annotations

import numpy as np
import pytest

from quantum_trader.ai.features import compute_features
from quantum_trader.ai.labels import make_labels
from quantum_trader.ai.settings import AISettings
from quantum_trader.ai.walkforward import LIMITED, walk_forward
from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import load_sample

AI = AISettings.model_validate({
    "model": {"n_estimators": 40, "num_leaves": 7, "min_child_samples": 50},
    "walkforward": {"folds": 2, "min_train_bars": 2_400, "embargo_bars": 8},
    "backtest_folds": True, "chart": False,
})


def test_a_tight_drawdown_limit_no_longer_censors_the_fold_backtests() -> None:
    bars = load_sample("XRP").slice(20_000, 26_000)
    X, valid = compute_features(bars, AI.features)
    y = make_labels(bars, AI.labels.horizon, 0.0005)
    tight = Settings.model_validate({"risk": {"max_drawdown": 0.01}})
    wf = walk_forward([bars], [X], [valid], [y], tight, AI)
    judged, limited = wf.backtests["model"], wf.backtests[LIMITED]
    # Under the limits the breaker stops the model within about 1% of a peak, fold after
    # fold; the judged curve goes on trading and shows what the signals really did.
    assert limited.trades < judged.trades
    assert judged.max_drawdown > 0.02
    for fold in wf.folds:
        assert fold.backtests[LIMITED].trades <= fold.backtests["model"].trades
    loose = walk_forward([bars], [X], [valid], [y], Settings(), AI)
    assert loose.backtests["model"].trades == judged.trades  # the halt is all that differs
    assert loose.backtests["model"].total_return == judged.total_return


def test_each_fold_reports_feature_importance_and_the_run_its_calibration() -> None:
    bars = load_sample("XRP").slice(20_000, 26_000)
    X, valid = compute_features(bars, AI.features)
    y = make_labels(bars, AI.labels.horizon, 0.0005)
    wf = walk_forward([bars], [X], [valid], [y], Settings(), AI)
    for fold in wf.folds:
        assert set(fold.importance) == set(AI.features.names)
        assert sum(fold.importance.values()) == pytest.approx(1.0)
        assert min(fold.importance.values()) >= 0.0
    mean = wf.importance()
    assert list(mean.values()) == sorted(mean.values(), reverse=True)
    # The reliability bins partition the out-of-sample rows and say what happened in each.
    rows = sum(b["n"] for b in wf.calibration)
    assert rows == int((~np.isnan(y[wf.oos_index])).sum())
    for b in wf.calibration:
        assert b["low"] <= b["mean_p"] <= b["high"]
        assert 0.0 <= b["observed"] <= 1.0
    d = wf.to_dict()
    assert d["calibration"] == wf.calibration
    assert d["folds"][0]["importance"] == wf.folds[0].importance
