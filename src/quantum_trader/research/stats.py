"""Overfitting statistics.

* ``pbo_cscv``: the probability of backtest overfitting by combinatorially symmetric
  cross-validation (Bailey, Borwein, López de Prado & Zhu, 2017). The trials of one study are
  the candidate configurations; the study's period is cut into ``S`` time slices. For every
  way of choosing half the slices as "in sample", the configuration with the best in-sample
  Sharpe is ranked among all of them on the other half; PBO is the share of splits where it
  lands at or below the median (logit of its relative rank <= 0).
* ``deflated_sharpe``: the deflated Sharpe ratio (Bailey & López de Prado, 2014): the
  probability that the true Sharpe ratio is above the one expected of the best of ``N``
  unskilled trials, given the track record's length, skewness and kurtosis.
* ``stability``: how much each parameter's best value moves between windows.

Sharpe ratios here are per bar (not annualised), as the formulas want them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import numpy.typing as npt

EULER_GAMMA = 0.5772156649015329
FloatArray = npt.NDArray[np.float64]


def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _norm_ppf(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))


# --- slices: sufficient statistics of per-bar returns -----------------------------------------
def slice_stats(returns: FloatArray, slices: int) -> list[list[float]]:
    """``returns`` cut into ``slices`` consecutive parts of (almost) equal length, each as
    ``[count, sum, sum of squares]``: enough to get the Sharpe ratio of any union of parts."""
    parts = np.array_split(np.asarray(returns, dtype=np.float64), slices)
    return [[float(len(p)), float(p.sum()), float((p * p).sum())] for p in parts]


def _sharpe_from_stats(n: FloatArray, s1: FloatArray, s2: FloatArray) -> FloatArray:
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n
        var = (s2 - n * mean * mean) / np.maximum(n - 1.0, 1.0)
        sd = np.sqrt(np.maximum(var, 0.0))
        out = np.where(sd > 1e-15, mean / np.where(sd > 1e-15, sd, 1.0), 0.0)
    return np.asarray(out, dtype=np.float64)


@dataclass(frozen=True)
class PboResult:
    pbo: float  # share of splits where the in-sample best is at or below the OOS median
    splits: int
    trials: int
    slices: int
    logits: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"pbo": self.pbo, "splits": self.splits, "trials": self.trials,
                "slices": self.slices,
                "logit_median": float(np.median(self.logits)) if self.logits else None}


def pbo_cscv(stats: npt.ArrayLike) -> PboResult:
    """PBO from per-trial, per-slice ``[count, sum, sum of squares]`` of returns, shaped
    (trials, slices, 3). ``slices`` must be even and at least 2; needs 2 trials or more."""
    m = np.asarray(stats, dtype=np.float64)
    if m.ndim != 3 or m.shape[2] != 3:
        raise ValueError(f"stats must be (trials, slices, 3), got {m.shape}")
    trials, slices = m.shape[0], m.shape[1]
    if trials < 2:
        raise ValueError("PBO needs at least 2 trials")
    if slices < 2 or slices % 2:
        raise ValueError(f"PBO needs an even number of slices (2 or more), got {slices}")
    total = m.sum(axis=1)  # (trials, 3)
    logits: list[float] = []
    for chosen in combinations(range(slices), slices // 2):
        ins = m[:, list(chosen), :].sum(axis=1)
        oos = total - ins
        sr_in = _sharpe_from_stats(ins[:, 0], ins[:, 1], ins[:, 2])
        sr_out = _sharpe_from_stats(oos[:, 0], oos[:, 1], oos[:, 2])
        best = int(np.argmax(sr_in))
        # Its rank among all trials out of sample, 1 (worst) .. trials (best); ties share.
        below = float(np.sum(sr_out < sr_out[best]))
        ties = float(np.sum(sr_out == sr_out[best]))
        rank = below + (ties + 1.0) / 2.0
        w = rank / (trials + 1.0)
        logits.append(math.log(w / (1.0 - w)))
    pbo = float(np.mean(np.asarray(logits) <= 0.0))
    return PboResult(pbo, len(logits), trials, slices, logits)


# --- the deflated Sharpe ratio -----------------------------------------------------------------
def expected_max_sharpe(trials: int, sharpe_variance: float) -> float:
    """The Sharpe ratio the best of ``trials`` unskilled ones is expected to reach (per bar),
    given the variance of the trials' Sharpe ratios."""
    if trials <= 1 or sharpe_variance <= 0:
        return 0.0
    sd = math.sqrt(sharpe_variance)
    return sd * ((1.0 - EULER_GAMMA) * _norm_ppf(1.0 - 1.0 / trials)
                 + EULER_GAMMA * _norm_ppf(1.0 - 1.0 / (trials * math.e)))


def probabilistic_sharpe(sharpe: float, benchmark: float, observations: int, skew: float,
                         kurtosis: float) -> float:
    """P(true Sharpe > ``benchmark``) for an observed per-bar ``sharpe`` over ``observations``
    returns with that skewness and (non-excess) kurtosis."""
    if observations < 2:
        return 0.0
    denom = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe * sharpe
    if denom <= 0:
        return 0.0
    return _norm_cdf((sharpe - benchmark) * math.sqrt(observations - 1) / math.sqrt(denom))


@dataclass(frozen=True)
class DeflatedSharpe:
    dsr: float  # probability
    sharpe: float  # per bar, of the track record
    benchmark: float  # the expected maximum of N unskilled trials, per bar
    trials: int
    observations: int
    skew: float
    kurtosis: float
    sharpe_variance: float

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("dsr", "sharpe", "benchmark", "trials",
                                              "observations", "skew", "kurtosis",
                                              "sharpe_variance")}


def deflated_sharpe(returns: FloatArray, trials: int, sharpe_variance: float
                    ) -> DeflatedSharpe:
    """The deflated Sharpe ratio of a track record (per-bar ``returns``) chosen after
    ``trials`` trials whose per-bar Sharpe ratios had variance ``sharpe_variance``."""
    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    n = len(r)
    sd = float(np.std(r, ddof=1)) if n > 1 else 0.0
    if n < 3 or sd <= 1e-15:
        return DeflatedSharpe(0.0, 0.0, expected_max_sharpe(trials, sharpe_variance), trials,
                              n, 0.0, 3.0, sharpe_variance)
    sr = float(np.mean(r)) / sd
    z = (r - r.mean()) / float(np.std(r))
    skew = float(np.mean(z ** 3))
    kurt = float(np.mean(z ** 4))
    bench = expected_max_sharpe(trials, sharpe_variance)
    return DeflatedSharpe(probabilistic_sharpe(sr, bench, n, skew, kurt), sr, bench, trials,
                          n, skew, kurt, sharpe_variance)


# --- parameter stability -----------------------------------------------------------------------
def stability(best: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per parameter, how its best value moves between windows: numbers get their mean,
    standard deviation and coefficient of variation (sd / |mean|; None for a mean of 0);
    choices the most common value and the share of windows that chose it."""
    out: dict[str, dict[str, Any]] = {}
    names = list(best[0] if best else {})
    for name in names:
        values = [b[name] for b in best if name in b]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            arr = np.asarray(values, dtype=np.float64)
            mean = float(arr.mean())
            sd = float(arr.std(ddof=0))
            out[name] = {"values": values, "mean": mean, "sd": sd,
                         "cv": sd / abs(mean) if mean != 0 else None}
        else:
            texts = [str(v) for v in values]
            mode = max(set(texts), key=texts.count)
            out[name] = {"values": values, "mode": mode,
                         "mode_share": texts.count(mode) / len(texts)}
    return out
