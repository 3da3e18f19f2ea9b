"""The outbox publisher (bus/outbox.py) over the in-memory bus and an in-memory outbox: order,
marking done only what the bus acknowledged, retries with backoff, kicks and polls, idempotent
re-publish, rows no bus can carry. The same over a real Redis that is stopped and started:
tests/integration/test_bus_outbox_redis.py."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from quantum_trader.bus.consumer import Consumer, idempotent
from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.outbox import OutboxPublisher
from quantum_trader.bus.protocol import (
    MAX_MESSAGE_BYTES,
    BusFull,
    Delivery,
    Message,
    PublishIncomplete,
)
from quantum_trader.bus.topics import DEFAULT_POLICY
from quantum_trader.observability.metrics import REGISTRY
from tests.support.memory_outbox import MemoryOutbox, outbound


def make_bus(**kwargs: Any) -> InMemoryBus:
    return InMemoryBus(policy=DEFAULT_POLICY, **kwargs)


async def stream(bus: InMemoryBus, topic: str) -> list[Message]:
    return [Message.decode(raw) for _, raw in await bus.entries(topic)]


@contextlib.asynccontextmanager
async def running(publisher: OutboxPublisher) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout_s}s"
        await asyncio.sleep(0.005)


async def test_publishes_in_seq_order_per_topic_under_the_outbox_ids() -> None:
    bus, outbox = make_bus(), MemoryOutbox()
    rows = [outbound(topic, n) for n in range(30) for topic in ("executions", "positions")]
    rows += [outbound("qt:exits", 99)]  # a stream name is the same topic
    outbox.commit(*rows)
    before = REGISTRY.get_sample_value("outbox_published_total", {"topic": "executions"}) or 0
    publisher = OutboxPublisher(outbox, bus, batch=7)  # several batches, topics interleaved
    assert await publisher.drain() == len(rows)
    for topic in ("executions", "positions"):
        got = await stream(bus, topic)
        assert [m.id for m in got] == [f"{topic}-{n}" for n in range(30)]
        assert [m.payload["n"] for m in got] == list(range(30))
        assert got[3] == Message("test", {"n": 3}, 1_700_000_000_003, "trace-3", f"{topic}-3")
    assert [m.id for m in await stream(bus, "exits")] == ["qt:exits-99"]
    assert outbox.pending() == []
    assert publisher.published == len(rows)
    after = REGISTRY.get_sample_value("outbox_published_total", {"topic": "executions"})
    assert after == before + 30
    assert REGISTRY.get_sample_value("outbox_pending") == 0
    assert await publisher.drain() == 0


async def test_exactly_the_appended_prefix_is_marked_done_when_a_stream_is_full() -> None:
    bus, outbox = make_bus(maxlen=3, publish_timeout_s=0.05), MemoryOutbox()
    await bus.ensure_group("executions", "exit-brain")  # reads, but has not acked yet
    seqs = outbox.commit(*(outbound("executions", n) for n in range(5)))
    publisher = OutboxPublisher(outbox, bus)
    with pytest.raises(PublishIncomplete):
        await publisher.drain()
    assert outbox.done == set(seqs[:3])  # the three that got in, and only them
    assert outbox.pending() == seqs[3:]
    assert REGISTRY.get_sample_value("outbox_pending") == 2
    got = await bus.read("executions", "exit-brain", "c", block_ms=0)
    await bus.ack("executions", "exit-brain", [d.entry_id for d in got])
    assert await publisher.drain() == 2
    rest = await bus.read("executions", "exit-brain", "c", block_ms=0)
    assert [d.message.payload["n"] for d in got + rest if d.message] == [0, 1, 2, 3, 4]


class FailingBus(InMemoryBus):
    """``publish_many`` fails ``failures`` times (Redis down), appending nothing."""

    def __init__(self, failures: int) -> None:
        super().__init__(policy=DEFAULT_POLICY)
        self.failures = failures
        self.calls: list[float] = []

    async def publish_many(self, topic: str, messages: Sequence[Message]) -> list[str]:
        self.calls.append(time.monotonic())
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis went away")
        return await super().publish_many(topic, messages)


async def test_bus_errors_back_off_exponentially_and_nothing_is_dropped() -> None:
    bus, outbox = FailingBus(failures=5), MemoryOutbox()
    outbox.commit(*(outbound("signals", n) for n in range(10)))
    publisher = OutboxPublisher(outbox, bus, backoff_min_s=0.02, backoff_max_s=0.08)
    async with running(publisher):
        await until(lambda: not outbox.pending())
    assert publisher.failures == 5
    gaps = [b - a for a, b in itertools.pairwise(bus.calls)]
    assert gaps[0] >= 0.015  # backed off, not hammering
    assert gaps[2] >= 0.06  # 0.02, 0.04, 0.08 ...
    assert max(gaps) < 0.5  # ... capped at backoff_max_s (plus scheduling)
    assert [m.payload["n"] for m in await stream(bus, "signals")] == list(range(10))


async def test_store_errors_back_off_too() -> None:
    bus, outbox = make_bus(), MemoryOutbox()
    outbox.commit(outbound("signals", 1))
    outbox.fail_pending = 2
    publisher = OutboxPublisher(outbox, bus, backoff_min_s=0.01, backoff_max_s=0.02)
    async with running(publisher):
        await until(lambda: not outbox.pending())
    assert publisher.failures == 2


async def test_a_republish_after_a_crash_before_mark_done_is_harmless() -> None:
    """The bus took the messages, then marking them done failed (a crash in between): they
    are published again under the same ids, and an idempotent consumer applies each once."""
    bus, outbox = make_bus(), MemoryOutbox()
    outbox.commit(*(outbound("orders.approved", n) for n in range(4)))
    outbox.fail_done = 1
    publisher = OutboxPublisher(outbox, bus, backoff_min_s=0.01)
    async with running(publisher):
        await until(lambda: not outbox.pending())
    ids = [m.id for m in await stream(bus, "orders.approved")]
    assert ids == [f"orders.approved-{n}" for n in range(4)] * 2  # twice, same ids, in order
    applied: list[str] = []

    async def handler(message: Message) -> None:
        applied.append(message.id)

    consumer = Consumer(bus, "orders.approved", "execution", "c", idempotent(handler))
    while await consumer.run_once():
        pass
    assert applied == [f"orders.approved-{n}" for n in range(4)]


async def test_kick_publishes_at_once_and_the_poll_catches_a_missed_kick() -> None:
    bus, outbox = make_bus(), MemoryOutbox()
    slow = OutboxPublisher(outbox, bus, poll_s=30)
    async with running(slow):
        await asyncio.sleep(0.02)  # idle, waiting for a kick
        outbox.commit(outbound("signals", 1))
        started = time.monotonic()
        slow.kick()
        await until(lambda: not outbox.pending(), 1)
        assert time.monotonic() - started < 0.5
    polling = OutboxPublisher(outbox, bus, poll_s=0.05)
    async with running(polling):
        await asyncio.sleep(0.02)
        outbox.commit(outbound("signals", 2))  # committed, but nobody kicked
        await until(lambda: not outbox.pending(), 1)
    assert [m.payload["n"] for m in await stream(bus, "signals")] == [1, 2]


async def test_nothing_is_published_before_what_was_committed_earlier() -> None:
    """Execution commits a bar's fills, then the account that includes them: whoever reads
    the account must find the fills already on the bus. A full stream therefore holds back
    what was committed after it, on any topic."""
    bus, outbox = make_bus(maxlen=2, publish_timeout_s=0.05), MemoryOutbox()
    await bus.ensure_group("executions", "exit-brain")  # stopped: never acks
    fills = outbox.commit(*(outbound("executions", n) for n in range(4)))
    accounts = outbox.commit(*(outbound("positions", n) for n in range(2)))
    publisher = OutboxPublisher(outbox, bus)
    with pytest.raises(BusFull):
        await publisher.drain()
    assert [m.payload["n"] for m in await stream(bus, "executions")] == [0, 1]
    assert await stream(bus, "positions") == []  # not before the fills committed before it
    assert set(fills[:2]) <= outbox.done
    assert not set(accounts) & outbox.done
    await bus.ack("executions", "exit-brain",
                  [d.entry_id for d in await bus.read("executions", "exit-brain", "c", 10,
                                                      block_ms=0)])
    await publisher.drain()
    assert [m.payload["n"] for m in await stream(bus, "executions")] == [2, 3]
    assert len(await stream(bus, "positions")) == 2
    assert outbox.pending() == []


async def test_a_row_no_bus_can_carry_is_dead_lettered_and_does_not_block_its_topic() -> None:
    bus, outbox = make_bus(), MemoryOutbox()
    big = outbound("exits", 1, blob="x" * MAX_MESSAGE_BYTES)
    odd = outbound("exits", 2, when={1, 2})  # a set is not JSON
    outbox.commit(outbound("exits", 0), big, odd, outbound("exits", 3))
    assert await OutboxPublisher(outbox, bus).drain() == 4
    assert [m.payload["n"] for m in await stream(bus, "exits")] == [0, 3]
    letters = [m.payload for m in await stream(bus, "deadletter")]
    assert [(p["topic"], p["group"]) for p in letters] == [("exits", "outbox")] * 2
    assert "exceeds" in letters[0]["reason"]
    assert "exits-1" in letters[0]["reason"]
    assert "cannot be encoded" in letters[1]["reason"]
    assert letters[0]["raw_bytes"] > MAX_MESSAGE_BYTES
    assert outbox.pending() == []


class PublishOnlyBus:
    """A ``Bus`` without ``publish_many``: the publisher appends one message at a time, and
    after a failure marks done exactly those that went through."""

    def __init__(self, inner: InMemoryBus, fail_after: int) -> None:
        self.inner = inner
        self.fail_after = fail_after

    async def publish(self, topic: str, message: Message) -> str:
        if self.fail_after == 0:
            raise ConnectionError("redis went away")
        self.fail_after -= 1
        return await self.inner.publish(topic, message)

    async def ensure_group(self, topic: str, group: str) -> bool:
        return await self.inner.ensure_group(topic, group)

    async def read(self, topic: str, group: str, consumer: str, count: int = 100,
                   block_ms: int = 1000) -> list[Delivery]:
        return await self.inner.read(topic, group, consumer, count, block_ms)

    async def ack(self, topic: str, group: str, entry_ids: list[str]) -> None:
        await self.inner.ack(topic, group, entry_ids)

    async def dead_letter(self, delivery: Delivery, group: str, reason: str) -> None:
        await self.inner.dead_letter(delivery, group, reason)

    async def pending_count(self, topic: str, group: str) -> int:
        return await self.inner.pending_count(topic, group)

    async def lag(self, topic: str, group: str) -> int:
        return await self.inner.lag(topic, group)

    async def close(self) -> None:
        await self.inner.close()


async def test_a_bus_without_publish_many_gets_one_message_at_a_time() -> None:
    inner, outbox = make_bus(), MemoryOutbox()
    bus = PublishOnlyBus(inner, fail_after=3)
    seqs = outbox.commit(*(outbound("control", n) for n in range(5)))
    publisher = OutboxPublisher(outbox, bus)
    with pytest.raises(ConnectionError):
        await publisher.drain()
    assert outbox.done == set(seqs[:3])
    bus.fail_after = 100
    assert await publisher.drain() == 2
    assert [m.payload["n"] for m in await stream(inner, "control")] == [0, 1, 2, 3, 4]


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="batch"):
        OutboxPublisher(MemoryOutbox(), make_bus(), batch=0)
    with pytest.raises(ValueError, match="backoff"):
        OutboxPublisher(MemoryOutbox(), make_bus(), backoff_min_s=1, backoff_max_s=0.5)
