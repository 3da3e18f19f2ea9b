"""The Consumer runner: ack after commit, retries, dead letters, crash recovery, drain."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantum_trader.bus.consumer import Consumer, ConsumerEvent, SeenIds, idempotent
from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import MAX_MESSAGE_BYTES, Delivery, Message, UnknownGroup
from quantum_trader.observability.logging import current_trace_id
from quantum_trader.observability.metrics import REGISTRY


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def msg(n: int, **payload: Any) -> Message:
    return Message(type="test", payload={"n": n, **payload}, ts=n, trace_id=f"trace-{n}")


class Recorder:
    """Handler that records messages and fails on demand."""

    def __init__(self, fail_times: dict[int, int] | None = None) -> None:
        self.seen: list[int] = []
        self.fail_times = dict(fail_times or {})  # n -> how many more times to fail
        self.progress = asyncio.Event()

    async def __call__(self, message: Message) -> None:
        n = message.payload["n"]
        if self.fail_times.get(n, 0) > 0:
            self.fail_times[n] -= 1
            raise RuntimeError(f"boom on {n}")
        self.seen.append(n)
        self.progress.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(2):
            while len(self.seen) < count:
                self.progress.clear()
                await self.progress.wait()


async def drain(consumer: Consumer, limit: int = 100) -> None:
    for _ in range(limit):
        if await consumer.run_once() == 0:
            return
    raise AssertionError("consumer did not go idle")


async def dead_letters(bus: InMemoryBus) -> list[dict[str, Any]]:
    return [Message.decode(raw).payload for _, raw in await bus.entries("deadletter")]


async def test_handles_and_acks() -> None:
    bus = InMemoryBus()
    rec = Recorder()
    consumer = Consumer(bus, "signals", "risk", "risk-1", rec)
    for i in range(3):
        await bus.publish("signals", msg(i))
    assert await consumer.run_once() == 3
    assert rec.seen == [0, 1, 2]
    assert await consumer.lag() == 0
    assert consumer.handled == 3
    assert await consumer.run_once() == 0


async def test_ack_happens_only_after_the_handler_returned() -> None:
    bus = InMemoryBus()
    pending_during_handler: list[int] = []

    async def handler(message: Message) -> None:
        pending_during_handler.append(await bus.pending_count("signals", "g"))

    consumer = Consumer(bus, "signals", "g", "c", handler)
    await bus.publish("signals", msg(1))
    await consumer.run_once()
    assert pending_during_handler == [1]
    assert await bus.pending_count("signals", "g") == 0


async def test_failed_handler_is_retried_until_it_succeeds() -> None:
    bus = InMemoryBus()
    rec = Recorder(fail_times={1: 2})
    events: list[ConsumerEvent] = []
    consumer = Consumer(bus, "signals", "g", "c", rec, max_attempts=5, metrics=events.append)
    await bus.publish("signals", msg(1))
    await drain(consumer)
    assert rec.seen == [1]
    assert [(e.kind, e.attempts) for e in events] == [
        ("failed", 1), ("failed", 2), ("handled", 3)]
    assert "boom on 1" in events[0].reason
    assert not consumer.deadletters
    assert await bus.lag("signals", "g") == 0


async def test_dead_letter_after_max_attempts_and_keep_going() -> None:
    bus = InMemoryBus()
    rec = Recorder(fail_times={1: 99})
    events: list[ConsumerEvent] = []
    consumer = Consumer(bus, "signals", "g", "c", rec, max_attempts=3, metrics=events.append)
    for i in range(3):
        await bus.publish("signals", msg(i))
    await drain(consumer)
    assert rec.seen == [0, 2]
    [letter] = await dead_letters(bus)
    assert letter["attempts"] == 3
    assert "RuntimeError: boom on 1" in letter["reason"]
    assert letter["topic"] == "signals"
    assert letter["group"] == "g"
    assert consumer.deadletters == {"qt:signals": 1}
    assert [e.kind for e in events].count("deadletter") == 1
    assert await bus.lag("signals", "g") == 0


async def test_malformed_and_oversized_are_dead_lettered_and_good_ones_follow() -> None:
    bus = InMemoryBus()
    rec = Recorder()
    consumer = Consumer(bus, "signals", "g", "c", rec)
    await bus.publish("signals", msg(0))
    await bus.publish_raw("signals", b"{not json")
    await bus.publish_raw("signals", msg(99, pad="x" * MAX_MESSAGE_BYTES).encode())
    await bus.publish_raw(
        "signals", b'{"id":"a","type":"t","ts":"soon","trace_id":"","payload":{}}')
    await bus.publish("signals", msg(1))
    assert await consumer.run_once() == 5  # all in one pass: bad ones do not stall the batch
    assert rec.seen == [0, 1]
    letters = await dead_letters(bus)
    assert [letter["attempts"] for letter in letters] == [1, 1, 1]
    assert "not JSON" in letters[0]["reason"]
    assert "exceeds" in letters[1]["reason"]
    assert "ts must be an integer" in letters[2]["reason"]
    assert consumer.deadletters["qt:signals"] == 3
    assert await bus.lag("signals", "g") == 0


async def test_crash_then_restart_with_same_name_redelivers_unacked() -> None:
    bus = InMemoryBus()
    for i in range(3):
        await bus.publish("orders.approved", msg(i))

    crashed = asyncio.Event()

    async def crashing(message: Message) -> None:
        if message.payload["n"] == 1:
            crashed.set()
            raise asyncio.CancelledError  # the process dies mid-handler: no ack, no retry

    first = Consumer(bus, "orders.approved", "execution", "execution-1", crashing)
    with pytest.raises(asyncio.CancelledError):
        await first.run_once()
    assert crashed.is_set()
    assert await bus.pending_count("orders.approved", "execution") == 2  # 1 and 2, unacked

    rec = Recorder()
    restarted = Consumer(bus, "orders.approved", "execution", "execution-1", rec)
    await drain(restarted)
    assert rec.seen == [1, 2]
    assert await bus.lag("orders.approved", "execution") == 0


async def test_another_consumer_claims_messages_of_a_dead_one() -> None:
    clock = FakeClock()
    bus = InMemoryBus(claim_idle_ms=1000, clock=clock)
    await bus.ensure_group("signals", "g")
    await bus.publish("signals", msg(1))
    await bus.read("signals", "g", "dead-1", block_ms=0)  # took it, then died
    rec = Recorder()
    survivor = Consumer(bus, "signals", "g", "alive-1", rec)
    assert await survivor.run_once() == 0
    clock.now += 2
    assert await survivor.run_once() == 1
    assert rec.seen == [1]
    assert await bus.pending_count("signals", "g") == 0


async def test_poison_message_that_kills_the_process_is_not_run_again() -> None:
    bus = InMemoryBus()
    await bus.ensure_group("signals", "g")
    await bus.publish("signals", msg(1))
    for _ in range(3):  # three crashes in a row while handling it
        await bus.read("signals", "g", "c", block_ms=0)
    rec = Recorder()
    consumer = Consumer(bus, "signals", "g", "c", rec, max_attempts=3)
    await drain(consumer)
    assert rec.seen == []
    [letter] = await dead_letters(bus)
    assert "delivered 4 times without an ack" in letter["reason"]


async def test_handler_sees_the_message_trace_id() -> None:
    bus = InMemoryBus()
    traces: list[str | None] = []

    async def handler(message: Message) -> None:
        traces.append(current_trace_id())

    await bus.publish("signals", msg(5))
    await Consumer(bus, "signals", "g", "c", handler).run_once()
    assert traces == ["trace-5"]
    assert current_trace_id() is None


async def test_metrics_hook_errors_do_not_stop_processing() -> None:
    bus = InMemoryBus()
    rec = Recorder()

    def broken(_: ConsumerEvent) -> None:
        raise ValueError("metrics down")

    await bus.publish("signals", msg(1))
    consumer = Consumer(bus, "signals", "g", "c", rec, metrics=broken)
    assert await consumer.run_once() == 1
    assert rec.seen == [1]
    assert await bus.lag("signals", "g") == 0


# -- run / stop ----------------------------------------------------------------------------------


async def test_run_processes_until_stopped() -> None:
    bus = InMemoryBus()
    rec = Recorder()
    consumer = Consumer(bus, "signals", "g", "c", rec, block_ms=10_000)
    task = asyncio.create_task(consumer.run())
    for i in range(5):
        await bus.publish("signals", msg(i))
    await rec.wait_for(5)
    started = time.monotonic()
    await consumer.stop()  # interrupts the blocking read: no need to wait out block_ms
    assert time.monotonic() - started < 1
    await asyncio.wait_for(task, 1)
    assert not consumer.running
    assert await bus.lag("signals", "g") == 0


async def test_stop_drains_the_message_in_flight_and_leaves_the_rest_pending() -> None:
    bus = InMemoryBus()
    entered = asyncio.Event()
    release = asyncio.Event()
    done: list[int] = []

    async def slow(message: Message) -> None:
        entered.set()
        await release.wait()
        done.append(message.payload["n"])

    for i in range(3):
        await bus.publish("signals", msg(i))
    consumer = Consumer(bus, "signals", "g", "c", slow)
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(entered.wait(), 1)
    stopper = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.02)
    assert not stopper.done()  # stop waits for the in-flight message
    release.set()
    await asyncio.wait_for(stopper, 1)
    await asyncio.wait_for(task, 1)
    assert done == [0]
    assert await bus.pending_count("signals", "g") == 2  # not lost: redelivered on restart
    rec = Recorder()
    await drain(Consumer(bus, "signals", "g", "c", rec))
    assert rec.seen == [1, 2]


async def test_stop_from_inside_a_handler_does_not_deadlock() -> None:
    bus = InMemoryBus()
    consumer: Consumer

    async def handler(message: Message) -> None:
        await consumer.stop()

    consumer = Consumer(bus, "control", "g", "c", handler)
    task = asyncio.create_task(consumer.run())
    await bus.publish("control", msg(1))
    await asyncio.wait_for(task, 1)
    assert await bus.lag("control", "g") == 0


class FlakyBus(InMemoryBus):
    """Fails the first read, as a Redis connection drop would."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def read(self, topic: str, group: str, consumer: str, count: int = 100,
                   block_ms: int = 1000) -> list[Delivery]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis went away")
        return await super().read(topic, group, consumer, count, block_ms)


