"""Checks any signal source can be put through, on real bars, before it trades.

- **lookahead** (the perturb-the-future method of ``tests/unit/test_no_lookahead.py``): the
  bars from a cut on are changed (prices by a random walk, volumes at random); every signal
  before the cut must be exactly what it was. A source that sees only the bars it is given
  passes by construction; one that reaches the future another way (a cache kept between
  runs, data it reads for itself and that the check changed) does not.
- **recursive**: started ``start`` bars later, once its ``warmup`` bars have passed its
  signals must equal the full run's (confidence and stop within 1e-6). An indicator whose
  value depends on how much history it has had (a cumulative sum, an EMA given too short a
  warm-up) fails it, and would trade differently live, where history starts elsewhere.
- **deterministic**: the same bars twice give the same signals exactly (a redelivered bar
  must give the same signal id and content; see the ai-engine service).

Each pass is a fresh source from ``make`` over one symbol's bars. Class-level state is not
reset between passes, on purpose: state that leaks from one run into the next is one of the
ways a strategy ends up trading on the future (an optimiser runs many backtests in one
process). Pure computation: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from quantum_trader.domain.strategy import SignalSource
from quantum_trader.marketdata.series import BarSeries
from quantum_trader.strategies.adapter import bar_time

Key = tuple[str, float, float | None]  # direction, confidence, stop distance
CheckName = Literal["lookahead", "recursive", "deterministic"]
CUTS = (0.25, 0.5, 0.75)
TOLERANCE = 1e-6


class CheckImpossible(ValueError):
    """The bars are too few for a check (the message says how many it needs)."""


@dataclass(frozen=True)
class CheckResult:
    check: CheckName
    symbol: str
    condition: str  # what was changed, as a phrase
    bars: int  # bars whose signals were compared
    signals: int  # how many of those had a signal in the reference run
    bar_ts: int | None = None  # the first bar where the runs differ (its open time)
    expected: Key | None = None  # the reference run's signal there
    got: Key | None = None  # the other run's

    @property
    def passed(self) -> bool:
        return self.bar_ts is None

    def explain(self, name: str) -> str:
        """One line saying what was found (only for a failed check)."""
        assert self.bar_ts is not None
        at = f"{self.symbol} bar {bar_time(self.bar_ts)}"
        was, now = show(self.expected), show(self.got)
        if self.check == "lookahead":
            return (f"{name} looks ahead: with {self.condition}, its signal on {at} changed "
                    f"from {was} to {now}")
        if self.check == "recursive":
            return (f"{name}'s signals depend on where the history starts: {self.condition}, "
                    f"its signal on {at} is {now}, not {was} (declare a longer warmup(), or "
                    "make the indicator forget its start)")
        return (f"{name} is not a function of its bars: run twice on the same bars, its "
                f"signal on {at} was {was}, then {now} (randomness, the clock, or state "
                "kept between runs)")


def show(key: Key | None) -> str:
    if key is None:
        return "none"
    direction, confidence, stop = key
    return f"{direction} {confidence:.6g}" + ("" if stop is None else f" stop {stop:.6g}")


def signals(make: Callable[[], SignalSource], series: BarSeries) -> list[Key | None]:
    """Per bar of ``series``, what a fresh source said after it (None: nothing)."""
    source = make()
    out: list[Key | None] = []
    for bar in series:
        sig = source.on_bar(bar)
        out.append(None if sig is None else
                   (sig.direction.value.lower(), sig.confidence, sig.stop_distance))
    return out


def perturb_future(series: BarSeries, first: int, seed: int) -> BarSeries:
    """``series`` with every bar from index ``first`` on changed: prices scaled by a random
    walk (bar by bar, so each bar's high and low still bound its open and close), volumes by
    a random factor in [0.1, 10]."""
    rng = np.random.default_rng(seed)
    n = len(series) - first
    f = np.exp(rng.normal(0, 0.05, n).cumsum())
    cols = {}
    for name in ("open", "high", "low", "close"):
        col = getattr(series, name).copy()
        col[first:] = col[first:] * f
        cols[name] = col
    vol = series.volume.copy()
    vol[first:] = vol[first:] * rng.uniform(0.1, 10, n)
    return BarSeries(series.symbol, series.timeframe, series.ts.copy(), cols["open"],
                     cols["high"], cols["low"], cols["close"], vol)


def _same(a: Key | None, b: Key | None, tolerance: float) -> bool:
    if a is None or b is None or tolerance == 0.0:
        return a == b
    if a[0] != b[0] or abs(a[1] - b[1]) > tolerance:
        return False
    if a[2] is None or b[2] is None:
        return a[2] is b[2]
    return math.isclose(a[2], b[2], rel_tol=tolerance, abs_tol=tolerance)


def _compare(check: CheckName, series: BarSeries, condition: str,
             reference: Sequence[Key | None], other: Sequence[Key | None], offset: int,
             first: int, stop: int, tolerance: float = 0.0) -> CheckResult:
    """Bars ``first``..``stop`` of ``reference`` against ``other`` (which starts at bar
    ``offset`` of the series)."""
    for i in range(first, stop):
        if not _same(reference[i], other[i - offset], tolerance):
            return CheckResult(check, series.symbol, condition, i - first + 1,
                               sum(1 for k in reference[first:i + 1] if k is not None),
                               int(series.ts[i]), reference[i], other[i - offset])
    return CheckResult(check, series.symbol, condition, stop - first,
                       sum(1 for k in reference[first:stop] if k is not None))


def bars_needed(warmup: int) -> int:
    """The fewest bars ``check_source`` can work with: the recursive check starts at least
    one bar in and compares at least one bar after the warm-up."""
    return max(warmup + 2, 4)


def check_source(make: Callable[[], SignalSource], series: BarSeries, warmup: int,
                 cuts: Sequence[float] = CUTS, seed: int = 7) -> list[CheckResult]:
    """Every check on one symbol's bars: lookahead at each cut, recursive, deterministic."""
    n = len(series)
    if n < bars_needed(warmup):
        raise CheckImpossible(f"{series.symbol}: {n} bars are too few to check a source with "
                              f"a warm-up of {warmup} bars (at least {bars_needed(warmup)})")
    start = min(n // 4, n - warmup - 1)
    reference = signals(make, series)
    results = []
    for k, fraction in enumerate(cuts):
        cut = max(1, int(n * fraction))
        changed = signals(make, perturb_future(series, cut, seed + k))
        results.append(_compare("lookahead", series, f"only the bars from "
                                f"{bar_time(int(series.ts[cut]))} on changed",
                                reference, changed, 0, 0, cut))
    later = signals(make, series.slice(start))
    results.append(_compare("recursive", series, f"started at "
                            f"{bar_time(int(series.ts[start]))} with a warm-up of {warmup} "
                            "bars", reference, later, start, start + warmup, n, TOLERANCE))
    again = signals(make, series)
    results.append(_compare("deterministic", series, "the same bars again", reference,
                            again, 0, 0, n))
    return results
