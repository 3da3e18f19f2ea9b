"""Features from bars, with one definition used two ways.

* ``compute_features(series, spec)`` — vectorized over a whole ``BarSeries`` (training);
* ``FeatureState(spec).update(bar)`` — an O(1)-per-bar state machine (live signals).

Both run the same recursions (every smoother is an exponential moving average seeded with its
first input, ``s = a*x + (1-a)*s``; the vectorized side runs it through ``scipy.signal.lfilter``,
which evaluates exactly that expression) and then the same ``_combine`` function turns the
states into feature values, so the two agree to rounding (a test holds them to 1e-9).

Every feature at bar ``t`` depends on bars ``0..t`` only. The first ``spec.warmup`` rows are
marked invalid (the smoothers have not forgotten their seeds yet).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from quantum_trader.domain.models import Bar
from quantum_trader.marketdata.series import BarSeries

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

DAY_MS = 86_400_000
_TWO_PI = 2.0 * math.pi


class FeatureSpec(BaseModel):
    """The feature set's parameters; stored in every model manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    return_lags: tuple[int, ...] = (1, 2, 4, 8, 16)
    ema_fast: int = Field(12, ge=1)
    ema_slow: int = Field(48, ge=2)
    rsi_period: int = Field(14, ge=2)
    atr_period: int = Field(14, ge=1)
    vol_span: int = Field(32, ge=2)  # EWM variance of 1-bar log returns
    volume_span: int = Field(48, ge=2)  # EWM mean/variance of log(1 + volume)
    hour_of_day: bool = True
    warmup: int = Field(150, ge=1)

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        if not self.return_lags or min(self.return_lags) < 1:
            raise ValueError("return_lags must be positive bar counts")
        if self.ema_fast >= self.ema_slow:
            raise ValueError("ema_fast must be < ema_slow")
        if self.warmup <= max(self.return_lags):
            raise ValueError("warmup must exceed the longest return lag")
        return self

    @property
    def names(self) -> list[str]:
        out = [f"ret_{k}" for k in self.return_lags]
        out += ["close_ema_fast", "close_ema_slow", "ema_fast_slow", "rsi", "atr_close",
                "vol_ewm", "volume_z"]
        if self.hour_of_day:
            out += ["hour_sin", "hour_cos"]
        return out

    def alphas(self) -> dict[str, float]:
        return {
            "fast": 2.0 / (self.ema_fast + 1),
            "slow": 2.0 / (self.ema_slow + 1),
            "rsi": 1.0 / self.rsi_period,
            "atr": 1.0 / self.atr_period,
            "vol": 2.0 / (self.vol_span + 1),
            "volume": 2.0 / (self.volume_span + 1),
        }


def _combine(spec: FeatureSpec, logc: Any, lagged: list[Any], ema_f: Any, ema_s: Any,
             gain: Any, loss: Any, atr: Any, close: Any, r_m: Any, r_s2: Any, v_x: Any,
             v_m: Any, v_s2: Any, ts: Any) -> list[Any]:
    """States -> feature values. Works on numpy arrays (training) and on floats (live)."""
    out = [logc - lg for lg in lagged]
    lf, ls = np.log(ema_f), np.log(ema_s)
    out += [logc - lf, logc - ls, lf - ls]
    denom = gain + loss
    out.append(np.where(denom > 0, gain / np.where(denom > 0, denom, 1.0), 0.5) - 0.5)
    out.append(atr / close)
    out.append(np.sqrt(np.maximum(r_s2 - r_m * r_m, 0.0)))
    var_v = np.maximum(v_s2 - v_m * v_m, 0.0)
    out.append((v_x - v_m) / np.sqrt(var_v + 1e-12))
    if spec.hour_of_day:
        phase = (ts % DAY_MS) * (_TWO_PI / DAY_MS)
        out += [np.sin(phase), np.cos(phase)]
    return out


def _ewm(x: FloatArray, alpha: float) -> FloatArray:
    """``s[0] = x[0]``, ``s[t] = alpha*x[t] + (1-alpha)*s[t-1]``."""
    from scipy.signal import lfilter  # imported here: scipy.signal takes ~0.5 s to import

    if len(x) == 0:
        return x.astype(np.float64)
    beta = 1.0 - alpha
    y, _ = lfilter([alpha], [1.0, -beta], x, zi=[beta * x[0]])
    return np.asarray(y, dtype=np.float64)


