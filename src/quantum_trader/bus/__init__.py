"""Message bus: the ``Bus`` port, the in-memory adapter and the ``Consumer`` runner."""

from quantum_trader.bus.consumer import Consumer, ConsumerEvent, SeenIds, idempotent
from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import (
    DEADLETTER_TOPIC,
    TOPICS,
    Bus,
    BusFull,
    Delivery,
    Handler,
    MalformedMessage,
    Message,
    UnknownGroup,
    stream_name,
)

__all__ = [
    "DEADLETTER_TOPIC",
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
    "SeenIds",
    "UnknownGroup",
    "idempotent",
    "stream_name",
]
