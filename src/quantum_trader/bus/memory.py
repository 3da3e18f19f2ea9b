"""In-process ``Bus`` modelled on Redis Streams, for backtests, the embedded node and tests.

It keeps the Redis semantics on purpose so the same tests pass on both adapters:

* one append-only log per stream, entry ids ``"<ms>-<seq>"``, strictly increasing;
* entries hold the *encoded* bytes, so decoding (and malformed input) behaves as on Redis;
* consumer groups with a cursor and a pending entries list (PEL): entry -> owner, delivery
  count, last delivery time;
* ``read`` = own pending (XREADGROUP 0) + idle entries of other consumers (XAUTOCLAIM) + new
  entries (XREADGROUP >), each re-delivery counting as an attempt;
* bounded streams, per the topic's ``Retention`` (topics.py): ``NEWEST`` trims the oldest
  entries whatever the groups (entries trimmed while pending stay in the PEL, as on Redis, and
  a read drops them instead of delivering them); ``UNTIL_ACKED`` trims only the oldest entries
  every group has acked, and when the stream is full of unacked entries ``publish`` waits for
  acks, then raises ``BusFull``. The default policy here is ``LOSSLESS`` (every topic waits):
  backtests and the paper runner pace a replay by that backpressure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from quantum_trader.bus.protocol import (
    DEADLETTER_TOPIC,
    BusFull,
    Delivery,
    MalformedMessage,
    Message,
    PublishIncomplete,
    UnknownGroup,
    deadletter_message,
    encode_for_publish,
    stream_name,
)
from quantum_trader.bus.topics import LOSSLESS, StreamGauges, TopicPolicy

__all__ = ["BusFull", "InMemoryBus", "PendingEntry"]

EntryId = tuple[int, int]


def _format_id(entry_id: EntryId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def _parse_id(text: str) -> EntryId:
    ms, sep, seq = text.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise ValueError(f"invalid stream entry id: {text!r}")
    return int(ms), int(seq)


@dataclass(slots=True, frozen=True)
class PendingEntry:
    """One PEL row, as XPENDING reports it."""

    entry_id: str
    consumer: str
    deliveries: int
    idle_ms: int


@dataclass(slots=True)
class _Pending:
    consumer: str
    deliveries: int
    delivered_at: float  # clock() seconds


@dataclass(slots=True)
class _Group:
    next_index: int  # absolute log index of the first entry never delivered to this group
    # Entries enter the PEL on first delivery, which happens in log order, and keep their
    # key when claimed, so dict order is entry-id order (as XPENDING lists them).
    pel: dict[EntryId, _Pending] = field(default_factory=dict)


class _Stream:
    """Append-only log with O(1) amortised trimming from the head."""

    __slots__ = ("freed", "groups", "head", "keep_newest", "last_id", "offset", "order",
                 "published", "raws")

    def __init__(self, keep_newest: bool = False) -> None:
        self.keep_newest = keep_newest  # Retention.NEWEST: trim whatever the groups
        self.raws: dict[EntryId, bytes] = {}
        # order[head:] are the live ids; absolute index of order[i] is offset + i. Trimmed ids
        # stay in the prefix until compaction, so trimming never shifts a list per entry.
        self.order: list[EntryId] = []
        self.head = 0
        self.offset = 0
        self.last_id: EntryId = (0, 0)
        self.groups: dict[str, _Group] = {}
        # Created lazily by a waiter, set and dropped by the signaller: no lost wake-ups
        # (the waiter takes the event before re-checking) and no cost when nobody waits.
        self.published: asyncio.Event | None = None
        self.freed: asyncio.Event | None = None

    @property
    def first_index(self) -> int:
        return self.offset + self.head

    @property
    def end_index(self) -> int:
        return self.offset + len(self.order)

    def __len__(self) -> int:
        return len(self.raws)

    def append(self, raw: bytes, now_ms: int) -> EntryId:
        # Redis rule: ids never go backwards, even if the wall clock does.
        ms, seq = self.last_id
        entry_id = (now_ms, 0) if now_ms > ms else (ms, seq + 1)
        self.last_id = entry_id
        self.raws[entry_id] = raw
        self.order.append(entry_id)
        return entry_id

    def _trimmable(self, index: int, entry_id: EntryId) -> bool:
        return all(g.next_index > index and entry_id not in g.pel for g in self.groups.values())

    def held(self) -> int:
        """Entries the stream must keep: all if it keeps the newest, else the largest group
        lag (undelivered + pending), which is what stops publishers when it reaches maxlen."""
        if self.keep_newest:
            return len(self.raws)
        first, end = self.first_index, self.end_index
        lags = (end - max(g.next_index, first) + len(g.pel) for g in self.groups.values())
        return min(max(lags, default=0), len(self.raws))

    def make_room(self, maxlen: int) -> bool:
        """Trim from the head until there is room for one more: any entry if the stream keeps
        the newest, else only entries every group has acked."""
        while len(self.raws) >= maxlen and self.head < len(self.order):
            entry_id = self.order[self.head]
            if not self.keep_newest and not self._trimmable(self.first_index, entry_id):
                break  # only the oldest may go, like XTRIM: never skip past an unacked one
            del self.raws[entry_id]
            self.head += 1
        if self.head > 1024 and self.head * 2 > len(self.order):
            del self.order[: self.head]
            self.offset += self.head
            self.head = 0
        return len(self.raws) < maxlen

    def id_at(self, index: int) -> EntryId:
        return self.order[index - self.offset]

    def wait_event(self, kind: str) -> asyncio.Event:
        if kind == "published":
            if self.published is None:
                self.published = asyncio.Event()
            return self.published
        if self.freed is None:
            self.freed = asyncio.Event()
        return self.freed

    def signal(self, kind: str) -> None:
        event = self.published if kind == "published" else self.freed
        if event is not None:
            event.set()
            if kind == "published":
                self.published = None
            else:
                self.freed = None


def _delivery(topic: str, entry_id: EntryId, raw: bytes, attempts: int) -> Delivery:
    try:
        message = Message.decode(raw)
    except MalformedMessage as exc:
        return Delivery(topic, _format_id(entry_id), None, attempts, raw, str(exc))
    except Exception as exc:  # e.g. RecursionError on deeply nested JSON: still just bad input
        error = f"undecodable: {type(exc).__name__}: {exc}"
        return Delivery(topic, _format_id(entry_id), None, attempts, raw, error)
    return Delivery(topic, _format_id(entry_id), message, attempts, raw)


class InMemoryBus:
    """``Bus`` implementation in one process. Not thread-safe: use from one event loop."""

    def __init__(
        self,
        maxlen: int = 100_000,
        publish_timeout_s: float = 10.0,
        claim_idle_ms: int = 30_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        policy: TopicPolicy = LOSSLESS,
    ) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        self.maxlen = maxlen
        self.policy = policy
        self._gauges = StreamGauges(policy, maxlen)
        self.publish_timeout_s = publish_timeout_s
        self.claim_idle_ms = claim_idle_ms
        self._clock = clock  # idle time for claims; injectable so tests need not sleep
        self._wall_clock = wall_clock  # entry ids and dead-letter timestamps (epoch)
        self._streams: dict[str, _Stream] = {}
        self._closed = False

    # -- helpers ---------------------------------------------------------------------------

    def _stream(self, topic: str) -> _Stream:
        name = stream_name(topic)
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = _Stream(self.policy.keeps_newest(name))
        return stream

    def _group(self, topic: str, group: str) -> tuple[_Stream, _Group]:
        stream = self._streams.get(stream_name(topic))
        grp = stream.groups.get(group) if stream is not None else None
        if stream is None or grp is None:
            raise UnknownGroup(f"no group {group!r} on {stream_name(topic)!r}")
        return stream, grp

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("bus is closed")

    def _now_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, topic: str, message: Message) -> str:
        return await self.publish_raw(topic, encode_for_publish(message))

    async def publish_many(self, topic: str, messages: Sequence[Message]) -> list[str]:
        """Append in order (the Redis bus's batch form, for code written against both).
        Refuses an oversized message before appending any; ``PublishIncomplete`` says what got
        in when the stream stayed full."""
        raws = [encode_for_publish(m) for m in messages]
        ids: list[str] = []
        for raw in raws:
            try:
                ids.append(await self.publish_raw(topic, raw))
            except BusFull as exc:
                if len(raws) == 1:
                    raise
                raise PublishIncomplete(f"{exc}; {len(ids)} of {len(raws)} appended",
                                        ids) from None
        return ids

    async def publish_raw(self, topic: str, raw: bytes) -> str:
        """Append bytes as they are, unchecked: for tests and fault injection."""
        self._check_open()
        stream = self._stream(topic)
        if not stream.make_room(self.maxlen):
            self._gauges.observe(topic, len(stream), len(stream))  # full: publishers wait
            await self._wait_for_room(topic, stream)
        entry_id = stream.append(bytes(raw), self._now_ms())
        self._gauges.observe(topic, len(stream), stream.held())
        stream.signal("published")
        return _format_id(entry_id)

    async def _wait_for_room(self, topic: str, stream: _Stream) -> None:
        # Backpressure instead of unbounded memory or a silent drop: only acks free room.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout_s
        while True:
            freed = stream.wait_event("freed")
            if stream.make_room(self.maxlen):
                return
            self._check_open()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BusFull(
                    f"{stream_name(topic)} holds {len(stream)} unacked entries (maxlen "
                    f"{self.maxlen}); no room after {self.publish_timeout_s}s")
            # On timeout, loop once more: room may have appeared just at the deadline.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(freed.wait(), remaining)

    # -- consuming -------------------------------------------------------------------------

    async def ensure_group(self, topic: str, group: str) -> bool:
        stream = self._stream(topic)
        if group in stream.groups:
            return False
        # "Start at the beginning" = everything still retained, like XGROUP CREATE ... 0.
        stream.groups[group] = _Group(next_index=stream.first_index)
        return True

    async def read(self, topic: str, group: str, consumer: str, count: int = 100,
                   block_ms: int = 1000) -> list[Delivery]:
        self._check_open()  # a closed bus must not look like an idle one (consumers would spin)
        stream, grp = self._group(topic, group)
        if count <= 0:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_ms / 1000
        while True:
            published = stream.wait_event("published") if block_ms > 0 else None
            out = self._collect(topic, stream, grp, consumer, count)
            if out or published is None or self._closed:
                return out
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(published.wait(), remaining)

    def _collect(self, topic: str, stream: _Stream, grp: _Group, consumer: str,
                 count: int) -> list[Delivery]:
        now = self._clock()
        out: list[Delivery] = []
        # Entries trimmed while pending (only a NEWEST stream trims those) leave the PEL when a
        # read meets them, as on Redis: the newest data replaces them, nothing to dead-letter.
        gone: list[EntryId] = []
        try:
            # 1. This consumer's own pending entries: what it had when it crashed or failed.
            for entry_id, pend in grp.pel.items():
                if len(out) >= count:
                    return out
                if pend.consumer == consumer:
                    raw = stream.raws.get(entry_id)
                    if raw is None:
                        gone.append(entry_id)
                        continue
                    pend.deliveries += 1
                    pend.delivered_at = now
                    out.append(_delivery(topic, entry_id, raw, pend.deliveries))
            # 2. Entries another consumer has sat on too long (presumed dead): XAUTOCLAIM.
            idle_s = self.claim_idle_ms / 1000
            for entry_id, pend in grp.pel.items():
                if len(out) >= count:
                    return out
                raw = stream.raws.get(entry_id)
                if raw is None:
                    gone.append(entry_id)  # XAUTOCLAIM drops deleted entries, idle or not
                    continue
                if pend.consumer != consumer and now - pend.delivered_at >= idle_s:
                    pend.consumer = consumer
                    pend.deliveries += 1
                    pend.delivered_at = now
                    out.append(_delivery(topic, entry_id, raw, pend.deliveries))
        finally:
            for entry_id in gone:
                grp.pel.pop(entry_id, None)
        # 3. New entries, advancing the group's cursor (past what was trimmed unread).
        grp.next_index = max(grp.next_index, stream.first_index)
        while len(out) < count and grp.next_index < stream.end_index:
            entry_id = stream.id_at(grp.next_index)
            grp.next_index += 1
            grp.pel[entry_id] = _Pending(consumer, 1, now)
            out.append(_delivery(topic, entry_id, stream.raws[entry_id], 1))
        return out

    async def ack(self, topic: str, group: str, entry_ids: list[str]) -> None:
        parsed = [_parse_id(e) for e in entry_ids]  # validate first, like XACK
        stream = self._streams.get(stream_name(topic))
        grp = stream.groups.get(group) if stream is not None else None
        if stream is None or grp is None:
            return
        removed = False
        for entry_id in parsed:
            removed = grp.pel.pop(entry_id, None) is not None or removed
        if removed:
            stream.signal("freed")

    async def dead_letter(self, delivery: Delivery, group: str, reason: str) -> None:
        # A dead letter that fails again is not re-published (that could loop forever); it
        # stays readable in qt:deadletter until trimmed, so acking it loses nothing.
        if stream_name(delivery.topic) != stream_name(DEADLETTER_TOPIC):
            await self.publish(DEADLETTER_TOPIC,
                               deadletter_message(delivery, group, reason, self._now_ms()))
        await self.ack(delivery.topic, group, [delivery.entry_id])

    # -- introspection ---------------------------------------------------------------------

    async def pending_count(self, topic: str, group: str) -> int:
        return len(self._group(topic, group)[1].pel)

    async def lag(self, topic: str, group: str) -> int:
        stream, grp = self._group(topic, group)
        return (stream.end_index - max(grp.next_index, stream.first_index)) + len(grp.pel)

    async def pending(self, topic: str, group: str) -> list[PendingEntry]:
        """PEL rows in entry order (XPENDING with details)."""
        _, grp = self._group(topic, group)
        now = self._clock()
        return [PendingEntry(_format_id(e), p.consumer, p.deliveries,
                             int((now - p.delivered_at) * 1000)) for e, p in grp.pel.items()]

    async def length(self, topic: str) -> int:
        """Entries retained in the stream (XLEN)."""
        stream = self._streams.get(stream_name(topic))
        return len(stream) if stream is not None else 0

    async def entries(self, topic: str) -> list[tuple[str, bytes]]:
        """Retained entries, oldest first (XRANGE - +)."""
        stream = self._streams.get(stream_name(topic))
        if stream is None:
            return []
        return [(_format_id(e), stream.raws[e]) for e in stream.order[stream.head:]]

    async def close(self) -> None:
        # Wake blocked readers (they return []) and publishers (they raise): shutdown is prompt.
        self._closed = True
        for stream in self._streams.values():
            stream.signal("published")
            stream.signal("freed")
