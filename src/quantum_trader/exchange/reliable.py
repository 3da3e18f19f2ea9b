"""Execution hardening around a venue: exactly one order per intent, whatever the network
does, and a circuit breaker.

The rules ``ReliablePlacer`` follows:

1. The caller has persisted the order (as "may be on the venue") before it asks for a send;
   ``before_send`` is called before every attempt so the stored send time is the latest one.
2. Its client order id is derived from the intent id and never changes.
3. After an attempt whose outcome is unknown (timeout, dropped answer, 5xx, an answer that is not
   Binance's), nothing is sent again until a lookup by client id has answered: found means done.
   "Not found" is conclusive only once the request's ``recvWindow`` has passed since the attempt
   (Binance refuses a request older than that, so an attempt still in flight can no longer land).
   Binance keeps client ids unique among *open* orders only: without this rule a re-send after a
   fill that was merely slow to show would be accepted as a second order.
4. A definite "not processed" (429, 418, -1021) is retried after waiting; a definite rejection is
   final; an order that may be on the venue is never declared rejected by us.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from quantum_trader.domain.enums import OrderStatus, TradingState
from quantum_trader.domain.venue import OrderRequest, OrderUpdate
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
from quantum_trader.observability.metrics import EXCHANGE_ERRORS

log = logging.getLogger(__name__)

T = TypeVar("T")
StateCallback = Callable[[TradingState, str], None]


class OrderVenue(Protocol):
    """What the placer needs from a venue adapter (``CcxtBinanceExchange`` has it)."""

    async def submit(self, request: OrderRequest) -> OrderUpdate: ...

    async def query(self, symbol: str, client_order_id: str) -> OrderUpdate | None: ...

    async def resync_time(self) -> None: ...


class PlacementUnknown(ExchangeError):
    """The order's fate could not be established; it stays in flight for reconciliation."""


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
        self.on_state = on_state
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
            if self.on_state is not None:
                self.on_state(state, reason)

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
    def __init__(self, venue: OrderVenue, breaker: CircuitBreaker | None = None,
                 max_attempts: int = 12, backoff_s: float = 0.05, max_backoff_s: float = 2.0,
                 recv_window_ms: int = 5_000, settle_ms: int = 1_000,
                 wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.venue = venue
        self.breaker = breaker or CircuitBreaker()
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # An attempt sent at t can be accepted until t + recvWindow (+ Binance's 1 s of clock
        # tolerance, + our clock's error): only then does "not found" mean "never arrived".
        self.conclusive_after_ms = recv_window_ms + settle_ms
        self._wall_ms = wall_ms
        self.stats = PlacerStats()

    def conclusive(self, sent_wall_ms: int) -> bool:
        """True once an attempt sent at ``sent_wall_ms`` can no longer reach the venue."""
        return self._wall_ms() >= sent_wall_ms + self.conclusive_after_ms

    async def place(self, request: OrderRequest,
                    before_send: Callable[[OrderRequest, int], Awaitable[None]],
                    sent_before_ms: int = 0) -> OrderUpdate:
        """Get ``request`` onto the venue exactly once and return its first state there
        (ACCEPTED/.../FILLED, or REJECTED with the venue's code).

        ``sent_before_ms``: when an earlier attempt was made (by this or an earlier process);
        then the venue is asked first. Raises ``OrderRefused`` when our checks or the breaker
        refuse an order that is certainly not on the venue, and ``PlacementUnknown`` when its
        fate stays unknown (it is then left in flight for reconciliation, never re-sent blind).
        """
        last_sent = sent_before_ms
        uncertain = sent_before_ms > 0
        delay = self.backoff_s
        for _attempt in range(self.max_attempts):
            if uncertain:
                found = await self._lookup(request)
                if found is not None:
                    self.stats.found_after_uncertainty += 1
                    return found
                if not self.conclusive(last_sent):
                    # Not there *yet*: an attempt may still land. Wait out its recvWindow.
                    wait_ms = last_sent + self.conclusive_after_ms - self._wall_ms()
                    await asyncio.sleep(max(0.0, wait_ms / 1000))
                    found = await self._lookup(request)
                    if found is not None:
                        self.stats.found_after_uncertainty += 1
                        return found
                    if not self.conclusive(last_sent):
                        continue
                uncertain = False  # established: never reached the venue
            if not self.breaker.allows(request.reduce_only):
                self.stats.refused += 1
                raise OrderRefused(f"trading is {self.breaker.state.name}: only reduce-only "
                                   "orders are sent")
            self.stats.attempts += 1
            last_sent = self._wall_ms()
            await before_send(request, last_sent)
            try:
                update = await self.venue.submit(request)
            except OrderRefused:
                self.stats.refused += 1
                raise
            except ExchangeRejected as exc:
                self.breaker.record_success()  # the venue answered
                self.stats.rejected += 1
                return OrderUpdate(request.client_order_id, "", request.symbol, request.side,
                                   OrderStatus.REJECTED, 0, quantity=request.quantity,
                                   reason=str(exc), code=exc.code,
                                   order_type=request.order_type,
                                   reduce_only=request.reduce_only)
            except DuplicateOrder:
                self.breaker.record_success()
                uncertain = True  # an earlier attempt is working on the venue: find it
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
                return update
        self.stats.unknown += 1
        raise PlacementUnknown(f"{request.client_order_id}: no definite answer after "
                               f"{self.max_attempts} attempts")

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

    async def lookup(self, request: OrderRequest) -> OrderUpdate | None:
        """Ask the venue for the order by client id (retrying until it answers)."""
        return await self._lookup(request)

    async def _lookup(self, req: OrderRequest) -> OrderUpdate | None:
        """Query by client id until the venue answers; never guess."""
        delay = self.backoff_s
        for _ in range(self.max_attempts):
            self.stats.queries += 1
            try:
                return await self.venue.query(req.symbol, req.client_order_id)
            except OrderNotFound:
                return None
            except IpBanned as exc:
                self.breaker.record_ban(exc.retry_after)
            except ClockSkew:
                await self._resync()
            except NotProcessed:
                await asyncio.sleep(delay)
            except ExchangeError as exc:
                self.breaker.record_failure(type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
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


__all__ = [
    "CircuitBreaker",
    "OrderVenue",
    "PlacementUnknown",
    "PlacerStats",
    "ReliablePlacer",
    "call_with_retries",
]
