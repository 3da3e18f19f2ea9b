"""``Bus`` on Redis Streams (redis-py asyncio): the distributed, production adapter.

Same semantics as ``InMemoryBus`` (protocol.py), mapped onto Redis:

* one stream per topic, ``<namespace>qt:<topic>``; each entry keeps the encoded message in one
  field (``d``), so decoding, and malformed raw entries, behave exactly as in memory;
* one consumer group per service, created at ``0`` ("start at the beginning");
* ``read`` = own pending (XREADGROUP ``0``) + entries idle past ``claim_idle_ms`` in other
  consumers' PELs (XAUTOCLAIM) + new entries (XREADGROUP ``>``), done by one Lua script so a
  batch costs one round trip; ``attempts`` is the PEL delivery count, which both XREADGROUP
  ``0`` and XAUTOCLAIM increment;
* bounded streams, per the topic's ``Retention`` (topics.py), in the append script: ``NEWEST``
  appends with exact ``XADD MAXLEN`` (the newest ``maxlen`` entries stay, whatever the groups;
  the read script acks entries trimmed while pending instead of delivering them).
  ``UNTIL_ACKED`` trims (XTRIM MINID) only entries below the oldest entry some group still
  needs (its oldest pending entry, or the first one after its last-delivered id), and appends
  only while the stream holds fewer than ``maxlen`` entries. Otherwise ``publish`` polls for
  acks to free room and raises ``BusFull`` after ``publish_timeout_s``. Every append sets the
  ``bus_stream_length`` / ``bus_stream_fill_ratio`` gauges;
* publishes go through a per-stream outbox: concurrent ``publish`` calls share one script
  call (group commit), in call order; ``publish_many`` sends a batch in one round trip;
* connection errors, timeouts and LOADING (a restarting Redis) are retried with backoff for
  ``reconnect_timeout_s``, so consumers resume after a Redis restart. A retried command may
  have run already: a publish may then be appended twice (handlers are idempotent on
  ``Message.id``) and a read may leave entries pending that come back on the next read, with
  one more attempt counted. Nothing acknowledged is lost if Redis persists (AOF).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from quantum_trader.bus.memory import PendingEntry
from quantum_trader.bus.protocol import (
    DEADLETTER_TOPIC,
    Bus,
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
from quantum_trader.bus.topics import DEFAULT_POLICY, StreamGauges, TopicPolicy, topic_of
from quantum_trader.observability.logging import get_logger

__all__ = ["PublishIncomplete", "RedisStreamBus"]

log = get_logger(__name__)

T = TypeVar("T")

FIELD = b"d"  # the one field of every entry: the encoded message
_ID = re.compile(r"^\d+-\d+$")
# BusyLoadingError (Redis replaying its AOF after a restart) is a ConnectionError subclass.
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)
_APPEND_CHUNK = 500  # messages per append script call: bounded script run time
_CLAIM_ROUNDS = 8  # XAUTOCLAIM calls per read (each scans <= 10 x count PEL rows)

# NEWEST: append everything, keeping the newest maxlen. UNTIL_ACKED: trim what no group needs
# any more, then append as many messages as fit under maxlen.
# KEYS[1] stream; ARGV[1] maxlen; ARGV[2] "1" for NEWEST; ARGV[3..] encoded messages.
# Returns "<length> <held> <id> <id>...", held = the entries the stream must keep: NEWEST, its
# length; UNTIL_ACKED, the largest group lag (undelivered + pending), or the length if full.
_APPEND_LUA = r"""
local key = KEYS[1]
local maxlen = tonumber(ARGV[1])
local n = #ARGV - 2
if ARGV[2] == '1' then
  local ids = {}
  for i = 1, n do
    ids[i] = redis.call('XADD', key, 'MAXLEN', maxlen, '*', 'd', ARGV[i + 2])
  end
  local len = redis.call('XLEN', key)
  return len .. ' ' .. len .. ' ' .. table.concat(ids, ' ')
