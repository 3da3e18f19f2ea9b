"""Labels: is a position opened at bar ``t``'s close worth its fees over the next ``h`` bars?

The label at ``t`` uses bars ``t+1 .. t+h`` only (their closes, or for the triple barrier their
highs and lows too); the last ``h`` rows have no label (NaN). A round trip costs
``2 * taker_fee``; a move must beat that plus ``margin`` to count.

Modes:
* ``up_vs_down`` (default): 1 if the forward log return > threshold, 0 if < -threshold, NaN
  (not trained on, not scored) in between — p(up) is then symmetric around 0.5, so a long needs
  p > upper and a short p < lower;
* ``long_vs_rest``: 1 if the forward return > threshold, else 0.
* ``triple_barrier``: up/down barriers at ±threshold from the close; 1 if the high touches the
  upper barrier first, 0 if the low touches the lower one first (same bar: NaN, ambiguous),
  NaN when neither is touched within ``h`` bars.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt

from quantum_trader.marketdata.series import BarSeries

FloatArray = npt.NDArray[np.float64]
LabelMode = Literal["up_vs_down", "long_vs_rest", "triple_barrier"]


def cost_threshold(taker_fee: float, margin: float) -> float:
    """The log return a round trip must beat."""
    return math.log1p(2.0 * taker_fee + margin)


def forward_returns(close: FloatArray, horizon: int) -> FloatArray:
    """``log(close[t+h] / close[t])``; NaN for the last ``h`` rows."""
    if horizon < 1:
        raise ValueError("horizon must be >= 1 bar")
    logc = np.log(np.asarray(close, dtype=np.float64))
    out = np.full(len(logc), np.nan)
    if len(logc) > horizon:
        out[:-horizon] = logc[horizon:] - logc[:-horizon]
    return out


def make_labels(series: BarSeries, horizon: int, taker_fee: float, margin: float = 0.0,
                mode: LabelMode = "up_vs_down") -> FloatArray:
    """One label per bar: 1.0, 0.0, or NaN (no label)."""
    thr = cost_threshold(taker_fee, margin)
    if mode == "triple_barrier":
        return _triple_barrier(series, horizon, thr)
    fwd = forward_returns(series.close, horizon)
    y = np.full(len(fwd), np.nan)
    known = ~np.isnan(fwd)
    if mode == "long_vs_rest":
        y[known] = (fwd[known] > thr).astype(np.float64)
    elif mode == "up_vs_down":
        y[known & (fwd > thr)] = 1.0
        y[known & (fwd < -thr)] = 0.0
    else:
        raise ValueError(f"unknown label mode {mode!r}")
    return y


def _triple_barrier(series: BarSeries, horizon: int, thr: float) -> FloatArray:
    logc = np.log(np.asarray(series.close, dtype=np.float64))
    logh = np.log(np.asarray(series.high, dtype=np.float64))
    logl = np.log(np.asarray(series.low, dtype=np.float64))
    n = len(logc)
    y = np.full(n, np.nan)
    decided = np.zeros(n, dtype=bool)
    m = n - horizon
    if m <= 0:
        return y
    base = logc[:m]
    for k in range(1, horizon + 1):
        up = (logh[k:k + m] - base) > thr
        dn = (logl[k:k + m] - base) < -thr
        new = ~decided[:m]
        y[:m][new & up & ~dn] = 1.0
        y[:m][new & dn & ~up] = 0.0
        decided[:m] |= up | dn
    return y


def label_end_index(horizon: int, n: int) -> npt.NDArray[np.int64]:
    """The last bar index each row's label looks at (for purging)."""
    return np.minimum(np.arange(n, dtype=np.int64) + horizon, n - 1)
