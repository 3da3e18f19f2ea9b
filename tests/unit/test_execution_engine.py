"""The execution engine's rules: trades and updates apart, every trade booked once, nothing a
venue reports dropped, the venue's account adopted, flips and protection.

Each test named after a defect reproduces it: it fails on the implementation the live path had
before the engine (the order tracker inside ``LiveExecutionService``) and passes now."""

from __future__ import annotations

import pytest

from quantum_trader.domain.enums import IntentPurpose, Liquidity, OrderStatus, OrderType, Side
from quantum_trader.domain.execution import ExecutionEngine, ListJournal
from quantum_trader.domain.models import Fill, FundingPayment, OrderIntent
from quantum_trader.domain.orders import Order
from quantum_trader.domain.portfolio import Portfolio
from quantum_trader.domain.records import AuditEvent, ClosedTrade
from quantum_trader.domain.venue import (
    OrderOrigin,
    OrderUpdate,
    VenueAccount,
    VenuePosition,
    VenueTrade,
)

SYM = "XRPUSDT"
_seq = iter(range(1, 10_000))


def engine() -> tuple[ExecutionEngine, ListJournal]:
    journal = ListJournal()
    return ExecutionEngine(Portfolio(10_000.0), journal, leverage=3.0), journal


def intent(iid: str, side: Side = Side.BUY, qty: float = 100.0,
           kind: OrderType = OrderType.MARKET, purpose: IntentPurpose = IntentPurpose.ENTRY,
           reduce_only: bool = False, stop: float | None = None, tag: str = "",
           expires_at: int = 10**15) -> OrderIntent:
    return OrderIntent(iid, SYM, side, qty, kind, purpose, 0, expires_at, f"t-{iid}",
                       reduce_only=reduce_only, stop_price=stop, tag=tag)


def update(order: Order | str, status: OrderStatus, filled: float = 0.0,
           qty: float = 0.0, side: Side = Side.BUY) -> OrderUpdate:
    cid = order if isinstance(order, str) else order.client_order_id
    return OrderUpdate(cid, f"v-{cid}", SYM, side, status, 1, filled, 0.5, qty)


def trade(order: Order | str, qty: float, price: float = 0.5, side: Side = Side.BUY,
          tid: str | None = None, fee: float = 0.0) -> VenueTrade:
    cid = order if isinstance(order, str) else order.client_order_id
    return VenueTrade(SYM, tid or str(next(_seq)), f"v-{cid}", cid, side, qty, price, fee,
                      Liquidity.TAKER, 2)


def placed(e: ExecutionEngine, i: OrderIntent) -> Order:
    o = e.create(i, 0)
    e.sent(o, 0, 1)
    e.on_update(update(o, OrderStatus.ACCEPTED, side=i.side))
    return o


def test_reconciliation_never_adopts_our_in_flight_order_and_its_fill_is_booked() -> None:
    """Defect: reconciliation saw our SUBMITTED order on the venue, adopted it as a zero-size
    EXTERNAL order, and its fill then raised OverFill and was dropped (venue long, books flat,
    no stop)."""
    e, journal = engine()
    o = e.create(intent("a"), 0)
    e.sent(o, 0, 1)  # in flight: sent, no answer yet
    e.on_update(update(o, OrderStatus.ACCEPTED, qty=100.0))  # reconciliation lists it
    assert e.order(o.client_order_id) is o
    assert o.origin is OrderOrigin.OURS
    assert e.on_trade(trade(o, 100.0)) is not None
    assert e.portfolio.positions[SYM].qty == 100.0
    assert not any(isinstance(x, AuditEvent) and x.kind == "order_adopted"
                   for x in journal.events)


def test_the_same_venue_trade_is_booked_once() -> None:
    e, journal = engine()
    o = placed(e, intent("a"))
    t = trade(o, 40.0, tid="7")
    assert e.on_trade(t) is not None
    assert e.on_trade(t) is None  # read again by an overlapping poll
    assert e.portfolio.positions[SYM].qty == 40.0
    assert sum(isinstance(x, VenueTrade) for x in journal.events) == 1


def test_trades_the_store_holds_are_never_booked_again_after_a_restart() -> None:
    e, _ = engine()
    o = placed(e, intent("a"))
    e.mark_booked([(SYM, "77")])
    assert e.on_trade(trade(o, 40.0, tid="77")) is None
    assert SYM not in e.portfolio.positions or e.portfolio.positions[SYM].qty == 0


