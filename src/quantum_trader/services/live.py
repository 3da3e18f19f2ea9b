"""Distributed mode against a real venue (Binance USDⓈ-M through ccxt, or our simulator):
market-data follows closed klines, execution places through the reliable placer and learns
fills from the venue's trade list. Same topics, same messages as the replay path."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from quantum_trader.bus.codec import from_payload
from quantum_trader.bus.protocol import Bus, Message
from quantum_trader.config import Settings
from quantum_trader.domain.enums import OrderStatus
from quantum_trader.domain.models import Bar, OrderIntent
from quantum_trader.domain.orders import (
    TRANSITIONS,
    IllegalTransition,
    OverFill,
    client_order_id_for,
)
from quantum_trader.domain.records import AuditEvent, Checkpoint
from quantum_trader.exchange.ccxt_binance import BinanceSettings, CcxtBinanceExchange
from quantum_trader.exchange.errors import OrderRefused
from quantum_trader.exchange.protocol import ExecutionReport, OrderRequest
from quantum_trader.exchange.reliable import (
    CircuitBreaker,
    KillSwitch,
    OpenOrderRef,
    Reconciler,
    ReconcileResult,
    ReliablePlacer,
)
from quantum_trader.marketdata.live import LiveKlineFeed
from quantum_trader.runtime.clock import wall_ms
from quantum_trader.services.base import Service
from quantum_trader.services.execution import ExecutionService
from quantum_trader.services.messages import (
    bar_from,
    bar_id,
    bar_payload,
    observe_bar_published,
)
from quantum_trader.services.signing import ApprovalRefused, verify
from quantum_trader.store.protocol import TradeStore

MODES = {"binance-testnet": "testnet", "binance-demo": "demo", "binance-live": "live"}


def venue_for(settings: Settings, service: str) -> CcxtBinanceExchange:
    """The venue client of ``service``, limited to its share of the IP's request weight."""
    x = settings.exchange
    return CcxtBinanceExchange(BinanceSettings.from_config(
        settings, MODES[x.kind], x.base_url or None, x.symbols,  # type: ignore[arg-type]
        service=service))


class LiveMarketDataService(Service):
    """Closed klines from the venue onto ``market.bars``: gaps backfilled after a disconnect,
    never a bar twice or out of order; DEGRADED (and entries refused) while the feed is stale."""

    name = "market-data"

    def __init__(self, settings: Settings, bus: Bus, store: TradeStore | None) -> None:
        super().__init__(settings, bus, store)
        self.venue = venue_for(settings, self.name)
        self.stale_reason: str | None = "feed not started"
        self.last_ts: dict[str, int] = {}
        self.health.add("market data", self._check_feed, critical=False)

    async def _check_feed(self) -> str | None:
        return self.stale_reason

    def _on_health(self, ok: bool, why: str) -> None:
        self.stale_reason = None if ok else f"stale: {why}"

    async def on_start(self) -> None:
        if self.store is not None:
            cp = await self.store.checkpoint(self.name)
            if cp is not None:
                self.last_ts = dict(cp.last_bar_ts)
        await self.venue.connect()
        x = self.settings.exchange
        feed = LiveKlineFeed(self.venue, list(x.symbols), self.settings.data.timeframe,
                             self._publish, poll_s=x.poll_s, stale_after_s=x.stale_after_s,
                             on_health=self._on_health, start_after=self.last_ts or None)
        self.spawn(feed.run(self._stop))

    async def _publish(self, bar: Bar) -> None:
        self.stale_reason = None  # a new closed bar: the feed is alive
        await self.publish("market.bars", "bar", bar_payload(bar), bar_id(bar), bar_id(bar))
        observe_bar_published(bar)
        self.last_ts[bar.symbol] = bar.ts
        if self.store is not None:
            await self.store.write([Checkpoint.progress(self.name, self.last_ts, bar.close_ts)])

    async def on_stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.venue.close()


