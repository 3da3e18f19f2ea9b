"""Synthetic bars for tests and benchmarks: geometric Brownian motion whose volatility switches
between calm, normal and stormy regimes, with fat-tailed shocks, so strategies meet trends, chop
and volatility clusters. Deterministic for a seed and fully vectorized."""

from __future__ import annotations

import math

import numpy as np

from quantum_trader.domain.models import timeframe_ms
from quantum_trader.marketdata.series import BarSeries

_YEAR_MS = 365 * 86_400_000  # crypto trades every day
_REGIME_VOLS = np.array([0.35, 0.70, 1.40])  # annualized volatility of each regime
_REGIME_PROBS = np.array([0.45, 0.40, 0.15])
_REGIME_MEAN_DAYS = 4.0
_T_DOF = 4.0
_BAND = math.log(1000.0)  # Student-t shocks: fat tails like real crypto returns
DEFAULT_START_TS = 1_577_836_800_000  # 2020-01-01T00:00Z


def synthetic_series(n: int, symbol: str = "SYNUSDT", timeframe: str = "1m", seed: int = 0,
                     start_price: float = 100.0, *,
                     start_ts: int = DEFAULT_START_TS) -> BarSeries:
    """``n`` bars starting at ``start_ts`` (aligned down to the timeframe). Every bar is valid:
    positive prices, high/low bounding open/close, positive volume; open equals the previous
    close, as on a continuous 24/7 market."""
    if n < 0:
        raise ValueError(f"n must not be negative, got {n}")
    if not (math.isfinite(start_price) and start_price > 0):
        raise ValueError(f"start_price must be positive, got {start_price}")
    step = timeframe_ms(timeframe)
    rng = np.random.default_rng(seed)
    bars_per_year = _YEAR_MS / step

    # Regimes as runs of geometric length; drawing whole runs keeps the Markov switching
    # vectorized (no per-bar loop). Enough runs are drawn up front to cover n almost always.
    mean_run = max(5.0, _REGIME_MEAN_DAYS * 86_400_000 / step)
    runs = np.empty(0, dtype=np.int64)
    while runs.sum() < n:
        more = rng.geometric(1.0 / mean_run, size=int(n / mean_run) + 8)
        runs = np.concatenate([runs, more])
    regimes = rng.choice(len(_REGIME_VOLS), size=len(runs), p=_REGIME_PROBS)
    sigma = np.repeat(_REGIME_VOLS[regimes] / math.sqrt(bars_per_year), runs)[:n]

    shocks = rng.standard_t(_T_DOF, size=n) / math.sqrt(_T_DOF / (_T_DOF - 2.0))  # unit variance
    log_ret = sigma * shocks - 0.5 * sigma**2  # Ito drift: a martingale until it nears a band
    # Reflect the log price into start_price * [1/1000, 1000]: a free GBM over thousands of bars
    # drifts to prices that underflow or overflow; reflection keeps every local move's size.
    lo_band = math.log(start_price) - _BAND
    folded = np.mod(np.cumsum(log_ret) + _BAND, 4 * _BAND)
    close = np.exp(lo_band + np.where(folded <= 2 * _BAND, folded, 4 * _BAND - folded))
    open_ = np.empty(n)
    if n:
        open_[0] = start_price
        open_[1:] = close[:-1]
    # Wicks beyond the body, scaled by the bar's volatility; exp(x >= 0) >= 1 keeps the bounds.
    high = np.maximum(open_, close) * np.exp(sigma * np.abs(rng.standard_normal(n)) * 0.6)
    low = np.minimum(open_, close) * np.exp(-sigma * np.abs(rng.standard_normal(n)) * 0.6)
    # Volume rises with the size of the move and the regime's volatility, with lognormal noise.
    base = 1e6 / start_price * step / 60_000
    rel_move = np.abs(log_ret) / sigma if n else np.empty(0)
    volume = base * (sigma / _REGIME_VOLS[0] * math.sqrt(bars_per_year)) * (0.5 + rel_move) \
        * rng.lognormal(0.0, 0.5, size=n)

    first = start_ts - start_ts % step
    ts = first + np.arange(n, dtype=np.int64) * step
    return BarSeries(symbol, timeframe, ts, open_, high, low, close, volume)
