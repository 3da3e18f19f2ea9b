"""RedisStreamBus across Redis crashes: a test-owned ``redis-server`` with AOF is killed with
SIGKILL and restarted on the same port and directory while consumers and publishers run.

With ``appendfsync always`` Redis fsyncs before it replies, so whatever the bus saw confirmed
(an append, an ack) must be there after the restart: every acked message's effect is present
and it is not delivered again, every unacked one is delivered again, nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from quantum_trader.bus.consumer import Consumer, ConsumerEvent
from quantum_trader.bus.protocol import Delivery, Handler, Message
from quantum_trader.bus.redis_streams import RedisStreamBus
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


def msg(n: int) -> Message:
    return Message(type="test", payload={"n": n}, ts=1_700_000_000_000 + n, trace_id=f"t-{n}")


class RecordingBus(RedisStreamBus):
    """Remembers which entries each read handed out, to whom, and when (before or after the
    crash)."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.phase = "before"
        self.delivered: list[tuple[str, str, str, int]] = []  # phase, consumer, entry, attempts

    async def read(self, topic: str, group: str, consumer: str, count: int = 100,
                   block_ms: int = 1000) -> list[Delivery]:
        got = await super().read(topic, group, consumer, count, block_ms)
        self.delivered.extend((self.phase, consumer, d.entry_id, d.attempts) for d in got)
        return got


