"""The ``Bus`` port: at-least-once topics with consumer groups, acks and dead letters.

Semantics (DESIGN.md section 4), the same for every adapter:

* ``publish`` appends a ``Message`` to ``qt:<topic>`` and returns its entry id.
* Each service reads with its own consumer group; each group sees every message once, unless
  it fails to ack, in which case the message stays pending and is delivered again (to the same
  or, after ``claim_idle_ms``, to another consumer of the group).
* A handler's effect is committed before the ack. Handlers are idempotent on ``Message.id``.
* A message that cannot be decoded, or whose handler failed ``max_attempts`` times, goes to
  ``qt:deadletter`` with the reason, and is acked on its own stream so the consumer goes on.
* ``publish`` refuses a message whose encoding exceeds ``MAX_MESSAGE_BYTES`` with
  ``MalformedMessage`` (a clear error at the source, rather than a dead letter later).
* ``read`` with ``block_ms <= 0`` returns at once; it never blocks forever.
* ``read``, ``pending_count`` and ``lag`` on a group that was never created raise
  ``UnknownGroup``; ``ack`` on one is a no-op. A group can also vanish (Redis restarted without
  its data): readers then create it again (``recovery.recreate_group``) and carry on.
* every stream is bounded; what happens at the bound is the topic's ``Retention`` (topics.py):
  loss-tolerant topics keep their newest entries, all others wait for acks, then ``BusFull``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

STREAM_PREFIX = "qt:"
DEADLETTER_TOPIC = "deadletter"
TOPICS = (
    "market.bars",
    "signals",
    "orders.approved",
    "orders.rejected",
    "executions",
    "positions",
    "exits",
    "control",
    "heartbeats",
    DEADLETTER_TOPIC,
)
MAX_MESSAGE_BYTES = 64 * 1024
DEADLETTER_RAW_BYTES = 4 * 1024  # raw bytes kept in a dead letter: enough to debug, bounded


class MalformedMessage(ValueError):
    """Bytes on the bus that are not a valid ``Message``."""


class BusFull(RuntimeError):
    """``publish`` waited ``publish_timeout_s`` for consumers to ack and free room, in vain."""


class PublishIncomplete(BusFull):
    """``publish_many`` appended only the first ``len(entry_ids)`` messages before the stream
    stayed full for ``publish_timeout_s``; the rest were not appended."""

    def __init__(self, message: str, entry_ids: list[str]) -> None:
        super().__init__(message)
        self.entry_ids = entry_ids


class UnknownGroup(LookupError):
    """The consumer group (or its topic) does not exist; call ``ensure_group`` first."""


def stream_name(topic: str) -> str:
    return topic if topic.startswith(STREAM_PREFIX) else STREAM_PREFIX + topic


@dataclass(slots=True, frozen=True)
class Message:
    type: str
    payload: dict[str, Any]
    ts: int
    trace_id: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def encode(self) -> bytes:
        return json.dumps(
            {"id": self.id, "type": self.type, "ts": self.ts, "trace_id": self.trace_id,
             "payload": self.payload},
            separators=(",", ":"),
        ).encode()

    @staticmethod
    def decode(raw: bytes | str) -> Message:
        if len(raw) > MAX_MESSAGE_BYTES:
            raise MalformedMessage(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedMessage(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MalformedMessage("message is not a JSON object")
        missing = [k for k in ("id", "type", "ts", "trace_id", "payload") if k not in data]
        if missing:
            raise MalformedMessage(f"missing fields: {', '.join(missing)}")
        if not isinstance(data["id"], str) or not data["id"]:
            raise MalformedMessage("id must be a non-empty string")
        if not isinstance(data["type"], str) or not data["type"]:
            raise MalformedMessage("type must be a non-empty string")
        if not isinstance(data["ts"], int) or isinstance(data["ts"], bool):
            raise MalformedMessage("ts must be an integer (epoch ms)")
        if not isinstance(data["trace_id"], str):
            raise MalformedMessage("trace_id must be a string")
        if not isinstance(data["payload"], dict):
            raise MalformedMessage("payload must be an object")
        return Message(type=data["type"], payload=data["payload"], ts=data["ts"],
                       trace_id=data["trace_id"], id=data["id"])


@dataclass(slots=True, frozen=True)
class Delivery:
    """One delivery of a stream entry to a consumer. ``message`` is None if it did not decode;
    ``error`` then says why."""

    topic: str
    entry_id: str
    message: Message | None
    attempts: int  # 1 on first delivery
    raw: bytes = b""
    error: str = ""


Handler = Callable[[Message], Awaitable[None]]


def encode_for_publish(message: Message) -> bytes:
    """``message`` as bus bytes; ``MalformedMessage`` if it is larger than a bus takes."""
    raw = message.encode()
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(
            f"message {message.id} of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return raw


def deadletter_message(delivery: Delivery, group: str, reason: str, ts: int) -> Message:
    """The message every adapter writes to ``qt:deadletter``, so dead letters look the same
    whichever bus carried them. The trace id is kept when the original decoded."""
    raw = delivery.raw
    return Message(
        type="deadletter",
        payload={
            "topic": delivery.topic,
            "group": group,
            "entry_id": delivery.entry_id,
            "reason": reason[:DEADLETTER_RAW_BYTES],
            "attempts": delivery.attempts,
            "raw": raw[:DEADLETTER_RAW_BYTES].decode("utf-8", errors="replace"),
            "raw_bytes": len(raw),
        },
        ts=ts,
        trace_id=delivery.message.trace_id if delivery.message is not None else "",
    )


class Bus(Protocol):
    async def publish(self, topic: str, message: Message) -> str:
        """Append and return the entry id. May wait (backpressure), never drops."""

    async def ensure_group(self, topic: str, group: str) -> bool:
        """Create ``group`` on ``topic`` if missing; new groups start at the beginning.
        True if this call created it."""

    async def read(self, topic: str, group: str, consumer: str, count: int = 100,
                   block_ms: int = 1000) -> list[Delivery]:
        """Messages pending for this consumer first, then messages idle past the claim time
        in the group (left by a dead consumer), then new ones."""

    async def ack(self, topic: str, group: str, entry_ids: list[str]) -> None: ...

    async def dead_letter(self, delivery: Delivery, group: str, reason: str) -> None:
        """Copy to the dead-letter topic with the reason, then ack the original."""

    async def pending_count(self, topic: str, group: str) -> int: ...

    async def lag(self, topic: str, group: str) -> int:
        """Entries not yet delivered to ``group`` plus entries delivered but not acked."""

    async def close(self) -> None: ...


@runtime_checkable
class BatchPublisher(Protocol):
    """A bus that can append several messages to one topic in one go (both adapters can)."""

    async def publish_many(self, topic: str, messages: Sequence[Message]) -> list[str]:
        """Append in order; ``PublishIncomplete`` names the appended prefix if not all fit."""
