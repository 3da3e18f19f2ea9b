"""Bus semantics (protocol.py), the same tests on the in-memory and the Redis Streams adapter.

Written against a small harness: it builds a bus and makes time pass for idle claims (a fake
clock in memory, a real sleep on Redis). The ``redis`` cases run on the local Redis
(``QT_TEST_REDIS_URL``) in a key namespace of their own, deleted afterwards; they fail, never
skip, if Redis is unreachable. Tests that build an ``InMemoryBus`` directly are memory-only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import (
    DEADLETTER_RAW_BYTES,
    MAX_MESSAGE_BYTES,
    BusFull,
    MalformedMessage,
    Message,
    UnknownGroup,
)
from quantum_trader.bus.redis_streams import RedisStreamBus
from tests.support.redis_server import (
    LOCAL_REDIS_URL,
    delete_namespace,
    require_redis,
    unique_namespace,
)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    make: Callable[..., InMemoryBus | RedisStreamBus]
    idle: Callable[[int], Awaitable[None]]  # let ``ms`` of idle time pass


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        clock = FakeClock()

        def make(**kwargs: Any) -> InMemoryBus:
            return InMemoryBus(clock=clock, **kwargs)

        async def idle(ms: int) -> None:
            clock.advance(ms / 1000)

        yield Harness(make, idle)
        return

    await require_redis()
    namespace = unique_namespace()
    buses: list[RedisStreamBus] = []
    # Real time on Redis: idle times are stretched so that "not idle yet" still holds on a
    # loaded machine, where a round trip can take tens of milliseconds.
    stretch = 3

    def make_redis(**kwargs: Any) -> RedisStreamBus:
        if "claim_idle_ms" in kwargs:
            kwargs["claim_idle_ms"] *= stretch
        bus = RedisStreamBus(LOCAL_REDIS_URL, namespace=namespace, **kwargs)
        buses.append(bus)
        return bus

    async def sleep(ms: int) -> None:
        await asyncio.sleep(ms * stretch / 1000)

    try:
        yield Harness(make_redis, sleep)
    finally:
        for bus in buses:
            await bus.close()
        await delete_namespace(namespace)


def msg(n: int = 0, **payload: Any) -> Message:
    return Message(type="test", payload={"n": n, **payload}, ts=1_700_000_000_000 + n,
                   trace_id=f"trace-{n}")


def numbers(deliveries: list[Any]) -> list[int]:
    return [d.message.payload["n"] for d in deliveries]


async def test_publish_returns_increasing_redis_style_ids(harness: Harness) -> None:
    bus = harness.make()
    ids = [await bus.publish("signals", msg(i)) for i in range(50)]
    parsed = [tuple(int(x) for x in i.split("-")) for i in ids]
    assert parsed == sorted(parsed)
    assert len(set(ids)) == 50


async def test_ids_stay_monotonic_when_wall_clock_goes_back() -> None:
    wall = iter([100.0, 100.0, 99.0, 101.0])
    bus = InMemoryBus(wall_clock=lambda: next(wall))
    ids = [await bus.publish("signals", msg(i)) for i in range(4)]
    assert ids == ["100000-0", "100000-1", "100000-2", "101000-0"]


async def test_topic_and_stream_name_are_the_same_stream(harness: Harness) -> None:
    bus = harness.make()
    await bus.ensure_group("qt:signals", "g")
    await bus.publish("signals", msg(1))
    assert numbers(await bus.read("signals", "g", "c", block_ms=0)) == [1]


async def test_message_roundtrip_and_attempts(harness: Harness) -> None:
    bus = harness.make()
    await bus.ensure_group("signals", "g")
    m = msg(7, symbol="BTCUSDT")
    entry_id = await bus.publish("signals", m)
    [d] = await bus.read("signals", "g", "c", block_ms=0)
    assert d.message == m
    assert (d.entry_id, d.attempts, d.error, d.topic) == (entry_id, 1, "", "signals")
    assert d.raw == m.encode()


async def test_groups_are_independent(harness: Harness) -> None:
    bus = harness.make()
    await bus.ensure_group("signals", "risk")
    await bus.ensure_group("signals", "audit")
    for i in range(3):
        await bus.publish("signals", msg(i))
    risk = await bus.read("signals", "risk", "r1", block_ms=0)
    await bus.ack("signals", "risk", [d.entry_id for d in risk])
    assert numbers(risk) == [0, 1, 2]
    assert await bus.lag("signals", "risk") == 0
    # The other group still sees everything, and its acks are its own.
    assert await bus.lag("signals", "audit") == 3
    assert numbers(await bus.read("signals", "audit", "a1", block_ms=0)) == [0, 1, 2]


async def test_each_entry_goes_to_one_consumer_of_a_group(harness: Harness) -> None:
    bus = harness.make()
    await bus.ensure_group("signals", "g")
    for i in range(4):
        await bus.publish("signals", msg(i))
    a = await bus.read("signals", "g", "a", count=2, block_ms=0)
    b = await bus.read("signals", "g", "b", count=10, block_ms=0)
    assert numbers(a) == [0, 1]
    assert numbers(b) == [2, 3]


async def test_new_group_starts_at_the_beginning(harness: Harness) -> None:
    bus = harness.make()
    await bus.publish("signals", msg(1))
    await bus.ensure_group("signals", "late")
    await bus.ensure_group("signals", "late")  # idempotent: does not reset the cursor
    assert numbers(await bus.read("signals", "late", "c", block_ms=0)) == [1]
    await bus.ensure_group("signals", "late")
    assert await bus.read("signals", "late", "c2", block_ms=0) == []


async def test_unknown_group(harness: Harness) -> None:
    bus = harness.make()
    with pytest.raises(UnknownGroup):
        await bus.read("signals", "nope", "c", block_ms=0)
    with pytest.raises(UnknownGroup):
        await bus.pending_count("signals", "nope")
    with pytest.raises(UnknownGroup):
        await bus.lag("signals", "nope")
    await bus.ack("signals", "nope", ["1-0"])  # no-op, like XACK on a missing group


async def test_ack_rejects_invalid_ids(harness: Harness) -> None:
    bus = harness.make()
    await bus.ensure_group("signals", "g")
    with pytest.raises(ValueError, match="invalid stream entry id"):
        await bus.ack("signals", "g", ["not-an-id"])


async def test_unacked_is_redelivered_to_the_same_consumer_first(harness: Harness) -> None:
    bus = harness.make()
    await bus.ensure_group("signals", "g")
    await bus.publish("signals", msg(1))
    first = await bus.read("signals", "g", "c", block_ms=0)
    await bus.publish("signals", msg(2))
    # "Crash": nothing acked. The same consumer name gets its pending entry back, then new.
    again = await bus.read("signals", "g", "c", block_ms=0)
    assert numbers(again) == [1, 2]
    assert [d.attempts for d in again] == [2, 1]
    assert again[0].entry_id == first[0].entry_id
    await bus.ack("signals", "g", [d.entry_id for d in again])
    assert await bus.read("signals", "g", "c", block_ms=0) == []
    assert await bus.pending_count("signals", "g") == 0


async def test_other_consumer_claims_only_after_idle_time(harness: Harness) -> None:
    bus = harness.make(claim_idle_ms=100)
    await bus.ensure_group("signals", "g")
    await bus.publish("signals", msg(1))
    [d1] = await bus.read("signals", "g", "dead", block_ms=0)
    assert await bus.read("signals", "g", "alive", block_ms=0) == []  # not idle yet
    await harness.idle(150)
    [d2] = await bus.read("signals", "g", "alive", block_ms=0)
    assert (d2.entry_id, d2.attempts, d2.message) == (d1.entry_id, 2, d1.message)
    [row] = await bus.pending("signals", "g")
    assert (row.consumer, row.deliveries) == ("alive", 2)
    # Ownership moved: the dead consumer, if it comes back, no longer gets it.
    assert await bus.read("signals", "g", "dead", block_ms=0) == []


async def test_read_order_and_count_span_pending_claims_and_new(harness: Harness) -> None:
    bus = harness.make(claim_idle_ms=100)
    await bus.ensure_group("signals", "g")
    for i in range(2):
        await bus.publish("signals", msg(i))
    await bus.read("signals", "g", "other", count=1, block_ms=0)  # 0 -> other
    await bus.read("signals", "g", "me", count=1, block_ms=0)  # 1 -> me
    for i in range(2, 5):
        await bus.publish("signals", msg(i))
    await harness.idle(150)
    got = await bus.read("signals", "g", "me", count=3, block_ms=0)
    assert numbers(got) == [1, 0, 2]  # own pending, claimed, new
    assert numbers(await bus.read("signals", "g", "me", count=0, block_ms=0)) == []


async def test_blocking_read_wakes_on_publish(harness: Harness) -> None:
    bus = harness.make()
    await bus.ensure_group("signals", "g")

    async def later() -> None:
        await asyncio.sleep(0.05)
        await bus.publish("signals", msg(9))

    task = asyncio.create_task(later())
    started = time.monotonic()
    got = await bus.read("signals", "g", "c", block_ms=5000)
    assert numbers(got) == [9]
    assert time.monotonic() - started < 2
    await task


async def test_blocking_read_times_out_empty(harness: Harness) -> None:
    bus = harness.make()
    await bus.ensure_group("signals", "g")
    started = time.monotonic()
    assert await bus.read("signals", "g", "c", block_ms=50) == []
    assert 0.04 <= time.monotonic() - started < 2
    started = time.monotonic()
    assert await bus.read("signals", "g", "c", block_ms=0) == []  # 0 never blocks
    assert time.monotonic() - started < 0.04


async def test_close_wakes_blocked_reader(harness: Harness) -> None:
    bus = harness.make()
    await bus.ensure_group("signals", "g")
    reader = asyncio.create_task(bus.read("signals", "g", "c", block_ms=10_000))
    await asyncio.sleep(0.01)
    await bus.close()
    assert await asyncio.wait_for(reader, 1) == []
    with pytest.raises(RuntimeError, match="closed"):
        await bus.publish("signals", msg(1))
    with pytest.raises(RuntimeError, match="closed"):  # not an idle bus to spin on
        await bus.read("signals", "g", "c", block_ms=0)


async def test_malformed_raw_is_delivered_with_error(harness: Harness) -> None:
    bus = harness.make()
    await bus.ensure_group("signals", "g")
    await bus.publish_raw("signals", b"\xff not json")
    await bus.publish_raw("signals", b'{"id": "x"}')
    await bus.publish_raw("signals", b"[" * 50_000)  # deep nesting: RecursionError, not a crash
    got = await bus.read("signals", "g", "c", block_ms=0)
    assert [d.message for d in got] == [None, None, None]
    assert "not JSON" in got[0].error
    assert "missing fields" in got[1].error
    assert got[2].error
    assert got[0].raw == b"\xff not json"


async def test_oversized_publish_is_refused_and_raw_is_malformed(harness: Harness) -> None:
    bus = harness.make()
    await bus.ensure_group("signals", "g")
    big = msg(1, blob="x" * MAX_MESSAGE_BYTES)
    with pytest.raises(MalformedMessage, match="exceeds"):
        await bus.publish("signals", big)
    await bus.publish_raw("signals", big.encode())
    [d] = await bus.read("signals", "g", "c", block_ms=0)
    assert d.message is None
    assert "exceeds" in d.error


async def test_dead_letter_copies_with_reason_then_acks(harness: Harness) -> None:
    bus = harness.make()
    await bus.ensure_group("signals", "g")
    await bus.ensure_group("deadletter", "ops")
    raw = b"\x00" + b"y" * (DEADLETTER_RAW_BYTES * 2)
    entry_id = await bus.publish_raw("signals", raw)
    [d] = await bus.read("signals", "g", "c", block_ms=0)
    await bus.dead_letter(d, "g", "bad bytes")
    assert await bus.pending_count("signals", "g") == 0
    [dl] = await bus.read("deadletter", "ops", "c", block_ms=0)
    assert dl.message is not None
    assert dl.message.type == "deadletter"
    payload = dl.message.payload
    assert payload["topic"] == "signals"
    assert payload["group"] == "g"
    assert payload["entry_id"] == entry_id
    assert payload["reason"] == "bad bytes"
    assert payload["attempts"] == 1
    assert payload["raw_bytes"] == len(raw)
    assert len(payload["raw"]) == DEADLETTER_RAW_BYTES  # bounded


async def test_dead_letter_keeps_trace_id_of_decoded_message(harness: Harness) -> None:
    bus = harness.make()
    await bus.ensure_group("signals", "g")
    await bus.publish("signals", msg(3))
    [d] = await bus.read("signals", "g", "c", block_ms=0)
    await bus.dead_letter(d, "g", "handler failed")
    [(_, raw)] = await bus.entries("deadletter")
    letter = Message.decode(raw)
    assert letter.trace_id == "trace-3"
    assert json.loads(letter.payload["raw"])["payload"] == {"n": 3}


async def test_failed_dead_letter_is_not_republished(harness: Harness) -> None:
    bus = harness.make()
    await bus.ensure_group("deadletter", "ops")
    await bus.publish_raw("deadletter", b"junk")
    [d] = await bus.read("deadletter", "ops", "c", block_ms=0)
    await bus.dead_letter(d, "ops", "cannot even read the dead letter")
    assert await bus.length("deadletter") == 1  # no loop of dead letters about dead letters
    assert await bus.pending_count("deadletter", "ops") == 0


async def test_pending_count_and_lag(harness: Harness) -> None:
    bus = harness.make()
    await bus.ensure_group("signals", "g")
    for i in range(5):
        await bus.publish("signals", msg(i))
    assert (await bus.pending_count("signals", "g"), await bus.lag("signals", "g")) == (0, 5)
    got = await bus.read("signals", "g", "c", count=3, block_ms=0)
    assert (await bus.pending_count("signals", "g"), await bus.lag("signals", "g")) == (3, 5)
    await bus.ack("signals", "g", [got[0].entry_id, got[1].entry_id])
    await bus.ack("signals", "g", [got[0].entry_id])  # double ack is harmless
    assert (await bus.pending_count("signals", "g"), await bus.lag("signals", "g")) == (1, 3)


# -- bounded streams -----------------------------------------------------------------------------


async def test_trimming_without_groups_keeps_the_newest(harness: Harness) -> None:
    bus = harness.make(maxlen=3)
    for i in range(10):
        await bus.publish("heartbeats", msg(i))
    kept = [Message.decode(raw).payload["n"] for _, raw in await bus.entries("heartbeats")]
    assert kept == [7, 8, 9]


async def test_trimming_removes_only_entries_every_group_acked(harness: Harness) -> None:
    bus = harness.make(maxlen=3, publish_timeout_s=0.05)
    await bus.ensure_group("signals", "a")
    await bus.ensure_group("signals", "b")
    for i in range(3):
        await bus.publish("signals", msg(i))
    a = await bus.read("signals", "a", "c", block_ms=0)
    await bus.ack("signals", "a", [d.entry_id for d in a])
    b = await bus.read("signals", "b", "c", block_ms=0)
    await bus.ack("signals", "b", [b[1].entry_id, b[2].entry_id])  # b[0] still pending in b
    # The oldest is unacked in group b, so nothing may be trimmed behind or past it.
    with pytest.raises(BusFull):
        await bus.publish("signals", msg(3))
    assert await bus.length("signals") == 3
    await bus.ack("signals", "b", [b[0].entry_id])
    await bus.publish("signals", msg(3))
    kept = [Message.decode(raw).payload["n"] for _, raw in await bus.entries("signals")]
    assert kept == [1, 2, 3]


async def test_trimming_never_drops_undelivered_entries(harness: Harness) -> None:
    bus = harness.make(maxlen=2, publish_timeout_s=0.05)
    await bus.ensure_group("signals", "slow")
    await bus.publish("signals", msg(0))
    await bus.publish("signals", msg(1))
    with pytest.raises(BusFull):
        await bus.publish("signals", msg(2))  # "slow" has not even read them
    assert numbers(await bus.read("signals", "slow", "c", block_ms=0)) == [0, 1]


async def test_backpressure_blocks_until_ack_then_proceeds(harness: Harness) -> None:
    bus = harness.make(maxlen=2, publish_timeout_s=5)
    await bus.ensure_group("signals", "g")
    await bus.publish("signals", msg(0))
    await bus.publish("signals", msg(1))
    got = await bus.read("signals", "g", "c", block_ms=0)
    publisher = asyncio.create_task(bus.publish("signals", msg(2)))
    await asyncio.sleep(0.05)
    assert not publisher.done()  # waiting, not dropped, not grown
    assert await bus.length("signals") == 2
    await bus.ack("signals", "g", [got[0].entry_id])
    await asyncio.wait_for(publisher, 1)
    assert numbers(await bus.read("signals", "g", "c", block_ms=0)) == [1, 2]  # 1 pending, 2 new
    assert await bus.length("signals") == 2


async def test_bus_full_after_publish_timeout(harness: Harness) -> None:
    bus = harness.make(maxlen=1, publish_timeout_s=0.05)
    await bus.ensure_group("signals", "g")
    await bus.publish("signals", msg(0))
    started = time.monotonic()
    with pytest.raises(BusFull, match="maxlen 1"):
        await bus.publish("signals", msg(1))
    assert 0.04 <= time.monotonic() - started < 2
    assert await bus.lag("signals", "g") == 1  # the refused message was not half-added


async def test_long_stream_trims_and_compacts() -> None:
    bus = InMemoryBus(maxlen=100)
    await bus.ensure_group("market.bars", "g")
    for i in range(5000):
        await bus.publish("market.bars", msg(i))
        got = await bus.read("market.bars", "g", "c", block_ms=0)
        await bus.ack("market.bars", "g", [d.entry_id for d in got])
    assert await bus.length("market.bars") == 100
    entries = await bus.entries("market.bars")
    assert Message.decode(entries[-1][1]).payload["n"] == 4999
    await bus.ensure_group("market.bars", "late")  # a late group sees what is retained
    assert len(await bus.read("market.bars", "late", "c", count=1000, block_ms=0)) == 100
