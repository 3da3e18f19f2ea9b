"""Per-topic stream policy: which streams may lose their oldest entries, and which never do.

Every stream is bounded by the bus's ``maxlen``. What happens at the bound depends on the topic:

* ``Retention.NEWEST`` (loss-tolerant topics): the stream keeps the newest ``maxlen`` entries
  (exact MAXLEN trimming, not ``~``: the same bound as in memory, and one trimmed entry per
  append costs no more), whether or not every consumer group has read them. Publishers never
  wait. A group that fell behind (or belongs to a stopped service) resumes at the oldest entry
  still retained; entries trimmed while pending in its PEL are dropped from the PEL on its next
  read, never delivered as dead letters. These topics carry state where only the newest matters:
  ``heartbeats``, ``market.bars`` (a consumer that was down resumes from the latest bars),
  ``positions`` (account snapshots) and ``deadletter`` (the newest N are kept for operators).
* ``Retention.UNTIL_ACKED`` (everything else, including topics this module does not know):
  only entries every group has acked are trimmed; when the stream is full of unacked entries
  ``publish`` waits for acks, then raises ``BusFull``. A group that stops reading therefore
  stops its publishers once the stream fills up: the ``bus_stream_fill_ratio`` gauge (the
  slowest group's lag over the bound) and the ``BusStreamNearFull`` alert say so before.

Both adapters take a ``TopicPolicy``. The Redis bus (production) defaults to ``DEFAULT_POLICY``;
the in-memory bus defaults to ``LOSSLESS``, because backtests and the paper runner pace a replay
by backpressure on ``market.bars`` and must never drop a bar; ``make_bus`` gives the embedded
services node the production policy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from prometheus_client import Gauge

from quantum_trader.bus.protocol import DEADLETTER_TOPIC, STREAM_PREFIX
from quantum_trader.observability.metrics import BUS_STREAM_FILL_RATIO, BUS_STREAM_LENGTH

__all__ = [
    "DEFAULT_POLICY",
    "LOSSLESS",
    "LOSSLESS_TOPICS",
    "LOSS_TOLERANT_TOPICS",
    "Retention",
    "StreamGauges",
    "TopicPolicy",
    "topic_of",
]


class Retention(enum.Enum):
    NEWEST = "newest"  # keep the newest maxlen entries; publishers never wait
    UNTIL_ACKED = "until_acked"  # trim only what every group acked; publishers wait, then BusFull


LOSS_TOLERANT_TOPICS = frozenset({"heartbeats", "market.bars", "positions", DEADLETTER_TOPIC})
LOSSLESS_TOPICS = frozenset(
    {"signals", "orders.approved", "orders.rejected", "executions", "exits", "control"})
# Together they are protocol.TOPICS, each topic in exactly one (tests/unit/test_bus_topics.py).


def topic_of(name: str) -> str:
    """``"qt:signals"`` or ``"signals"`` -> ``"signals"`` (the label metrics use)."""
    return name[len(STREAM_PREFIX):] if name.startswith(STREAM_PREFIX) else name


@dataclass(slots=True, frozen=True)
class TopicPolicy:
    """Which topics keep only their newest entries; every other topic is kept until acked."""

    loss_tolerant: frozenset[str] = LOSS_TOLERANT_TOPICS

    def retention(self, topic: str) -> Retention:
        """``topic`` may be given with or without the ``qt:`` prefix."""
        if topic_of(topic) in self.loss_tolerant:
            return Retention.NEWEST
        return Retention.UNTIL_ACKED

    def keeps_newest(self, topic: str) -> bool:
        return self.retention(topic) is Retention.NEWEST


DEFAULT_POLICY = TopicPolicy()
LOSSLESS = TopicPolicy(loss_tolerant=frozenset())


class StreamGauges:
    """``bus_stream_length`` and ``bus_stream_fill_ratio`` for one bus, set on every append
    (the append knows both). The fill ratio is ``held / maxlen``: for ``NEWEST`` streams held is
    the length; for ``UNTIL_ACKED`` streams, which stay at ``maxlen`` once busy (they trim only
    when full), it is what the slowest group has not acked (its lag), so 1 means publishers
    wait. Cheap on the hot path: children cached, an unchanged reading sets nothing."""

    __slots__ = ("_children", "maxlen", "policy")

    def __init__(self, policy: TopicPolicy, maxlen: int) -> None:
        self.policy = policy
        self.maxlen = maxlen
        self._children: dict[str, tuple[Gauge, Gauge, list[int]]] = {}

    def observe(self, topic: str, length: int, held: int) -> None:
        children = self._children.get(topic)
        if children is None:
            labels = (topic_of(topic), self.policy.retention(topic).value)
            children = self._children[topic] = (BUS_STREAM_LENGTH.labels(*labels),
                                                BUS_STREAM_FILL_RATIO.labels(*labels), [-1, -1])
        last = children[2]
        if last[0] != length:
            last[0] = length
            children[0].set(length)
        if last[1] != held:
            last[1] = held
            children[1].set(held / self.maxlen)
