"""``OrderTracker``: our side of every order — created from intents, moved by the exchange's
reports through the state machine, turned into ``Fill``s."""

from __future__ import annotations

from quantum_trader.domain.enums import IntentPurpose, OrderStatus, OrderType
from quantum_trader.domain.models import Fill, OrderIntent
from quantum_trader.domain.orders import TRANSITIONS, Order, client_order_id_for
from quantum_trader.exchange.protocol import ExecutionReport, OrderRequest


class OrderTracker:
    def __init__(self) -> None:
        self.by_client: dict[str, Order] = {}
        self.open: dict[str, Order] = {}  # client id -> order still working

    def create(self, intent: OrderIntent, ts: int) -> Order:
        """A NEW order for ``intent``. Creating it twice returns the first one (idempotent)."""
        cid = client_order_id_for(intent.id)
        existing = self.by_client.get(cid)
        if existing is not None:
            return existing
        order = Order(
            id=cid, client_order_id=cid, intent_id=intent.id, symbol=intent.symbol,
            side=intent.side, order_type=intent.order_type, quantity=intent.quantity,
            purpose=intent.purpose, created_ts=ts, trace_id=intent.trace_id,
            reduce_only=intent.reduce_only, price=intent.price, stop_price=intent.stop_price,
            updated_ts=ts, reason=intent.reason, tag=intent.tag)
        self.by_client[cid] = order
        self.open[cid] = order
        return order

    @staticmethod
    def request_for(order: Order) -> OrderRequest:
        return OrderRequest(order.client_order_id, order.symbol, order.side, order.order_type,
                            order.quantity, order.reduce_only, order.price, order.stop_price)

    def adopt(self, report: ExecutionReport, trace_id: str = "") -> Order:
        """An order the exchange has and we never placed (a liquidation, a manual order)."""
        order = Order(
            id=report.client_order_id, client_order_id=report.client_order_id,
            intent_id="", symbol=report.symbol, side=report.side,
            order_type=OrderType.MARKET, quantity=report.fill_qty or 0.0,
            purpose=IntentPurpose.EXIT, created_ts=report.ts, trace_id=trace_id,
            reduce_only=True, status=OrderStatus.SUBMITTED, updated_ts=report.ts,
            exchange_order_id=report.exchange_order_id,
            reason="liquidation" if report.is_liquidation else "external",
            tag="liq" if report.is_liquidation else "external")
        self.by_client[order.client_order_id] = order
        self.open[order.client_order_id] = order
        return order

    def apply(self, report: ExecutionReport, trace_id: str = "") -> tuple[Order, Fill | None]:
        """Move the order as the report says; return the fill it carries, if any."""
        order = self.by_client.get(report.client_order_id)
        if order is None:
            order = self.adopt(report, trace_id)
        if order.exchange_order_id is None:
            order.exchange_order_id = report.exchange_order_id
        fill: Fill | None = None
        if report.fill_qty > 0:
            if order.status is OrderStatus.NEW:
                order.transition(OrderStatus.SUBMITTED, report.ts)
            order.apply_fill(report.fill_qty, report.fill_price, report.fee, report.ts)
            if report.status is OrderStatus.FILLED and order.status is not OrderStatus.FILLED:
                # the exchange closed a reduce-only order clipped to the position
                order.quantity = order.filled_qty
                order.transition(OrderStatus.FILLED, report.ts, "clipped to position")
            assert report.liquidity is not None
            fill = Fill(
                id=f"{order.client_order_id}:{report.trade_id}", order_id=order.id,
                client_order_id=order.client_order_id, symbol=order.symbol, side=order.side,
                quantity=report.fill_qty, price=report.fill_price, fee=report.fee,
                liquidity=report.liquidity, ts=report.ts, trace_id=order.trace_id,
                is_liquidation=report.is_liquidation)
        elif report.status is not order.status:
            if order.status is OrderStatus.NEW and report.status is not OrderStatus.REJECTED:
                order.transition(OrderStatus.SUBMITTED, report.ts)
            if report.status is not order.status:
                if report.status not in TRANSITIONS[order.status]:
                    # A status snapshot older than what we already know (say ACCEPTED, read
                    # by reconciliation, after fills were applied): it cannot move us back.
                    return order, None
                order.transition(report.status, report.ts, report.reason)
        if order.status.is_terminal:
            self.open.pop(order.client_order_id, None)
        return order, fill

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        return [o for o in self.open.values() if symbol is None or o.symbol == symbol]

    def restore(self, orders: list[Order]) -> None:
        for o in orders:
            self.by_client[o.client_order_id] = o
            if o.status.is_open:
                self.open[o.client_order_id] = o
