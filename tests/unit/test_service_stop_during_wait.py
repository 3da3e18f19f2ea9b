"""A service stopping while a handler waits for a peer (up to a minute in a lockstep replay:
the exit brain waits for execution's account to cover the bar) stops at once; the message in
hand stays pending and is redelivered after the restart, as after a crash. The API fuzz
test's cluster hung its teardown on exactly this."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import Message
from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.services.exit_brain import ExitBrainService
from quantum_trader.services.messages import bar_payload
from quantum_trader.store.sql import SqlTradeStore
from quantum_trader.store.urls import sqlite_url


async def test_stop_does_not_wait_out_the_peer_and_keeps_the_message(tmp_path: Path) -> None:
    settings = Settings.model_validate({"services": {"lockstep_view_wait_s": 60.0}})
    assert settings.account_wait_s() == 60.0  # a lockstep replay: the long wait
    bus = InMemoryBus()
    async with SqlTradeStore(sqlite_url(tmp_path / "qt.db"), create=True) as store:
        svc = ExitBrainService(settings, bus, store)
        svc.owns_bus = False
        await svc.start()
        bar = load_sample("XRP").bar(0)
        await bus.publish("market.bars", Message("bar", bar_payload(bar), bar.close_ts, "t"))
        await asyncio.sleep(0.5)  # the bar is in hand, waiting for an account that never comes
        t0 = time.monotonic()
        await asyncio.wait_for(svc.stop(), 10)
        assert time.monotonic() - t0 < 5
        assert await bus.lag("market.bars", "exit-brain") >= 1  # not acked: redelivered later
