"""ReliablePlacer's rules against a scripted fake venue (no network)."""

from __future__ import annotations

import asyncio

import pytest

from quantum_trader.domain.enums import OrderStatus, OrderType, Side, TradingState
from quantum_trader.exchange.errors import (
    ClockSkew,
    DuplicateOrder,
    ExchangeRejected,
    OrderRefused,
    OutcomeUnknown,
    RateLimited,
)
from quantum_trader.exchange.protocol import ExchangePosition, ExecutionReport, OrderRequest
from quantum_trader.exchange.reliable import (
    CircuitBreaker,
    OpenOrderRef,
    PlacementUnknown,
    Reconciler,
    ReconcileResult,
    ReliablePlacer,
)

REQ = OrderRequest("qt1", "XRPUSDT", Side.BUY, OrderType.MARKET, 100.0)


def accepted(cid: str = "qt1") -> ExecutionReport:
    return ExecutionReport(cid, "1", "XRPUSDT", OrderStatus.ACCEPTED, 0, Side.BUY)


class FakeVenue:
    """``submit_script``: per attempt, an exception to raise (the order may still land)."""

    def __init__(self, submit_script: list[tuple[Exception | None, bool]],
                 query_errors: int = 0) -> None:
        self.script = submit_script
        self.book: dict[str, ExecutionReport] = {}
        self.submits = 0
        self.queries = 0
        self.query_errors = query_errors
        self.resyncs = 0

    async def submit(self, request: OrderRequest) -> ExecutionReport:
        self.submits += 1
        exc, lands = self.script.pop(0) if self.script else (None, True)
        if lands:
            if request.client_order_id in self.book:
                raise DuplicateOrder("dup", -4116)
            self.book[request.client_order_id] = accepted(request.client_order_id)
        if exc is not None:
            raise exc
        return self.book[request.client_order_id]

    async def query(self, symbol: str, client_order_id: str) -> ExecutionReport | None:
        self.queries += 1
        if self.query_errors:
            self.query_errors -= 1
            raise OutcomeUnknown("query timeout")
        return self.book.get(client_order_id)

    async def cancel(self, symbol: str, client_order_id: str) -> ExecutionReport:
        raise NotImplementedError

    async def open_orders(self, symbol: str | None = None) -> list[ExecutionReport]:
        return list(self.book.values())

    async def positions(self) -> list[ExchangePosition]:
        return [ExchangePosition("XRPUSDT", 100.0, 0.5, 3.0, 0.3)]

    async def resync_time(self) -> None:
        self.resyncs += 1


persisted: list[str] = []


async def persist(req: OrderRequest) -> None:
    persisted.append(req.client_order_id)


def placer(v: FakeVenue, **kw: object) -> ReliablePlacer:
    return ReliablePlacer(v, persist, backoff_s=0.0, **kw)  # type: ignore[arg-type]


async def test_timeout_after_accept_is_found_by_query_not_resent() -> None:
    v = FakeVenue([(OutcomeUnknown("timeout"), True)])
    report = await placer(v).place(REQ)
    assert report.status is OrderStatus.ACCEPTED
    assert (v.submits, v.queries) == (1, 1)
    assert persisted[-1] == "qt1"


async def test_lost_request_is_resent_after_the_query_says_unknown() -> None:
    v = FakeVenue([(OutcomeUnknown("dropped"), False)])
    assert (await placer(v).place(REQ)).status is OrderStatus.ACCEPTED
    assert (v.submits, v.queries) == (2, 1)


async def test_not_processed_is_retried_without_a_query() -> None:
    v = FakeVenue([(RateLimited("429", retry_after=0.0), False), (ClockSkew("-1021"), False)])
    assert (await placer(v).place(REQ)).status is OrderStatus.ACCEPTED
    assert (v.submits, v.queries, v.resyncs) == (3, 0, 1)


async def test_duplicate_id_means_an_earlier_attempt_landed() -> None:
    v = FakeVenue([])
    v.book["qt1"] = accepted()
    assert (await placer(v).place(REQ)).status is OrderStatus.ACCEPTED
    assert (v.submits, v.queries) == (1, 1)


async def test_rejection_is_final() -> None:
    v = FakeVenue([(ExchangeRejected("margin", -2019), False)])
    report = await placer(v).place(REQ)
    assert report.status is OrderStatus.REJECTED
    assert "margin" in report.reason
    assert v.submits == 1


async def test_no_resend_while_the_query_cannot_answer() -> None:
    v = FakeVenue([(OutcomeUnknown("timeout"), False)], query_errors=100)
    with pytest.raises(PlacementUnknown):
        await placer(v, max_attempts=4).place(REQ)
    assert v.submits == 1  # never resent without a definite "unknown order"


async def test_breaker_escalates_on_repeated_unknown_outcomes() -> None:
    states: list[TradingState] = []
    breaker = CircuitBreaker(reduce_after=2, halt_after=4,
                             on_state=lambda s, _r: states.append(s))
    v = FakeVenue([(OutcomeUnknown("5xx"), False)] * 3)
    with pytest.raises(OrderRefused, match="REDUCING"):
        await placer(v, breaker=breaker).place(REQ)
    assert states == [TradingState.REDUCING]
    exit_req = OrderRequest("qt2", "XRPUSDT", Side.SELL, OrderType.MARKET, 100.0, True)
    assert (await placer(v, breaker=breaker).place(exit_req)).status is OrderStatus.ACCEPTED


async def test_reconciler_runs_periodically() -> None:
    v = FakeVenue([])
    v.book["ext"] = accepted("ext")
    results: list[ReconcileResult] = []
    three = asyncio.Event()

    async def snapshot() -> tuple[list[OpenOrderRef], dict[str, float]]:
        return [OpenOrderRef("XRPUSDT", "gone")], {"XRPUSDT": 100.0}

    async def on_result(r: ReconcileResult) -> None:
        results.append(r)
        if len(results) >= 3:
            three.set()

    task = asyncio.create_task(Reconciler(v).run_forever(0.01, snapshot, on_result))
    await asyncio.wait_for(three.wait(), 5)
    task.cancel()
    r = results[0]
    assert [a.client_order_id for a in r.adopted] == ["ext"]
    assert r.resolved == [(OpenOrderRef("XRPUSDT", "gone"), None)]
    assert r.position_mismatches == []
