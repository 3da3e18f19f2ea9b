"""ReliablePlacer's rules against a scripted venue (no network; the same rules run against the
Binance-compatible simulator through real ccxt in tests/integration/test_exchange_faults.py).

The scripted venue behaves as Binance does where it matters here: a client order id is unique
among *open* orders only, so a second send of an id whose order already filled is a second
order."""

from __future__ import annotations

import asyncio
import time

import pytest

from quantum_trader.domain.enums import OrderStatus, OrderType, Side, TradingState
from quantum_trader.domain.venue import OrderRequest, OrderUpdate
from quantum_trader.exchange.errors import (
    ClockSkew,
    DuplicateOrder,
    ExchangeRejected,
    OrderRefused,
    OutcomeUnknown,
    RateLimited,
)
from quantum_trader.exchange.reliable import CircuitBreaker, PlacementUnknown, ReliablePlacer

REQ = OrderRequest("qt1", "XRPUSDT", Side.BUY, OrderType.MARKET, 100.0)
RECV_MS = 150


def state(cid: str, status: OrderStatus = OrderStatus.ACCEPTED) -> OrderUpdate:
    return OrderUpdate(cid, f"v-{cid}", "XRPUSDT", Side.BUY, status, 0, quantity=100.0)


class ScriptedVenue:
    """``script``: per submit attempt, (exception to raise, lands, lands_after_s). An order that
    lands with a delay appears on the venue that much later (a request still in flight)."""

    def __init__(self, script: list[tuple[Exception | None, bool, float]],
                 query_errors: int = 0) -> None:
        self.script = script
        self.orders: list[OrderUpdate] = []  # every order ever accepted, oldest first
        self.submits = 0
        self.queries = 0
        self.query_errors = query_errors
        self.resyncs = 0

    def _open(self, cid: str) -> bool:
        return any(o.client_order_id == cid and o.status.is_open for o in self.orders)

    def _land(self, cid: str) -> OrderUpdate:
        update = state(cid)
        self.orders.append(update)
        return update

    async def submit(self, request: OrderRequest) -> OrderUpdate:
        self.submits += 1
        exc, lands, delay = self.script.pop(0) if self.script else (None, True, 0.0)
        if lands:
            if self._open(request.client_order_id):
                raise DuplicateOrder("ClientOrderId is duplicated.", -4116)
            if delay:
                asyncio.get_running_loop().call_later(delay, self._land,
                                                      request.client_order_id)
            else:
                self._land(request.client_order_id)
        if exc is not None:
            raise exc
        return next(o for o in reversed(self.orders)
                    if o.client_order_id == request.client_order_id)

    async def query(self, symbol: str, client_order_id: str) -> OrderUpdate | None:
        self.queries += 1
        if self.query_errors:
            self.query_errors -= 1
            raise OutcomeUnknown("query timeout")
        return next((o for o in reversed(self.orders) if o.client_order_id == client_order_id),
                    None)

    async def resync_time(self) -> None:
        self.resyncs += 1

    def fill(self, cid: str) -> None:
        """The order fills and closes: its client id is free again on the venue."""
        self.orders = [state(o.client_order_id, OrderStatus.FILLED)
                       if o.client_order_id == cid else o for o in self.orders]

    def orders_for(self, cid: str) -> int:
        return sum(1 for o in self.orders if o.client_order_id == cid)


sends: list[tuple[str, int]] = []


async def before_send(req: OrderRequest, wall: int) -> None:
    sends.append((req.client_order_id, wall))


def placer(v: ScriptedVenue, **kw: object) -> ReliablePlacer:
    return ReliablePlacer(v, backoff_s=0.0, recv_window_ms=RECV_MS, settle_ms=0,
                          **kw)  # type: ignore[arg-type]


async def test_timeout_after_accept_is_found_by_query_not_resent() -> None:
    v = ScriptedVenue([(OutcomeUnknown("timeout"), True, 0.0)])
    update = await placer(v).place(REQ, before_send)
    assert update.status is OrderStatus.ACCEPTED
    assert (v.submits, v.queries) == (1, 1)
    assert sends[-1][0] == "qt1"
    assert v.orders_for("qt1") == 1


