"""Orders and the one table of their legal state transitions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from quantum_trader.domain.enums import IntentPurpose, OrderStatus, OrderType, Side

S = OrderStatus

#: Every legal move of an order. Anything not listed here raises ``IllegalTransition``.
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.NEW: frozenset({S.SUBMITTED, S.REJECTED, S.CANCELED}),
    S.SUBMITTED: frozenset(
        {S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.REJECTED, S.CANCELED, S.EXPIRED}
    ),
    S.ACCEPTED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.EXPIRED}),
    S.PARTIALLY_FILLED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.EXPIRED}),
    S.FILLED: frozenset(),
    S.CANCELED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
}


class IllegalTransition(RuntimeError):
    def __init__(self, order_id: str, current: OrderStatus, target: OrderStatus) -> None:
        super().__init__(f"order {order_id}: illegal transition {current} -> {target}")
        self.order_id = order_id
        self.current = current
        self.target = target


class OverFill(RuntimeError):
    """A fill that would take an order past its quantity."""


def client_order_id_for(intent_id: str) -> str:
    """Client order ids are derived from intent ids so a retry can never place a second order.

    Binance accepts up to 36 characters from ``[.A-Z:/a-z0-9_-]``; intent ids are longer, so
    the id is a digest of the intent id (34 characters, collision-free in practice).
    """
    return "qt" + hashlib.blake2b(intent_id.encode(), digest_size=16).hexdigest()


@dataclass(slots=True)
class Order:
    id: str
    client_order_id: str
    intent_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: float
    purpose: IntentPurpose
    created_ts: int
    trace_id: str
    reduce_only: bool = False
    price: float | None = None
    stop_price: float | None = None
    status: OrderStatus = OrderStatus.NEW
    filled_qty: float = 0.0
    avg_fill_price: float = 0.0
    fees: float = 0.0
    updated_ts: int = 0
    exchange_order_id: str | None = None
    reason: str = ""  # why it ended (rejection text, cancel cause)
    tag: str = ""  # protective-order role ("sl", "tp") or empty
    history: list[tuple[OrderStatus, int]] = field(default_factory=list)

    @property
    def remaining(self) -> float:
        return max(self.quantity - self.filled_qty, 0.0)

    @property
    def is_open(self) -> bool:
        return self.status.is_open

    def transition(self, target: OrderStatus, ts: int, reason: str = "") -> None:
        if target not in TRANSITIONS[self.status]:
            raise IllegalTransition(self.id, self.status, target)
        self.history.append((self.status, self.updated_ts))
        self.status = target
        self.updated_ts = ts
        if reason:
            self.reason = reason

    def apply_fill(self, quantity: float, price: float, fee: float, ts: int) -> None:
        """Account for a fill and move to PARTIALLY_FILLED or FILLED."""
        if quantity <= 0:
            raise ValueError(f"order {self.id}: fill quantity must be positive, got {quantity}")
        new_filled = self.filled_qty + quantity
        if new_filled > self.quantity * (1 + 1e-9) + 1e-12:
            raise OverFill(f"order {self.id}: fill of {quantity} exceeds remaining "
                           f"{self.remaining}")
        notional = self.avg_fill_price * self.filled_qty + price * quantity
        self.avg_fill_price = notional / new_filled
        self.filled_qty = min(new_filled, self.quantity)
        self.fees += fee
        done = self.quantity - self.filled_qty <= self.quantity * 1e-9
        self.transition(OrderStatus.FILLED if done else OrderStatus.PARTIALLY_FILLED, ts)
