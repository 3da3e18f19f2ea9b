"""Execution hardening around an exchange port: exactly one order per intent, whatever the
network does; a circuit breaker; a reconciler; a kill switch.

The rules ``ReliablePlacer`` follows:

1. The order is persisted (an injected callback) before the first byte is sent, so a crash
   after sending leaves a record to recover from.
2. Its client order id is derived from the intent id and never changes: every retry, and every
   restart, sends the same id, so the venue's duplicate-id check (-4116) is the last line of
   defence.
3. After an attempt whose outcome is unknown (timeout, dropped answer, 5xx), the order is
   queried by client id before anything is sent again; if the query cannot get an answer,
   nothing is sent. A definite "not processed" (429, 418, -1021) is retried after waiting.
4. A definite rejection is final.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from quantum_trader.domain.enums import OrderStatus, OrderType, Side, TradingState
from quantum_trader.exchange.errors import (
    ClockSkew,
    DuplicateOrder,
    ExchangeError,
    ExchangeRejected,
    IpBanned,
    NotProcessed,
    OrderNotFound,
    OrderRefused,
    OutcomeUnknown,
    RateLimited,
)
from quantum_trader.exchange.protocol import ExchangePosition, ExecutionReport, OrderRequest
from quantum_trader.observability.metrics import EXCHANGE_ERRORS

log = logging.getLogger(__name__)

T = TypeVar("T")
StateCallback = Callable[[TradingState, str], None]


class Venue(Protocol):
    """What the hardening needs from an exchange adapter (``CcxtBinanceExchange`` has it)."""

    async def submit(self, request: OrderRequest) -> ExecutionReport: ...

    async def cancel(self, symbol: str, client_order_id: str) -> ExecutionReport: ...

    async def query(self, symbol: str, client_order_id: str) -> ExecutionReport | None: ...

    async def open_orders(self, symbol: str | None = None) -> list[ExecutionReport]: ...

    async def positions(self) -> list[ExchangePosition]: ...

    async def resync_time(self) -> None: ...


class PlacementUnknown(ExchangeError):
    """The order's fate could not be established; it stays in flight for the reconciler."""


async def call_with_retries(fn: Callable[[], Awaitable[T]], attempts: int = 8,
                            backoff_s: float = 0.05, max_backoff_s: float = 2.0) -> T:
    """Run an idempotent request (a read, a cancel) until it gets an answer."""
    delay = backoff_s
    for i in range(attempts):
        try:
            return await fn()
        except (OutcomeUnknown, RateLimited, IpBanned, ClockSkew):
            if i == attempts - 1:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff_s)
    raise AssertionError("unreachable")


# --- circuit breaker -------------------------------------------------------------------------

