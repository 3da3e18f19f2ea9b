"""The example strategies (examples/strategies/, public API only) on the real shipped bars:
they trade, their signals are where an independent vectorised computation puts them, and they
pass the lookahead checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantum_trader.config import Settings
from quantum_trader.domain.strategy import EmaCrossStrategy
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.marketdata.series import BarSeries
from quantum_trader.runtime.backtest import run_backtest
from quantum_trader.strategies.adapter import bar_time
from quantum_trader.strategies.checks import check_source, signals
from quantum_trader.strategies.loader import LoadedStrategy, load_strategy

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "strategies"


def _load(name: str, **params: object) -> LoadedStrategy:
    return load_strategy(str(EXAMPLES / name), params)


def _events(loaded: LoadedStrategy, series: BarSeries) -> dict[int, str]:
    """Bar index -> long/short for every entry signal (flat ones left out)."""
    got = signals(lambda: loaded.source(60_000), series)
    return {i: k[0] for i, k in enumerate(got) if k is not None and k[0] != "flat"}


def _backtest_and_check(loaded: LoadedStrategy, series: BarSeries) -> None:
    result = run_backtest([series], Settings(), loaded.source(60_000))
    assert result.source == loaded.cls.name
    assert len(result.trades) > 20
    assert result.signals > len(result.trades)
    checked = series.slice(0, 12_000)
    results = check_source(lambda: loaded.source(60_000), checked, loaded.source(1).warmup())
    assert [(r.check, r.passed) for r in results] == [
        ("lookahead", True), ("lookahead", True), ("lookahead", True), ("recursive", True),
        ("deterministic", True)]
    assert all(r.signals > 50 for r in results)


def test_ema_cross_is_the_baseline_written_against_the_public_api() -> None:
    series = load_sample("XRP")
    loaded = _load("ema_cross.py")
    ours = signals(lambda: loaded.source(60_000), series)
    theirs = signals(EmaCrossStrategy, series)
    assert sum(k is not None for k in ours) == 1_223
    for a, b in zip(ours, theirs, strict=True):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert a[0] == b[0]
            assert a[1] == pytest.approx(b[1], abs=1e-12)
            assert a[2] == pytest.approx(b[2], rel=1e-12)
    # and where pandas' EMAs cross, after the slow span
    close = pd.Series(series.close)
    above = (close.ewm(span=12, adjust=False).mean() > close.ewm(span=26, adjust=False).mean())
    crosses = {i: "long" if above[i] else "short"
               for i in range(26, len(close)) if above[i] != above[i - 1]}
    assert _events(loaded, series) == crosses
    first = min(crosses)
    assert (bar_time(int(series.ts[first])), crosses[first]) == ("2017-10-01T22:30:00Z", "long")
    _backtest_and_check(loaded, series)


def test_rsi_mean_reversion_signals_where_wilders_rsi_leaves_oversold_and_overbought() -> None:
    series = load_sample("BTC")
    loaded = _load("rsi_mean_reversion.py")
    close = pd.Series(series.close)
    delta = close.diff()
    gain = delta.clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
    loss = (-delta.clip(upper=0)).ewm(alpha=1 / 14, adjust=False).mean()
    rsi = (100 - 100 / (1 + gain / loss)).to_numpy()
    start = 20 * 14  # the two seeds (simple mean vs first change) agree by then
    want = {i: "long" for i in range(start, len(rsi)) if rsi[i - 1] < 30 <= rsi[i]}
    want |= {i: "short" for i in range(start, len(rsi)) if rsi[i - 1] > 70 >= rsi[i]}
    got = {i: d for i, d in _events(loaded, series).items() if i >= start}
    assert got == want
    assert len(got) > 500
    # and it gets flat where the RSI crosses 50
    flats = [i for i, k in enumerate(signals(lambda: loaded.source(1), series))
             if k is not None and k[0] == "flat" and i >= start]
    assert flats
    assert all((rsi[i - 1] < 50) != (rsi[i] < 50) for i in flats)
    _backtest_and_check(loaded, series)


def test_donchian_breakout_signals_where_the_close_first_leaves_the_channel() -> None:
    series = load_sample("ETH")
    loaded = _load("donchian_breakout.py", entry=30)
    high, low, close = (pd.Series(c) for c in (series.high, series.low, series.close))
    upper = high.rolling(30).max().shift(1)
    lower = low.rolling(30).min().shift(1)
    up = (close > upper) & (close.shift(1) <= upper.shift(1))
    down = (close < lower) & (close.shift(1) >= lower.shift(1))
    want = {int(i): "long" for i in np.flatnonzero(up.to_numpy())}
    want |= {int(i): "short" for i in np.flatnonzero(down.to_numpy())}
    assert _events(loaded, series) == want
    assert len(want) > 1_000
    _backtest_and_check(loaded, series)


def test_donchian_without_shorts_never_sells_short() -> None:
    loaded = _load("donchian_breakout.py", allow_short=False)
    assert set(_events(loaded, load_sample("ETH").slice(0, 5_000)).values()) == {"long"}
