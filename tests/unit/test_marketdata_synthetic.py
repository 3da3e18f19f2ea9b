"""Synthetic bars: deterministic, valid, realistic enough, fast."""

from __future__ import annotations

import time

import numpy as np
import pytest

from quantum_trader.marketdata.synthetic import DEFAULT_START_TS, synthetic_series


def test_deterministic_for_a_seed() -> None:
    a = synthetic_series(5000, seed=7)
    b = synthetic_series(5000, seed=7)
    c = synthetic_series(5000, seed=8)
    for col in ("ts", "open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
    assert not np.array_equal(a.close, c.close)
    assert a.open[0] == 100.0


@pytest.mark.parametrize("timeframe", ["1m", "30m", "1d"])
def test_every_bar_is_valid(timeframe: str) -> None:
    s = synthetic_series(200_000, timeframe=timeframe, seed=3, start_price=0.5)
    assert s.symbol == "SYNUSDT"
    assert s.timeframe == timeframe
    for col in (s.open, s.high, s.low, s.close, s.volume):
        assert np.isfinite(col).all()
        assert (col > 0).all()
    assert (s.high >= np.maximum(s.open, s.close)).all()
    assert (s.low <= np.minimum(s.open, s.close)).all()
    np.testing.assert_array_equal(s.open[1:], s.close[:-1])
    steps = np.diff(s.ts)
    assert (steps == steps[0]).all()
    s.bar(0).validate()
    s.bar(len(s) - 1).validate()


def test_volatility_is_crypto_like_and_regimes_switch() -> None:
    s = synthetic_series(24 * 365 * 2, timeframe="1h", seed=11)
    r = np.diff(np.log(s.close))
    annual = r.std() * np.sqrt(24 * 365)
    assert 0.3 < annual < 1.5
    # Volatility clusters: rolling monthly volatility differs a lot between regimes.
    monthly = r[: len(r) // 720 * 720].reshape(-1, 720).std(axis=1)
    assert monthly.max() / monthly.min() > 1.8


def test_start_and_edge_cases() -> None:
    s = synthetic_series(3, timeframe="1h", start_ts=DEFAULT_START_TS + 5)
    assert s.ts.tolist() == [DEFAULT_START_TS + i * 3_600_000 for i in range(3)]
    assert len(synthetic_series(0)) == 0
    with pytest.raises(ValueError, match="negative"):
        synthetic_series(-1)
    with pytest.raises(ValueError, match="start_price"):
        synthetic_series(3, start_price=0.0)
    with pytest.raises(ValueError, match="unknown timeframe"):
        synthetic_series(3, timeframe="2m")


def test_a_million_bars_is_fast() -> None:
    started = time.perf_counter()
    s = synthetic_series(1_000_000)
    elapsed = time.perf_counter() - started
    assert len(s) == 1_000_000
    assert elapsed < 2.0  # about 0.15 s on a laptop; loose for busy CI