def compute_features(series: BarSeries, spec: FeatureSpec) -> tuple[FloatArray, BoolArray]:
    """``(X, valid)``: one row per bar, columns ``spec.names``; ``valid`` is False in warm-up."""
    n = len(series)
    a = spec.alphas()
    close = np.asarray(series.close, dtype=np.float64)
    high = np.asarray(series.high, dtype=np.float64)
    low = np.asarray(series.low, dtype=np.float64)
    logc = np.log(close)
    lagged = []
    for k in spec.return_lags:
        lg = np.empty(n)
        lg[:k] = logc[0] if n else 0.0
        lg[k:] = logc[:-k] if n > k else lg[k:]
        lagged.append(lg)
    ema_f = _ewm(close, a["fast"])
    ema_s = _ewm(close, a["slow"])
    # First differences exist from bar 1; bar 0's states are seeded like the live state machine.
    prev_c = np.empty(n)
    if n:
        prev_c[0] = close[0]
        prev_c[1:] = close[:-1]
    diff = close - prev_c
    gain = np.zeros(n)
    loss = np.zeros(n)
    if n > 1:
        gain[1:] = _ewm(np.maximum(diff[1:], 0.0), a["rsi"])
        loss[1:] = _ewm(np.maximum(-diff[1:], 0.0), a["rsi"])
    tr = np.maximum(high, prev_c) - np.minimum(low, prev_c)
    if n:
        tr[0] = high[0] - low[0]
    atr = _ewm(tr, a["atr"])
    r1 = np.diff(logc, prepend=logc[:1])
    r_m = _ewm(r1, a["vol"])
    r_s2 = _ewm(r1 * r1, a["vol"])
    v_x = np.log1p(np.asarray(series.volume, dtype=np.float64))
    v_m = _ewm(v_x, a["volume"])
    v_s2 = _ewm(v_x * v_x, a["volume"])
    cols = _combine(spec, logc, lagged, ema_f, ema_s, gain, loss, atr, close, r_m, r_s2, v_x,
                    v_m, v_s2, np.asarray(series.ts, dtype=np.int64))
    X = np.column_stack(cols) if n else np.empty((0, len(spec.names)))
    valid = np.arange(n) >= spec.warmup
    return np.ascontiguousarray(X, dtype=np.float64), valid


class FeatureState:
    """The incremental twin of ``compute_features`` for one symbol's bars, in time order."""

    __slots__ = (
        "_a",
        "_atr",
        "_ema_f",
        "_ema_s",
        "_gain",
        "_logs",
        "_loss",
        "_maxlag",
        "_prev_c",
        "_r_m",
        "_r_s2",
        "_v_m",
        "_v_s2",
        "last_atr",
        "last_close",
        "last_ts",
        "n",
        "spec",
    )

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.n = 0
        a = spec.alphas()
        self._a = (a["fast"], a["slow"], a["rsi"], a["atr"], a["vol"], a["volume"])
        self._maxlag = max(spec.return_lags)
        self._logs: deque[float] = deque(maxlen=self._maxlag + 1)
        self._ema_f = self._ema_s = self._gain = self._loss = self._atr = 0.0
        self._prev_c = self._r_m = self._r_s2 = self._v_m = self._v_s2 = 0.0
        self.last_atr = 0.0
        self.last_close = 0.0
        self.last_ts: int | None = None

    @property
    def ready(self) -> bool:
        return self.n > self.spec.warmup

    def update(self, bar: Bar) -> FloatArray | None:
        """Fold in ``bar``; its feature row, or None while warming up."""
        af, as_, ar, aa, av, avol = self._a
        c = bar.close
        logc = math.log(c)
        vx = math.log1p(bar.volume)
        if self.n == 0:
            self._ema_f = self._ema_s = c
            self._atr = bar.high - bar.low
            self._r_m = 0.0
            self._r_s2 = 0.0
            self._v_m = vx
            self._v_s2 = vx * vx
            self._logs.append(logc)
        else:
            prev = self._prev_c
            d = c - prev
            g, lo = (d if d > 0 else 0.0), (-d if d < 0 else 0.0)
            if self.n == 1:
                self._gain, self._loss = g, lo
            else:
                self._gain = ar * g + (1.0 - ar) * self._gain
                self._loss = ar * lo + (1.0 - ar) * self._loss
            self._ema_f = af * c + (1.0 - af) * self._ema_f
            self._ema_s = as_ * c + (1.0 - as_) * self._ema_s
            tr = max(bar.high, prev) - min(bar.low, prev)
            self._atr = aa * tr + (1.0 - aa) * self._atr
            r1 = logc - self._logs[-1]
            self._r_m = av * r1 + (1.0 - av) * self._r_m
            self._r_s2 = av * (r1 * r1) + (1.0 - av) * self._r_s2
            self._v_m = avol * vx + (1.0 - avol) * self._v_m
            self._v_s2 = avol * (vx * vx) + (1.0 - avol) * self._v_s2
            self._logs.append(logc)
        self._prev_c = c
        self.last_ts = bar.ts
        self.last_atr = self._atr
        self.last_close = c
        self.n += 1
        if self.n <= self.spec.warmup:
            return None
        logs = self._logs
        last = len(logs) - 1
        lagged = [logs[last - k] for k in self.spec.return_lags]
        cols = _combine(self.spec, logc, lagged, self._ema_f, self._ema_s, self._gain,
                        self._loss, self._atr, c, self._r_m, self._r_s2, vx, self._v_m,
                        self._v_s2, bar.ts)
        return np.array(cols, dtype=np.float64)
