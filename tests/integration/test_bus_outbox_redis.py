"""The outbox publisher over the Redis bus, on a test-owned ``redis-server`` (free port, AOF)
that is stopped and started under it: nothing is marked done while Redis is away, everything
is published once it is back, in order per topic; exactly the appended prefix is marked done
when a stream stays full; a re-publish after a crash before mark-done is harmless."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from quantum_trader.bus.consumer import Consumer, idempotent
from quantum_trader.bus.outbox import OutboxPublisher
from quantum_trader.bus.protocol import Message, PublishIncomplete
from quantum_trader.bus.redis_streams import RedisStreamBus
from tests.support.memory_outbox import MemoryOutbox, outbound
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


async def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s}s: {what}", pytrace=False)
        await asyncio.sleep(0.02)


async def stream(bus: RedisStreamBus, topic: str) -> list[Message]:
    return [Message.decode(raw) for _, raw in await bus.entries(topic)]


async def test_publishing_waits_out_a_redis_outage_and_loses_nothing(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        # A short reconnect window, so the outage reaches the publisher as errors quickly.
        bus = RedisStreamBus(server.url, reconnect_timeout_s=0.3, socket_timeout_s=1)
        outbox = MemoryOutbox()
        publisher = OutboxPublisher(outbox, bus, batch=50, backoff_min_s=0.05,
                                    backoff_max_s=0.4)
        stop = asyncio.Event()
        task = asyncio.create_task(publisher.run(stop))
        try:
            outbox.commit(*(outbound("executions", n) for n in range(10)))
            publisher.kick()
            await until(lambda: not outbox.pending(), 5, "the first commits published")

            server.stop()
            committed = outbox.commit(
                *(outbound(topic, n) for n in range(10, 130)
                  for topic in ("executions", "positions")))
            publisher.kick()
            await asyncio.sleep(1.0)
            assert publisher.failures >= 2  # it tried, failed and backed off, repeatedly
            assert not set(committed) & outbox.done  # nothing marked done without Redis

            server.start()  # same port and directory
            await until(lambda: not outbox.pending(), 10, "the outbox drained after the restart")
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
            executions = await stream(bus, "executions")
            positions = await stream(bus, "positions")
            await bus.close()

    assert [m.id for m in executions] == [f"executions-{n}" for n in range(130)]
    assert [m.id for m in positions] == [f"positions-{n}" for n in range(10, 130)]
    assert [m.payload["n"] for m in executions] == list(range(130))


async def test_exactly_the_appended_prefix_is_marked_done(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        bus = RedisStreamBus(server.url, maxlen=4, publish_timeout_s=0.1)
        try:
            await bus.ensure_group("exits", "risk-safety")  # slow: reads, acks later
            outbox = MemoryOutbox()
            seqs = outbox.commit(*(outbound("exits", n) for n in range(7)))
            publisher = OutboxPublisher(outbox, bus)
            with pytest.raises(PublishIncomplete) as info:
                await publisher.drain()
            assert len(info.value.entry_ids) == 4
            assert outbox.done == set(seqs[:4])
            assert outbox.pending() == seqs[4:]
            seen: list[int] = []
            while len(seen) < 7:
                got = await bus.read("exits", "risk-safety", "c", block_ms=0)
                seen += [d.message.payload["n"] for d in got if d.message]
                await bus.ack("exits", "risk-safety", [d.entry_id for d in got])
                await publisher.drain()  # room again: the rest goes in, in order
            assert seen == list(range(7))
            assert outbox.pending() == []
        finally:
            await bus.close()


async def test_a_republish_after_a_crash_before_mark_done_is_applied_once(
        tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        bus = RedisStreamBus(server.url)
        try:
            outbox = MemoryOutbox()
            outbox.commit(*(outbound("orders.approved", n) for n in range(5)))
            outbox.fail_done = 1  # Redis took them; the process died before marking them
            publisher = OutboxPublisher(outbox, bus)
            with pytest.raises(ConnectionError):
                await publisher.drain()
            assert await publisher.drain() == 5  # the restarted publisher sends them again
            ids = [m.id for m in await stream(bus, "orders.approved")]
            assert ids == [f"orders.approved-{n}" for n in range(5)] * 2
            applied: list[str] = []

            async def handler(message: Message) -> None:
                applied.append(message.id)

            consumer = Consumer(bus, "orders.approved", "execution", "execution-1",
                                idempotent(handler))
            while await consumer.run_once():
                pass
            assert applied == [f"orders.approved-{n}" for n in range(5)]
            assert await bus.lag("orders.approved", "execution") == 0
        finally:
            await bus.close()