end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local len = redis.call('XLEN', key)
local need = len + n - maxlen
if need > 0 and len > 0 then
  -- floor: the oldest id some group still needs; everything below it is acked by all groups.
  local floor = nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    local bound
    if info['pending'] > 0 then
      bound = redis.call('XPENDING', key, info['name'])[2]
    else
      local ms, seq = string.match(info['last-delivered-id'], '^(%d+)-(%d+)$')
      bound = ms .. '-' .. string.format('%.0f', tonumber(seq) + 1)
    end
    if floor == nil or less(bound, floor) then floor = bound end
  end
  -- Like XTRIM MAXLEN, but stop at the floor: only the oldest go, never past an unacked one.
  local k = math.min(need, len)
  local rows = redis.call('XRANGE', key, '-', '+', 'COUNT', k + 1)
  local j = 0
  while j < k and (floor == nil or less(rows[j + 1][1], floor)) do j = j + 1 end
  if j > 0 then
    if j < #rows then
      redis.call('XTRIM', key, 'MINID', rows[j + 1][1])
    else
      redis.call('XTRIM', key, 'MAXLEN', 0)
    end
    len = len - j
  end
end
local ids = {}
for i = 1, math.min(n, maxlen - len) do
  ids[i] = redis.call('XADD', key, '*', 'd', ARGV[i + 2])
end
len = len + #ids
-- A full stream keeps trimming only what every group acked, so its length says little about
-- how close publishers are to waiting: the slowest group's lag does (the fill-ratio gauge).
local held = 0
if #ids < n then
  held = len
else
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    local lag = info['lag'] and (info['lag'] + info['pending']) or len  -- nil after an XDEL
    if lag > held then held = lag end
  end
  if held > len then held = len end