def test_a_partial_fill_then_a_cancel_keeps_the_fill_and_a_late_trade_is_booked() -> None:
    """Defect: a partial fill followed by a cancel lost the fill (the cancel snapshot won)."""
    e, _ = engine()
    o = placed(e, intent("a"))
    e.on_update(update(o, OrderStatus.PARTIALLY_FILLED, filled=40.0))
    e.on_update(update(o, OrderStatus.CANCELED, filled=70.0))  # venue: 70 done, then canceled
    assert o.status is OrderStatus.CANCELED
    assert o.awaiting_trades  # the venue says 70; no trade booked yet: still watched
    assert o in e.live_orders()
    e.on_trade(trade(o, 40.0))
    e.on_trade(trade(o, 30.0))  # arrives after the cancel: trades beat snapshots
    assert e.portfolio.positions[SYM].qty == 70.0
    assert o.filled_qty == 70.0
    assert o not in e.live_orders()


@pytest.mark.parametrize(("cid", "origin", "tag"), [
    ("manual-1", OrderOrigin.EXTERNAL, "external"),
    ("qtkkill-XRPUSDT", OrderOrigin.EXTERNAL, "external"),  # the old kill switch's orders
    ("autoclose-1700000000000", OrderOrigin.LIQUIDATION, "liq"),
    ("adl_autoclose-1700000000000", OrderOrigin.ADL, "adl"),
    ("settlement_autoclose-1", OrderOrigin.SETTLEMENT, "settlement"),
])
def test_a_trade_for_an_order_we_did_not_place_is_booked_never_dropped(
        cid: str, origin: OrderOrigin, tag: str) -> None:
    """Defect: trades of kill-switch, manual, ADL and liquidation orders were skipped while
    the poll cursor moved on."""
    e, journal = engine()
    long = placed(e, intent("a"))
    e.on_trade(trade(long, 100.0))
    booking = e.on_trade(trade(cid, 100.0, side=Side.SELL))
    assert booking is not None
    assert booking.order.origin is origin
    assert booking.order.tag == tag
    assert e.portfolio.positions[SYM].qty == 0.0
    audits = [x for x in journal.events if isinstance(x, AuditEvent)]
    assert any(a.kind == "order_adopted" and a.detail["client_order_id"] == cid
               for a in audits)


def test_a_liquidation_in_several_trades_books_every_one() -> None:
    e, _ = engine()
    long = placed(e, intent("a", qty=90.0))
    e.on_trade(trade(long, 90.0))
    for part in (30.0, 30.0, 30.0):
        assert e.on_trade(trade("autoclose-17", part, price=0.4, side=Side.SELL)) is not None
    liq = e.order("autoclose-17")
    assert liq is not None
    assert (liq.filled_qty, liq.quantity) == (90.0, 90.0)
    assert e.portfolio.positions[SYM].qty == 0.0
    [closed] = e.trades
    assert closed.exit_reason == "liquidation"


def test_an_update_for_an_unknown_order_adopts_it_with_its_real_size() -> None:
    e, _ = engine()
    o = e.on_update(OrderUpdate("manual-2", "v9", SYM, Side.BUY, OrderStatus.ACCEPTED, 1,
                                quantity=250.0, order_type=OrderType.LIMIT))
    assert (o.origin, o.quantity, o.order_type) == (OrderOrigin.EXTERNAL, 250.0,
                                                    OrderType.LIMIT)
    e.on_trade(trade("manual-2", 250.0))  # its whole size fills: no overfill, booked
    assert e.portfolio.positions[SYM].qty == 250.0


def test_round_trips_are_recorded_with_fees_and_funding() -> None:
    e, journal = engine()
    entry = placed(e, intent("a"))
    e.on_trade(trade(entry, 100.0, price=0.5, fee=0.02))
    assert e.on_funding(FundingPayment(SYM, 5, 0.0001, 0.5, 100.0, 0.005, id="f1"))
    assert not e.on_funding(FundingPayment(SYM, 5, 0.0001, 0.5, 100.0, 0.005, id="f1"))
    out = placed(e, intent("b", side=Side.SELL, purpose=IntentPurpose.EXIT, reduce_only=True,
                           tag="tp"))
    b = e.on_trade(trade(out, 100.0, price=0.6, side=Side.SELL, fee=0.03))
    assert b is not None
    assert b.closed is not None
    closed: ClosedTrade = b.closed
    assert closed.realized_pnl == pytest.approx(10.0)
    assert closed.fees == pytest.approx(0.05)
    assert closed.funding == pytest.approx(0.005)
    assert closed.exit_reason == "take_profit"
    assert e.portfolio.wallet == pytest.approx(10_000 + 10.0 - 0.05 - 0.005)
    assert [x for x in journal.events if isinstance(x, ClosedTrade)] == [closed]
    assert sum(isinstance(x, Fill) for x in journal.events) == 2


