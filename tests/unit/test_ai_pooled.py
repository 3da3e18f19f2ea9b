"""A model pooled over several symbols: one calendar for the folds (test fold k is the same
period in every series, purged and embargoed in each), rows of all symbols trained on
together, backtested as one portfolio, and one series gives exactly the single-series
splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantum_trader.ai.registry import ModelRegistry
from quantum_trader.ai.settings import AISettings
from quantum_trader.ai.signals import ModelSignalSource
from quantum_trader.ai.training import train
from quantum_trader.ai.walkforward import make_splits, pooled_splits
from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.runtime.backtest import run_backtest

FAST_AI = AISettings.model_validate({
    "model": {"n_estimators": 40, "num_leaves": 7, "min_child_samples": 50},
    "walkforward": {"folds": 2, "min_train_bars": 2_400, "embargo_bars": 8},
    "backtest_folds": True, "chart": False,
})


def test_one_series_gets_exactly_the_single_series_splits() -> None:
    ts = load_sample("XRP").slice(0, 5000).ts
    for mode, bars in (("expanding", None), ("rolling", 1500)):
        one = pooled_splits([ts], 3, 2000, 6, 8, mode, bars)[0]
        ref = make_splits(len(ts), 3, 2000, 6, 8, mode, bars)
        assert [(s.test_start, s.test_end, s.train.tolist()) for s in one] == \
            [(s.test_start, s.test_end, s.train.tolist()) for s in ref]


def test_pooled_folds_share_one_calendar_and_purge_in_each_series() -> None:
    xrp = load_sample("XRP").slice(0, 5000)
    ltc = load_sample("LTC").slice(300, 5000)  # starts later, has other gaps
    h = 6
    per = pooled_splits([xrp.ts, ltc.ts], 3, 2000, h, 8)
    for k in range(3):
        a, b = per[0][k], per[1][k]
        start_a, start_b = int(xrp.ts[a.test_start]), int(ltc.ts[b.test_start])
        assert abs(start_a - start_b) <= 1_800_000 * 3  # the same period (gaps aside)
        for s, sp in ((xrp, a), (ltc, b)):
            assert int(sp.train.max()) + h < sp.test_start  # purged within the series
            assert int(s.ts[sp.train.max()]) < min(start_a, start_b)  # no test period seen


def test_a_pooled_model_trains_on_every_symbol_and_trades_them(tmp_path: Path) -> None:
    pool = [load_sample("XRP").slice(20_000, 24_000), load_sample("LTC").slice(20_000, 24_000)]
    report = train(pool, Settings(), FAST_AI, ModelRegistry(tmp_path))
    data = report.manifest["data"]
    assert data["pooled"] is True
    assert data["symbols"] == ["XRPUSDT", "LTCUSDT"]
    assert set(data["fingerprints"]) == {"XRPUSDT", "LTCUSDT"}
    single = train(pool[0], Settings(), FAST_AI, ModelRegistry(tmp_path / "one"))
    assert report.manifest["training_window"]["rows"] > \
        1.8 * single.manifest["training_window"]["rows"]
    for fold, one in zip(report.walkforward.folds, single.walkforward.folds, strict=True):
        assert fold.train_rows > 1.8 * one.train_rows
        # One calendar: the union of both series' bar times (their gaps differ by a bar).
        assert abs(fold.test_first_ts - one.test_first_ts) <= 3 * 1_800_000
    assert set(report.leakage["checks"]["features"]["per_symbol"]) == {"XRPUSDT", "LTCUSDT"}
    assert report.leakage["passed"]
    # The out-of-sample backtest is one account over both symbols: its equity curve has a
    # point per bar time of either.
    curve = report.walkforward.curves["model"]
    assert np.all(np.diff(curve.ts) > 0)
    # The stored model trades either symbol.
    art = ModelRegistry(tmp_path).load(FAST_AI.model_name, report.version)
    res = run_backtest([p.slice(3000, 4000) for p in pool], Settings(), ModelSignalSource(art))
    assert {t.symbol for t in res.trades} == {"XRPUSDT", "LTCUSDT"}
