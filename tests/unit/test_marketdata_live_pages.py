"""Routine kline polls are light (Binance weighs klines by the page size asked for); only a
gap is fetched in big pages. A narrow unit test with a recording bar source: the full path
against the simulator through ccxt is tests/integration/test_exchange_marketdata.py."""

from __future__ import annotations

import itertools

from quantum_trader.domain.models import Bar
from quantum_trader.exchange.ratelimit import binance_weight
from quantum_trader.marketdata.live import LiveKlineFeed

TF = 1_800_000


class Venue:
    def __init__(self, closed: int) -> None:
        self.closed = closed  # bars closed so far on the venue
        self.limits: list[int] = []

    async def bars(self, symbol: str, timeframe: str, since: int | None = None,
                   limit: int = 500) -> list[Bar]:
        self.limits.append(limit)
        start = 0 if since is None else since // TF
        if since is None:
            start = max(0, self.closed - limit)
        return [Bar(symbol, timeframe, i * TF, 1.0, 1.0, 1.0, 1.0, 1.0)
                for i in range(start, min(self.closed, start + limit))]


async def test_polls_ask_for_small_pages_and_a_gap_is_backfilled_in_big_ones() -> None:
    venue = Venue(closed=10)
    got: list[Bar] = []

    async def publish(bar: Bar) -> None:
        got.append(bar)

    feed = LiveKlineFeed(venue, ["XRPUSDT"], "30m", publish, page_size=1000)
    await feed.poll_once()  # warm-up: the latest bar
    venue.limits.clear()
    for _ in range(3):
        venue.closed += 1
        assert await feed.poll_once() == 1
    assert venue.limits == [99, 99, 99]
    assert {binance_weight("/fapi/v1/klines", {"limit": str(x)}) for x in venue.limits} == {1}

    venue.limits.clear()
    venue.closed += 1_500  # a long outage: the small page comes back full, big pages follow
    assert await feed.poll_once() == 1_500
    assert venue.limits == [99, 1000, 1000]
    ts = [b.ts for b in got]
    assert ts == sorted(set(ts))
    assert all(b - a == TF for a, b in itertools.pairwise(ts))
