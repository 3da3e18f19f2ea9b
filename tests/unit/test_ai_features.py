"""Features: vectorized == incremental, warm-up, no lookahead; labels: forward-only."""

from __future__ import annotations

import numpy as np
import pytest

from quantum_trader.ai.features import FeatureSpec, FeatureState, compute_features
from quantum_trader.ai.labels import cost_threshold, forward_returns, make_labels
from quantum_trader.ai.training import perturb_after
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.marketdata.series import BarSeries


@pytest.fixture(scope="module")
def bars() -> BarSeries:
    return load_sample("XRP").slice(10_000, 13_000)


def test_vectorized_and_incremental_features_agree(bars: BarSeries) -> None:
    spec = FeatureSpec()
    X, valid = compute_features(bars, spec)
    assert X.shape == (len(bars), len(spec.names))
    assert not valid[: spec.warmup].any()
    assert valid[spec.warmup:].all()
    assert np.isfinite(X[valid]).all()
    st = FeatureState(spec)
    rows = 0
    for i, bar in enumerate(bars):
        row = st.update(bar)
        if i < spec.warmup:
            assert row is None
            continue
        assert row is not None
        np.testing.assert_allclose(row, X[i], rtol=0, atol=1e-9)
        rows += 1
    assert rows == len(bars) - spec.warmup


def test_parity_with_other_parameters(bars: BarSeries) -> None:
    spec = FeatureSpec(return_lags=(2, 3, 10), ema_fast=5, ema_slow=20, rsi_period=7,
                       atr_period=5, vol_span=10, volume_span=12, hour_of_day=False, warmup=40)
    X, _ = compute_features(bars.slice(0, 600), spec)
    st = FeatureState(spec)
    for i, bar in enumerate(bars.slice(0, 600)):
        row = st.update(bar)
        if row is not None:
            np.testing.assert_allclose(row, X[i], rtol=0, atol=1e-9)


@pytest.mark.parametrize("t", [200, 1000, 2500, 2990])
def test_features_at_or_before_t_ignore_the_future(bars: BarSeries, t: int) -> None:
    spec = FeatureSpec()
    X, _ = compute_features(bars, spec)
    Xp, _ = compute_features(perturb_after(bars, t, seed=t), spec)
    assert np.array_equal(X[: t + 1], Xp[: t + 1])
    assert not np.array_equal(X[t + 1:], Xp[t + 1:])  # the perturbation did something


def test_labels_use_only_the_next_h_bars(bars: BarSeries) -> None:
    h, fee = 8, 0.0005
    y = make_labels(bars, h, fee, mode="long_vs_rest")
    assert np.isnan(y[-h:]).all()
    assert not np.isnan(y[:-h]).any()
    fwd = forward_returns(bars.close, h)
    i = 100
    assert fwd[i] == pytest.approx(np.log(bars.close[i + h] / bars.close[i]))
    assert y[i] == float(fwd[i] > cost_threshold(fee, 0.0))
    t = 1500
    pert = perturb_after(bars, t, seed=1)
    for mode in ("up_vs_down", "long_vs_rest", "triple_barrier"):
        a = make_labels(bars, h, fee, mode=mode)
        b = make_labels(pert, h, fee, mode=mode)
        # a label at row r uses bars r+1..r+h: rows r + h <= t are untouched
        assert np.array_equal(a[: t - h + 1], b[: t - h + 1], equal_nan=True)


def test_up_vs_down_drops_moves_inside_the_fee_band(bars: BarSeries) -> None:
    y = make_labels(bars, 4, 0.0005, margin=0.001)
    fwd = forward_returns(bars.close, 4)
    thr = cost_threshold(0.0005, 0.001)
    inside = np.abs(fwd) <= thr
    assert np.isnan(y[inside]).all()
    assert (y[fwd > thr] == 1).all()
    assert (y[fwd < -thr] == 0).all()


def test_triple_barrier_first_touch() -> None:
    close = np.array([100.0, 100.0, 100.0, 100.0, 100.0, 100.0])
    high = close.copy()
    low = close.copy()
    high[2] = 103.0  # row 0 and 1 hit the upper barrier at bar 2
    low[3] = 97.0  # ... and row 0 would hit the lower one later
    s = BarSeries("T", "30m", np.arange(6, dtype=np.int64) * 1_800_000, close, high, low, close,
                  np.ones(6))
    y = make_labels(s, 3, 0.0005, margin=0.01, mode="triple_barrier")
    assert y[0] == 1.0
    assert y[1] == 1.0
    assert y[2] == 0.0
    assert np.isnan(y[3:]).all()
