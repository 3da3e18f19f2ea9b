"""Performance report of a run: returns, risk-adjusted returns, drawdown and trade statistics.

Conventions: crypto trades 365 days a year, so a timeframe's bars per year are
``365 days / timeframe``; the risk-free rate is 0; Sharpe and Sortino come from per-bar simple
returns of the equity curve (one point per bar); CAGR uses the wall-clock span of the curve;
drawdowns are ratios of the running peak (0.25 = 25 % below the peak).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from quantum_trader.domain.models import timeframe_ms
from quantum_trader.domain.records import ClosedTrade

YEAR_MS = 365 * 86_400_000


@dataclass(frozen=True, slots=True)
class PerformanceReport:
    timeframe: str
    start_ts: int
    end_ts: int
    bars: int
    initial_equity: float
    final_equity: float
    total_return: float
    cagr: float | None  # None when the curve spans no time
    sharpe: float | None  # None when undefined (fewer than 2 returns, or a flat curve)
    sortino: float | None
    annual_volatility: float | None
    max_drawdown: float
    max_drawdown_duration_ms: int  # peak to recovery, or to the end if not recovered
    max_drawdown_peak_ts: int
    max_drawdown_trough_ts: int
    max_drawdown_recovered: bool
    trades: int
    win_rate: float | None  # None without trades
    profit_factor: float | None  # inf with wins and no losses; None without wins or losses
    avg_trade: float | None
    gross_profit: float
    gross_loss: float  # positive number
    exposure: float
    fees_paid: float
    funding_paid: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: infinities become "∞" / "-∞", NaN becomes None."""
        return {f.name: _json_safe(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerformanceReport:
        """The report ``to_dict`` made (a stored run's); unknown keys are ignored, a missing
        one is a ``ValueError`` naming it."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"performance report without {', '.join(missing)}")
        return cls(**{n: _from_json(data[n]) for n in names})


def _from_json(value: Any) -> Any:
    if value == "∞":
        return math.inf
    if value == "-∞":
        return -math.inf
    return value


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
    return value


def periods_per_year(timeframe: str) -> float:
    return YEAR_MS / timeframe_ms(timeframe)


def compute_report(
    equity_ts: npt.NDArray[np.int64],
    equity: npt.NDArray[np.float64],
    trades: Sequence[ClosedTrade],
    fees_paid: float,
    funding_paid: float,
    exposure_ratio: float,
    timeframe: str,
) -> PerformanceReport:
    ts = np.asarray(equity_ts, dtype=np.int64)
    eq = np.asarray(equity, dtype=np.float64)
    if ts.ndim != 1 or eq.shape != ts.shape:
        raise ValueError(f"equity_ts and equity must be 1-d and the same length, got "
                         f"{ts.shape} and {eq.shape}")
    if len(eq) == 0:
        raise ValueError("the equity curve is empty")
    if not np.isfinite(eq).all():
        raise ValueError("the equity curve has NaN or infinite values")
    if eq[0] <= 0:
        raise ValueError(f"initial equity must be positive, got {eq[0]}")
    if len(ts) > 1 and not (np.diff(ts) > 0).all():
        raise ValueError("equity_ts must be strictly increasing")
    if not 0.0 <= exposure_ratio <= 1.0:
        raise ValueError(f"exposure_ratio must be within [0, 1], got {exposure_ratio}")
    ppy = periods_per_year(timeframe)

    initial, final = float(eq[0]), float(eq[-1])
    span_years = (int(ts[-1]) - int(ts[0])) / YEAR_MS
    returns = _returns(eq)
    sharpe, sortino, vol = _risk_adjusted(returns, ppy)
    dd = _max_drawdown(ts, eq)

    net = np.array([t.net_pnl for t in trades], dtype=np.float64)
    gross_profit = float(net[net > 0].sum())
    gross_loss = float(-net[net < 0].sum())
    if gross_loss > 0:
        profit_factor: float | None = gross_profit / gross_loss
    else:
        profit_factor = math.inf if gross_profit > 0 else None

    return PerformanceReport(
        timeframe=timeframe,
        start_ts=int(ts[0]),
        end_ts=int(ts[-1]),
        bars=len(eq),
        initial_equity=initial,
        final_equity=final,
        total_return=final / initial - 1.0,
        cagr=_cagr(initial, final, span_years),
        sharpe=sharpe,
        sortino=sortino,
        annual_volatility=vol,
        max_drawdown=dd[0],
        max_drawdown_duration_ms=dd[1],
        max_drawdown_peak_ts=dd[2],
        max_drawdown_trough_ts=dd[3],
        max_drawdown_recovered=dd[4],
        trades=len(net),
        win_rate=float((net > 0).mean()) if len(net) else None,
        profit_factor=profit_factor,
        avg_trade=float(net.mean()) if len(net) else None,
        gross_profit=gross_profit,
        gross_loss=gross_loss,
        exposure=float(exposure_ratio),
        fees_paid=float(fees_paid),
        funding_paid=float(funding_paid),
    )


def _returns(eq: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    prev = eq[:-1]
    # After a wipe-out (equity <= 0) there is nothing left to return on: count those bars as 0.
    safe = np.where(prev > 0, prev, 1.0)
    return np.where(prev > 0, eq[1:] / safe - 1.0, 0.0)


def _ratio(mean: float, dev: float) -> float | None:
    if dev > 0:
        return mean / dev
    return None if mean == 0 else math.copysign(math.inf, mean)


def _risk_adjusted(r: npt.NDArray[np.float64],
                   ppy: float) -> tuple[float | None, float | None, float | None]:
    if len(r) < 2:
        return None, None, None
    scale = math.sqrt(ppy)
    mean = float(r.mean())
    std = float(r.std(ddof=1))  # sample standard deviation
    downside = float(math.sqrt(np.mean(np.minimum(r, 0.0) ** 2)))  # target return 0, all bars
    sharpe = _ratio(mean, std)
    sortino = _ratio(mean, downside)
    return (None if sharpe is None else sharpe * scale,
            None if sortino is None else sortino * scale,
            std * scale)


def _cagr(initial: float, final: float, years: float) -> float | None:
    if years <= 0:
        return None
    if final <= 0:
        return -1.0
    try:
        return math.exp(math.log(final / initial) / years) - 1.0
    except OverflowError:  # a big gain over a very short span
        return math.inf


def _max_drawdown(ts: npt.NDArray[np.int64],
                  eq: npt.NDArray[np.float64]) -> tuple[float, int, int, int, bool]:
    """(depth, duration ms, peak ts, trough ts, recovered) of the deepest drawdown."""
    peak = np.maximum.accumulate(eq)
    dd = 1.0 - eq / peak
    trough = int(np.argmax(dd))
    depth = float(dd[trough])
    if depth <= 0:
        return 0.0, 0, int(ts[0]), int(ts[0]), True
    top = float(peak[trough])
    peak_i = int(np.flatnonzero(eq[: trough + 1] >= top)[-1])
    after = np.flatnonzero(eq[trough:] >= top)
    recovered = len(after) > 0
    end_i = trough + int(after[0]) if recovered else len(eq) - 1
    return depth, int(ts[end_i] - ts[peak_i]), int(ts[peak_i]), int(ts[trough]), recovered


@dataclass(frozen=True, slots=True)
class PairResult:
    """One symbol's share of a portfolio run, beside holding it for the same bars."""

    symbol: str
    bars: int
    trades: int
    win_rate: float | None  # None without trades
    net_pnl: float
    fees: float
    funding: float
    exposure: float  # share of the symbol's bars with a position in it
    buy_and_hold: float  # last close / first close - 1 over the symbol's bars

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _json_safe(getattr(self, f.name)) for f in dataclasses.fields(self)}


def pair_results(trades: Sequence[ClosedTrade], bars: dict[str, int],
                 exposed_bars: dict[str, int],
                 first_last_close: dict[str, tuple[float, float]]) -> list[PairResult]:
    """Per-symbol results in symbol order. Fees and funding are the closed trades' (what an
    open position has paid so far shows in the account's totals, not here)."""
    out = []
    for sym in sorted(bars):
        own = [t for t in trades if t.symbol == sym]
        wins = sum(1 for t in own if t.net_pnl > 0)
        first, last = first_last_close.get(sym, (0.0, 0.0))
        out.append(PairResult(
            sym, bars[sym], len(own), wins / len(own) if own else None,
            sum(t.net_pnl for t in own), sum(t.fees for t in own), sum(t.funding for t in own),
            exposed_bars.get(sym, 0) / bars[sym] if bars[sym] else 0.0,
            last / first - 1.0 if first > 0 else 0.0))
    return out


def basket_buy_and_hold(pairs: Sequence[PairResult]) -> float | None:
    """Equal weights in every symbol from its first bar, held to its last."""
    return sum(p.buy_and_hold for p in pairs) / len(pairs) if pairs else None


@dataclass(frozen=True, slots=True)
class PeriodReturn:
    """The account's return over one calendar period (UTC): its last equity point over the
    last point before it (the curve's first point for the first period)."""

    year: int
    month: int | None  # None: the whole year
    ret: float
    start_equity: float
    end_equity: float

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _json_safe(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _period_returns(equity_ts: npt.NDArray[np.int64], equity: npt.NDArray[np.float64],
                    unit: str) -> list[PeriodReturn]:
    ts = np.asarray(equity_ts, dtype=np.int64)
    eq = np.asarray(equity, dtype=np.float64)
    if len(eq) == 0:
        return []
    if eq.shape != ts.shape:
        raise ValueError(f"equity_ts and equity differ in shape: {ts.shape} and {eq.shape}")
    periods = ts.astype("datetime64[ms]").astype(f"datetime64[{unit}]").astype(np.int64)
    last = np.flatnonzero(np.diff(periods) != 0)  # the last point of each period but the last
    ends = np.append(last, len(eq) - 1)
    out = []
    base = float(eq[0])
    for i in ends:
        end = float(eq[i])
        p = int(periods[i])
        year, month = (1970 + p // 12, p % 12 + 1) if unit == "M" else (1970 + p, None)
        ret = end / base - 1.0 if base > 0 else 0.0  # nothing left to return on after a wipe-out
        out.append(PeriodReturn(year, month, ret, base, end))
        base = end
    return out


def monthly_returns(equity_ts: npt.NDArray[np.int64],
                    equity: npt.NDArray[np.float64]) -> list[PeriodReturn]:
    """One return per calendar month (UTC) the curve touches, in order; compounded they give
    the total return. A month with no point (a gap in the data) has no entry."""
    return _period_returns(equity_ts, equity, "M")


def yearly_returns(equity_ts: npt.NDArray[np.int64],
                   equity: npt.NDArray[np.float64]) -> list[PeriodReturn]:
    """As ``monthly_returns``, per calendar year."""
    return _period_returns(equity_ts, equity, "Y")


@dataclass(frozen=True, slots=True)
class DurationStats:
    """How long trades were open (``closed_ts - opened_ts``), in milliseconds; None without
    trades (or without winners / losers for those two)."""

    trades: int
    mean_ms: float | None
    median_ms: float | None
    min_ms: int | None
    max_ms: int | None
    mean_win_ms: float | None
    mean_loss_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _json_safe(getattr(self, f.name)) for f in dataclasses.fields(self)}


def trade_durations(trades: Sequence[ClosedTrade]) -> npt.NDArray[np.int64]:
    return np.array([t.closed_ts - t.opened_ts for t in trades], dtype=np.int64)


def duration_stats(trades: Sequence[ClosedTrade]) -> DurationStats:
    d = trade_durations(trades)
    if len(d) == 0:
        return DurationStats(0, None, None, None, None, None, None)
    net = np.array([t.net_pnl for t in trades], dtype=np.float64)
    wins, losses = d[net > 0], d[net < 0]
    return DurationStats(
        len(d), float(d.mean()), float(np.median(d)), int(d.min()), int(d.max()),
        float(wins.mean()) if len(wins) else None,
        float(losses.mean()) if len(losses) else None)


@dataclass(frozen=True, slots=True)
class ExitReasonStats:
    reason: str
    trades: int
    share: float  # of all trades
    wins: int
    win_rate: float
    net_pnl: float
    avg_pnl: float

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _json_safe(getattr(self, f.name)) for f in dataclasses.fields(self)}


def exit_reasons(trades: Sequence[ClosedTrade]) -> list[ExitReasonStats]:
    """Trades grouped by why they closed, the most frequent first (ties by name)."""
    groups: dict[str, list[float]] = {}
    for t in trades:
        groups.setdefault(t.exit_reason or "unknown", []).append(t.net_pnl)
    total = len(trades)
    out = [ExitReasonStats(reason, len(pnl), len(pnl) / total, sum(1 for p in pnl if p > 0),
                           sum(1 for p in pnl if p > 0) / len(pnl), sum(pnl),
                           sum(pnl) / len(pnl))
           for reason, pnl in groups.items()]
    return sorted(out, key=lambda s: (-s.trades, s.reason))


def best_and_worst(trades: Sequence[ClosedTrade],
                   n: int = 5) -> tuple[list[ClosedTrade], list[ClosedTrade]]:
    """The ``n`` trades with the highest net PnL (best first) and the ``n`` with the lowest
    (worst first); with fewer than ``2 n`` trades the lists share some."""
    ranked = sorted(trades, key=lambda t: (t.net_pnl, t.closed_ts))
    return ranked[::-1][:n], ranked[:n]