async def test_unacked_entries_survive_kill_9_and_are_redelivered(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", appendfsync="always") as server:
        bus = RedisStreamBus(server.url, reconnect_timeout_s=10)
        try:
            await bus.ensure_group("orders.approved", "execution")
            ids = [await bus.publish("orders.approved", msg(i)) for i in range(10)]
            got = await bus.read("orders.approved", "execution", "execution-1", block_ms=0)
            assert [d.entry_id for d in got] == ids
            await bus.ack("orders.approved", "execution", ids[:4])

            server.kill()
            server.start()  # replays the AOF

            again = await bus.read("orders.approved", "execution", "execution-1", block_ms=0)
            assert [d.entry_id for d in again] == ids[4:]  # the unacked, and only them
            assert [d.attempts for d in again] == [2] * 6
            assert [d.message.payload["n"] for d in again if d.message] == list(range(4, 10))
            assert await bus.length("orders.approved") == 10
            await bus.ack("orders.approved", "execution", [d.entry_id for d in again])
            assert await bus.lag("orders.approved", "execution") == 0
        finally:
            await bus.close()


async def test_consumers_resume_after_a_crash_and_nothing_acknowledged_is_lost(
        tmp_path: Path) -> None:
    """Two consumers of one group and a publisher; Redis is killed with -9 mid-stream.
    ``positions-1`` lives through it (reconnects and resumes); ``positions-2`` dies with it
    while handling a message, and comes back under the same name after Redis does."""
    with RedisServer(tmp_path / "redis", appendfsync="always") as server:
        bus = RecordingBus(server.url, reconnect_timeout_s=20)
        publisher_bus = RedisStreamBus(server.url, reconnect_timeout_s=20)
        effects: Counter[str] = Counter()  # the "store": message id -> times applied
        acked: list[str] = []  # entry ids whose ack Redis confirmed, in order
        entry_to_message: dict[str, str] = {}
        progress = asyncio.Event()
        stuck = asyncio.Event()  # positions-2 is inside its handler, about to "die"
        crash_soon = False

        async def handler(message: Message) -> None:
            await asyncio.sleep(0.001)  # some work, so the crash lands mid-stream
            effects[message.id] += 1

        async def dying_handler(message: Message) -> None:
            if crash_soon:
                stuck.set()
                await asyncio.Event().wait()  # hangs until the "process" is killed
            await handler(message)

        def on_event(event: ConsumerEvent) -> None:
            if event.kind == "handled":  # emitted only after bus.ack() returned
                acked.append(event.entry_id)
            progress.set()

        async def until(predicate: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
            async with asyncio.timeout(timeout_s):
                while not await predicate():
                    progress.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(progress.wait(), 0.05)

        def consumer(name: str, handle: Handler) -> Consumer:
            return Consumer(bus, "executions", "positions", name, handle, batch=20,
                            block_ms=200, error_backoff_s=0.05, metrics=on_event)

        survivor = consumer("positions-1", handler)
        victim = consumer("positions-2", dying_handler)
        try:
            first = [msg(i) for i in range(300)]
            for m in first:
                entry_to_message[await publisher_bus.publish("executions", m)] = m.id
            tasks = [asyncio.create_task(c.run()) for c in (survivor, victim)]

            async def enough_acked() -> bool:
                return len(acked) >= 100

            await until(enough_acked, 10)
            crash_soon = True
            await asyncio.wait_for(stuck.wait(), 5)
            # Synchronous from the snapshot to the phase switch: no callback runs in between,
            # so ``acked_before`` is exactly the acks Redis confirmed before it died.
            acked_before = set(acked)
            server.kill()
            bus.phase = "after"
            tasks[1].cancel()  # positions-2's process dies too, mid-handler
            with contextlib.suppress(asyncio.CancelledError):
                await tasks[1]

            # Publishing goes on during the outage: it waits for Redis and then lands.
            later = [msg(i) for i in range(300, 400)]

            async def publish_later() -> None:
                for m in later:
                    entry_to_message[await publisher_bus.publish("executions", m)] = m.id

            publishing = asyncio.create_task(publish_later())
            await asyncio.sleep(0.3)
            assert not publishing.done()
            server.start()  # same port and directory: the AOF is replayed
            reborn = consumer("positions-2", handler)
            tasks.append(asyncio.create_task(reborn.run()))
            await asyncio.wait_for(publishing, 20)

            every_id = {m.id for m in first + later}

            async def all_done() -> bool:
                return (set(effects) == every_id
                        and await bus.lag("executions", "positions") == 0)

            await until(all_done, 20)
            for c in (survivor, reborn):
                await c.stop()
            await asyncio.wait_for(asyncio.gather(tasks[0], tasks[2]), 5)
        finally:
            await bus.close()
            await publisher_bus.close()

        assert 100 <= len(acked_before) < 300
        delivered_after = {e for phase, _, e, _ in bus.delivered if phase == "after"}
        # Acked before the crash = committed for good: never handed out again.
        assert not acked_before & delivered_after
        # Every message's effect is there; everything handed out was acked in the end.
        assert set(effects) == every_id
        assert set(acked) >= {e for _, _, e, _ in bus.delivered}
        # What the dead consumer held unacked came back to it, as a re-delivery.
        held = {e for phase, c, e, _ in bus.delivered
                if phase == "before" and c == "positions-2"} - acked_before
        redelivered = {e for phase, c, e, a in bus.delivered
                       if phase == "after" and c == "positions-2" and a > 1}
        assert held
        assert held <= redelivered
        # Only messages delivered again after the crash may have run twice (at-least-once
        # with idempotent handlers); none that was acked before it.
        twice = {mid for mid, n in effects.items() if n > 1}
        assert twice <= {entry_to_message.get(e) for e in delivered_after}
        assert not twice & {entry_to_message[e] for e in acked_before}
        assert not survivor.deadletters
        assert not reborn.deadletters


async def test_graceful_restart_with_everysec_keeps_groups_and_pending(tmp_path: Path) -> None:
    # everysec may lose the last second on a crash, but a clean shutdown (SIGTERM) flushes
    # the AOF: the production default, restarted by docker or systemd.
    with RedisServer(tmp_path / "redis", appendfsync="everysec") as server:
        bus = RedisStreamBus(server.url, reconnect_timeout_s=10)
        try:
            await bus.ensure_group("signals", "risk")
            ids = await bus.publish_many("signals", [msg(i) for i in range(5)])
            await bus.read("signals", "risk", "risk-1", block_ms=0)
            await bus.ack("signals", "risk", ids[:2])
            server.restart(hard=False)
            again = await bus.read("signals", "risk", "risk-1", block_ms=0)
            assert [(d.entry_id, d.attempts) for d in again] == [(i, 2) for i in ids[2:]]
            assert await bus.lag("signals", "risk") == 3
        finally:
            await bus.close()