class LiveExecutionService(ExecutionService):
    """Execution on a venue: persist before send, the same client order id on every retry,
    query by client id after a timeout; fills come from the venue's trade list."""

    def __init__(self, settings: Settings, bus: Bus, store: TradeStore | None,
                 key: bytes) -> None:
        super().__init__(settings, bus, store, key)
        self.venue = venue_for(settings, self.name)
        self.breaker = CircuitBreaker(on_state=self._on_breaker)
        self.placer = ReliablePlacer(self.venue, self._persist, self.breaker)
        self.kill_switch = KillSwitch(self.venue, self.placer)
        self.last_reconcile: ReconcileResult | None = None
        self._mismatched: set[str] = set()
        self._from_id: dict[str, int] = {}
        self.consume("control", self.on_control)

    def _on_breaker(self, state: Any, reason: str) -> None:
        """Repeated venue errors escalate the trading state through risk-safety (the gate
        owns it); only an operator brings it back."""
        name = getattr(state, "name", str(state))
        self.log.warning("exchange_breaker", state=name, reason=reason)
        command = {"REDUCING": "pause", "HALTED": "halt"}.get(name)
        if command is not None:
            self.spawn(self.publish("control", command, {"reason": f"exchange: {reason}"}, ""))

    async def on_control(self, msg: Message) -> None:
        if msg.type != "kill":
            return
        flatten = bool(msg.payload.get("flatten", False))
        result = await self.kill_switch.trigger(f"operator kill switch ({msg.id})", flatten,
                                                msg.id)
        if self.store is not None:
            await self.store.write([AuditEvent("kill_switch", wall_ms(), {
                "canceled": result.canceled, "flatten": flatten,
                "cancel_failed": [c for c, _ in result.cancel_failed]}, msg.trace_id)])

    async def _reconcile_snapshot(self) -> tuple[list[OpenOrderRef], dict[str, float]]:
        ours = [OpenOrderRef(o.symbol, o.client_order_id)
                for o in self.node.orders.open_orders()
                if o.status is not OrderStatus.NEW and o.status is not OrderStatus.SUBMITTED]
        positions = {s: p.qty for s, p in self.node.portfolio.positions.items() if p.is_open}
        return ours, positions

    async def _on_reconciled(self, result: ReconcileResult) -> None:
        self.last_reconcile = result
        if result.clean:
            self._mismatched = set()
            return
        events: list[Any] = []
        async with self._lock:
            for report in result.adopted:  # on the venue, not ours: adopt and report it
                order = self.node.orders.adopt(report)
                order.reason = "EXTERNAL: found on the venue by reconciliation"
                self.node.apply_report(_snapshot_only(report))  # working: ACCEPTED from now on
                events.append(order)
            for ref, found in result.resolved:
                known = self.node.orders.open.get(ref.client_order_id)
                if known is None:
                    continue
                if found is None:  # never reached the venue: lost in flight
                    if OrderStatus.REJECTED not in TRANSITIONS[known.status]:
                        continue  # it moved on meanwhile; the next round sees it as it is
                    known.transition(OrderStatus.REJECTED, self.market_now, "lost in flight")
                    self.node.orders.open.pop(known.client_order_id, None)
                else:
                    self.node.apply_report(_snapshot_only(found))
                events.append(known)
            # A fill in flight makes a one-off difference; report only what persists.
            seen_before, self._mismatched = self._mismatched, {
                sym for sym, _, _ in result.position_mismatches}
            for sym, mine, theirs in result.position_mismatches:
                if sym not in seen_before:
                    continue
                events.append(AuditEvent("position_mismatch", wall_ms(),
                                         {"symbol": sym, "ours": mine, "venue": theirs}))
                self.log.error("position_mismatch", symbol=sym, ours=mine, venue=theirs)
            if self.store is not None and events:
                await self.store.write(events)

    async def _check_exchange(self) -> str | None:
        state = self.breaker.state.name
        return None if state == "ACTIVE" else f"exchange circuit breaker {state}"

    async def on_start(self) -> None:
        await super().on_start()
        await self.venue.connect()
        # Orders persisted but never acknowledged (we died between send and answer): ask the
        # venue by client id first; only an order it does not know is sent, with the same id.
        for order in self.node.orders.open_orders():
            if order.status in (OrderStatus.NEW, OrderStatus.SUBMITTED):
                try:
                    report = await self.placer.recover(self.node.orders.request_for(order))
                except OrderRefused as exc:
                    report = ExecutionReport(order.client_order_id, "", order.symbol,
                                             OrderStatus.REJECTED, self.market_now,
                                             order.side, reason=str(exc))
                self.node.apply_report(_snapshot_only(report))
                self.log.info("order_recovered", client_order_id=order.client_order_id,
                              status=report.status.value)
        await self._flush(self.market_now)
        for sym in self.settings.exchange.symbols:
            seen = [int(t) for f in await self.store.fills() if f.symbol == sym  # type: ignore[union-attr]
                    for t in [f.id.rsplit(":", 1)[-1]] if t.isdigit()]
            self._from_id[sym] = max(seen) + 1 if seen else 0
        self.spawn(self._poll_fills())
        self.spawn(Reconciler(self.venue).run_forever(self.settings.exchange.reconcile_s,
                                                      self._reconcile_snapshot,
                                                      self._on_reconciled))

    async def _persist(self, request: OrderRequest) -> None:
        order = self.node.orders.by_client.get(request.client_order_id)
        if order is not None and self.store is not None:
            await self.store.write([order])

    async def on_bar(self, msg: Message) -> None:
        bar = bar_from(msg)
        if bar.ts <= self.last_bar_ts.get(bar.symbol, -1):
            return
        async with self._lock:
            self.node.portfolio.mark(bar.symbol, bar.close, bar.close_ts)
            self.last_bar_ts[bar.symbol] = bar.ts
            self.market_now = max(self.market_now, bar.close_ts)
            self._note_bar_published(bar.close_ts, msg.ts)
            await self._flush(bar.close_ts, always_account=True)

    async def on_approved(self, msg: Message) -> None:
        try:
            payload = verify(msg.payload, self.key, self.market_now)
        except ApprovalRefused as exc:
            self.refused += 1
            if self.store is not None:
                await self.store.write([AuditEvent("intent_refused", wall_ms(),
                                                   {"reason": str(exc), "message": msg.id},
                                                   msg.trace_id)])
            return
        async with self._lock:
            if payload.get("kind") == "cancel":
                cid = client_order_id_for(str(payload["intent_id"]))
                order = self.node.orders.open.get(cid)
                if order is not None:
                    with contextlib.suppress(Exception):
                        self.node.apply_report(await self.venue.cancel(order.symbol, cid))
                await self._flush(self.market_now)
                return
            intent = from_payload(OrderIntent, payload)
            self.node.remember_entry(intent)
            order = self.node.orders.create(intent, self.market_now)
            if order.status is not OrderStatus.NEW:
                return  # a redelivery: this intent already has its one order
            try:
                report = await self.placer.place(self.node.orders.request_for(order))
            except OrderRefused as exc:
                report = ExecutionReport(order.client_order_id, "", order.symbol,
                                         OrderStatus.REJECTED, self.market_now, order.side,
                                         reason=str(exc))
            self.node.apply_report(_snapshot_only(report))
            await self._flush(self.market_now)

    async def _poll_fills(self) -> None:
        while not self._stop.is_set():
            for sym in self.settings.exchange.symbols:
                try:
                    fills = await self.venue.fills(sym, self._from_id.get(sym, 0))
                except Exception as exc:
                    self.log.warning("fills_poll_failed", symbol=sym, error=str(exc))
                    continue
                if not fills:
                    continue
                async with self._lock:
                    for report in fills:
                        if report.client_order_id in self.node.orders.by_client or \
                                report.is_liquidation:
                            try:
                                self.node.apply_report(report)
                            except (OverFill, IllegalTransition) as exc:
                                # One report our books cannot take must not stop the fill
                                # poller (every later fill would be lost); reconciliation
                                # reports the position difference it leaves.
                                self.log.error("fill_not_applied", trade_id=report.trade_id,
                                               client_order_id=report.client_order_id,
                                               error=f"{type(exc).__name__}: {exc}")
                        self._from_id[sym] = max(self._from_id.get(sym, 0),
                                                 int(report.trade_id) + 1)
                    await self._flush(self.market_now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.exchange.poll_s)

    async def on_stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.venue.close()


def _snapshot_only(report: ExecutionReport) -> ExecutionReport:
    """Placement answers are order snapshots: fills are applied once, from the trade list."""
    from dataclasses import replace

    status = report.status
    if status in (OrderStatus.FILLED, OrderStatus.PARTIALLY_FILLED):
        status = OrderStatus.ACCEPTED
    return replace(report, status=status, fill_qty=0.0)