def test_the_venue_account_is_adopted_where_ours_differs_and_audited() -> None:
    e, _ = engine()
    o = placed(e, intent("a"))
    e.on_trade(trade(o, 100.0))
    audits = e.adopt_account(VenueAccount(9, 10_250.0, (
        VenuePosition(SYM, 60.0, 0.55, 3.0, 0.4), VenuePosition("BTCUSDT", -0.5, 30_000.0,
                                                                2.0, 40_000.0))), 9)
    kinds = sorted(a.kind for a in audits)
    assert kinds == ["position_adopted", "position_adopted", "wallet_adopted"]
    assert e.portfolio.positions[SYM].qty == 60.0
    assert e.portfolio.positions["BTCUSDT"].qty == -0.5
    assert e.portfolio.wallet == 10_250.0
    assert e.adopt_account(VenueAccount(10, 10_250.0, (
        VenuePosition(SYM, 60.0, 0.55, 3.0, 0.4), VenuePosition("BTCUSDT", -0.5, 30_000.0,
                                                                2.0, 40_000.0))), 10) == []


def test_an_entry_against_the_position_waits_for_the_exit_to_be_on_the_venue() -> None:
    e, _ = engine()
    short = placed(e, intent("s", side=Side.SELL))
    e.on_trade(trade(short, 100.0, side=Side.SELL))
    entry = e.create(intent("long"), 0)
    assert e.hold_reason(entry) is not None
    exit_ = e.create(intent("x", side=Side.BUY, purpose=IntentPurpose.EXIT, reduce_only=True),
                     0)
    assert e.hold_reason(entry) is not None  # created, not on the venue yet
    e.sent(exit_, 0, 1)
    e.on_update(update(exit_, OrderStatus.ACCEPTED))
    assert e.hold_reason(entry) is None  # the venue will match the exit first
    e.on_trade(trade(exit_, 100.0))
    assert e.hold_reason(entry) is None  # flat: nothing to wait for


def test_unprotected_lists_positions_without_a_working_stop() -> None:
    e, _ = engine()
    o = placed(e, intent("a"))
    e.on_trade(trade(o, 100.0))
    assert e.unprotected() == [SYM]
    stop = e.create(intent("sl", side=Side.SELL, kind=OrderType.STOP_MARKET,
                           purpose=IntentPurpose.EXIT, reduce_only=True, stop=0.45, tag="sl"),
                    0)
    assert e.unprotected() == [SYM]  # NEW: not on the venue yet
    e.sent(stop, 0, 1)
    e.on_update(update(stop, OrderStatus.ACCEPTED, side=Side.SELL))
    assert e.unprotected() == []
    e.on_update(OrderUpdate(stop.client_order_id, "", SYM, Side.SELL, OrderStatus.CANCELED, 3))
    assert e.unprotected() == [SYM]
    close = placed(e, intent("c", side=Side.SELL, purpose=IntentPurpose.EXIT,
                             reduce_only=True))
    assert e.closing(SYM)
    assert e.unprotected() == []  # being closed at market: nothing to protect any more
    del close


def test_create_is_idempotent_whatever_the_status() -> None:
    e, _ = engine()
    i = intent("a")
    o = placed(e, i)
    e.on_trade(trade(o, 100.0))
    assert o.status is OrderStatus.FILLED
    assert e.create(i, 5) is o  # a redelivered approval gets the one order back


def test_orders_carry_their_send_by_time() -> None:
    e, _ = engine()
    o = e.create(intent("a", expires_at=1_000), 0)
    assert o.expires_at == 1_000
    assert not o.expired(1_000)
    assert o.expired(1_001)
    e.refuse(o, 1_001, "expired before it was sent", OrderStatus.EXPIRED)
    assert o.status is OrderStatus.EXPIRED
    assert o not in e.live_orders()


def test_requests_are_on_the_instrument_grid_whatever_the_float_noise() -> None:
    """Defect: quantities like 15550.099999999999 were sent and truncated a step by ccxt."""
    e, _ = engine()
    o = e.create(intent("a", qty=15550.099999999999), 0)
    assert e.request_for(o).quantity == 15550.1
