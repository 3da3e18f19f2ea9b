"""``Consumer``: the read → handle → ack loop every service runs, over any ``Bus``.

At-least-once with an idempotent handler gives an exactly-once effect:

* ack only after the handler returned, i.e. after its effect is committed;
* a failed handler leaves the entry pending; the next ``read`` hands it back first (own
  pending), until ``max_attempts``, then it is dead-lettered with the exception text;
* undecodable entries are dead-lettered at once; the loop always goes on to the next entry;
* a group that vanished (Redis lost its data) is created again and the read retried at once
  (recovery.py), so the consumer picks up whatever was published since.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from quantum_trader.bus.protocol import (
    Bus,
    Delivery,
    Handler,
    MalformedMessage,
    Message,
    UnknownGroup,
    stream_name,
)
from quantum_trader.bus.recovery import recreate_group
from quantum_trader.observability.logging import get_logger, trace_context

__all__ = ["Consumer", "ConsumerEvent", "MetricsHook", "SeenIds", "idempotent"]

log = get_logger(__name__)

_REASON_CHARS = 2000  # exception text kept in a dead letter


@dataclass(slots=True, frozen=True)
class ConsumerEvent:
    """What the consumer did with one delivery, for metrics (e.g. ``deadletter_total``)."""

    kind: Literal["handled", "failed", "deadletter"]
    stream: str
    group: str
    entry_id: str
    attempts: int
    seconds: float = 0.0
    reason: str = ""


MetricsHook = Callable[[ConsumerEvent], None]


class SeenIds:
    """Bounded LRU set of message ids, for handlers to skip re-deliveries they already applied.

    Mark an id only after the effect is committed, so a failed attempt is retried. Bounded
    because redeliveries arrive soon after the original; a durable check (e.g. a unique key in
    the store) covers the rest.
    """

    def __init__(self, maxsize: int = 100_000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, message_id: object) -> bool:
        if isinstance(message_id, str) and message_id in self._ids:
            self._ids.move_to_end(message_id)
            return True
        return False

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, message_id: str) -> None:
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        while len(self._ids) > self.maxsize:
            self._ids.popitem(last=False)

    def check_and_add(self, message_id: str) -> bool:
        """True if already seen; otherwise remember it and return False."""
        if message_id in self:
            return True
        self.add(message_id)
        return False


def idempotent(handler: Handler, seen: SeenIds | None = None) -> Handler:
    """Wrap ``handler`` to skip messages whose id it has already handled successfully."""
    ids = seen if seen is not None else SeenIds()

    async def wrapped(message: Message) -> None:
        if message.id in ids:
            return
        await handler(message)
        ids.add(message.id)

    return wrapped


class Consumer:
    """Runs ``handler`` over ``topic`` as ``consumer_name`` in ``group``.

    ``consumer_name`` must be stable across restarts (e.g. service name + host): a restarted
    consumer then gets back exactly what it had in flight before the crash.
    """

    def __init__(
        self,
        bus: Bus,
        topic: str,
        group: str,
        consumer_name: str,
        handler: Handler,
        max_attempts: int = 5,
        batch: int = 100,
        block_ms: int = 500,
        metrics: MetricsHook | None = None,
        error_backoff_s: float = 1.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.bus = bus
        self.topic = topic
        self.stream = stream_name(topic)
        self.group = group
        self.consumer_name = consumer_name
        self.handler = handler
        self.max_attempts = max_attempts
        self.batch = batch
        self.block_ms = block_ms
        self.metrics = metrics
        self.error_backoff_s = error_backoff_s
        self.deadletters: Counter[str] = Counter()  # stream -> count, for deadletter_total
        self.handled = 0
        self.failed = 0
        self._group_ready = False
        self._group_lost = False  # it existed, then a read found it gone
        self._stop = asyncio.Event()
        self._running = False
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._running

    async def lag(self) -> int:
        return await self.bus.lag(self.topic, self.group)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        if self._group_lost:  # counted and logged, even if the first try to recreate failed
            await recreate_group(self.bus, self.topic, self.group, self.consumer_name)
        else:
            await self.bus.ensure_group(self.topic, self.group)
        self._group_ready, self._group_lost = True, False

    # -- one batch ------------------------------------------------------------------------------

    async def run_once(self, block_ms: int = 0) -> int:
        """Read one batch and process it; returns the number of deliveries processed (acked,
        dead-lettered or failed). 0 means there was nothing to do."""
        await self._ensure_group()
        return await self._process(await self._read(block_ms))

    async def _read(self, block_ms: int) -> list[Delivery]:
        try:
            return await self.bus.read(self.topic, self.group, self.consumer_name,
                                       count=self.batch, block_ms=block_ms)
        except UnknownGroup:
            # The group vanished (e.g. Redis restarted without its data): create it again,
            # from the start of what the stream holds now, and read what was published since.
            self._group_ready, self._group_lost = False, True
        await self._ensure_group()
        return await self.bus.read(self.topic, self.group, self.consumer_name,
                                   count=self.batch, block_ms=block_ms)

    async def _process(self, deliveries: list[Delivery]) -> int:
        done = 0
        for delivery in deliveries:
            if self._running and self._stop.is_set():
                break  # drain: the rest stay pending and come back on restart (or are claimed)
            await self._process_one(delivery)
            done += 1
        return done

    async def _process_one(self, d: Delivery) -> None:
        if d.message is None:
            await self._dead_letter(d, f"malformed: {d.error}")
            return
        if d.attempts > self.max_attempts:
            # Delivered more times than it was ever handled to completion: the handler keeps
            # dying with the process (a poison message). Do not run it again.
            await self._dead_letter(d, f"delivered {d.attempts} times without an ack")
            return
        started = time.perf_counter()
        try:
            with trace_context(d.message.trace_id or None):
                await self.handler(d.message)
        except asyncio.CancelledError:
            raise  # stays pending: re-delivered to this consumer name after restart
        except MalformedMessage as exc:
            # A payload that can never be handled: retrying cannot help, dead-letter it now.
            await self._dead_letter(d, f"malformed payload: {exc}"[:_REASON_CHARS])
            return
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"[:_REASON_CHARS]
            self.failed += 1
            self._emit(ConsumerEvent("failed", self.stream, self.group, d.entry_id, d.attempts,
                                     time.perf_counter() - started, reason))
            if d.attempts >= self.max_attempts:
                await self._dead_letter(d, f"handler failed {d.attempts} times: {reason}")
            else:
                log.warning("bus.handler_failed", stream=self.stream, group=self.group,
                            entry_id=d.entry_id, message_id=d.message.id, attempts=d.attempts,
                            error=reason, trace_id=d.message.trace_id)
            return
        # Only now is the effect committed, so only now may the entry leave the PEL.
        await self.bus.ack(self.topic, self.group, [d.entry_id])
        self.handled += 1
        self._emit(ConsumerEvent("handled", self.stream, self.group, d.entry_id, d.attempts,
                                 time.perf_counter() - started))

    async def _dead_letter(self, d: Delivery, reason: str) -> None:
        await self.bus.dead_letter(d, self.group, reason)
        self.deadletters[self.stream] += 1
        log.error("bus.deadletter", stream=self.stream, group=self.group, entry_id=d.entry_id,
                  attempts=d.attempts, reason=reason,
                  trace_id=d.message.trace_id if d.message is not None else None)
        self._emit(ConsumerEvent("deadletter", self.stream, self.group, d.entry_id, d.attempts,
                                 reason=reason))

    def _emit(self, event: ConsumerEvent) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics(event)
        except Exception:  # metrics must never stop message processing
            log.exception("bus.metrics_hook_failed", stream=self.stream)

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Process until ``stop()``. Bus errors are logged and retried after a backoff."""
        if self._running:
            raise RuntimeError("consumer is already running")
        self._running = True
        self._stop.clear()
        self._done.clear()
        self._task = asyncio.current_task()
        log.info("bus.consumer_started", stream=self.stream, group=self.group,
                 consumer=self.consumer_name)
        try:
            while not self._stop.is_set():
                try:
                    await self._ensure_group()
                    deliveries = await self._read_unless_stopped()
                    await self._process(deliveries)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("bus.consumer_error", stream=self.stream, group=self.group)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self.error_backoff_s)
        finally:
            self._running = False
            self._task = None
            self._done.set()
            log.info("bus.consumer_stopped", stream=self.stream, group=self.group,
                     consumer=self.consumer_name)

    async def _read_unless_stopped(self) -> list[Delivery]:
        # A blocking read is cut short by stop(), so shutdown does not wait out block_ms.
        read = asyncio.ensure_future(self._read(self.block_ms))
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not read.done():
                read.cancel()
                await asyncio.wait({read})  # let the cancellation land before inspecting it
        if read.cancelled():
            # Anything the read had taken is in the PEL and comes back after a restart.
            return []
        return read.result()

    async def stop(self) -> None:
        """Finish the message in flight, then return once the loop has exited."""
        self._stop.set()
        if not self._running or asyncio.current_task() is self._task:
            return  # not running, or called from inside a handler: the loop exits after it
        await self._done.wait()
