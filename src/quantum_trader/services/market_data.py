"""market-data: publishes closed bars, from historical data on a replay clock
(``MarketDataService``) or from a venue's closed klines (``LiveMarketDataService``), on the same
topic with the same messages.

Bars are checked at this edge: one whose time cannot be right (off the timeframe's grid, not yet
closed, older than the last one published) is refused and dead-lettered with the reason; it never
reaches a consumer and never moves the feed on.
"""

from __future__ import annotations

import asyncio
import contextlib

from quantum_trader.bus.protocol import Bus, Message, UnknownGroup, deadletter_message
from quantum_trader.config import Settings
from quantum_trader.domain.models import Bar
from quantum_trader.domain.records import Checkpoint
from quantum_trader.marketdata.replay import ReplayFeed
from quantum_trader.marketdata.sample import resolve_source
from quantum_trader.services.base import Service
from quantum_trader.services.messages import (
    PIPELINE,
    BarRefused,
    bar_id,
    bar_payload,
    check_bar_time,
    observe_bar_published,
)
from quantum_trader.store.protocol import TradeStore


async def _prepare(service: Service) -> dict[str, int]:
    """Every pipeline group exists before the first bar (a bar published before a group is
    created would never reach it); returns where the last run got to, symbol -> bar ts."""
    for topic, groups in PIPELINE.items():
        for group in groups:
            await service.bus.ensure_group(topic, group)
    if service.store is not None:
        cp = await service.store.checkpoint(service.name)
        if cp is not None:
            return dict(cp.last_bar_ts)
    return {}


class MarketDataService(Service):
    name = "market-data"

    def __init__(self, settings: Settings, bus: Bus, store: TradeStore | None) -> None:
        super().__init__(settings, bus, store)
        self.published = 0
        self.finished = False
        self.last_ts: dict[str, int] = {}

    async def on_start(self) -> None:
        self.last_ts = await _prepare(self)
        self.spawn(self._replay())

    async def _settled(self) -> bool:
        """Every consumer group has handled everything and every outbox is empty (a message
        committed but not yet published is work in flight too). Two clean passes: a message
        can hop from a topic checked later to one checked earlier (a fill -> a protective exit)
        between the checks of one pass, but it cannot hop back twice without a new bar."""
        for _ in range(2):
            if self.store is not None and await self.store.outbox_pending(1):
                return False
            for topic, groups in PIPELINE.items():
                for group in groups:
                    try:
                        if await self.bus.lag(topic, group):
                            return False
                    except UnknownGroup:
                        # Redis lost its data: the group is recreated and read from the start
                        await self.bus.ensure_group(topic, group)
                        return False
        return True

    async def _replay(self) -> None:
        svc = self.settings.services
        series = resolve_source(self.settings.data.source)
        if svc.replay_max_bars:  # a fixed slice of history, the same across restarts
            series = series.slice(0, svc.replay_max_bars)
        feed = ReplayFeed([series], start_after=self.last_ts or None)
        for bar in feed:
            if self._stop.is_set():
                break
            if svc.replay_pacing == "lockstep":
                while not await self._settled():
                    if self._stop.is_set():
                        return
                    await asyncio.sleep(0.002)
            else:
                await asyncio.sleep(1.0 / svc.replay_bars_per_second)
            await self.publish("market.bars", "bar", bar_payload(bar), bar_id(bar), bar_id(bar))
            observe_bar_published(bar)
            self.last_ts[bar.symbol] = bar.ts
            self.published += 1
            if self.store is not None:
                await self.store.write([Checkpoint.progress(self.name, self.last_ts,
                                                            bar.close_ts)])
        self.finished = True
        self.log.info("replay_finished", published=self.published)


class LiveMarketDataService(Service):
    """Closed klines from the venue onto ``market.bars``: gaps backfilled after a disconnect,
    never a bar twice or out of order; DEGRADED (and entries refused) while the feed is stale."""

    name = "market-data"

    def __init__(self, settings: Settings, bus: Bus, store: TradeStore | None) -> None:
        super().__init__(settings, bus, store)
        from quantum_trader.exchange.ccxt_binance import venue_for

        self.venue = venue_for(settings, self.name)
        self.stale_reason: str | None = "feed not started"
        self.last_ts: dict[str, int] = {}
        self.refused: set[tuple[str, int]] = set()
        self.health.add("market data", self._check_feed, critical=False)

    async def _check_feed(self) -> str | None:
        return self.stale_reason

    def _on_health(self, ok: bool, why: str) -> None:
        self.stale_reason = None if ok else f"stale: {why}"

    async def on_start(self) -> None:
        from quantum_trader.marketdata.live import LiveKlineFeed

        self.last_ts = await _prepare(self)
        await self.venue.connect()  # retries through venue faults
        x = self.settings.exchange
        feed = LiveKlineFeed(self.venue, list(x.symbols), self.settings.data.timeframe,
                             self._publish, poll_s=x.poll_s, stale_after_s=x.stale_after_s,
                             on_health=self._on_health, start_after=self.last_ts or None)
        self.spawn(feed.run(self._stop))

    async def _publish(self, bar: Bar) -> bool:
        from quantum_trader.runtime.clock import wall_ms

        try:
            check_bar_time(bar, wall_ms())
            if bar.ts <= self.last_ts.get(bar.symbol, -1):
                raise BarRefused(f"{bar.symbol} bar at {bar.ts}: not after the last one "
                                 f"published ({self.last_ts[bar.symbol]})")
        except BarRefused as exc:
            key = (bar.symbol, bar.ts)
            if key not in self.refused:
                self.refused.add(key)
                self.log.warning("bar_refused", reason=str(exc))
                from quantum_trader.bus.protocol import Delivery

                raw = Message("bar", bar_payload(bar), wall_ms(), bar_id(bar)).encode()
                letter = deadletter_message(Delivery("market.bars", "-", None, 0, raw),
                                            self.name, f"bar refused: {exc}", wall_ms())
                await self.bus.publish("deadletter", letter)
            return False
        self.stale_reason = None  # a new closed bar: the feed is alive
        await self.publish("market.bars", "bar", bar_payload(bar), bar_id(bar), bar_id(bar))
        observe_bar_published(bar)
        self.last_ts[bar.symbol] = bar.ts
        if self.store is not None:
            await self.store.write([Checkpoint.progress(self.name, self.last_ts, bar.close_ts)])
        return True

    async def on_stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.venue.close()
