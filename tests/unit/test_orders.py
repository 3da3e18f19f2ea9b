"""Every legal order transition, and every illegal one refused."""

from __future__ import annotations

import itertools

import pytest

from quantum_trader.domain.enums import IntentPurpose, OrderStatus, OrderType, Side
from quantum_trader.domain.orders import (
    TRANSITIONS,
    BadTrade,
    IllegalTransition,
    Order,
    OverFill,
    client_order_id_for,
)

ALL = list(OrderStatus)


def _order(status: OrderStatus = OrderStatus.NEW, qty: float = 10.0) -> Order:
    return Order("o1", "c1", "i1", "XRPUSDT", Side.BUY, OrderType.MARKET, qty,
                 IntentPurpose.ENTRY, 0, "t1", status=status)


LEGAL = [(a, b) for a in ALL for b in TRANSITIONS[a]]
ILLEGAL = [(a, b) for a, b in itertools.product(ALL, ALL) if b not in TRANSITIONS[a]]


def test_table_covers_every_status_and_terminals_are_dead_ends() -> None:
    assert set(TRANSITIONS) == set(ALL)
    for status in ALL:
        assert status.is_terminal == (not TRANSITIONS[status])
    assert len(LEGAL) == 18
    assert len(ILLEGAL) == len(ALL) ** 2 - 18


@pytest.mark.parametrize(("src", "dst"), LEGAL)
def test_legal_transition(src: OrderStatus, dst: OrderStatus) -> None:
    order = _order(src)
    order.transition(dst, 5, "why")
    assert order.status is dst
    assert order.history[-1][0] is src
    assert order.updated_ts == 5


@pytest.mark.parametrize(("src", "dst"), ILLEGAL)
def test_illegal_transition_raises_and_changes_nothing(src: OrderStatus,
                                                       dst: OrderStatus) -> None:
    order = _order(src)
    with pytest.raises(IllegalTransition) as exc:
        order.transition(dst, 5)
    assert exc.value.current is src
    assert exc.value.target is dst
    assert order.status is src
    assert order.history == []


def test_fills_move_through_partial_to_filled_with_average_price() -> None:
    order = _order(OrderStatus.ACCEPTED)
    order.book_trade(4.0, 1.0, 0.01, 1)
    assert order.status is OrderStatus.PARTIALLY_FILLED
    order.book_trade(6.0, 2.0, 0.02, 2)
    assert order.status is OrderStatus.FILLED
    assert order.avg_fill_price == pytest.approx(1.6)
    assert order.fees == pytest.approx(0.03)
    assert order.remaining == 0


def test_strict_fill_refuses_overfill_and_a_closed_order_without_changing_it() -> None:
    order = _order(OrderStatus.ACCEPTED)
    with pytest.raises(OverFill):
        order.apply_fill(11.0, 1.0, 0.0, 1)
    assert (order.filled_qty, order.status) == (0.0, OrderStatus.ACCEPTED)
    order.transition(OrderStatus.CANCELED, 2)
    with pytest.raises(IllegalTransition):
        order.apply_fill(1.0, 1.0, 0.0, 3)
    # validated before anything moved: nothing of the refused fill is on the order
    assert (order.filled_qty, order.fees, order.avg_fill_price) == (0.0, 0.0, 0.0)
    assert order.status is OrderStatus.CANCELED


@pytest.mark.parametrize(("qty", "price", "fee"), [(0.0, 1.0, 0.0), (-1.0, 1.0, 0.0),
                                                   (float("nan"), 1.0, 0.0),
                                                   (1.0, 0.0, 0.0), (1.0, float("inf"), 0.0),
                                                   (1.0, 1.0, float("nan"))])
def test_a_trade_no_venue_sends_is_refused_before_anything_changes(qty: float, price: float,
                                                                   fee: float) -> None:
    order = _order(OrderStatus.ACCEPTED)
    order.book_trade(2.0, 1.0, 0.01, 1)
    before = (order.filled_qty, order.avg_fill_price, order.fees, order.status,
              list(order.history))
    with pytest.raises(BadTrade):
        order.book_trade(qty, price, fee, 2)
    assert (order.filled_qty, order.avg_fill_price, order.fees, order.status,
            order.history) == before


def test_a_late_trade_on_a_canceled_order_is_booked_and_the_status_stays() -> None:
    order = _order(OrderStatus.ACCEPTED)
    order.book_trade(4.0, 1.0, 0.0, 1)
    order.transition(OrderStatus.CANCELED, 2, "canceled by the exit brain")
    assert order.book_trade(3.0, 1.2, 0.0, 3)  # executed before the cancel, reported after
    assert order.filled_qty == 7.0
    assert order.status is OrderStatus.CANCELED


def test_an_overfill_is_booked_with_the_size_grown_to_match() -> None:
    order = _order(OrderStatus.ACCEPTED, qty=5.0)
    assert order.book_trade(6.0, 1.0, 0.0, 1) is False  # the caller audits it
    assert (order.quantity, order.filled_qty, order.status) == (6.0, 6.0, OrderStatus.FILLED)


def test_client_order_id_is_deterministic_short_and_binance_safe() -> None:
    long_id = "XRPUSDT-1506898800000-ema_cross_12_26:entry"
    cid = client_order_id_for(long_id)
    assert cid == client_order_id_for(long_id)
    assert cid != client_order_id_for(long_id + "x")
    assert len(cid) <= 36
    assert all(ch.isalnum() for ch in cid)


def test_a_stale_status_snapshot_never_moves_an_order_back() -> None:
    """Reconciliation reads order snapshots that may predate trades already booked."""
    from quantum_trader.domain.venue import OrderUpdate

    order = _order(OrderStatus.NEW, qty=100.0)
    order.apply_update(OrderUpdate("c1", "x1", "XRPUSDT", Side.BUY, OrderStatus.ACCEPTED, 1))
    order.book_trade(40.0, 1.0, 0.01, 2)
    assert not order.apply_update(OrderUpdate("c1", "x1", "XRPUSDT", Side.BUY,
                                              OrderStatus.ACCEPTED, 3))
    assert order.status is OrderStatus.PARTIALLY_FILLED
    assert order.filled_qty == 40.0