async def test_lost_request_is_resent_only_after_its_recv_window() -> None:
    v = ScriptedVenue([(OutcomeUnknown("dropped"), False, 0.0)])
    t0 = time.monotonic()
    assert (await placer(v).place(REQ, before_send)).status is OrderStatus.ACCEPTED
    assert time.monotonic() - t0 >= RECV_MS / 1000 * 0.9  # it waited before concluding
    assert v.submits == 2
    assert v.orders_for("qt1") == 1


async def test_an_attempt_still_in_flight_is_found_not_sent_twice() -> None:
    """The first lookup comes too early to see the attempt; "not found" then is not an answer:
    only once the recvWindow has passed is it one, and by then the order is there."""
    v = ScriptedVenue([(OutcomeUnknown("timeout"), True, RECV_MS / 1000 / 3)])
    update = await placer(v).place(REQ, before_send)
    assert update.status is OrderStatus.ACCEPTED
    assert v.submits == 1
    assert v.orders_for("qt1") == 1


async def test_a_filled_order_found_by_recovery_is_never_sent_again() -> None:
    """After a restart the order is on record as sent: the venue is asked first. Its id is
    free again on the venue (the order filled), so a blind re-send would be a second order."""
    v = ScriptedVenue([])
    await placer(v).place(REQ, before_send)
    v.fill("qt1")
    recovered = await placer(v).place(REQ, before_send, sent_before_ms=1)
    assert recovered.status is OrderStatus.FILLED
    assert v.orders_for("qt1") == 1
    assert v.submits == 1


async def test_not_processed_is_retried_without_a_query() -> None:
    v = ScriptedVenue([(RateLimited("429", retry_after=0.0), False, 0.0),
                       (ClockSkew("-1021"), False, 0.0)])
    assert (await placer(v).place(REQ, before_send)).status is OrderStatus.ACCEPTED
    assert (v.submits, v.queries, v.resyncs) == (3, 0, 1)


async def test_duplicate_id_means_an_earlier_attempt_is_working() -> None:
    v = ScriptedVenue([])
    v.orders.append(state("qt1"))
    assert (await placer(v).place(REQ, before_send)).status is OrderStatus.ACCEPTED
    assert (v.submits, v.queries) == (1, 1)
    assert v.orders_for("qt1") == 1


async def test_rejection_is_final_and_keeps_the_venue_code() -> None:
    v = ScriptedVenue([(ExchangeRejected("would immediately trigger", -2021), False, 0.0)])
    update = await placer(v).place(REQ, before_send)
    assert update.status is OrderStatus.REJECTED
    assert update.code == -2021
    assert "trigger" in update.reason
    assert v.submits == 1


async def test_no_resend_while_the_query_cannot_answer() -> None:
    v = ScriptedVenue([(OutcomeUnknown("timeout"), False, 0.0)], query_errors=100)
    with pytest.raises(PlacementUnknown):
        await placer(v, max_attempts=4).place(REQ, before_send)
    assert v.submits == 1  # never resent without a definite "unknown order"


async def test_breaker_refuses_new_entries_but_never_rejects_an_order_that_landed() -> None:
    states: list[TradingState] = []
    breaker = CircuitBreaker(reduce_after=2, halt_after=4,
                             on_state=lambda s, _r: states.append(s))
    v = ScriptedVenue([(OutcomeUnknown("5xx"), False, 0.0)] * 3)
    with pytest.raises(OrderRefused, match="REDUCING"):
        await placer(v, breaker=breaker).place(REQ, before_send)
    assert states == [TradingState.REDUCING]
    assert v.orders_for("qt1") == 0  # refused only because it is certainly not there
    # An order that did land and filled while the breaker was open is found, not "REJECTED".
    landed = OrderRequest("qt3", "XRPUSDT", Side.BUY, OrderType.MARKET, 100.0)
    v.orders.append(state("qt3", OrderStatus.FILLED))
    found = await placer(v, breaker=breaker).place(landed, before_send, sent_before_ms=1)
    assert found.status is OrderStatus.FILLED
    exit_req = OrderRequest("qt2", "XRPUSDT", Side.SELL, OrderType.MARKET, 100.0, True)
    assert (await placer(v, breaker=breaker).place(exit_req, before_send)).status is \
        OrderStatus.ACCEPTED