async def test_run_survives_bus_errors() -> None:
    bus = FlakyBus()
    rec = Recorder()
    consumer = Consumer(bus, "signals", "g", "c", rec, error_backoff_s=0.01)
    task = asyncio.create_task(consumer.run())
    await bus.publish("signals", msg(1))
    await rec.wait_for(1)
    assert rec.seen == [1]
    await consumer.stop()
    await asyncio.wait_for(task, 1)


async def test_run_twice_concurrently_is_refused() -> None:
    consumer = Consumer(InMemoryBus(), "signals", "g", "c", Recorder(), block_ms=10_000)
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(0)  # let run() start
    assert consumer.running
    with pytest.raises(RuntimeError, match="already running"):
        await consumer.run()
    await consumer.stop()
    await asyncio.wait_for(task, 1)


# -- idempotency helpers -------------------------------------------------------------------------


def test_seen_ids_is_a_bounded_lru() -> None:
    seen = SeenIds(maxsize=2)
    assert not seen.check_and_add("a")
    assert seen.check_and_add("a")
    seen.add("b")
    assert "a" in seen  # touching "a" makes "b" the oldest
    seen.add("c")
    assert "b" not in seen
    assert "a" in seen
    assert "c" in seen
    assert len(seen) == 2
    with pytest.raises(ValueError, match="maxsize"):
        SeenIds(0)


