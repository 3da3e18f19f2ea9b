"""Bars are checked where they enter: a bar whose time cannot be right is refused (and never
moves the feed on), and the kline Binance serves while it is still open is never published as
closed, whatever URL the venue is at."""

from __future__ import annotations

import time

import pytest
from pydantic import SecretStr

from quantum_trader.bus.protocol import MalformedMessage, Message
from quantum_trader.domain.models import Bar
from quantum_trader.exchange.ccxt_binance import BinanceSettings, CcxtBinanceExchange
from quantum_trader.marketdata.live import LiveKlineFeed
from quantum_trader.services.messages import (
    BarRefused,
    bar_from,
    bar_id,
    bar_payload,
    check_bar_time,
)
from quantum_trader.venue_sim import SimServer, SimServerConfig, SimState, load_series

TF = 1_800_000
NOW = 1_700_000_000_000 // TF * TF


def bar(ts: int, close: float = 1.0) -> Bar:
    return Bar("XRPUSDT", "30m", ts, 1.0, 1.1, 0.9, close, 100.0)


@pytest.mark.parametrize(("ts", "why"), [(NOW + 60_000, "grid"), (NOW, "after now"),
                                         (NOW + 100 * TF, "after now")])
def test_implausible_bar_times_are_refused(ts: int, why: str) -> None:
    with pytest.raises(BarRefused, match=why):
        check_bar_time(bar(ts), NOW)
    check_bar_time(bar(NOW - TF), NOW)  # closed at "now": a bar


def test_a_consumer_dead_letters_a_bar_from_the_future() -> None:
    future = bar((int(time.time() * 1000) // TF + 10) * TF)
    with pytest.raises(MalformedMessage, match="not a closed bar"):
        bar_from(Message("bar", bar_payload(future), 0, bar_id(future)))


class Pages:
    """A venue whose kline history holds one bar from the far future among real ones."""

    def __init__(self) -> None:
        self.calls = 0

    async def bars(self, symbol: str, timeframe: str, since: int | None = None,
                   limit: int = 500) -> list[Bar]:
        self.calls += 1
        rows = [bar(NOW - 3 * TF), bar(NOW + 1000 * TF), bar(NOW - 2 * TF), bar(NOW - TF)]
        return [b for b in rows if since is None or b.ts >= since][:limit]


async def test_a_refused_bar_never_moves_the_feed_on() -> None:
    published: list[int] = []

    async def publish(b: Bar) -> bool:
        try:
            check_bar_time(b, NOW)
        except BarRefused:
            return False
        published.append(b.ts)
        return True

    feed = LiveKlineFeed(Pages(), ["XRPUSDT"], "30m", publish,
                         start_after={"XRPUSDT": NOW - 4 * TF})
    await feed.poll_once()
    assert published == [NOW - 3 * TF, NOW - 2 * TF, NOW - TF]  # the rest still got through
    assert feed.stats.refused == 1
    assert feed.stats.last_ts["XRPUSDT"] == NOW - TF


@pytest.mark.integration
async def test_the_open_kline_is_never_a_closed_bar_even_at_a_custom_url() -> None:
    """Binance serves the kline in progress as the last one. The adapter drops it by the
    venue's clock, also when ``base_url`` points somewhere else (a proxy, our simulator)."""
    state = SimState(SimServerConfig(series=load_series(["sample:XRP"]), wall_clock=True,
                                     start_bar=600))
    srv = SimServer(state).start()
    x = CcxtBinanceExchange(BinanceSettings(
        mode="live", base_url=srv.url, api_key=SecretStr(state.config.api_key),
        api_secret=SecretStr(state.config.api_secret)))
    try:
        await x.connect()
        raw = await x._x.fetch_ohlcv("XRP/USDT:USDT", "30m", None, 5)
        assert raw[-1][0] + TF > time.time() * 1000  # the venue does serve the open one
        bars = await x.bars("XRPUSDT", "30m", None, 5)
        assert bars
        assert all(b.close_ts <= time.time() * 1000 for b in bars)
        assert bars[-1].ts == raw[-2][0]
    finally:
        await x.close()
        srv.stop()
