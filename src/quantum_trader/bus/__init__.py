"""Message bus: the ``Bus`` port, the in-memory adapter, the ``Consumer`` runner, the per-topic
stream policy and the outbox publisher."""

from quantum_trader.bus.consumer import Consumer, ConsumerEvent, SeenIds, idempotent
from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.outbox import OutboxPublisher, OutboxStore
from quantum_trader.bus.protocol import (
    DEADLETTER_TOPIC,
    TOPICS,
    Bus,
    BusFull,
    Delivery,
    Handler,
    MalformedMessage,
    Message,
    PublishIncomplete,
    UnknownGroup,
    stream_name,
)
from quantum_trader.bus.recovery import recreate_group
from quantum_trader.bus.topics import DEFAULT_POLICY, LOSSLESS, Retention, TopicPolicy

__all__ = [
    "DEADLETTER_TOPIC",
    "DEFAULT_POLICY",
    "LOSSLESS",
    "TOPICS",
    "Bus",
    "BusFull",
    "Consumer",
    "ConsumerEvent",
    "Delivery",
    "Handler",
    "InMemoryBus",
    "MalformedMessage",
    "Message",
    "OutboxPublisher",
    "OutboxStore",
    "PublishIncomplete",
    "Retention",
    "SeenIds",
    "TopicPolicy",
    "UnknownGroup",
    "idempotent",
    "recreate_group",
    "stream_name",
]