end
return len .. ' ' .. held .. ' ' .. table.concat(ids, ' ')
"""

# One read: own pending, then claims of idle entries, then new ones.
# KEYS[1] stream; ARGV: group, consumer, count, min idle ms, XAUTOCLAIM cursor, claim rounds,
# "1" if the stream keeps the newest (entries trimmed while pending are then acked, not sent).
# Returns one string, "<cursor> <last-delivered-id or ->\n" then per entry
# "<id> <attempts> <kind> <size>\n<data>",
# kind d = the message bytes, x = entry deleted, f = no 'd' field (data = the fields). One
# bulk string instead of ~7 RESP elements per entry: parsing replies is the client's hot path.
_READ_LUA = r"""
local key, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local count = tonumber(ARGV[3])
local cursor = ARGV[5]
local newest = ARGV[7] == '1'
local parts, n, seen = {}, 0, {}
local function emit(id, attempts, fields)
  local kind, data = 'x', ''
  if fields then
    kind = 'f'
    for i = 1, #fields, 2 do
      if fields[i] == 'd' then kind, data = 'd', fields[i + 1] break end
    end
    if kind == 'f' then data = table.concat(fields, ' ') end
  end
  n = n + 1
  seen[id] = true
  parts[#parts + 1] = id .. ' ' .. attempts .. ' ' .. kind .. ' ' .. #data .. '\n'
  parts[#parts + 1] = data
end
local function last_delivered()
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    for i = 1, #g, 2 do
      if g[i] == 'name' and g[i + 1] == group then
        for j = 1, #g, 2 do
          if g[j] == 'last-delivered-id' then return g[j + 1] end
        end
      end
    end
  end
  return '0-0'
end
local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
                     'STREAMS', key, '0')
local own = r[1][2]
if #own > 0 then
  local counts = {}
  local rows = redis.call('XPENDING', key, group, own[1][1], own[#own][1], #own, consumer)
  for _, p in ipairs(rows) do counts[p[1]] = p[4] end
  for _, e in ipairs(own) do
    if e[2] or not newest then
      emit(e[1], counts[e[1]] or 1, e[2])
    else
      redis.call('XACK', key, group, e[1])
    end
  end
end
local rounds = tonumber(ARGV[6])
while n < count and rounds > 0 do
  rounds = rounds - 1
  local c = redis.call('XAUTOCLAIM', key, group, consumer, ARGV[4], cursor, 'COUNT', count - n)
  cursor = c[1]
  for _, e in ipairs(c[2]) do
    local p = redis.call('XPENDING', key, group, e[1], e[1], 1)
    emit(e[1], p[1] and p[1][4] or 1, e[2])
  end
  -- Deleted entries XAUTOCLAIM dropped from the PEL (idle or not; ours included).
  if not newest then
    for _, id in ipairs(c[3] or {}) do
      if not seen[id] then emit(id, 1, false) end
    end
  end
  if cursor == '0-0' then break end
end
if newest and n < count then
  -- Entries after the group's cursor were trimmed unread: move the cursor to just before the
  -- oldest retained entry. Redis would otherwise count the skipped entries as read-ahead lag
  -- forever; from here it estimates the group's read counter, and so its lag, exactly.
  local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
  if first then
    local fm, fs = string.match(first[1], '^(%d+)-(%d+)$')
    local lm, ls = string.match(last_delivered(), '^(%d+)-(%d+)$')
    fm, fs, lm, ls = tonumber(fm), tonumber(fs), tonumber(lm), tonumber(ls)
    if lm < fm or (lm == fm and ls + 1 < fs) then
      local before
      if fs > 0 then
        before = string.format('%.0f-%.0f', fm, fs - 1)
      else
        before = string.format('%.0f', fm - 1) .. '-18446744073709551615'
      end
      redis.call('XGROUP', 'SETID', key, group, before)
    end
  end
end
if n < count then
  local new = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count - n,
                         'STREAMS', key, '>')
  if new then
    for _, e in ipairs(new[1][2]) do emit(e[1], 1, e[2]) end
  end
end
-- Nothing to deliver: say up to where this group has read, for the caller's blocking XREAD.
local last = '-'
if n == 0 then last = last_delivered() end
return cursor .. ' ' .. last .. '\n' .. table.concat(parts)
"""

# Entries after ``ARGV[1]``, counted on the server: the lag when XINFO cannot tell it.
_COUNT_AFTER_LUA = r"""
local n, start = 0, '(' .. ARGV[1]
while true do
  local rows = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 1000)
  n = n + #rows
  if #rows < 1000 then return n end
  start = '(' .. rows[#rows][1]
end
"""


@dataclass(slots=True)
class _Queued:
    raw: bytes
    future: asyncio.Future[str]
    call: object  # identity of the publish call it belongs to
    deadline: float | None = None  # set when it first found the stream full


@dataclass(slots=True)
class _Outbox:
    topic: str  # without the prefix: the policy's and the gauges' name for the stream
    items: deque[_Queued] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_DELETED = "entry was deleted from the stream before it was acked"
_FOREIGN = f"entry has no {FIELD.decode()!r} field"


def _delivery(topic: str, entry_id: str, attempts: int, raw: bytes) -> Delivery:
    try:
        message = Message.decode(raw)
    except MalformedMessage as exc:
        return Delivery(topic, entry_id, None, attempts, raw, str(exc))
    except Exception as exc:  # e.g. RecursionError on deeply nested JSON: still just bad input
        return Delivery(topic, entry_id, None, attempts, raw,
                        f"undecodable: {type(exc).__name__}: {exc}")
    return Delivery(topic, entry_id, message, attempts, raw)


def _connection_kwargs(client: Redis) -> dict[str, Any]:
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    return kwargs


def _is_nogroup(exc: ResponseError) -> bool:
    text = str(exc)
    return text.startswith("NOGROUP") or "no such key" in text.lower()


class RedisStreamBus:
    """``Bus`` over Redis Streams. One instance per process; safe for concurrent tasks of one
    event loop (redis-py's pool gives each command its own connection)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        maxlen: int = 100_000,
        publish_timeout_s: float = 10.0,
        claim_idle_ms: int = 30_000,
        namespace: str = "",
        *,
        reconnect_timeout_s: float = 30.0,
        socket_timeout_s: float = 5.0,
        client: Redis | None = None,
        policy: TopicPolicy = DEFAULT_POLICY,
    ) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        if socket_timeout_s <= 0:
            raise ValueError("socket_timeout_s must be > 0")
        self.maxlen = maxlen
        self.policy = policy
        self._gauges = StreamGauges(policy, maxlen)
        self.publish_timeout_s = publish_timeout_s
        # >= 1: an entry this read just re-delivered has idle 0 and must not be claimed again.
        self.claim_idle_ms = max(1, claim_idle_ms)
        self.namespace = namespace
        self.reconnect_timeout_s = reconnect_timeout_s
        self._owns_client = client is None
        if client is None:
            # Retries are ours (tenacity, bounded by reconnect_timeout_s): no hidden second
            # layer of redis-py retries with its own backoff underneath.
            client = Redis.from_url(
                url, decode_responses=False, socket_timeout=socket_timeout_s,
                socket_connect_timeout=min(socket_timeout_s, 2.0),
                retry=Retry(NoBackoff(), 0), health_check_interval=30)
        elif _connection_kwargs(client).get("decode_responses"):
            raise ValueError("the Redis client must use decode_responses=False (entries are "
                             "bytes; decoding is the bus's job)")
        self._redis = client
        socket_timeout = _connection_kwargs(client).get("socket_timeout")
        # A blocking XREADGROUP must return before the socket times out; waking up every few
        # seconds also lets an idle reader look for claimable entries.
        limit_ms = int(socket_timeout * 500) if socket_timeout else 5_000
        self._block_chunk_ms = max(1, min(self.claim_idle_ms, limit_ms, 5_000))
        self._append_script = client.register_script(_APPEND_LUA)
        self._read_script = client.register_script(_READ_LUA)
        self._count_script = client.register_script(_COUNT_AFTER_LUA)
        self._claim_cursors: dict[tuple[str, str, str], str] = {}
        self._outboxes: dict[str, _Outbox] = {}
        self._closed = False
        self._closed_event = asyncio.Event()

    @classmethod
    def from_client(
        cls,
        client: Redis,
        maxlen: int = 100_000,
        publish_timeout_s: float = 10.0,
        claim_idle_ms: int = 30_000,
        namespace: str = "",
        *,
        reconnect_timeout_s: float = 30.0,
        policy: TopicPolicy = DEFAULT_POLICY,
    ) -> RedisStreamBus:
        """Use an existing client (``decode_responses=False``). ``close()`` leaves it open:
        whoever made it owns it."""
        return cls(maxlen=maxlen, publish_timeout_s=publish_timeout_s,
                   claim_idle_ms=claim_idle_ms, namespace=namespace,
                   reconnect_timeout_s=reconnect_timeout_s, client=client, policy=policy)

    @property
    def client(self) -> Redis:
        return self._redis

    # -- helpers ---------------------------------------------------------------------------

    def key(self, topic: str) -> str:
        """The Redis key of ``topic``'s stream."""
        return self.namespace + stream_name(topic)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("bus is closed")

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation; retry transient failures with backoff (Redis restarting,
        network blip) for up to ``reconnect_timeout_s``, then let the error through."""
        self._check_open()
        try:
            return await fn()
        except _TRANSIENT as exc:
            first: BaseException = exc
        log.warning("bus.redis_unavailable", error=f"{type(first).__name__}: {first}",
                    retry_for_s=self.reconnect_timeout_s)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_TRANSIENT),
            wait=wait_exponential(multiplier=0.02, max=1.0) + wait_random(0, 0.05),
            stop=stop_after_delay(self.reconnect_timeout_s),
            before_sleep=self._log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                self._check_open()
                return await fn()
        raise AssertionError("unreachable: tenacity reraises the last error")

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.info("bus.redis_retry", attempt=state.attempt_number,
                 error=f"{type(exc).__name__}: {exc}" if exc else "")

    async def _groups(self, key: str) -> list[dict[str, Any]]:
        try:
            rows: list[dict[str, Any]] = await self._call(
                lambda: self._redis.xinfo_groups(key))
        except ResponseError as exc:
            if _is_nogroup(exc):
                return []
            raise
        return rows

    async def _group_info(self, topic: str, group: str) -> dict[str, Any]:
        key = self.key(topic)
        for row in await self._groups(key):
            if _text(row["name"]) == group:
                return row
        raise UnknownGroup(f"no group {group!r} on {key!r}")

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, topic: str, message: Message) -> str:
        return (await self.publish_many(topic, [message]))[0]

    async def publish_many(self, topic: str, messages: Sequence[Message]) -> list[str]:
        """Append in order with one round trip per batch (the pipelined form of ``publish``).
        Waits for room like ``publish``; ``PublishIncomplete`` says what got in if not all."""
        raws = [encode_for_publish(m) for m in messages]
        return await self._append_all(topic, raws)

    async def publish_raw(self, topic: str, raw: bytes) -> str:
        """Append bytes as they are, unchecked: for tests and fault injection."""
        return (await self._append_all(topic, [bytes(raw)]))[0]

    async def _append(self, key: str, topic: str, raws: list[bytes]) -> tuple[int, list[str]]:
        newest = b"1" if self.policy.keeps_newest(topic) else b"0"
        reply: bytes = await self._call(
            lambda: self._append_script(keys=[key], args=[self.maxlen, newest, *raws]))
        length, held, *ids = reply.decode().split()
        self._gauges.observe(topic, int(length), int(held))
        return int(length), ids

    async def _append_all(self, topic: str, raws: list[bytes]) -> list[str]:
        """Queue ``raws`` in the topic's outbox and wait until each is appended or refused.

        Group commit: one flusher task per stream sends whatever publishers queued while its
        previous script call was in flight, in one call. Concurrent ``publish`` calls thus
        share round trips (the protocol's one-message ``publish`` gets batching for free),
        and the order of appends is the order of the calls."""
        self._check_open()
        if not raws:
            return []
        key = self.key(topic)
        loop = asyncio.get_running_loop()
        box = self._outboxes.get(key)
        if box is None:
            box = self._outboxes[key] = _Outbox(topic_of(stream_name(topic)))
        call = object()  # the items of one call live or fail together (see _refuse)
        queued = [_Queued(raw, loop.create_future(), call) for raw in raws]
        box.items.extend(queued)
        if box.task is None:
            box.task = asyncio.create_task(self._flush(key, box))
        ids: list[str] = []
        try:
            for item in queued:
                ids.append(await item.future)
        except BusFull as exc:
            if len(raws) == 1:
                raise
            raise PublishIncomplete(f"{exc}; {len(ids)} of {len(raws)} appended", ids) from None
        finally:
            for item in queued[len(ids) + 1:]:
                if item.future.done() and not item.future.cancelled():
                    item.future.exception()  # retrieved: the first failure is what we raise
                item.future.cancel()  # not sent yet: the flusher skips it
        return ids

    async def _flush(self, key: str, box: _Outbox) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.001
        try:
            while True:
                while box.items and box.items[0].future.done():  # appended, failed, cancelled
                    box.items.popleft()
                batch = [i for i in itertools.islice(box.items, _APPEND_CHUNK)
                         if not i.future.done()]
                if not batch:
                    return
                length, ids = await self._append(key, box.topic, [i.raw for i in batch])
                for item, entry_id in zip(batch, ids, strict=False):
                    if not item.future.done():
                        item.future.set_result(entry_id)
                if len(ids) == len(batch):
                    delay = 0.001
                    continue
                # Backpressure instead of unbounded memory or a silent drop: only acks free
                # room. Redis has no "acked" notification, so poll, backing off to 50 ms.
                now = loop.time()
                waiting = batch[len(ids):]
                if ids:  # progress: the timeout is about being stuck
                    for item in waiting:
                        item.deadline = None
                    delay = 0.001
                    continue
                for item in waiting:
                    if item.deadline is None:
                        item.deadline = now + self.publish_timeout_s
                if waiting[0].deadline is not None and waiting[0].deadline <= now:
                    self._refuse(box, waiting[0].call, BusFull(
                        f"{key} holds {length} unacked entries (maxlen {self.maxlen}); no room "
                        f"after {self.publish_timeout_s}s"))
                    continue
                deadline = waiting[0].deadline or now
                await asyncio.sleep(max(0.0, min(delay, deadline - now)))
                delay = min(delay * 2, 0.05)
        except BaseException as exc:
            # Redis gone for longer than reconnect_timeout_s, bus closed, or cancelled: every
            # queued publish fails with the cause (whether an in-flight append landed is
            # unknown, as for any publish whose reply was lost).
            failure = exc if isinstance(exc, Exception) else RuntimeError("bus is closed")
            for item in box.items:
                if not item.future.done():
                    item.future.set_exception(failure)
            box.items.clear()
            if not isinstance(exc, Exception):
                raise
        finally:
            box.task = None

    @staticmethod
    def _refuse(box: _Outbox, call: object, error: BusFull) -> None:
        # The rest of the same publish_many goes too: what got in is always a prefix.
        for item in box.items:
            if item.call is call and not item.future.done():
                item.future.set_exception(error)

    # -- consuming -------------------------------------------------------------------------

    async def ensure_group(self, topic: str, group: str) -> bool:
        key = self.key(topic)
        try:
            await self._call(lambda: self._redis.xgroup_create(key, group, id="0", mkstream=True))
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    async def read(self, topic: str, group: str, consumer: str, count: int = 100,
                   block_ms: int = 1000) -> list[Delivery]:
        self._check_open()  # a closed bus must not look like an idle one (consumers would spin)
        if count <= 0:
            await self._group_info(topic, group)  # UnknownGroup, as for any other read
            return []
        key = self.key(topic)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_ms / 1000
        while True:
            out, last_delivered = await self._collect(topic, key, group, consumer, count)
            if out or block_ms <= 0:
                return out  # block_ms <= 0 never blocks: Redis BLOCK 0 would wait forever
            remaining_ms = int((deadline - loop.time()) * 1000)
            if remaining_ms <= 0:
                return []
            # Wait for an entry past the group's cursor, then collect it (with any claims)
            # as above. The wait is a plain XREAD: it hands nothing out, so a wait cut short
            # (timeout, close, cancel) leaves nothing in limbo in the PEL.
            woke = await self._wait_for_new(key, last_delivered,
                                            min(remaining_ms, self._block_chunk_ms))
            if not woke and self._closed:
                return []  # closed while waiting: wake up empty, like the memory bus

    async def _collect(self, topic: str, key: str, group: str, consumer: str,
                       count: int) -> tuple[list[Delivery], str]:
        cursor_key = (key, group, consumer)
        cursor = self._claim_cursors.get(cursor_key, "0-0")
        try:
            reply = await self._call(lambda: self._read_script(
                keys=[key],
                args=[group, consumer, count, self.claim_idle_ms, cursor, _CLAIM_ROUNDS,
                      "1" if self.policy.keeps_newest(topic) else "0"]))
        except ResponseError as exc:
            if _is_nogroup(exc):
                # A group created again starts a new PEL: scan it from the start.
                self._claim_cursors.pop(cursor_key, None)
                raise UnknownGroup(f"no group {group!r} on {key!r}") from None
            raise
        blob = bytes(reply)
        pos = blob.index(b"\n")
        cursor, last_delivered = blob[:pos].decode().split(" ")
        # XAUTOCLAIM resumes where the last scan of a long PEL stopped: every idle entry is
        # reached in bounded work per read.
        self._claim_cursors[cursor_key] = cursor
        pos += 1
        out = []
        while pos < len(blob):
            eol = blob.index(b"\n", pos)
            entry_id, attempts, kind, size = blob[pos:eol].decode().split(" ")
            pos = eol + 1 + int(size)
            data = blob[eol + 1:pos]
            if kind == "d":
                out.append(_delivery(topic, entry_id, int(attempts), data))
            elif kind == "x":
                out.append(Delivery(topic, entry_id, None, int(attempts), b"", _DELETED))
            else:
                out.append(Delivery(topic, entry_id, None, int(attempts), data, _FOREIGN))
        return out, last_delivered

    async def _wait_for_new(self, key: str, after: str, block_ms: int) -> bool:
        """True once the stream has an entry past ``after`` (within ``block_ms``); False on
        timeout or close."""
        waiting = asyncio.ensure_future(self._call(
            lambda: self._redis.xread({key: after}, count=1, block=block_ms)))
        closed = asyncio.ensure_future(self._closed_event.wait())
        try:
            await asyncio.wait({waiting, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not waiting.done():
                waiting.cancel()
                await asyncio.wait({waiting})
        if self._closed:
            if waiting.done() and not waiting.cancelled():
                waiting.exception()  # retrieved: close() may have cut its connection
            return False
        return bool(waiting.result())

    async def ack(self, topic: str, group: str, entry_ids: list[str]) -> None:
        for entry_id in entry_ids:  # validate first, like the in-memory bus
            if not _ID.match(entry_id):
                raise ValueError(f"invalid stream entry id: {entry_id!r}")
        if not entry_ids:
            return
        key = self.key(topic)
        # XACK on a missing group or key is a no-op (returns 0), as the protocol wants.
        await self._call(lambda: self._redis.xack(key, group, *entry_ids))

    async def dead_letter(self, delivery: Delivery, group: str, reason: str) -> None:
        # Copy first, ack second: a crash in between leaves the original pending, so the worst
        # case is a duplicate dead letter, never a lost one. A failing dead letter is not
        # re-published (that could loop forever); it stays readable in qt:deadletter.
        if stream_name(delivery.topic) != stream_name(DEADLETTER_TOPIC):
            letter = deadletter_message(delivery, group, reason, int(time.time() * 1000))
            await self.publish(DEADLETTER_TOPIC, letter)
        await self.ack(delivery.topic, group, [delivery.entry_id])

    # -- introspection ---------------------------------------------------------------------

    async def pending_count(self, topic: str, group: str) -> int:
        key = self.key(topic)
        try:
            summary: Any = await self._call(lambda: self._redis.xpending(key, group))
        except ResponseError as exc:
            if _is_nogroup(exc):
                raise UnknownGroup(f"no group {group!r} on {key!r}") from None
            raise
        return int(summary["pending"])

    async def lag(self, topic: str, group: str) -> int:
        info = await self._group_info(topic, group)
        undelivered: Any = info.get("lag")
        if undelivered is None:
            # Redis cannot tell after an XDEL ahead of the group's cursor: count instead.
            last = _text(info["last-delivered-id"])
            key = self.key(topic)
            undelivered = await self._call(
                lambda: self._count_script(keys=[key], args=[last]))
        elif self.policy.keeps_newest(topic):
            # Redis's lag counts entries trimmed before the group read them; only retained
            # ones can still be delivered (all of them, if the group is behind the head).
            undelivered = min(int(undelivered), await self.length(topic))
        return int(undelivered) + int(info["pending"])

    async def pending(self, topic: str, group: str) -> list[PendingEntry]:
        """PEL rows in entry order (XPENDING with details)."""
        key = self.key(topic)
        await self._group_info(topic, group)
        rows: Any = await self._call(lambda: self._redis.xpending_range(
            key, group, min="-", max="+", count=self.maxlen + 1_000_000))
        return [PendingEntry(_text(r["message_id"]), _text(r["consumer"]),
                             int(r["times_delivered"]), int(r["time_since_delivered"]))
                for r in rows]

    async def length(self, topic: str) -> int:
        """Entries retained in the stream (XLEN)."""
        key = self.key(topic)
        return int(await self._call(lambda: self._redis.xlen(key)))

    async def entries(self, topic: str) -> list[tuple[str, bytes]]:
        """Retained entries, oldest first (XRANGE - +)."""
        key = self.key(topic)
        rows: Any = await self._call(lambda: self._redis.xrange(key))
        return [(_text(entry_id), fields.get(FIELD, b"")) for entry_id, fields in rows]

    async def close(self) -> None:
        # Wake blocked readers (they return []) and fail publishers: shutdown is prompt.
        if self._closed:
            return
        self._closed = True
        self._closed_event.set()
        flushers = [box.task for box in self._outboxes.values() if box.task is not None]
        for task in flushers:
            task.cancel()  # its queued publishes fail with "bus is closed"
        await asyncio.gather(*flushers, return_exceptions=True)
        await asyncio.sleep(0)  # let woken readers cancel their commands first
        if self._owns_client:
            with contextlib.suppress(*_TRANSIENT):
                await self._redis.aclose()


def _conforms(bus: RedisStreamBus) -> Bus:
    return bus  # mypy proves here that RedisStreamBus implements the Bus port
