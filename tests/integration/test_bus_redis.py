"""RedisStreamBus on the local Redis, beyond the shared semantics of tests/unit/test_bus_memory.py
(which run on both adapters): the Consumer runner over Redis, trimming under a random workload,
claims deep in a long PEL, batches, lag fallback, foreign and deleted entries, connection
failures. Each test uses its own key namespace, deleted afterwards. Never skipped.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from quantum_trader.bus.consumer import Consumer
from quantum_trader.bus.protocol import (
    MAX_MESSAGE_BYTES,
    BusFull,
    Message,
    UnknownGroup,
)
from quantum_trader.bus.redis_streams import PublishIncomplete, RedisStreamBus
from tests.support.redis_server import (
    LOCAL_REDIS_URL,
    delete_namespace,
    free_port,
    require_redis,
    unique_namespace,
)

pytestmark = pytest.mark.integration

MakeBus = Callable[..., RedisStreamBus]


@pytest.fixture
async def make_bus() -> AsyncIterator[MakeBus]:
    await require_redis()
    namespace = unique_namespace()
    buses: list[RedisStreamBus] = []

    def make(**kwargs: Any) -> RedisStreamBus:
        kwargs.setdefault("namespace", namespace)
        bus = RedisStreamBus(LOCAL_REDIS_URL, **kwargs)
        buses.append(bus)
        return bus

    try:
        yield make
    finally:
        for bus in buses:
            await bus.close()
        await delete_namespace(namespace)


def msg(n: int, **payload: Any) -> Message:
    return Message(type="test", payload={"n": n, **payload}, ts=1_700_000_000_000 + n,
                   trace_id=f"trace-{n}")


async def dead_letters(bus: RedisStreamBus) -> list[dict[str, Any]]:
    return [Message.decode(raw).payload for _, raw in await bus.entries("deadletter")]


# -- the Consumer runner over Redis -----------------------------------------------------------


async def test_consumer_dead_letters_bad_input_with_reason_and_keeps_running(
        make_bus: MakeBus) -> None:
    bus = make_bus()
    handled: list[int] = []

    async def handler(message: Message) -> None:
        if message.payload.get("fail"):
            raise RuntimeError(f"boom on {message.payload['n']}")
        handled.append(message.payload["n"])

    changed = asyncio.Event()
    consumer = Consumer(bus, "signals", "risk", "risk-1", handler, max_attempts=2,
                        block_ms=200, error_backoff_s=0.01, metrics=lambda _: changed.set())
    task = asyncio.create_task(consumer.run())
    await bus.publish("signals", msg(0))
    await bus.publish_raw("signals", b"{not json")
    await bus.publish_raw("signals", msg(98, pad="x" * MAX_MESSAGE_BYTES).encode())
    await bus.publish_raw(
        "signals", b'{"id":"a","type":"t","ts":"soon","trace_id":"","payload":{}}')
    await bus.publish("signals", msg(99, fail=True))
    await bus.publish("signals", msg(1))

    async def until(predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not predicate():
                changed.clear()
                await changed.wait()

    await until(lambda: handled == [0, 1] and consumer.deadletters["qt:signals"] == 4)
    letters = await dead_letters(bus)
    reasons = [letter["reason"] for letter in letters]
    assert "not JSON" in reasons[0]
    assert "exceeds" in reasons[1]
    assert "ts must be an integer" in reasons[2]
    assert "handler failed 2 times: RuntimeError: boom on 99" in reasons[3]
    assert [letter["attempts"] for letter in letters] == [1, 1, 1, 2]
    assert {letter["topic"] for letter in letters} == {"signals"}
    assert letters[3]["raw_bytes"] > 0
    # Still running: the next good message is handled.
    assert consumer.running
    await bus.publish("signals", msg(2))
    await until(lambda: handled == [0, 1, 2])
    assert await bus.lag("signals", "risk") == 0
    await consumer.stop()
    await asyncio.wait_for(task, 2)


async def test_consumer_claims_the_messages_of_a_dead_consumer(make_bus: MakeBus) -> None:
    bus = make_bus(claim_idle_ms=300)
    await bus.ensure_group("signals", "g")
    for i in range(3):
        await bus.publish("signals", msg(i))
    await bus.read("signals", "g", "dead-1", count=2, block_ms=0)  # took 0 and 1, then died
    seen: list[tuple[int, str]] = []

    async def handler(message: Message) -> None:
        seen.append((message.payload["n"], message.trace_id))

    survivor = Consumer(bus, "signals", "g", "alive-1", handler)
    assert await survivor.run_once() == 1  # only the new one: 0 and 1 are not idle yet
    await asyncio.sleep(0.35)
    assert await survivor.run_once() == 2
    assert sorted(seen) == [(0, "trace-0"), (1, "trace-1"), (2, "trace-2")]
    assert await bus.lag("signals", "g") == 0


async def test_poison_message_that_kills_the_process_is_not_run_again(
        make_bus: MakeBus) -> None:
    bus = make_bus()
    await bus.ensure_group("signals", "g")
    await bus.publish("signals", msg(1))
    for _ in range(3):  # three crashes in a row while handling it
        await bus.read("signals", "g", "c", block_ms=0)
    ran: list[Message] = []

    async def handler(message: Message) -> None:
        ran.append(message)

    assert await Consumer(bus, "signals", "g", "c", handler, max_attempts=3).run_once() == 1
    assert ran == []
    [letter] = await dead_letters(bus)
    assert "delivered 4 times without an ack" in letter["reason"]
    assert await bus.pending_count("signals", "g") == 0


# -- bounded streams -------------------------------------------------------------------------


async def test_long_stream_trims_to_maxlen_keeping_the_newest(make_bus: MakeBus) -> None:
    bus = make_bus(maxlen=50)
    await bus.ensure_group("market.bars", "g")
    for i in range(500):
        await bus.publish("market.bars", msg(i))
        got = await bus.read("market.bars", "g", "c", block_ms=0)
        await bus.ack("market.bars", "g", [d.entry_id for d in got])
    assert await bus.length("market.bars") == 50
    entries = await bus.entries("market.bars")
    assert [Message.decode(raw).payload["n"] for _, raw in entries] == list(range(450, 500))
    await bus.ensure_group("market.bars", "late")  # a late group sees what is retained
    assert len(await bus.read("market.bars", "late", "c", count=1000, block_ms=0)) == 50
    assert await bus.lag("market.bars", "late") == 50


async def test_trimming_never_drops_unacked_entries_under_a_random_workload(
        make_bus: MakeBus) -> None:
    """Model check: random publishes, reads and (partial, out-of-order) acks by three groups.
    After every step each entry some group has not acked is still in the stream, the stream
    never exceeds maxlen, and BusFull only happens when no entry could be trimmed."""
    maxlen = 12
    bus = make_bus(maxlen=maxlen, publish_timeout_s=0)
    groups = ["risk", "audit", "exit"]
    for g in groups:
        await bus.ensure_group("signals", g)
    rng = random.Random(20240611)
    acked: dict[str, set[str]] = {g: set() for g in groups}
    pending: dict[str, list[str]] = {g: [] for g in groups}
    published: list[str] = []
    full = 0

    def needed(entry_id: str) -> bool:
        return any(entry_id not in acked[g] for g in groups)

    for step in range(400):
        op = rng.random()
        if op < 0.45:
            try:
                published.append(await bus.publish("signals", msg(step)))
            except BusFull:
                full += 1
                retained = [e for e, _ in await bus.entries("signals")]
                assert len(retained) == maxlen
                assert needed(retained[0]), "BusFull although the oldest entry was acked"
        elif op < 0.75:
            g = rng.choice(groups)
            got = await bus.read("signals", g, rng.choice(["c1", "c2"]),
                                 count=rng.randint(1, 5), block_ms=0)
            pending[g].extend(d.entry_id for d in got if d.entry_id not in pending[g])
        else:
            g = rng.choice(groups)
            if pending[g]:
                chosen = rng.sample(pending[g], rng.randint(1, len(pending[g])))
                await bus.ack("signals", g, chosen)
                acked[g].update(chosen)
                pending[g] = [e for e in pending[g] if e not in chosen]
        retained_ids = {e for e, _ in await bus.entries("signals")}
        assert len(retained_ids) <= maxlen
        missing = [e for e in published if needed(e) and e not in retained_ids]
        assert not missing, f"step {step}: unacked entries trimmed: {missing}"
    assert full > 0, "the workload never filled the stream; the test proves nothing"
    assert len(published) > maxlen * 3, "the workload never trimmed; the test proves nothing"


async def test_deadletter_stream_without_groups_is_bounded(make_bus: MakeBus) -> None:
    bus = make_bus()
    small = make_bus(maxlen=5)  # same namespace; bounds what *it* appends to qt:deadletter
    await bus.ensure_group("signals", "g")
    for i in range(12):
        await bus.publish_raw("signals", b"junk %d" % i)
    for d in await bus.read("signals", "g", "c", count=100, block_ms=0):
        await small.dead_letter(d, "g", "junk")
    assert await bus.length("deadletter") == 5
    assert [p["raw"] for p in await dead_letters(bus)] == [f"junk {i}" for i in range(7, 12)]
    assert await bus.lag("signals", "g") == 0


# -- batches ---------------------------------------------------------------------------------


async def test_publish_many_appends_in_order_and_says_what_got_in(make_bus: MakeBus) -> None:
    bus = make_bus(maxlen=5, publish_timeout_s=0.05)
    await bus.ensure_group("signals", "g")
    ids = await bus.publish_many("signals", [msg(i) for i in range(3)])
    assert [e for e, _ in await bus.entries("signals")] == ids
    with pytest.raises(PublishIncomplete) as info:
        await bus.publish_many("signals", [msg(i) for i in range(3, 8)])
    assert len(info.value.entry_ids) == 2  # room for two; the other three were not appended
    assert isinstance(info.value, BusFull)
    got = await bus.read("signals", "g", "c", count=100, block_ms=0)
    assert [d.message.payload["n"] for d in got if d.message] == [0, 1, 2, 3, 4]
    await bus.ack("signals", "g", [d.entry_id for d in got])
    # Acked: a batch bigger than maxlen goes through, trimming as it goes.
    await bus.publish_many("signals", [msg(i) for i in range(100, 104)])
    assert await bus.length("signals") == 5


async def test_publish_many_refuses_an_oversized_message_before_appending_any(
        make_bus: MakeBus) -> None:
    from quantum_trader.bus.protocol import MalformedMessage

    bus = make_bus()
    with pytest.raises(MalformedMessage, match="exceeds"):
        await bus.publish_many("signals", [msg(1), msg(2, blob="x" * MAX_MESSAGE_BYTES)])
    assert await bus.length("signals") == 0


# -- reads -----------------------------------------------------------------------------------


async def test_negative_block_never_blocks(make_bus: MakeBus) -> None:
    bus = make_bus()
    await bus.ensure_group("signals", "g")
    started = time.monotonic()
    assert await bus.read("signals", "g", "c", block_ms=-5) == []
    assert time.monotonic() - started < 0.5


async def test_long_block_is_served_in_chunks_and_still_wakes_on_publish(
        make_bus: MakeBus) -> None:
    bus = make_bus(claim_idle_ms=50)  # chunks of 50 ms: the reader re-checks for claims
    await bus.ensure_group("signals", "g")
    await bus.publish("signals", msg(1))
    await bus.read("signals", "g", "dead", block_ms=0)
    started = time.monotonic()
    # Nothing new is published: the dead consumer's entry, idle by now, is claimed during
    # the blocking read rather than after its full 10 s.
    [d] = await bus.read("signals", "g", "alive", block_ms=10_000)
    assert (d.message.payload["n"] if d.message else None, d.attempts) == (1, 2)
    assert time.monotonic() - started < 2


async def test_a_cancelled_blocking_read_leaves_nothing_pending(make_bus: MakeBus) -> None:
    bus = make_bus()
    await bus.ensure_group("signals", "g")
    reader = asyncio.create_task(bus.read("signals", "g", "c", block_ms=10_000))
    await asyncio.sleep(0.05)
    reader.cancel()  # e.g. Consumer.stop() during a blocking read
    with pytest.raises(asyncio.CancelledError):
        await reader
    await bus.publish("signals", msg(1))
    assert await bus.pending_count("signals", "g") == 0  # the wait handed nothing out
    [d] = await bus.read("signals", "g", "c", block_ms=0)
    assert d.attempts == 1


async def test_claims_reach_idle_entries_deep_in_a_long_pel(make_bus: MakeBus) -> None:
    bus = make_bus(claim_idle_ms=500)
    await bus.ensure_group("signals", "g")
    await bus.publish_many("signals", [msg(i) for i in range(2005)])
    await bus.read("signals", "g", "busy", count=2000, block_ms=0)
    await bus.read("signals", "g", "dead", count=5, block_ms=0)
    await asyncio.sleep(0.55)
    # "busy" is alive: re-reading its pending resets their idle time. Only "dead"'s five,
    # at the far end of the PEL, are claimable; one XAUTOCLAIM scan does not reach them.
    assert len(await bus.read("signals", "g", "busy", count=2000, block_ms=0)) == 2000
    claimed: list[int] = []
    for _ in range(10):
        got = await bus.read("signals", "g", "alive", count=5, block_ms=0)
        claimed.extend(d.message.payload["n"] for d in got if d.message)
        if len(claimed) == 5:
            break
    assert claimed == [2000, 2001, 2002, 2003, 2004]
    owners = {row.consumer for row in await bus.pending("signals", "g")}
    assert owners == {"busy", "alive"}


async def test_foreign_and_deleted_entries_are_delivered_as_malformed(
        make_bus: MakeBus) -> None:
    bus = make_bus()
    await bus.ensure_group("signals", "g")
    key = bus.key("signals")
    await bus.client.xadd(key, {"other": "field"})
    gone = await bus.publish("signals", msg(1))
    [foreign, deleted] = await bus.read("signals", "g", "c", block_ms=0)
    assert foreign.message is None
    assert "no 'd' field" in foreign.error
    await bus.client.xdel(key, gone)  # someone deleted it while it was pending
    handled: list[Message] = []

    async def handler(message: Message) -> None:
        handled.append(message)

    consumer = Consumer(bus, "signals", "g", "c", handler)
    assert await consumer.run_once() == 2
    assert handled == []
    reasons = [letter["reason"] for letter in await dead_letters(bus)]
    assert "no 'd' field" in reasons[0]
    assert "deleted from the stream" in reasons[1]
    assert deleted.entry_id == gone
    assert await bus.pending_count("signals", "g") == 0


async def test_lag_is_counted_when_redis_cannot_tell(make_bus: MakeBus) -> None:
    bus = make_bus()
    await bus.ensure_group("signals", "g")
    ids = [await bus.publish("signals", msg(i)) for i in range(6)]
    await bus.read("signals", "g", "c", count=2, block_ms=0)
    # XDEL ahead of the group's cursor makes XINFO GROUPS report lag as nil.
    await bus.client.xdel(bus.key("signals"), ids[4])
    [info] = await bus.client.xinfo_groups(bus.key("signals"))
    assert info["lag"] is None
    assert await bus.lag("signals", "g") == 2 + 3  # pending 0,1 + undelivered 2,3,5


async def test_unknown_group_on_every_read_path(make_bus: MakeBus) -> None:
    bus = make_bus()
    await bus.publish("signals", msg(1))
    with pytest.raises(UnknownGroup):
        await bus.read("signals", "nope", "c", count=0, block_ms=0)
    with pytest.raises(UnknownGroup):
        await bus.read("signals", "nope", "c", block_ms=100)
    with pytest.raises(UnknownGroup):
        await bus.pending("signals", "nope")
    with pytest.raises(UnknownGroup):
        await bus.lag("never-published", "nope")


# -- construction, isolation, failures -------------------------------------------------------


async def test_namespaces_are_isolated(make_bus: MakeBus) -> None:
    a = make_bus()
    b = make_bus(namespace=unique_namespace())
    try:
        await a.ensure_group("signals", "g")
        await b.ensure_group("signals", "g")
        await a.publish("signals", msg(1))
        assert await b.read("signals", "g", "c", block_ms=0) == []
        assert len(await a.read("signals", "g", "c", block_ms=0)) == 1
    finally:
        await delete_namespace(b.namespace)


async def test_from_client_leaves_the_client_open_and_refuses_decoded_replies() -> None:
    await require_redis()
    namespace = unique_namespace()
    client = Redis.from_url(LOCAL_REDIS_URL)
    try:
        bus = RedisStreamBus.from_client(client, namespace=namespace)
        await bus.publish("signals", msg(1))
        await bus.close()
        assert await client.xlen(namespace + "qt:signals") == 1  # still usable
        decoding = Redis.from_url(LOCAL_REDIS_URL, decode_responses=True)
        with pytest.raises(ValueError, match="decode_responses=False"):
            RedisStreamBus.from_client(decoding)
        await decoding.aclose()
    finally:
        await client.aclose()
        await delete_namespace(namespace)


async def test_unreachable_redis_fails_after_the_reconnect_timeout() -> None:
    bus = RedisStreamBus(f"redis://127.0.0.1:{free_port()}/0", reconnect_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(RedisConnectionError):
        await bus.publish("signals", msg(1))
    assert 0.3 <= time.monotonic() - started < 3  # retried with backoff, then a clear error
    await bus.close()


async def test_close_fails_a_publisher_waiting_for_room(make_bus: MakeBus) -> None:
    bus = make_bus(maxlen=1, publish_timeout_s=30)
    await bus.ensure_group("signals", "g")
    await bus.publish("signals", msg(0))
    publisher = asyncio.create_task(bus.publish("signals", msg(1)))
    await asyncio.sleep(0.05)
    await bus.close()
    with pytest.raises(RuntimeError, match="closed"):
        await asyncio.wait_for(publisher, 1)


# -- group commit of concurrent publishes ----------------------------------------------------


async def test_concurrent_publishes_share_round_trips_and_each_gets_its_own_id(
        make_bus: MakeBus) -> None:
    bus = make_bus()
    messages = [msg(i) for i in range(300)]
    ids = await asyncio.gather(*(bus.publish("signals", m) for m in messages))
    entries = dict(await bus.entries("signals"))
    assert len(entries) == 300
    # Each caller got the id of its own message, and ids follow the order of the calls.
    assert [Message.decode(entries[i]).id for i in ids] == [m.id for m in messages]
    assert list(entries) == ids


async def test_a_cancelled_publish_that_waited_for_room_is_not_appended(
        make_bus: MakeBus) -> None:
    bus = make_bus(maxlen=1, publish_timeout_s=5)
    await bus.ensure_group("signals", "g")
    await bus.publish("signals", msg(0))
    [d] = await bus.read("signals", "g", "c", block_ms=0)
    waiting = asyncio.create_task(bus.publish("signals", msg(1)))
    behind = asyncio.create_task(bus.publish("signals", msg(2)))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert not behind.done()
    waiting.cancel()  # the caller gave up: its message must not sneak in later
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await bus.ack("signals", "g", [d.entry_id])
    await asyncio.wait_for(behind, 2)
    assert [Message.decode(raw).payload["n"] for _, raw in await bus.entries("signals")] == [2]


async def test_concurrent_publishers_on_a_full_stream_each_time_out(make_bus: MakeBus) -> None:
    bus = make_bus(maxlen=2, publish_timeout_s=0.1)
    await bus.ensure_group("signals", "g")
    await bus.publish_many("signals", [msg(0), msg(1)])
    started = time.monotonic()
    results = await asyncio.gather(*(bus.publish("signals", msg(i)) for i in range(2, 6)),
                                   return_exceptions=True)
    assert all(isinstance(r, BusFull) for r in results)
    assert time.monotonic() - started < 2
    assert await bus.length("signals") == 2
    # The outbox is empty again: the next publish after room appears goes straight through.
    got = await bus.read("signals", "g", "c", block_ms=0)
    await bus.ack("signals", "g", [d.entry_id for d in got])
    await bus.publish("signals", msg(9))
    assert await bus.lag("signals", "g") == 1


# -- arbitrary bytes -------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raws=st.lists(
    st.binary(max_size=300)
    | st.sampled_from([b"", b"\n", b"1-0 1 d 5\nhello", b" ", b"\x00\xff"])
    | st.builds(lambda n: msg(n).encode(), st.integers(0, 1000)),
    min_size=1, max_size=6))
def test_arbitrary_bytes_round_trip_exactly_and_never_stop_a_consumer(raws: list[bytes]) -> None:
    """Entries come back byte for byte (the read script frames them by length, so newlines
    and spaces in the data cannot confuse it); each is handled or dead-lettered."""

    async def scenario() -> None:
        await require_redis()
        namespace = unique_namespace("qt-test-prop")
        bus = RedisStreamBus(LOCAL_REDIS_URL, namespace=namespace)
        try:
            await bus.ensure_group("signals", "raw")
            await bus.ensure_group("signals", "svc")
            for raw in raws:
                await bus.publish_raw("signals", raw)
            got = await bus.read("signals", "raw", "c", count=100, block_ms=0)
            assert [d.raw for d in got] == raws
            assert all((d.message is None) == bool(d.error) for d in got)
            handled: list[Message] = []

            async def handler(message: Message) -> None:
                handled.append(message)

            consumer = Consumer(bus, "signals", "svc", "c", handler)
            assert await consumer.run_once() == len(raws)
            assert len(handled) + consumer.deadletters["qt:signals"] == len(raws)
            assert await bus.lag("signals", "svc") == 0
        finally:
            await bus.close()
            await delete_namespace(namespace)

    asyncio.run(scenario())
