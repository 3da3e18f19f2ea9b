"""execution: signed intents in, orders on the exchange, fills and positions out.

The execution core is the trading node with no signal source, no gate and no exit logic of
its own (those live in their services): it keeps the order state machine, places with
deterministic client order ids, persists before it publishes, and tracks our books.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from fastapi import FastAPI

from quantum_trader.bus.codec import from_payload, to_payload
from quantum_trader.bus.protocol import Bus, Message
from quantum_trader.config import Settings
from quantum_trader.domain.exits import ExitActions, ExitBrain
from quantum_trader.domain.models import Bar, Fill, OrderIntent, Signal
from quantum_trader.domain.orders import Order, client_order_id_for
from quantum_trader.domain.position import Position
from quantum_trader.domain.records import (
    AccountSnapshot,
    AuditEvent,
    ClosedTrade,
    PositionSnapshot,
)
from quantum_trader.observability.metrics import (
    BAR_TO_ORDER_SECONDS,
    DAILY_LOSS_RATIO,
    DRAWDOWN_RATIO,
    EQUITY_USD,
    ORDERS_PLACED,
    POSITIONS_OPEN,
)
from quantum_trader.runtime.clock import wall_ms
from quantum_trader.runtime.node import ListJournal, TradingNode
from quantum_trader.runtime.paper import node_checkpoint, restore_node
from quantum_trader.runtime.wiring import build_node
from quantum_trader.services.base import Service
from quantum_trader.services.messages import bar_from
from quantum_trader.services.signing import ApprovalRefused, verify
from quantum_trader.store.protocol import TradeStore


class _NoSignals:
    name = "none"

    def on_bar(self, bar: Bar) -> Signal | None:
        return None


class _NoExits(ExitBrain):
    """Exit decisions belong to the exit-brain service, not to execution."""

    def on_entry_fill(self, entry: OrderIntent | None, position: Position, ts: int,
                      trace_id: str) -> ExitActions:
        return ExitActions()

    def on_position_closed(self, symbol: str) -> ExitActions:
        return ExitActions()

    def on_bar(self, bar: Bar, position: Position | None) -> ExitActions | None:
        return None


class ExecutionService(Service):
    name = "execution"
    upstreams = ("risk-safety",)

    def __init__(self, settings: Settings, bus: Bus, store: TradeStore | None,
                 key: bytes) -> None:
        super().__init__(settings, bus, store)
        if not key:
            raise ValueError("execution needs the approval HMAC key to verify intents: set "
                             "QT_SECRETS__APPROVAL_HMAC_KEY_FILE")
        self.key = key
        self.journal = ListJournal()
        self.node: TradingNode = build_node(settings, _NoSignals(), self.journal, self.name)
        self.node.exits = _NoExits()
        self.last_bar_ts: dict[str, int] = {}
        self.market_now = 0
        # bar close time -> wall time the bar was published, for bar-to-order latency
        self._bar_wall: dict[int, int] = {}
        self.latencies_ms: deque[float] = deque(maxlen=100_000)
        self.refused = 0
        self._account_seq = 0
        self._lock = asyncio.Lock()
        self.health.add("exchange", self._check_exchange, critical=True)
        self.consume("orders.approved", self.on_approved)
        self.consume("market.bars", self.on_bar)

    def _note_bar_published(self, close_ts: int, wall: int) -> None:
        """Remember when each recent bar was published (bounded), for bar-to-order latency."""
        self._bar_wall[close_ts] = wall
        if len(self._bar_wall) > 10_000:
            self._bar_wall.pop(next(iter(self._bar_wall)))

    def add_routes(self, app: FastAPI) -> None:
        @app.get("/stats/latency")
        async def latency() -> dict[str, float | int]:
            """Bar published -> entry order accepted, across processes (milliseconds)."""
            return latency_summary(self.latencies_ms)

    async def _check_exchange(self) -> str | None:
        return None  # the simulated exchange lives in-process; ccxt adds a real probe

    async def on_start(self) -> None:
        if self.store is None:
            return
        cp = await restore_node(self.node, self.store, [])
        if cp is not None:
            self.last_bar_ts = dict(cp.last_bar_ts)
            self.market_now = cp.ts
        # Entries still working need their approved intent back: its stop and target levels
        # travel with the fill to the exit brain.
        for order in self.node.orders.open_orders():
            if order.purpose.value != "ENTRY":
                continue
            for d in await self.store.decisions(trace_id=order.trace_id):
                if d.intent is not None and d.intent.id == order.intent_id:
                    self.node.remember_entry(d.intent)

    async def on_bar(self, msg: Message) -> None:
        bar = bar_from(msg)
        if bar.ts <= self.last_bar_ts.get(bar.symbol, -1):
            return  # redelivered after a restart: already matched
        self._note_bar_published(bar.close_ts, msg.ts)
        async with self._lock:
            self.node.on_bar(bar)
            self.last_bar_ts[bar.symbol] = bar.ts
            self.market_now = max(self.market_now, bar.close_ts)
            await self._flush(bar.close_ts, always_account=True)

    async def on_approved(self, msg: Message) -> None:
        try:
            payload = verify(msg.payload, self.key, self.market_now)
        except ApprovalRefused as exc:
            self.refused += 1
            self.log.warning("intent_refused", reason=str(exc), message_id=msg.id)
            if self.store is not None:
                await self.store.write([AuditEvent("intent_refused", wall_ms(),
                                                   {"reason": str(exc), "message": msg.id},
                                                   msg.trace_id)])
            return
        age = wall_ms() - msg.ts
        if age > self.settings.services.signal_max_age_ms:
            self.refused += 1
            self.log.warning("intent_refused", reason=f"waited {age} ms", message_id=msg.id)
            return
        async with self._lock:
            if payload.get("kind") == "cancel":
                self.node.cancel(client_order_id_for(str(payload["intent_id"])), self.market_now,
                                 "exit brain: replaced or position closed")
            else:
                intent = from_payload(OrderIntent, payload)
                order = self.node.place(intent, self.market_now)
                if order.exchange_order_id is not None:
                    ORDERS_PLACED.labels(order.symbol, order.side.value).inc()
                    published = self._bar_wall.get(intent.ts)
                    if published is not None and intent.purpose.value == "ENTRY":
                        seconds = (time.time_ns() / 1e6 - published) / 1000.0
                        BAR_TO_ORDER_SECONDS.observe(seconds)
                        self.latencies_ms.append(seconds * 1000.0)
            await self._flush(self.market_now)

    async def _flush(self, ts: int, always_account: bool = False) -> None:
        events = self.journal.drain()
        if not events and not always_account:
            return
        if not events:
            # A bar that changed nothing but prices: the account goes out first and the
            # checkpoint is committed after, off the order path. Safe because a crash in
            # between replays the bar from the previous checkpoint to the same books.
            await self._publish_account(ts)
            if self.store is not None:
                await self.store.write([node_checkpoint(self.node, self.last_bar_ts)])
            return
        if self.store is not None:
            events.append(node_checkpoint(self.node, self.last_bar_ts))
            await self.store.write(events)  # committed before anyone hears of it
        # Fills go out before the account update that includes them: whoever sees the account
        # for a bar (risk-safety, the exit brain) and then drains the fills has them all.
        for ev in events:
            if isinstance(ev, Fill):
                await self._publish_fill(ev, ts)
            elif isinstance(ev, Order):
                await self.publish("executions", "order", {"order": _order_payload(ev)},
                                   ev.trace_id, f"order-{ev.id}-{ev.status}-{ev.filled_qty}")
            elif isinstance(ev, ClosedTrade):
                await self.publish("executions", "trade_closed", to_payload(ev), ev.trace_id,
                                   f"trade-{ev.id}")
        if always_account or any(isinstance(ev, Fill) for ev in events):
            await self._publish_account(ts)

    async def _publish_fill(self, fill: Fill, known_at: int) -> None:
        order = self.node.orders.by_client.get(fill.client_order_id)
        pos = self.node.portfolio.positions.get(fill.symbol)
        entry = self.node.entry_for(fill.client_order_id)
        payload: dict[str, Any] = {
            "fill": to_payload(fill),
            "known_at": known_at,  # market time at which the system learned of the fill
            "purpose": order.purpose.value if order else "EXIT",
            "tag": order.tag if order else "",
            "entry": to_payload(entry) if entry is not None else None,
            "position": to_payload(self.node.snapshot(pos, fill.ts, fill.trace_id))
            if pos is not None else None,
        }
        await self.publish("executions", "fill", payload, fill.trace_id, f"fill-{fill.id}")

    async def _publish_account(self, ts: int) -> None:
        pf = self.node.portfolio
        snaps = tuple(PositionSnapshot(p.symbol, p.qty, p.avg_entry, p.realized_pnl, p.fees,
                                       p.funding, p.opened_ts, p.last_price, p.leverage, ts)
                      for p in pf.positions.values())
        snap = AccountSnapshot(ts, pf.wallet, pf.equity, pf.peak_equity, pf.day_start_equity,
                               snaps, stop_outs=dict(self.node.risk.ctx.stop_outs))
        EQUITY_USD.set(pf.equity)
        DRAWDOWN_RATIO.set(pf.drawdown)
        DAILY_LOSS_RATIO.set(max(0.0, 1 - pf.equity / pf.day_start_equity)
                             if pf.day_start_equity else 0.0)
        POSITIONS_OPEN.set(len(pf.open_positions))
        self._account_seq += 1
        await self.publish("positions", "account", to_payload(snap), "",
                           f"account-{ts}-{self._account_seq}")


def latency_summary(samples: deque[float]) -> dict[str, float | int]:
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"count": len(ordered), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "max_ms": round(ordered[-1], 3)}


def _order_payload(order: Order) -> dict[str, Any]:
    return {"id": order.id, "client_order_id": order.client_order_id,
            "intent_id": order.intent_id, "symbol": order.symbol, "side": order.side.value,
            "status": order.status.value, "filled_qty": order.filled_qty,
            "quantity": order.quantity, "tag": order.tag, "purpose": order.purpose.value,
            "reason": order.reason}