class CircuitBreaker:
    """Repeated exchange errors move trading to REDUCING, then HALTED; an IP ban halts at once.

    ``on_state(state, reason)`` is called on every change, including the way back to ACTIVE
    after ``cooldown_s`` without errors and a success (the execution service decides whether its
    persisted trading state follows: by design only an operator un-halts trading).
    """

    def __init__(self, reduce_after: int = 5, halt_after: int = 10, cooldown_s: float = 30.0,
                 on_state: StateCallback | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reduce_after = reduce_after
        self.halt_after = halt_after
        self.cooldown_s = cooldown_s
        self._on_state = on_state
        self._clock = clock
        self.state = TradingState.ACTIVE
        self.consecutive = 0
        self.errors_total = 0
        self._quiet_after = 0.0  # no recovery before this time (ban end, last error + cooldown)

    def _set(self, state: TradingState, reason: str) -> None:
        if state is not self.state:
            log.warning("exchange circuit breaker: %s -> %s (%s)", self.state.name, state.name,
                        reason)
            self.state = state
            if self._on_state is not None:
                self._on_state(state, reason)

    def record_failure(self, kind: str) -> None:
        self.consecutive += 1
        self.errors_total += 1
        self._quiet_after = max(self._quiet_after, self._clock() + self.cooldown_s)
        if self.consecutive >= self.halt_after:
            self._set(max(self.state, TradingState.HALTED),
                      f"{self.consecutive} consecutive exchange errors ({kind})")
        elif self.consecutive >= self.reduce_after:
            self._set(max(self.state, TradingState.REDUCING),
                      f"{self.consecutive} consecutive exchange errors ({kind})")

    def record_ban(self, seconds: float) -> None:
        self.errors_total += 1
        self._quiet_after = max(self._quiet_after, self._clock() + seconds)
        self._set(TradingState.HALTED, f"IP banned by the exchange for {seconds:.0f}s")

    def record_success(self) -> None:
        self.consecutive = 0
        if self.state is not TradingState.ACTIVE and self._clock() >= self._quiet_after:
            self._set(TradingState.ACTIVE, "exchange answering normally again")

    def trip(self, reason: str) -> None:
        """Halt now (the kill switch)."""
        self._quiet_after = float("inf")
        self._set(TradingState.HALTED, reason)

    def reset(self) -> None:
        """An operator's decision: trade again."""
        self._quiet_after = 0.0
        self.consecutive = 0
        self._set(TradingState.ACTIVE, "reset by operator")

    def allows(self, reduce_only: bool) -> bool:
        # Entries need ACTIVE; reduce-only exits are never blocked by the breaker (they still
        # wait for the rate limiter during a ban).
        return reduce_only or self.state is TradingState.ACTIVE

    def probe_due(self) -> bool:
        """True when the breaker is open but its quiet period is over (time to try again)."""
        return self.state is not TradingState.ACTIVE and self._clock() >= self._quiet_after


# --- the placer ------------------------------------------------------------------------------

@dataclass(slots=True)
class PlacerStats:
    placed: int = 0
    found_after_uncertainty: int = 0
    rejected: int = 0
    refused: int = 0
    unknown: int = 0
    attempts: int = 0
    queries: int = 0
    retried: dict[str, int] = field(default_factory=dict)


class ReliablePlacer:
    def __init__(self, venue: Venue, persist: Callable[[OrderRequest], Awaitable[None]],
                 breaker: CircuitBreaker | None = None, max_attempts: int = 12,
                 backoff_s: float = 0.05, max_backoff_s: float = 2.0,
                 query_delay_s: float = 0.0) -> None:
        self.venue = venue
        self.persist = persist
        self.breaker = breaker or CircuitBreaker()
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.query_delay_s = query_delay_s  # let a slow venue finish before asking about it
        self.stats = PlacerStats()

    async def place(self, request: OrderRequest) -> ExecutionReport:
        """Persist, then send ``request`` until the venue has it (or says no).

        Returns the venue's report (ACCEPTED/.../REJECTED). Raises ``OrderRefused`` if our own
        checks or the breaker refuse it (nothing was sent) and ``PlacementUnknown`` when its fate
        stays unknown after every attempt (the reconciler resolves it later).
        """
        if not self.breaker.allows(request.reduce_only):
            self.stats.refused += 1
            raise OrderRefused(f"trading is {self.breaker.state.name}: only reduce-only orders "
                               "are sent")
        await self.persist(request)
        return await self._send(request, uncertain=False)

    async def probe(self) -> bool:
        """One light request (server time) when the breaker's quiet period is over: a success
        closes the breaker again. Returns whether the venue answered."""
        if not self.breaker.probe_due():
            return self.breaker.state is TradingState.ACTIVE
        try:
            await self.venue.resync_time()
        except IpBanned as exc:
            self.breaker.record_ban(exc.retry_after)
            return False
        except ExchangeError as exc:
            self.breaker.record_failure(type(exc).__name__)
            return False
        self.breaker.record_success()
        return True

    async def recover(self, request: OrderRequest) -> ExecutionReport:
        """After a restart: the persisted order may or may not have reached the venue."""
        return await self._send(request, uncertain=True)

    async def _send(self, req: OrderRequest, uncertain: bool) -> ExecutionReport:
        delay = self.backoff_s
        for attempt in range(self.max_attempts):
            if uncertain:
                found = await self._lookup(req)
                if found is not None:
                    self.stats.found_after_uncertainty += 1
                    return found
            if not self.breaker.allows(req.reduce_only):
                # Whatever we sent earlier is not on the venue: refusing now is safe.
                self.stats.refused += 1
                raise OrderRefused(f"trading is {self.breaker.state.name}")
            self.stats.attempts += 1
            try:
                report = await self.venue.submit(req)
            except (OrderRefused, ExchangeRejected) as exc:
                self.breaker.record_success()  # the venue answered
                if isinstance(exc, OrderRefused):
                    self.stats.refused += 1
                    raise
                self.stats.rejected += 1
                return ExecutionReport(req.client_order_id, "", req.symbol,
                                       OrderStatus.REJECTED, 0, req.side, reason=str(exc))
            except DuplicateOrder:
                self.breaker.record_success()
                uncertain = True  # an earlier attempt landed: the lookup finds it
                continue
            except IpBanned as exc:
                self._count("banned")
                self.breaker.record_ban(exc.retry_after)
            except ClockSkew:
                self._count("clock_skew")
                self.breaker.record_failure("clock skew")
                await self._resync()
            except NotProcessed as exc:
                self._count("rate_limited")
                self.breaker.record_failure("rate limited")
                await asyncio.sleep(min(exc.retry_after, self.max_backoff_s) * 0.1)
            except (OutcomeUnknown, ExchangeError) as exc:
                self._count("unknown_outcome")
                self.breaker.record_failure(type(exc).__name__)
                uncertain = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
            else:
                self.breaker.record_success()
                self.stats.placed += 1
                return report
            del attempt
        self.stats.unknown += 1
        raise PlacementUnknown(f"{req.client_order_id}: no definite answer after "
                               f"{self.max_attempts} attempts")

    async def _lookup(self, req: OrderRequest) -> ExecutionReport | None:
        """Query by client id until the venue answers; never guess."""
        if self.query_delay_s:
            await asyncio.sleep(self.query_delay_s)
        delay = self.backoff_s
        for _ in range(self.max_attempts):
            self.stats.queries += 1
            try:
                found = await self.venue.query(req.symbol, req.client_order_id)
            except OrderNotFound:
                found = None
            except IpBanned as exc:
                self.breaker.record_ban(exc.retry_after)
                continue  # the rate limiter holds the next request until the ban ends
            except ClockSkew:
                await self._resync()
                continue
            except NotProcessed:
                continue
            except ExchangeError as exc:
                self.breaker.record_failure(type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
                continue
            # Not a breaker success: a venue that answers queries but fails orders is not well.
            return found
        self.stats.unknown += 1
        raise PlacementUnknown(f"{req.client_order_id}: could not learn whether the venue "
                               "has it")

    async def _resync(self) -> None:
        try:
            await self.venue.resync_time()
        except ExchangeError as exc:
            log.warning("clock resync failed: %s", exc)

    def _count(self, kind: str) -> None:
        self.stats.retried[kind] = self.stats.retried.get(kind, 0) + 1
        EXCHANGE_ERRORS.labels(kind=kind).inc()


# --- reconciliation --------------------------------------------------------------------------

@dataclass(slots=True, frozen=True)
class OpenOrderRef:
    """One order our store believes is working on the venue."""

    symbol: str
    client_order_id: str


@dataclass(slots=True)
class ReconcileResult:
    adopted: list[ExecutionReport] = field(default_factory=list)  # venue has, we did not
    resolved: list[tuple[OpenOrderRef, ExecutionReport | None]] = field(default_factory=list)
    position_mismatches: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.adopted or self.resolved or self.position_mismatches)


class Reconciler:
    """Compares our store with the venue, on start and every ``interval_s`` seconds.

    * an open order on the venue that we do not know is reported as adopted (tag it EXTERNAL);
    * an order we believe is open but the venue does not list is queried by client id: its
      final state (filled/canceled) or None (never arrived: lost in flight) is reported;
    * positions (signed quantity per symbol) that differ by more than ``qty_tolerance``.

    Pass only orders that are past SUBMITTED (or older than a send timeout) as ``ours``: one
    still being placed is not yet on the venue by definition.
    """

    def __init__(self, venue: Venue, qty_tolerance: float = 1e-9) -> None:
        self.venue = venue
        self.qty_tolerance = qty_tolerance

    async def run_once(self, ours: Iterable[OpenOrderRef],
                       our_positions: dict[str, float]) -> ReconcileResult:
        result = ReconcileResult()
        venue_open = await call_with_retries(self.venue.open_orders)
        ours = list(ours)
        our_ids = {o.client_order_id for o in ours}
        venue_ids = {r.client_order_id for r in venue_open}
        result.adopted = [r for r in venue_open if r.client_order_id not in our_ids]
        for ref in ours:
            if ref.client_order_id in venue_ids:
                continue
            found = await call_with_retries(_bind(self.venue.query, ref.symbol,
                                                  ref.client_order_id))
            result.resolved.append((ref, found))
        venue_pos = {p.symbol: p.qty for p in await call_with_retries(self.venue.positions)}
        for sym in sorted(set(venue_pos) | set(our_positions)):
            mine, theirs = our_positions.get(sym, 0.0), venue_pos.get(sym, 0.0)
            if abs(mine - theirs) > self.qty_tolerance:
                result.position_mismatches.append((sym, mine, theirs))
        return result

    async def run_forever(self, interval_s: float,
                          snapshot: Callable[[], Awaitable[tuple[list[OpenOrderRef],
                                                                  dict[str, float]]]],
                          on_result: Callable[[ReconcileResult], Awaitable[None]]) -> None:
        """Reconcile now and then every ``interval_s`` until cancelled; errors are logged."""
        while True:
            try:
                ours, positions = await snapshot()
                await on_result(await self.run_once(ours, positions))
            except ExchangeError as exc:
                log.warning("reconciliation skipped: %s", exc)
            except Exception:  # one bad round must not end reconciliation for good
                log.exception("reconciliation round failed")
            await asyncio.sleep(interval_s)


def _bind(fn: Callable[[str, str], Awaitable[T]], a: str,
          b: str) -> Callable[[], Awaitable[T]]:
    return lambda: fn(a, b)


# --- kill switch -----------------------------------------------------------------------------

@dataclass(slots=True)
class KillResult:
    canceled: list[str] = field(default_factory=list)
    cancel_failed: list[tuple[str, str]] = field(default_factory=list)
    flatten_orders: list[ExecutionReport] = field(default_factory=list)


class KillSwitch:
    """Halt, cancel every open order, and optionally close every position (reduce-only)."""

    def __init__(self, venue: Venue, placer: ReliablePlacer) -> None:
        self.venue = venue
        self.placer = placer

    async def trigger(self, reason: str, flatten: bool = False,
                      kill_id: str = "kill") -> KillResult:
        """``kill_id`` makes the flattening orders' client ids deterministic: triggering the
        same kill twice (a retry, a restart) cannot close a position twice."""
        self.placer.breaker.trip(f"kill switch: {reason}")
        result = KillResult()
        for r in await call_with_retries(self.venue.open_orders):
            try:
                await call_with_retries(_bind(self.venue.cancel, r.symbol, r.client_order_id))
                result.canceled.append(r.client_order_id)
            except ExchangeError as exc:
                result.cancel_failed.append((r.client_order_id, str(exc)))
        if flatten:
            for p in await call_with_retries(self.venue.positions):
                side = Side.SELL if p.qty > 0 else Side.BUY
                cid = f"qtk{kill_id}-{p.symbol}"[:36]
                req = OrderRequest(cid, p.symbol, side, OrderType.MARKET, abs(p.qty),
                                   reduce_only=True)
                result.flatten_orders.append(await self.placer.place(req))
        return result


__all__ = [
    "CircuitBreaker",
    "KillResult",
    "KillSwitch",
    "OpenOrderRef",
    "PlacementUnknown",
    "PlacerStats",
    "ReconcileResult",
    "Reconciler",
    "ReliablePlacer",
    "Venue",
    "call_with_retries",
]
