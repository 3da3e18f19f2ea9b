"""hypothesis on every service's bus handlers: random and near-valid messages on each topic a
service consumes are handled or dead-lettered (never left pending), undecodable ones are
always dead-lettered, and the service stays healthy."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from quantum_trader.bus.codec import to_payload
from quantum_trader.bus.consumer import Consumer
from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import MAX_MESSAGE_BYTES, Message
from quantum_trader.domain.models import Bar, Fill, OrderIntent, Signal
from quantum_trader.domain.records import AccountSnapshot
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.runtime.health import Status
from quantum_trader.services.base import HEARTBEATS, Service
from tests.integration.test_security_http import build_services, make_settings

FUZZED = ("ai-engine", "risk-safety", "execution", "exit-brain")
SHAPES: dict[str, type] = {"market.bars": Bar, "signals": Signal, "exits": OrderIntent,
                           "positions": AccountSnapshot, "executions": Fill,
                           "orders.approved": OrderIntent, "control": Bar}


class World:
    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.settings = make_settings(tmp)
        self.bus = InMemoryBus()
        self.services: dict[str, Service] = self.run(
            build_services(self.settings, FUZZED, bus=self.bus))
        for svc in self.services.values():
            self.run(self.bus.ensure_group(HEARTBEATS, svc.name))
        self.by_topic: dict[str, list[Consumer]] = {}
        for svc in self.services.values():
            for c in svc._consumers:
                self.by_topic.setdefault(c.topic, []).append(c)
        self.valid_bar = to_payload(load_sample("XRP").bar(0))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        async def stop() -> None:
            for svc in self.services.values():
                assert svc.store is not None
                await svc.store.close()
        self.run(stop())
        self.loop.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("busfuzz"))
    yield w
    w.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=10,
)
TYPES = ["bar", "signal", "exit", "cancel", "intent", "fill", "account", "rejection",
         "pause", "resume", "kill", "halt", "heartbeat", ""]


def shaped_payload(topic: str) -> st.SearchStrategy[Any]:
    """Dicts with the field names the topic's handler reads, random values: gets past the
    envelope into the handler's own decoding."""
    names = [f.name for f in dataclasses.fields(SHAPES[topic])]
    keys = st.sampled_from([*names, "intent", "signature", "fill", "position", "kind"])
    return st.dictionaries(keys, json_values, max_size=len(names) + 2)


def mutated_bar(valid: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A real bar with one field broken or dropped: reaches Bar.validate and beyond."""
    return st.tuples(st.sampled_from(sorted(valid)), json_values, st.booleans()).map(
        lambda t: ({k: v for k, v in valid.items() if k != t[0]} if t[2]
                   else {**valid, t[0]: t[1]}))


def raw_messages(topic: str, valid_bar: dict[str, Any]) -> st.SearchStrategy[bytes]:
    payload = st.one_of(json_values, shaped_payload(topic), mutated_bar(valid_bar))
    envelope = st.fixed_dictionaries({
        "id": st.text(min_size=1, max_size=10) | st.integers(),
        "type": st.sampled_from(TYPES) | st.text(max_size=6),
        "ts": st.integers(min_value=0, max_value=2**62) | st.text(max_size=3),
        "trace_id": st.text(max_size=8),
        "payload": payload,
    })
    return st.one_of(
        st.binary(max_size=256),
        envelope.map(lambda e: json.dumps(e).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.just(b"{" + b" " * (MAX_MESSAGE_BYTES + 1) + b"}"),
    )


async def drain(consumer: Consumer) -> None:
    for _ in range(50):
        if await consumer.run_once() == 0:
            return
    raise AssertionError(f"{consumer.group} did not go idle on {consumer.topic}")


def decodable(raw: bytes) -> bool:
    try:
        Message.decode(raw)
    except Exception:
        return False
    return True


@st.composite
def batches(draw: st.DrawFn, world: World) -> tuple[str, list[bytes]]:
    topic = draw(st.sampled_from(sorted(world.by_topic)))
    raws = draw(st.lists(raw_messages(topic, world.valid_bar), min_size=1, max_size=6))
    return topic, raws


@pytest.mark.filterwarnings("ignore:Generating overly large repr")  # the oversized message
def test_random_messages_are_handled_or_dead_lettered(world: World) -> None:
    assert set(world.by_topic) == {"market.bars", "signals", "exits", "positions",
                                   "executions", "orders.approved", "control"}

    # Whatever the draw, one message gets past the envelope into a handler that refuses its
    # payload (a bar whose high is below its low): the dead-letter kinds asserted below are
    # then a fact about the handlers, not about the examples hypothesis happened to pick.
    broken_bar = Message("bar", {**world.valid_bar, "high": world.valid_bar["low"] / 2}, 1,
                         "t-broken", id="broken-bar").encode()

    @settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "120")), deadline=None,
              database=None,
              suppress_health_check=list(HealthCheck))
    @given(batch=batches(world))
    @example(batch=("market.bars", [broken_bar]))
    def scenario(batch: tuple[str, list[bytes]]) -> None:
        topic, raws = batch

        async def go() -> None:
            consumers = world.by_topic[topic]
            for c in consumers:  # what earlier examples' handlers published here goes first
                await drain(c)
            before = [(c.handled, sum(c.deadletters.values())) for c in consumers]
            for raw in raws:
                await world.bus.publish_raw(topic, raw)
            for c in consumers:  # a failing handler is retried, then dead-lettered
                await drain(c)
                assert await c.lag() == 0, f"{c.group} left {topic} entries pending"
            broken = sum(not decodable(r) for r in raws)
            for c, (handled, dead) in zip(consumers, before, strict=True):
                new_dead = sum(c.deadletters.values()) - dead
                assert (c.handled - handled) + new_dead == len(raws), c.group
                assert new_dead >= broken, c.group  # undecodable: always dead-lettered
            for svc in world.services.values():
                await svc.health.refresh()
                assert svc.health.status is not Status.DOWN, svc.health.as_dict()

        world.run(go())

    scenario()
    letters = world.run(world.bus.entries("deadletter"))
    assert letters, "nothing was dead-lettered: the fuzzer is not reaching the handlers"
    reasons = {Message.decode(raw).payload["reason"].split(":")[0] for _, raw in letters}
    assert {"malformed", "malformed payload"} <= reasons


def test_a_good_bar_after_garbage_is_still_handled(world: World) -> None:
    async def go() -> None:
        await world.bus.publish_raw("market.bars", b"\x00garbage")
        await world.bus.publish("market.bars", Message("bar", world.valid_bar, 1, "t-good"))
        for c in world.by_topic["market.bars"]:
            await drain(c)
            assert await c.lag() == 0
        ai = world.services["ai-engine"]
        assert ai.last_bar, "the valid bar did not reach the ai-engine"  # type: ignore[attr-defined]

    world.run(go())