async def test_idempotent_handler_applies_each_message_once() -> None:
    bus = InMemoryBus()
    rec = Recorder(fail_times={2: 1})
    handler = idempotent(rec)
    m = msg(1)
    await bus.publish("signals", m)
    await bus.publish("signals", m)  # the same message published twice (producer retry)
    await bus.publish("signals", msg(2))
    await drain(Consumer(bus, "signals", "g", "c", handler))
    assert rec.seen == [1, 2]  # the failed attempt of 2 was not marked as seen


# -- property: arbitrary bytes never crash the consumer --------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["id", "type", "ts", "trace_id", "payload", "n"]) | st.text(),
                      children, max_size=6),
    max_leaves=12,
)


def mostly(valid: st.SearchStrategy[Any],
           invalid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # ~75% valid per field (one_of(valid, valid, valid, invalid) is not weighted that way)
    return st.integers(0, 3).flatmap(lambda i: valid if i else invalid)


# Near-valid envelopes: right keys, values often valid, so both decode paths are exercised.
envelopes = st.fixed_dictionaries({
    "id": mostly(st.text(min_size=1, max_size=8), st.integers() | st.just("")),
    "type": mostly(st.sampled_from(["t", "fail"]), st.none() | st.just("")),
    "ts": mostly(st.integers(), st.booleans() | st.text(max_size=3)),
    "trace_id": mostly(st.text(max_size=8), st.none()),
    "payload": mostly(st.dictionaries(st.text(max_size=4), json_values, max_size=3), json_values),
})
raw_inputs = st.one_of(
    st.binary(max_size=512),
    envelopes.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(min_value=MAX_MESSAGE_BYTES - 10, max_value=MAX_MESSAGE_BYTES + 10)
    .map(lambda n: b"{" + b" " * n + b"}"),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raws=st.lists(raw_inputs, min_size=1, max_size=8))
def test_arbitrary_bytes_are_handled_or_dead_lettered(raws: list[bytes]) -> None:
    async def scenario() -> None:
        bus = InMemoryBus()
        handled: list[str] = []

        async def handler(message: Message) -> None:
            if message.type == "fail":
                raise ValueError("handler rejects this one")  # retried, then dead-lettered
            handled.append(message.id)

        consumer = Consumer(bus, "signals", "g", "c", handler, max_attempts=2)
        for raw in raws:
            await bus.publish_raw("signals", raw)
        good = msg(1)
        await bus.publish("signals", good)
        await drain(consumer)
        assert handled[-1] == good.id
        letters = await dead_letters(bus)
        assert len(handled) + len(letters) == len(raws) + 1
        assert consumer.deadletters["qt:signals"] == len(letters)
        assert await bus.lag("signals", "g") == 0

    asyncio.run(scenario())


class ForgetfulBus(InMemoryBus):
    """Loses its groups once (entries stay), as a group deleted by hand would."""

    async def forget_groups(self) -> None:
        for stream in self._streams.values():
            stream.groups.clear()


async def test_consumer_recreates_a_vanished_group_and_rereads_what_the_stream_holds() -> None:
    bus = ForgetfulBus()
    rec = Recorder()
    applied: list[int] = []

    async def handler(message: Message) -> None:
        await rec(message)
        applied.append(message.payload["n"])

    consumer = Consumer(bus, "signals", "g-forgetful", "c", idempotent(handler))
    await bus.publish("signals", msg(0))
    assert await consumer.run_once() == 1
    await bus.forget_groups()
    await bus.publish("signals", msg(1))
    # No UnknownGroup: the group is created again at the start of what is retained, so 0 is
    # delivered again (the idempotent handler skips it) and 1 is read at once.
    assert await consumer.run_once() == 2
    assert rec.seen == [0, 1]
    assert applied == [0, 1]
    assert await bus.lag("signals", "g-forgetful") == 0
    count = REGISTRY.get_sample_value("bus_groups_recreated_total",
                                      {"stream": "signals", "group": "g-forgetful"})
    assert count == 1


class GrouplessBus(InMemoryBus):
    """Its groups cannot be created: every read raises UnknownGroup."""

    async def ensure_group(self, topic: str, group: str) -> bool:
        return False


async def test_a_group_that_cannot_be_recreated_is_an_error_not_a_spin() -> None:
    consumer = Consumer(GrouplessBus(), "signals", "g", "c", Recorder())
    with pytest.raises(UnknownGroup):
        await consumer.run_once()
