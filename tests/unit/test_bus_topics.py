"""The per-topic stream policy (bus/topics.py): every topic classified once, and the gauges
that make a stream's bound visible. How each adapter applies the policy is tested on both in
tests/unit/test_bus_memory.py."""

from __future__ import annotations

import pytest

from quantum_trader.bus.factory import make_bus
from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import TOPICS
from quantum_trader.bus.topics import (
    DEFAULT_POLICY,
    LOSS_TOLERANT_TOPICS,
    LOSSLESS,
    LOSSLESS_TOPICS,
    Retention,
    StreamGauges,
    TopicPolicy,
    topic_of,
)
from quantum_trader.config import Settings
from quantum_trader.observability.metrics import REGISTRY


def test_every_topic_is_classified_exactly_once() -> None:
    assert set(TOPICS) == LOSS_TOLERANT_TOPICS | LOSSLESS_TOPICS
    assert not LOSS_TOLERANT_TOPICS & LOSSLESS_TOPICS
    assert {"heartbeats", "market.bars", "positions", "deadletter"} == LOSS_TOLERANT_TOPICS


@pytest.mark.parametrize("topic", sorted(TOPICS))
def test_default_policy(topic: str) -> None:
    expected = Retention.NEWEST if topic in LOSS_TOLERANT_TOPICS else Retention.UNTIL_ACKED
    assert DEFAULT_POLICY.retention(topic) is expected
    assert DEFAULT_POLICY.retention("qt:" + topic) is expected  # the stream name, too
    assert LOSSLESS.retention(topic) is Retention.UNTIL_ACKED


def test_unknown_topics_are_kept_until_acked() -> None:
    # Dropping what nobody classified could lose an order; waiting for acks never does.
    assert DEFAULT_POLICY.retention("something.new") is Retention.UNTIL_ACKED
    custom = TopicPolicy(loss_tolerant=frozenset({"something.new"}))
    assert custom.keeps_newest("qt:something.new")
    assert not custom.keeps_newest("heartbeats")


def test_topic_of() -> None:
    assert topic_of("qt:orders.approved") == "orders.approved"
    assert topic_of("orders.approved") == "orders.approved"


def sample(name: str, stream: str, retention: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"stream": stream, "retention": retention})


def test_stream_gauges() -> None:
    gauges = StreamGauges(DEFAULT_POLICY, maxlen=200)
    gauges.observe("qt:exits", 200, 150)  # full, but only 150 not yet acked by some group
    gauges.observe("positions", 200, 200)
    assert sample("bus_stream_length", "exits", "until_acked") == 200
    assert sample("bus_stream_fill_ratio", "exits", "until_acked") == 0.75
    assert sample("bus_stream_fill_ratio", "positions", "newest") == 1.0
    gauges.observe("exits", 200, 10)
    assert sample("bus_stream_fill_ratio", "exits", "until_acked") == 0.05
    assert sample("bus_stream_length", "exits", "until_acked") == 200


def test_embedded_services_get_the_production_policy() -> None:
    settings = Settings.model_validate({"services": {"bus": "memory"}})
    bus = make_bus(settings)
    assert isinstance(bus, InMemoryBus)
    assert bus.policy == DEFAULT_POLICY
    # Built directly (backtests, the paper runner), the in-memory bus never drops anything.
    assert InMemoryBus().policy == LOSSLESS
