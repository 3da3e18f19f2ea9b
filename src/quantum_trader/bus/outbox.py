"""Transactional outbox: the messages a store commit causes are published from the store, until
the bus has them.

The model, end to end:

* A service writes its effects *and* the messages they cause (``OutboundMessage`` rows) in one
  store transaction, then calls ``kick()``. Nothing is published inside the transaction, so a
  commit can no longer succeed while its publish fails and is forgotten.
* ``OutboxPublisher`` reads pending rows in ``seq`` order and appends them in that order, a run of
  consecutive rows of one topic at a time with ``publish_many``. Order across topics is kept on
  purpose: a consumer that sees an account update must be able to drain the fills committed
  before it (execution commits fills, then the account), so no message is published before one
  committed earlier. A full (lossless) stream therefore holds back what was committed after it.
* A row is marked done only after the bus returned its entry id. On any bus error (``BusFull``,
  Redis down, ``PublishIncomplete``) exactly the appended prefix is marked done; the rest stays
  in the outbox and is retried after a capped exponential backoff. Nothing is dropped, and
  nothing overtakes an earlier message.
* At-least-once: after a crash (or a failed ``outbox_done``) between the append and the mark,
  the same rows are published again, under the same ``Message.id`` (``OutboundMessage.id``).
  Consumers are idempotent on that id (protocol.py), so a re-publish is harmless.
* A row no bus can ever carry (its payload is not JSON, or it encodes to more than
  ``MAX_MESSAGE_BYTES``) would block its topic forever; it goes to ``qt:deadletter`` with the
  reason instead (group ``outbox``), and is marked done once the dead letter is appended.

``run(stop)`` is the loop (it also polls every ``poll_s``, so a missed kick delays a message by
at most that); ``drain()`` publishes everything pending now, for tests and shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Protocol

from quantum_trader.bus.protocol import (
    DEADLETTER_TOPIC,
    MAX_MESSAGE_BYTES,
    BatchPublisher,
    Bus,
    Delivery,
    Message,
    PublishIncomplete,
    deadletter_message,
    stream_name,
)
from quantum_trader.bus.topics import topic_of
from quantum_trader.domain.records import OutboundMessage
from quantum_trader.observability.logging import get_logger
from quantum_trader.observability.metrics import OUTBOX_PENDING, OUTBOX_PUBLISHED

__all__ = ["OutboxPublisher", "OutboxStore"]

log = get_logger(__name__)

DEADLETTER_GROUP = "outbox"  # the "group" a dead letter of an unpublishable row names


class OutboxStore(Protocol):
    """The store side of the outbox (``SqlTradeStore`` implements it)."""

    async def outbox_pending(self, limit: int) -> list[tuple[int, OutboundMessage]]:
        """Up to ``limit`` rows not yet marked done, as ``(seq, message)`` in ``seq`` order."""

    async def outbox_done(self, seqs: Sequence[int]) -> None:
        """Mark these rows published (they are never returned as pending again)."""


class OutboxPublisher:
    """Publishes an ``OutboxStore``'s pending messages to ``bus``; see the module docstring."""

    def __init__(self, outbox: OutboxStore, bus: Bus, batch: int = 500, *,
                 poll_s: float = 0.5, backoff_min_s: float = 0.05,
                 backoff_max_s: float = 5.0) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        if not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError("need 0 < backoff_min_s <= backoff_max_s")
        self.outbox = outbox
        self.bus = bus
        self.batch = batch
        self.poll_s = poll_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.published = 0  # rows marked done by this publisher
        self.failures = 0  # passes that ended in an error (and a backoff)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one pass at a time: run() and drain() never interleave

    def kick(self) -> None:
        """Something was committed to the outbox: publish it now (not at the next poll)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set. Errors back off (capped exponential) and retry. Set
        ``stop`` before closing the bus (a closed bus is just another error to retry)."""
        delay = 0.0
        while not stop.is_set():
            self._wake.clear()  # before reading: a kick during the pass triggers another
            try:
                fetched, _ = await self._pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                delay = min(self.backoff_max_s, max(self.backoff_min_s, delay * 2))
                log.warning("outbox.publish_failed", error=f"{type(exc).__name__}: {exc}",
                            retry_in_s=delay)
                # A kick does not cut the backoff short: commits go on while the bus is down.
                await _wait(stop, None, delay)
                continue
            delay = 0.0
            if fetched < self.batch:  # caught up; otherwise go straight on with the next batch
                await _wait(stop, self._wake, self.poll_s)

    async def drain(self) -> int:
        """Publish batches until a read finds the outbox caught up; returns the rows marked
        done. A bus error propagates (the appended prefix is marked done first; the rest stays
        in the outbox for the next run)."""
        total = 0
        while True:
            fetched, done = await self._pass()
            total += done
            if fetched < self.batch:
                return total

    # -- one pass ----------------------------------------------------------------------------

    async def _pass(self) -> tuple[int, int]:
        """Publish one batch; returns the rows read and the rows marked done. Raises the first
        bus error, after marking done whatever the bus acknowledged."""
        async with self._lock:
            rows = await self.outbox.outbox_pending(self.batch)
            if not rows:
                OUTBOX_PENDING.set(0)
                return 0, 0
            runs: list[tuple[str, list[tuple[int, Message]]]] = []
            for seq, out in rows:  # consecutive rows of one topic form a run
                topic, message = self._message(out)
                if runs and runs[-1][0] == topic:
                    runs[-1][1].append((seq, message))
                else:
                    runs.append((topic, [(seq, message)]))
            done: list[int] = []
            error: Exception | None = None
            for topic, items in runs:  # in seq order: a later run waits for the earlier ones
                seqs, error = await self._publish_topic(topic, items)
                done.extend(seqs)
                if seqs:
                    OUTBOX_PUBLISHED.labels(topic).inc(len(seqs))
                if error is not None:
                    break
            if done:
                await self.outbox.outbox_done(done)
                self.published += len(done)
            OUTBOX_PENDING.set(len(rows) - len(done))
            if error is not None:
                raise error
            return len(rows), len(done)

    @staticmethod
    def _message(out: OutboundMessage) -> tuple[str, Message]:
        """The bus message for a row, and its topic; a row no bus can carry becomes a dead
        letter instead (it would block its topic forever)."""
        topic = topic_of(stream_name(out.topic))
        message = Message(type=out.type, payload=out.payload, ts=out.ts, trace_id=out.trace_id,
                          id=out.id)
        try:
            raw = message.encode()
        except (TypeError, ValueError) as exc:
            reason = f"outbox row cannot be encoded: {type(exc).__name__}: {exc}"
            raw = repr(out.payload).encode(errors="replace")
        else:
            if len(raw) <= MAX_MESSAGE_BYTES:
                return topic, message
            reason = f"outbox row of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}"
        log.error("outbox.unpublishable", topic=topic, message_id=out.id, reason=reason,
                  trace_id=out.trace_id)
        letter = deadletter_message(Delivery(topic, "", message, 0, raw), DEADLETTER_GROUP,
                                    f"{reason} (message id {out.id})", int(time.time() * 1000))
        return topic_of(DEADLETTER_TOPIC), letter

    async def _publish_topic(self, topic: str, items: list[tuple[int, Message]]
                             ) -> tuple[list[int], Exception | None]:
        """Append ``items`` in order; the seqs the bus acknowledged (always a prefix), and the
        error that stopped it, if any."""
        seqs = [seq for seq, _ in items]
        messages = [message for _, message in items]
        if isinstance(self.bus, BatchPublisher):
            try:
                await self.bus.publish_many(topic, messages)
            except PublishIncomplete as exc:
                return seqs[:len(exc.entry_ids)], exc
            except Exception as exc:  # whether any landed is unknown: all are published again
                return [], exc
            return seqs, None
        appended = 0
        try:
            for message in messages:
                await self.bus.publish(topic, message)
                appended += 1
        except Exception as exc:
            return seqs[:appended], exc
        return seqs, None


async def _wait(stop: asyncio.Event, wake: asyncio.Event | None, timeout_s: float) -> None:
    """Until ``stop`` (or ``wake``) is set, or ``timeout_s`` passes."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waiters, return_exceptions=True)
