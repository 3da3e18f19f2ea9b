"""CSCV's PBO and the deflated Sharpe ratio against hand-computed and published values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantum_trader.research.stats import (
    deflated_sharpe,
    expected_max_sharpe,
    pbo_cscv,
    probabilistic_sharpe,
    slice_stats,
    stability,
)


def _stats(returns_by_trial: list[list[np.ndarray]]) -> np.ndarray:
    return np.array([[[len(p), p.sum(), (p * p).sum()] for p in trial]
                     for trial in returns_by_trial])


def test_pbo_is_one_when_the_in_sample_best_is_always_the_worst_out_of_sample() -> None:
    # Two slices, two trials: A wins slice 0 and loses slice 1, B the opposite. Either way
    # round, the in-sample winner is the out-of-sample loser: rank 1 of 2, w = 1/3 < 1/2.
    up = np.array([0.02, 0.01, 0.03, 0.01])
    down = -up
    res = pbo_cscv(_stats([[up, down], [down, up]]))
    assert res.splits == 2
    assert res.pbo == 1.0
    assert res.logits == pytest.approx([math.log((1 / 3) / (2 / 3))] * 2)


def test_pbo_is_zero_when_one_trial_is_best_in_every_slice() -> None:
    rng = np.random.default_rng(1)
    trials = [[rng.normal(0.0, 0.01, 50) + (0.01 if i == 3 else 0.0) for _ in range(8)]
              for i in range(6)]
    res = pbo_cscv(_stats(trials))
    assert res.splits == math.comb(8, 4)
    assert res.pbo == 0.0


def test_pbo_of_pure_noise_is_near_one_half() -> None:
    rng = np.random.default_rng(7)
    trials = [[rng.normal(0.0, 0.01, 40) for _ in range(10)] for _ in range(40)]
    assert 0.25 < pbo_cscv(_stats(trials)).pbo < 0.75


def test_pbo_refuses_odd_slices_and_a_single_trial() -> None:
    with pytest.raises(ValueError, match="even"):
        pbo_cscv(np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match="2 trials"):
        pbo_cscv(np.ones((1, 4, 3)))


def test_slice_stats_are_the_sums_of_each_part() -> None:
    r = np.arange(10, dtype=float)
    st = slice_stats(r, 4)
    assert [s[0] for s in st] == [3, 3, 2, 2]
    assert sum(s[1] for s in st) == r.sum()
    assert sum(s[2] for s in st) == (r * r).sum()


def test_deflated_sharpe_matches_bailey_and_lopez_de_prado_numerical_example() -> None:
    # The paper's example (2014, section 5): annualised SR 2.5 over 5 years of daily
    # returns (T = 1250), 100 trials whose annualised SRs have variance 0.5, skew -3,
    # kurtosis 10: SR0 = 0.1132 per day and DSR = 0.9004.
    sr = 2.5 / math.sqrt(250)
    v = 0.5 / 250
    sr0 = expected_max_sharpe(100, v)
    assert sr0 == pytest.approx(0.1132, abs=2e-4)
    assert probabilistic_sharpe(sr, sr0, 1250, -3.0, 10.0) == pytest.approx(0.9004, abs=1e-3)


def test_deflated_sharpe_of_a_track_record_uses_its_moments() -> None:
    rng = np.random.default_rng(3)
    r = rng.normal(0.001, 0.01, 2000)
    d = deflated_sharpe(r, trials=1, sharpe_variance=0.0)  # one trial: PSR against zero
    sr = r.mean() / r.std(ddof=1)
    assert d.sharpe == pytest.approx(sr)
    assert d.benchmark == 0.0
    assert 0.99 < d.dsr <= 1.0
    many = deflated_sharpe(r, trials=1000, sharpe_variance=0.01)
    assert many.benchmark > sr  # a thousand tries explain it away
    assert many.dsr < 0.5
    assert deflated_sharpe(np.zeros(50), 10, 0.01).dsr == 0.0


def test_stability_gives_the_coefficient_of_variation_and_the_mode() -> None:
    s = stability([{"fast": 10, "short": True}, {"fast": 20, "short": True},
                   {"fast": 30, "short": False}])
    assert s["fast"]["mean"] == 20.0
    assert s["fast"]["cv"] == pytest.approx(np.std([10, 20, 30]) / 20.0)
    assert s["short"]["mode"] == "True"
    assert s["short"]["mode_share"] == pytest.approx(2 / 3)
