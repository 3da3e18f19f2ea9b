"""market-data: publishes closed bars. Here from historical data on a replay clock; the live
feed through the exchange port plugs in behind the same topic."""

from __future__ import annotations

import asyncio

from quantum_trader.bus.protocol import Bus
from quantum_trader.config import Settings
from quantum_trader.domain.records import Checkpoint
from quantum_trader.marketdata.replay import ReplayFeed
from quantum_trader.marketdata.sample import resolve_source
from quantum_trader.services.base import Service
from quantum_trader.services.messages import (
    PIPELINE,
    bar_id,
    bar_payload,
    observe_bar_published,
)
from quantum_trader.store.protocol import TradeStore


class MarketDataService(Service):
    name = "market-data"

    def __init__(self, settings: Settings, bus: Bus, store: TradeStore | None) -> None:
        super().__init__(settings, bus, store)
        self.published = 0
        self.finished = False
        self.last_ts: dict[str, int] = {}

    async def on_start(self) -> None:
        for topic, groups in PIPELINE.items():
            for group in groups:
                await self.bus.ensure_group(topic, group)
        if self.store is not None:
            cp = await self.store.checkpoint(self.name)
            if cp is not None:
                self.last_ts = dict(cp.last_bar_ts)
        self.spawn(self._replay())

    async def _settled(self) -> bool:
        """Every consumer group has handled everything. Two clean passes: a message can hop
        from a topic checked later to one checked earlier (a fill -> a protective exit) between
        the checks of one pass, but it cannot hop back twice without a new bar."""
        for _ in range(2):
            for topic, groups in PIPELINE.items():
                for group in groups:
                    if await self.bus.lag(topic, group):
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
