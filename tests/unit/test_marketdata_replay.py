"""ReplayFeed: time-ordered merge across symbols, resume, length, speed; async pacing."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from quantum_trader.domain.models import Bar
from quantum_trader.marketdata import replay
from quantum_trader.marketdata.replay import ReplayFeed, aiter_bars
from quantum_trader.marketdata.series import BarSeries
from quantum_trader.marketdata.synthetic import synthetic_series

T0 = 1_577_836_800_000
MIN = 60_000


def series(symbol: str, timeframe: str, starts: list[int]) -> BarSeries:
    n = len(starts)
    base = np.arange(1, n + 1, dtype=np.float64)
    return BarSeries(symbol, timeframe, np.array(starts, dtype=np.int64), base, base + 1,
                     base - 0.5, base + 0.5, base * 10)


def test_merges_by_close_time_then_symbol() -> None:
    # BBB: 1m bars; AAA: 5m bars. AAA's first bar closes at T0+5m, with BBB's bar opened T0+4m.
    bbb = series("BBB", "1m", [T0 + i * MIN for i in range(7)])
    aaa = series("AAA", "5m", [T0, T0 + 5 * MIN])
    feed = ReplayFeed([bbb, aaa])  # argument order must not matter
    bars = list(feed)
    assert len(feed) == 9
    assert len(bars) == 9
    closes = [b.close_ts for b in bars]
    assert closes == sorted(closes)
    assert [(b.symbol, (b.close_ts - T0) // MIN) for b in bars] == [
        ("BBB", 1), ("BBB", 2), ("BBB", 3), ("BBB", 4), ("AAA", 5), ("BBB", 5), ("BBB", 6),
        ("BBB", 7), ("AAA", 10)]


def test_bars_equal_the_series_rows() -> None:
    s = synthetic_series(1000, symbol="SYN", seed=5)
    bars = list(ReplayFeed([s]))
    assert bars == [s.bar(i) for i in range(len(s))]
    assert all(type(b) is Bar for b in bars)
    assert bars[7] == Bar("SYN", "1m", int(s.ts[7]), float(s.open[7]), float(s.high[7]),
                          float(s.low[7]), float(s.close[7]), float(s.volume[7]))
    assert hash(bars[7]) == hash(s.bar(7))


def test_fallback_constructor_gives_the_same_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    s = synthetic_series(100, seed=2)
    fast = list(ReplayFeed([s]))
    monkeypatch.setattr(replay, "_FAST_BARS", False)
    assert list(ReplayFeed([s])) == fast


def test_resume_with_start_after_skips_processed_bars() -> None:
    a = synthetic_series(50, symbol="AAA", timeframe="1m", seed=1)
    b = synthetic_series(20, symbol="BBB", timeframe="5m", seed=2)
    full = list(ReplayFeed([a, b]))
    stop = 30
    done = full[:stop]
    last = {sym: max(x.ts for x in done if x.symbol == sym) for sym in ("AAA", "BBB")}
    resumed = ReplayFeed([a, b], start_after=last)
    assert len(resumed) == len(full) - stop
    assert list(resumed) == full[stop:]


def test_start_after_for_an_unknown_symbol_is_ignored() -> None:
    a = synthetic_series(5, symbol="AAA")
    assert len(ReplayFeed([a], start_after={"ZZZ": T0 * 2})) == 5


def test_is_a_single_pass_iterator() -> None:
    feed = ReplayFeed([synthetic_series(3)])
    first = next(feed)
    assert first.ts == synthetic_series(3).ts[0]
    assert len(list(feed)) == 2
    assert list(feed) == []
    assert len(feed) == 3  # the whole pass, not what is left


def test_empty_and_duplicate_inputs() -> None:
    assert list(ReplayFeed([])) == []
    s = synthetic_series(3)
    with pytest.raises(ValueError, match="appear twice"):
        ReplayFeed([s, s])


def test_iterates_fast() -> None:
    # The target is >1M bars/s; the bound here is loose so a busy CI box does not flake.
    parts = [synthetic_series(250_000, symbol=f"S{i}", seed=i) for i in range(4)]
    feed = ReplayFeed(parts)
    started = time.perf_counter()
    n = sum(1 for _ in feed)
    elapsed = time.perf_counter() - started
    assert n == 1_000_000
    assert n / elapsed > 300_000, f"{n / elapsed:,.0f} bars/s"


async def test_aiter_bars_unpaced_yields_everything() -> None:
    s = synthetic_series(3000)
    got = [b async for b in aiter_bars(ReplayFeed([s]))]
    assert got == list(s)


async def test_aiter_bars_paces_and_lets_other_tasks_run() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    got = [b async for b in aiter_bars(ReplayFeed([synthetic_series(21)]), bars_per_second=200)]
    elapsed = time.perf_counter() - started
    task.cancel()
    assert len(got) == 21
    assert elapsed >= 0.095  # bar 20 is due 100 ms after the first
    assert ticks >= 5


async def test_aiter_bars_rejects_bad_rate() -> None:
    with pytest.raises(ValueError, match="positive"):
        async for _ in aiter_bars([], bars_per_second=0):
            pass
