"""Orders and the one table of their legal state transitions.

An order's *status* moves only through ``TRANSITIONS``, driven by what the venue says about it
(``OrderUpdate``). Its *fills* come from venue trades only (``book_trade``): a trade is booked
whatever the status (a late trade on a CANCELED order still happened), and where the order is
still open it moves the status to PARTIALLY_FILLED or FILLED through the same table. Every
method validates before it mutates, so a refused call leaves the order as it was.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from quantum_trader.domain.enums import IntentPurpose, OrderStatus, OrderType, Side
from quantum_trader.domain.venue import OrderOrigin, OrderUpdate

S = OrderStatus

#: Every legal move of an order. Anything not listed here raises ``IllegalTransition``.
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.NEW: frozenset({S.SUBMITTED, S.REJECTED, S.CANCELED, S.EXPIRED}),
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


class BadTrade(ValueError):
    """A trade that cannot be real (non-positive or non-finite quantity or price)."""


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
    expires_at: int = 0  # market time by which it must have been sent (0: no limit)
    origin: OrderOrigin = OrderOrigin.OURS
    sent_ts: int = 0  # wall time of the last send attempt (0: never sent)
    venue_filled_qty: float = 0.0  # cumulative fill the venue last reported

    @property
    def remaining(self) -> float:
        return max(self.quantity - self.filled_qty, 0.0)

    @property
    def is_open(self) -> bool:
        return self.status.is_open

    @property
    def awaiting_trades(self) -> bool:
        """The venue reports more filled than the trades booked so far (they are on their
        way: the order is not finished for our books until they are in)."""
        return self.venue_filled_qty > self.filled_qty * (1 + 1e-9) + 1e-12

    @property
    def is_live(self) -> bool:
        """Still to be watched: working on the venue, in flight, or waiting for trades."""
        return self.status.is_open or self.awaiting_trades

    def expired(self, now: int) -> bool:
        return self.expires_at > 0 and now > self.expires_at

    def transition(self, target: OrderStatus, ts: int, reason: str = "") -> None:
        if target not in TRANSITIONS[self.status]:
            raise IllegalTransition(self.id, self.status, target)
        self.history.append((self.status, self.updated_ts))
        self.status = target
        self.updated_ts = ts
        if reason:
            self.reason = reason

    def apply_update(self, update: OrderUpdate) -> bool:
        """Take the venue's view of this order: forwards through the table only (an older
        snapshot cannot move it back). Returns whether the status changed."""
        if self.exchange_order_id is None and update.venue_order_id:
            self.exchange_order_id = update.venue_order_id
        if update.filled_qty > self.venue_filled_qty:
            self.venue_filled_qty = update.filled_qty
        target = update.status
        if target is self.status:
            return False
        if target in (OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED) and \
                self.status is OrderStatus.NEW:
            self.transition(OrderStatus.SUBMITTED, update.ts)
        if target not in TRANSITIONS[self.status]:
            return False
        if target is OrderStatus.FILLED and update.filled_qty > 0 and \
                update.filled_qty < self.quantity * (1 - 1e-9):
            # Done on the venue at less than its size: a reduce-only order clipped to the
            # position. Its size is what filled.
            self.quantity = update.filled_qty
            self.reason = self.reason or "clipped to position"
        self.transition(target, update.ts, update.reason)
        return True

    def book_trade(self, quantity: float, price: float, fee: float, ts: int) -> bool:
        """Account for one venue trade. Returns False if it took the order past its size
        (it is booked anyway, the size grows to match: the venue is the truth; the caller
        audits it). Raises ``BadTrade`` for values no venue sends, before changing anything."""
        if not (math.isfinite(quantity) and quantity > 0):
            raise BadTrade(f"order {self.id}: trade quantity must be positive, got {quantity}")
        if not (math.isfinite(price) and price > 0) or not math.isfinite(fee):
            raise BadTrade(f"order {self.id}: trade price {price} / fee {fee} not valid")
        new_filled = self.filled_qty + quantity
        within = new_filled <= self.quantity * (1 + 1e-9) + 1e-12
        if not within:
            self.quantity = new_filled
        self.avg_fill_price = (self.avg_fill_price * self.filled_qty + price * quantity) / \
            new_filled
        self.filled_qty = min(new_filled, self.quantity)
        self.fees += fee
        if self.status.is_open:
            done = self.quantity - self.filled_qty <= self.quantity * 1e-9
            target = OrderStatus.FILLED if done else OrderStatus.PARTIALLY_FILLED
            if self.status is OrderStatus.NEW:
                self.transition(OrderStatus.SUBMITTED, ts)
            self.transition(target, ts)
        return within

    def apply_fill(self, quantity: float, price: float, fee: float, ts: int) -> None:
        """Book a fill on an order that must be working and must not overfill (the strict
        form of ``book_trade``, for callers that treat both as errors)."""
        if quantity <= 0:
            raise ValueError(f"order {self.id}: fill quantity must be positive, got {quantity}")
        if self.filled_qty + quantity > self.quantity * (1 + 1e-9) + 1e-12:
            raise OverFill(f"order {self.id}: fill of {quantity} exceeds remaining "
                           f"{self.remaining}")
        if not self.status.is_open:
            raise IllegalTransition(self.id, self.status, OrderStatus.PARTIALLY_FILLED)
        self.book_trade(quantity, price, fee, ts)
