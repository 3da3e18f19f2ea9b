"""Bus semantics (protocol.py), the same tests on the in-memory and the Redis Streams adapter.

Written against a small harness: it builds a bus (with the production topic policy on both),
makes time pass for idle claims (a fake clock in memory, a real sleep on Redis) and can lose
the bus's data (as a Redis restarted without it would). The ``redis`` cases run on the local Redis
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

from quantum_trader.bus.consumer import Consumer
from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import (
    DEADLETTER_RAW_BYTES,
    MAX_MESSAGE_BYTES,
    TOPICS,
    BusFull,
    MalformedMessage,
    Message,
    PublishIncomplete,
    UnknownGroup,
)
from quantum_trader.bus.redis_streams import RedisStreamBus
from quantum_trader.bus.topics import DEFAULT_POLICY, LOSS_TOLERANT_TOPICS
from quantum_trader.observability.metrics import REGISTRY
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
    lose_data: Callable[[], Awaitable[None]]  # every stream and group gone, buses still open


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        clock = FakeClock()

        made: list[InMemoryBus] = []

        def make(**kwargs: Any) -> InMemoryBus:
            kwargs.setdefault("policy", DEFAULT_POLICY)  # the Redis bus's default
            bus = InMemoryBus(clock=clock, **kwargs)
            made.append(bus)
            return bus

        async def idle(ms: int) -> None:
            clock.advance(ms / 1000)

        async def forget() -> None:
            for bus in made:
                bus._streams.clear()

        yield Harness(make, idle, forget)
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

    async def flush() -> None:
        await delete_namespace(namespace)

    try:
        yield Harness(make_redis, sleep, flush)
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


# -- per-topic retention (bus/topics.py) -------------------------------------------------------


def kept(entries: list[tuple[str, bytes]]) -> list[int]:
    return [Message.decode(raw).payload["n"] for _, raw in entries]


@pytest.mark.parametrize("topic", sorted(TOPICS))
async def test_a_group_that_never_reads_blocks_only_lossless_topics(
        harness: Harness, topic: str) -> None:
    bus = harness.make(maxlen=3, publish_timeout_s=0.05)
    await bus.ensure_group(topic, "stopped-service")  # created, then its service went away
    if topic in LOSS_TOLERANT_TOPICS:
        for i in range(10):
            await bus.publish(topic, msg(i))  # never waits
        assert kept(await bus.entries(topic)) == [7, 8, 9]
        # The stopped service, back, resumes at the oldest entry still retained.
        assert await bus.lag(topic, "stopped-service") == 3
        got = await bus.read(topic, "stopped-service", "c", block_ms=0)
        assert numbers(got) == [7, 8, 9]
        assert [d.attempts for d in got] == [1, 1, 1]
        await bus.ack(topic, "stopped-service", [d.entry_id for d in got])
        assert await bus.lag(topic, "stopped-service") == 0  # the skipped ones are not lag
        await bus.publish(topic, msg(10))
        assert await bus.lag(topic, "stopped-service") == 1
    else:
        for i in range(3):
            await bus.publish(topic, msg(i))
        with pytest.raises(BusFull):
            await bus.publish(topic, msg(3))
        assert kept(await bus.entries(topic)) == [0, 1, 2]
        assert await bus.lag(topic, "stopped-service") == 3


async def test_entries_trimmed_while_pending_are_dropped_not_dead_lettered(
        harness: Harness) -> None:
    bus = harness.make(maxlen=3)
    await bus.ensure_group("market.bars", "g")
    for i in range(3):
        await bus.publish("market.bars", msg(i))
    assert numbers(await bus.read("market.bars", "g", "c", count=2, block_ms=0)) == [0, 1]
    for i in range(3, 8):  # 0 and 1 are trimmed while still pending in g
        await bus.publish("market.bars", msg(i))
    got = await bus.read("market.bars", "g", "c", count=100, block_ms=0)
    assert numbers(got) == [5, 6, 7]  # all decoded: nothing for the consumer to dead-letter
    assert await bus.pending_count("market.bars", "g") == 3
    await bus.ack("market.bars", "g", [d.entry_id for d in got])
    assert await bus.lag("market.bars", "g") == 0
    assert await bus.length("deadletter") == 0


async def test_trimmed_entries_of_a_dead_consumer_are_not_claimed(harness: Harness) -> None:
    bus = harness.make(maxlen=2, claim_idle_ms=100)
    await bus.ensure_group("positions", "g")
    await bus.publish("positions", msg(0))
    await bus.publish("positions", msg(1))
    await bus.read("positions", "g", "dead", block_ms=0)  # 0 and 1 pending with "dead"
    await bus.publish("positions", msg(2))  # trims 0
    await harness.idle(150)
    got = await bus.read("positions", "g", "alive", count=100, block_ms=0)
    assert numbers(got) == [1, 2]  # 1 claimed from the dead consumer, 2 new; 0 is gone
    assert all(d.message is not None for d in got)
    await bus.ack("positions", "g", [d.entry_id for d in got])
    assert await bus.pending_count("positions", "g") == 0


async def test_dead_letters_keep_the_newest_even_with_a_lagging_group(harness: Harness) -> None:
    bus = harness.make(maxlen=3)
    await bus.ensure_group("deadletter", "ops")  # an operator tool that stopped reading
    await bus.ensure_group("signals", "g")
    for i in range(6):
        await bus.publish_raw("signals", b"junk %d" % i)
        [d] = await bus.read("signals", "g", "c", count=100, block_ms=0)
        await bus.dead_letter(d, "g", "junk")  # never blocks the consumer on a full stream
    letters = [Message.decode(raw).payload["raw"] for _, raw in await bus.entries("deadletter")]
    assert letters == ["junk 3", "junk 4", "junk 5"]
    assert await bus.lag("signals", "g") == 0


def gauge(name: str, topic: str, retention: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"stream": topic, "retention": retention})


async def test_appends_report_length_and_fill_ratio(harness: Harness) -> None:
    bus = harness.make(maxlen=4, publish_timeout_s=0.05)
    await bus.ensure_group("exits", "fast")
    await bus.ensure_group("exits", "slow")
    for i in range(3):
        await bus.publish("exits", msg(i))
    assert gauge("bus_stream_length", "exits", "until_acked") == 3
    assert gauge("bus_stream_fill_ratio", "exits", "until_acked") == 0.75
    # Once busy the stream stays at its bound (it trims only when full); the fill ratio is
    # what the slowest group has not acked: that, not the length, says publishers will wait.
    for i in range(3, 10):
        for group in ("fast", "slow"):
            got = await bus.read("exits", group, "c", block_ms=0)
            await bus.ack("exits", group, [d.entry_id for d in got])
        await bus.publish("exits", msg(i))
    assert gauge("bus_stream_length", "exits", "until_acked") == 4
    assert gauge("bus_stream_fill_ratio", "exits", "until_acked") == 0.25
    got = await bus.read("exits", "slow", "c", block_ms=0)  # "slow" reads, stops acking
    await bus.publish("exits", msg(10))  # "fast" has not even read it: lag 1
    await bus.publish("exits", msg(11))
    assert gauge("bus_stream_fill_ratio", "exits", "until_acked") == 0.75  # 3 unacked
    await bus.publish("exits", msg(12))
    with pytest.raises(BusFull):
        await bus.publish("exits", msg(13))
    assert gauge("bus_stream_fill_ratio", "exits", "until_acked") == 1.0  # publishers stuck
    for i in range(6):
        await bus.publish("heartbeats", msg(i))
    assert gauge("bus_stream_length", "heartbeats", "newest") == 4
    assert gauge("bus_stream_fill_ratio", "heartbeats", "newest") == 1.0


async def test_publish_many_appends_in_order_and_names_the_prefix(harness: Harness) -> None:
    bus = harness.make(maxlen=5, publish_timeout_s=0.05)
    await bus.ensure_group("signals", "g")
    ids = await bus.publish_many("signals", [msg(i) for i in range(3)])
    assert [e for e, _ in await bus.entries("signals")] == ids
    with pytest.raises(PublishIncomplete) as info:
        await bus.publish_many("signals", [msg(i) for i in range(3, 8)])
    assert len(info.value.entry_ids) == 2  # room for two; the other three were not appended
    assert [e for e, _ in await bus.entries("signals")] == ids + info.value.entry_ids
    with pytest.raises(BusFull) as single:
        await bus.publish_many("signals", [msg(9)])
    assert not isinstance(single.value, PublishIncomplete)
    with pytest.raises(MalformedMessage):
        await bus.publish_many("heartbeats", [msg(10), msg(11, blob="x" * MAX_MESSAGE_BYTES)])
    assert await bus.length("heartbeats") == 0  # refused before appending any


# -- lost data: groups that vanished (recovery.py) ---------------------------------------------


def recreated(topic: str, group: str) -> float:
    value = REGISTRY.get_sample_value("bus_groups_recreated_total",
                                      {"stream": topic, "group": group})
    return value or 0.0


async def test_ensure_group_says_whether_it_created(harness: Harness) -> None:
    bus = harness.make()
    assert await bus.ensure_group("signals", "g") is True
    assert await bus.ensure_group("signals", "g") is False


async def test_consumer_recreates_its_group_after_data_loss_and_reads_what_came_since(
        harness: Harness) -> None:
    bus = harness.make()
    seen: list[int] = []

    async def handler(message: Message) -> None:
        seen.append(message.payload["n"])

    group = f"risk-{time.monotonic_ns()}"  # the counter is process-wide: a group of our own
    consumer = Consumer(bus, "orders.approved", group, "c", handler)
    await bus.publish("orders.approved", msg(0))
    assert await consumer.run_once() == 1
    await harness.lose_data()
    # Published after the loss, before the consumer noticed: the stream exists, the group not.
    for i in (1, 2):
        await bus.publish("orders.approved", msg(i))
    assert await consumer.run_once() == 2  # no UnknownGroup: recreated and read at once
    assert seen == [0, 1, 2]
    assert recreated("orders.approved", group) == 1
    assert await bus.lag("orders.approved", group) == 0
    assert await consumer.run_once() == 0
    assert recreated("orders.approved", group) == 1  # counted once per loss


async def test_consumer_recreates_a_group_whose_stream_is_gone_too(harness: Harness) -> None:
    bus = harness.make()
    group = f"exit-{time.monotonic_ns()}"
    seen: list[int] = []

    async def handler(message: Message) -> None:
        seen.append(message.payload["n"])

    consumer = Consumer(bus, "executions", group, "c", handler)
    assert await consumer.run_once() == 0
    await harness.lose_data()  # nothing published since: no stream either
    assert await consumer.run_once() == 0
    assert recreated("executions", group) == 1
    await bus.publish("executions", msg(5))
    assert await consumer.run_once() == 1
    assert seen == [5]
