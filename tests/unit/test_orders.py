"""Every legal order transition, and every illegal one refused."""

from __future__ import annotations

import itertools

import pytest

from quantum_trader.domain.enums import IntentPurpose, OrderStatus, OrderType, Side
from quantum_trader.domain.orders import (
    TRANSITIONS,
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
    assert len(LEGAL) == 17
    assert len(ILLEGAL) == len(ALL) ** 2 - 17


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
    order.apply_fill(4.0, 1.0, 0.01, 1)
    assert order.status is OrderStatus.PARTIALLY_FILLED
    order.apply_fill(6.0, 2.0, 0.02, 2)
    assert order.status is OrderStatus.FILLED
    assert order.avg_fill_price == pytest.approx(1.6)
    assert order.fees == pytest.approx(0.03)
    assert order.remaining == 0


def test_overfill_and_fill_after_cancel_are_refused() -> None:
    order = _order(OrderStatus.ACCEPTED)
    with pytest.raises(OverFill):
        order.apply_fill(11.0, 1.0, 0.0, 1)
    order.transition(OrderStatus.CANCELED, 2)
    with pytest.raises(IllegalTransition):
        order.apply_fill(1.0, 1.0, 0.0, 3)


def test_client_order_id_is_deterministic_short_and_binance_safe() -> None:
    long_id = "XRPUSDT-1506898800000-ema_cross_12_26:entry"
    cid = client_order_id_for(long_id)
    assert cid == client_order_id_for(long_id)
    assert cid != client_order_id_for(long_id + "x")
    assert len(cid) <= 36
    assert all(ch.isalnum() for ch in cid)


def test_a_stale_status_snapshot_never_moves_an_order_back() -> None:
    """Reconciliation reads order snapshots that may predate fills we already applied."""
    from quantum_trader.domain.enums import Liquidity
    from quantum_trader.domain.models import OrderIntent
    from quantum_trader.domain.tracking import OrderTracker
    from quantum_trader.exchange.protocol import ExecutionReport

    tracker = OrderTracker()
    intent = OrderIntent("i-stale", "XRPUSDT", Side.BUY, 100.0, OrderType.LIMIT,
                         IntentPurpose.ENTRY, 0, 60_000, "t", price=1.0)
    order = tracker.create(intent, 0)
    cid = order.client_order_id
    tracker.apply(ExecutionReport(cid, "x1", "XRPUSDT", OrderStatus.ACCEPTED, 1, Side.BUY))
    tracker.apply(ExecutionReport(cid, "x1", "XRPUSDT", OrderStatus.PARTIALLY_FILLED, 2,
                                  Side.BUY, 40.0, 1.0, 0.01, Liquidity.MAKER, "7"))
    _, fill = tracker.apply(ExecutionReport(cid, "x1", "XRPUSDT", OrderStatus.ACCEPTED, 3,
                                            Side.BUY))
    assert fill is None
    assert order.status is OrderStatus.PARTIALLY_FILLED
    assert order.filled_qty == 40.0
