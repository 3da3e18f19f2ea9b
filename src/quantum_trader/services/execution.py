"""execution: signed intents in, orders on the venue, venue trades booked, positions out.

It runs the execution engine (``domain/execution.py``) that the backtest node runs, over an
async venue driver (``exchange/drivers.py``): the in-process simulated exchange for a
distributed replay, or a real venue through ccxt (Binance, or our simulator server). One
implementation for both; what differs is the driver.

What it guarantees, and how:

* **One venue order per intent, for ever.** An intent's order is claimed in the store (unique
  client id) before anything is sent; a redelivered approval or a restart finds it there and
  never sends again. An order that may have reached the venue (SUBMITTED) is looked up by client
  id before any send, and "not found" counts only once its recvWindow has passed.
* **Every venue trade booked exactly once.** Trades are read from the venue's trade list (or
  reported by the simulated exchange), keyed by (symbol, trade id) and committed in one
  transaction with their effects, the poll cursor and the messages they cause (the outbox).
  A store write that fails is retried with the lock held (nothing runs ahead of the store);
  if it keeps failing the process exits and recovers from the store (crash-only).
* **Nothing committed goes unsaid.** Bus messages are written to the outbox in the same
  transaction and published from there until Redis has them.
* **The venue is the truth for the account.** Reconciliation reads the venue's open orders,
  wallet and positions, books whatever trades are outstanding, and adopts the venue's account
  where ours still differs (audited). Orders found on the venue that we did not place are
  adopted as EXTERNAL.
* **Every position is protected.** A position with no working stop on the venue for longer than
  a grace period gets one (or is closed at market if its stop level is already crossed); a stop
  refused with -2021 closes the position at market. Positions without a stop are listed in the
  account updates, and risk-safety refuses entries while there are any.
* **Stale dies.** An entry approval that waited past ``signal_max_age_ms`` on the bus, or whose
  intent expired before it could be sent, is refused (recorded, never sent).
* **The kill switch keeps stops or flattens, and says which.**
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import FastAPI

from quantum_trader.bus.codec import from_payload, to_payload
from quantum_trader.bus.protocol import Bus, Message
from quantum_trader.config import Settings
from quantum_trader.domain.enums import (
    IntentPurpose,
    OrderStatus,
    OrderType,
    Side,
    TradingState,
)
from quantum_trader.domain.execution import (
    PROTECTIVE_TAGS,
    STOP_OUTS,
    ExecutionEngine,
    ListJournal,
)
from quantum_trader.domain.models import Fill, FundingPayment, OrderIntent
from quantum_trader.domain.orders import Order, client_order_id_for
from quantum_trader.domain.portfolio import Portfolio
from quantum_trader.domain.records import (
    AccountSnapshot,
    AuditEvent,
    Checkpoint,
    ClosedTrade,
    OutboundMessage,
    PositionSnapshot,
)
from quantum_trader.domain.venue import (
    WOULD_TRIGGER_IMMEDIATELY,
    OrderOrigin,
    OrderRequest,
    OrderUpdate,
    VenueTrade,
)
from quantum_trader.exchange.drivers import (
    DriverEvent,
    SimulatedVenue,
    StartReport,
    VenueDriver,
)
from quantum_trader.exchange.errors import ExchangeError, OrderRefused
from quantum_trader.exchange.reliable import PlacementUnknown
from quantum_trader.exchange.simulated import SimulatedExchange
from quantum_trader.observability.metrics import (
    BAR_TO_ORDER_SECONDS,
    BOOK_ADJUSTMENTS,
    DAILY_LOSS_RATIO,
    DRAWDOWN_RATIO,
    EQUITY_USD,
    ORDERS_PLACED,
    POSITIONS_OPEN,
    POSITIONS_UNPROTECTED,
)
from quantum_trader.runtime.clock import wall_ms
from quantum_trader.services.base import Service
from quantum_trader.services.messages import bar_from
from quantum_trader.services.signing import ApprovalRefused, verify
from quantum_trader.store.errors import StoreError
from quantum_trader.store.protocol import StoreEvent, TradeStore

_RECENT_INTENTS = 500


def venue_driver_for(settings: Settings, service: str) -> VenueDriver:
    """The configured venue: the in-process simulated exchange, or a real one through ccxt."""
    if settings.exchange.kind == "simulated":
        return SimulatedVenue(SimulatedExchange(settings.exchange_settings(),
                                                settings.instrument_lookup()))
    from quantum_trader.exchange.ccxt_binance import venue_for
    from quantum_trader.exchange.drivers import LiveVenue

    adapter = venue_for(settings, service)
    return LiveVenue(adapter, settings.exchange.symbols,
                     recv_window_ms=adapter.settings.recv_window_ms)


class ExecutionService(Service):
    name = "execution"
    upstreams = ("risk-safety",)

    def __init__(self, settings: Settings, bus: Bus, store: TradeStore | None,
                 key: bytes, driver: VenueDriver | None = None) -> None:
        super().__init__(settings, bus, store)
        if not key:
            raise ValueError("execution needs the approval HMAC key to verify intents: set "
                             "QTRADER_SECRETS__APPROVAL_HMAC_KEY_FILE")
        self.key = key
        self.journal = ListJournal()
        self.portfolio = Portfolio(settings.initial_balance)
        self.instrument = settings.instrument_lookup()
        self.engine = ExecutionEngine(self.portfolio, self.journal,
                                      settings.risk.order_leverage, self.instrument)
        self.driver = driver if driver is not None else venue_driver_for(settings, self.name)
        self.driver.breaker.on_state = self._on_breaker
        self.last_bar_ts: dict[str, int] = {}
        self.market_now = 0
        self.last_prices: dict[str, float] = {}
        # bar close time -> wall time the bar was published, for bar-to-order latency
        self._bar_wall: dict[int, int] = {}
        self.latencies_ms: deque[float] = deque(maxlen=100_000)
        self.refused = 0
        self._account_seq = 0
        self._lock = asyncio.Lock()
        self._held: dict[str, Order] = {}  # entries waiting for the exit of the opposite side
        self._recent_intents: deque[str] = deque(maxlen=_RECENT_INTENTS)
        self._unprotected_since: dict[str, int] = {}  # reset when a guard stop is sent
        self._unprotected_first: dict[str, int] = {}  # not reset: what the metric reports
        self._guard_seq = 0
        self.stop_outs: dict[str, int] = {}  # symbol -> time of its last stop-out (cooldown)
        self.kept_settings: dict[str, str] = {}
        self.refusal: str | None = None  # a venue we must not trade on (hedge mode, ...)
        self.store_failing: str | None = None
        self.reconciled = 0
        self.last_reconcile_ok = False
        self.on_fatal: Callable[[str], None] = _exit_process
        self._outbox: Any = None
        self._protect = settings.exits.stop_loss
        self._grace_ms = int(settings.exchange.protection_grace_s * 1000)
        self._send_margin_ms = int(settings.exchange.send_margin_s * 1000)
        self.health.add("exchange", self._check_exchange, critical=True)
        self.health.add("trading", self._check_breaker, critical=False)
        self.health.add("venue settings", self._check_settings, critical=False)
        self.health.add("protection", self._check_protection, critical=False)
        self.health.add("store writes", self._check_store_writes, critical=False)
        self.consume("orders.approved", self.on_approved)
        self.consume("market.bars", self.on_bar)
        self.consume("control", self.on_control)

    # --- health -------------------------------------------------------------------------------
    async def _check_exchange(self) -> str | None:
        return self.refusal  # a venue we must not trade on: DOWN

    async def _check_breaker(self) -> str | None:
        # Venue errors or the kill switch hold new entries back: DEGRADED, the service works.
        state = self.driver.breaker.state.name
        return None if state == "ACTIVE" else f"exchange circuit breaker {state}"

    async def _check_settings(self) -> str | None:
        if not self.kept_settings:
            return None
        return "; ".join(f"{s}: {why}" for s, why in sorted(self.kept_settings.items()))

    async def _check_protection(self) -> str | None:
        unprotected = self.engine.unprotected() if self._protect else []
        return f"positions without a working stop: {', '.join(unprotected)}" \
            if unprotected else None

    async def _check_store_writes(self) -> str | None:
        return self.store_failing

    def _on_breaker(self, state: Any, reason: str) -> None:
        """Repeated venue errors escalate the trading state through risk-safety (the gate
        owns it); only an operator brings it back."""
        name = getattr(state, "name", str(state))
        self.log.warning("exchange_breaker", state=name, reason=reason)
        command = {"REDUCING": "pause", "HALTED": "halt"}.get(name)
        if command is not None:
            self.spawn(self.publish("control", command, {"reason": f"exchange: {reason}"}, ""))

    def add_routes(self, app: FastAPI) -> None:
        @app.get("/stats/latency")
        async def latency() -> dict[str, float | int]:
            """Bar published -> entry order accepted, across processes (milliseconds)."""
            return latency_summary(self.latencies_ms)

        @app.get("/stats/reconcile")
        async def reconcile() -> dict[str, Any]:
            """How reconciliation with the venue stands (verify and preflight read this)."""
            return {"rounds": self.reconciled, "clean": self.last_reconcile_ok,
                    "unprotected": self.engine.unprotected() if self._protect else [],
                    "working_orders": len(self.engine.working_orders()),
                    "kept_settings": self.kept_settings}

    async def _venue_pace(self, symbol: str) -> tuple[int, float]:
        """The venue's clock now and how fast it runs against the wall clock, from two readings
        a moment apart: 1x on Binance, thousands of times faster on an accelerated simulator,
        standing still in lockstep. (A remote venue only: the in-process one has no clock of
        its own between bars.)"""
        w0 = time.monotonic()
        t0 = await self.driver.market_time(symbol)
        t1 = await self.driver.market_time(symbol)
        dw = max(time.monotonic() - w0, 1e-3) * 1000
        return t1, max(0.0, (t1 - t0) / dw)

    def _note_bar_published(self, close_ts: int, wall: int) -> None:
        """Remember when each recent bar was published (bounded), for bar-to-order latency."""
        self._bar_wall[close_ts] = wall
        if len(self._bar_wall) > 10_000:
            self._bar_wall.pop(next(iter(self._bar_wall)))

    # --- start-up: books from the store, then the venue ---------------------------------------
    async def on_start(self) -> None:
        store = self.store
        cursors = {}
        cp = None
        if store is not None:
            cp = await store.checkpoint(self.name)
            cursors = await store.cursors()
            await self._restore_books(store, cp)
        if store is not None:
            from quantum_trader.bus.outbox import OutboxPublisher
            from quantum_trader.store.outbox import ServiceOutbox

            self._outbox = OutboxPublisher(ServiceOutbox(store, self.name), self.bus)
            self.spawn(self._outbox.run(self._stop))
        try:
            report = await self.driver.start(cursors)
        except ExchangeError as exc:
            # A venue we cannot trade on (hedge mode) or cannot reach: say so and stay up
            # (DOWN), never crash-loop; an operator fixes the cause and restarts.
            self.refusal = f"venue refused: {exc}"
            self.log.error("venue_refused", error=str(exc))
            return
        self._after_start(report, cp)
        async with self._lock:
            self.driver.remember_algo(o.client_order_id for o in self.engine.live_orders()
                                      if o.order_type is OrderType.STOP_MARKET)
            await self._recover_orders()
            await self._reconcile(first_start=report.first_start)
            await self._commit(account=True)
        if self.driver.remote:
            self.spawn(self._poll_loop())
        self.spawn(self._reconcile_loop())

    async def _restore_books(self, store: TradeStore, cp: Checkpoint | None) -> None:
        pf = self.portfolio
        if cp is not None:
            pf.wallet, pf.peak_equity, pf.max_drawdown = cp.wallet, cp.peak_equity, \
                cp.max_drawdown
            pf.day_start_ts, pf.day_start_equity = cp.day_start_ts, cp.day_start_equity
            pf.fees_paid, pf.funding_paid = cp.fees_paid, cp.funding_paid
            self.last_bar_ts = dict(cp.last_bar_ts)
            self.market_now = cp.ts
            self.last_prices = dict(cp.extra.get("last_close", {}))
            self.engine.restore_open_trades(cp.extra.get("open_trades", {}))
            self.stop_outs = dict(cp.extra.get("stop_outs", {}))
        snaps = await store.positions()
        pf.replace_positions([s.to_position() for s in snaps])
        for snap in snaps:
            pf.mark(snap.symbol, snap.last_price, cp.ts if cp else snap.ts)
        orders = await store.open_orders()
        self.engine.adopt(orders)
        self.engine.mark_booked(await store.recent_trade_keys())
        self.engine.mark_funding_booked(await store.funding_ids())
        # Entries still working need their approved intent back: its stop and target levels
        # travel with the fill to the exit brain.
        for order in orders:
            if order.purpose is not IntentPurpose.ENTRY:
                continue
            for d in await store.decisions(trace_id=order.trace_id):
                if d.intent is not None and d.intent.id == order.intent_id:
                    self.engine.remember_entry(d.intent)
        self._recent_intents.extend(o.intent_id for o in orders if o.intent_id)

    def _after_start(self, report: StartReport, cp: Checkpoint | None) -> None:
        self.kept_settings = dict(report.kept)
        if isinstance(self.driver, SimulatedVenue) and cp is not None:
            # The in-process venue lost its state with the process: give it ours back, then
            # its working orders (the store has them).
            self.driver.now = self.market_now
            self.driver.restore(self.portfolio.wallet, self.portfolio.open_positions,
                                self.last_prices, cp.extra.get("venue_ids"))
            for order in self.engine.working_orders():
                if order.status in (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED) \
                        and order.remaining > 0:
                    update = self.driver.exchange.submit(self.engine.request_for(order),
                                                         self.market_now)
                    if update.status is OrderStatus.REJECTED:
                        self.engine.refuse(order, self.market_now,
                                           f"could not be restored: {update.reason}",
                                           OrderStatus.CANCELED)

    async def _recover_orders(self) -> None:
        """Orders persisted but not known to be on the venue: NEW ones were never sent (sent
        now unless expired); SUBMITTED ones may be there (looked up before anything else)."""
        for order in self.engine.working_orders():
            if order.status is OrderStatus.NEW:
                if order.expired(self.market_now):
                    self.engine.refuse(order, self.market_now, "expired before it was sent",
                                       OrderStatus.EXPIRED)
                else:  # sent unless the venue's clock says it is too late (before_send)
                    await self._submit(order)
            elif order.status is OrderStatus.SUBMITTED:
                await self._submit(order, recovering=True)

    # --- approvals -----------------------------------------------------------------------------
    async def on_approved(self, msg: Message) -> None:
        try:
            payload = verify(msg.payload, self.key, self.market_now)
        except ApprovalRefused as exc:
            self.refused += 1
            self.log.warning("intent_refused", reason=str(exc), message_id=msg.id)
            await self._audit_now("intent_refused", {"reason": str(exc), "message": msg.id},
                                  msg.trace_id)
            return
        async with self._lock:
            if payload.get("kind") == "cancel":
                await self._cancel(client_order_id_for(str(payload["intent_id"])),
                                   "exit brain: replaced or position closed")
                await self._commit()
                return
            intent = from_payload(OrderIntent, payload)
            await self._on_intent(intent, wall_ms() - msg.ts)
            if self._held:  # an exit just reached the venue: the entry behind it may go
                await self._release_held()
            await self._commit()

    async def _on_intent(self, intent: OrderIntent, age_ms: int) -> None:
        engine = self.engine
        cid = client_order_id_for(intent.id)
        known = engine.order(cid)
        if known is not None and known.status is not OrderStatus.NEW:
            return  # a redelivery: this intent has its one order already
        order = known or engine.create(intent, self.market_now)
        self._recent_intents.append(intent.id)
        stale = intent.purpose is IntentPurpose.ENTRY and \
            age_ms > self.settings.services.signal_max_age_ms
        if self.store is not None and known is None:
            on_record = await self.store.claim_order(order)
            if on_record.status is not OrderStatus.NEW or on_record.created_ts != \
                    order.created_ts:
                engine.adopt([on_record])  # an earlier incarnation made it: never again
                if on_record.status is not OrderStatus.NEW:
                    return
                order = on_record
        if stale:
            self.refused += 1
            engine.refuse(order, self.market_now, f"stale: the approval waited {age_ms} ms "
                          f"(limit {self.settings.services.signal_max_age_ms} ms)",
                          OrderStatus.EXPIRED)
            return
        await self._submit(order)

    async def _submit(self, order: Order, recovering: bool = False) -> None:
        """Send ``order`` (or, when it may be on the venue already, find it first)."""
        engine = self.engine
        now = self.market_now
        if not recovering and order.status is OrderStatus.NEW:
            if order.expired(now):
                engine.refuse(order, now, "expired before it was sent", OrderStatus.EXPIRED)
                return
            if engine.hold_reason(order) is not None:
                self._held[order.client_order_id] = order
                self.journal.record(order)
                return
            moved = self._moved_since_approval(order)
            if moved is not None:
                engine.refuse(order, now, moved, OrderStatus.EXPIRED)
                return
        self._held.pop(order.client_order_id, None)
        if self.refusal is not None:  # a venue we must not trade on: nothing is sent
            engine.refuse(order, now, self.refusal)
            return
        request = engine.request_for(order)

        async def before_send(_req: OrderRequest, _wall: int) -> None:
            engine.sent(order, now, wall_ms())
            await self._commit()  # on record as "may be on the venue" before it goes
            # Retries and commits take time, and the market moves meanwhile: an entry with
            # less life left than a send can take (at the venue clock's pace) is not sent.
            if not order.reduce_only and order.expires_at and self.driver.remote:
                clock, pace = await self._venue_pace(order.symbol)
                margin = int(self._send_margin_ms * max(pace, 1.0 if pace > 0 else 0.0))
                if clock + margin > order.expires_at:
                    raise OrderRefused(f"expires at {order.expires_at}, too soon to be sent "
                                       f"(venue time {clock})")
            self.log.info("order_sending", client_order_id=order.client_order_id,
                          intent_id=order.intent_id, expires_at=order.expires_at)

        try:
            update = await self.driver.place(request, before_send,
                                             sent_before_ms=order.sent_ts if recovering or
                                             order.status is OrderStatus.SUBMITTED else 0)
        except OrderRefused as exc:
            engine.refuse(order, now, str(exc))
            return
        except PlacementUnknown as exc:
            self.log.error("placement_unknown", client_order_id=order.client_order_id,
                           error=str(exc))
            return  # stays SUBMITTED: reconciliation establishes what the venue did
        await self._apply([update])
        if update.status is not OrderStatus.REJECTED:
            ORDERS_PLACED.labels(order.symbol, order.side.value).inc()
            if order.purpose is IntentPurpose.ENTRY:
                published = self._bar_wall.get(order.created_ts)
                if published is not None:
                    seconds = (time.time_ns() / 1e6 - published) / 1000.0
                    BAR_TO_ORDER_SECONDS.observe(seconds)
                    self.latencies_ms.append(seconds * 1000.0)

    def _moved_since_approval(self, order: Order) -> str | None:
        """An entry is sized at its approval's price. One that goes out later (held behind
        an exit, recovered after a restart) is not sent once the market has left the band
        the risk gate allows, or it would open more (or less) than the limits it was sized
        for."""
        if order.purpose is not IntentPurpose.ENTRY or order.reduce_only:
            return None
        intent = self.engine.entry_for(order.client_order_id)
        last = self.last_prices.get(order.symbol)
        if intent is None or not intent.reference_price or not last:
            return None
        limit = self.settings.risk.max_price_deviation
        dev = abs(last / intent.reference_price - 1.0)
        if dev <= limit:
            return None
        return (f"the market moved {dev:.2%} since the approval (approved at "
                f"{intent.reference_price:g}, last {last:g}; risk.max_price_deviation "
                f"{limit:.2%}): not sent")

    async def _cancel(self, client_order_id: str, reason: str) -> OrderUpdate | None:
        order = self.engine.order(client_order_id)
        if order is None or not order.status.is_open:
            return None
        if order.status is OrderStatus.NEW:
            self._held.pop(client_order_id, None)
            self.engine.refuse(order, self.market_now, reason, OrderStatus.CANCELED)
            return None
        try:
            update = await self.driver.cancel(order.symbol, client_order_id)
        except ExchangeError as exc:
            self.log.warning("cancel_failed", client_order_id=client_order_id, error=str(exc))
            return None
        if update is not None:
            await self._apply([update])
        return update

    async def _release_held(self) -> None:
        for order in list(self._held.values()):
            if order.status is not OrderStatus.NEW:
                self._held.pop(order.client_order_id, None)
            elif order.expired(self.market_now):
                self._held.pop(order.client_order_id, None)
                self.engine.refuse(order, self.market_now,
                                   "expired waiting for the opposite exit", OrderStatus.EXPIRED)
            elif self.engine.hold_reason(order) is None:
                await self._submit(order)

    # --- what the venue did --------------------------------------------------------------------
    async def _apply(self, events: Iterable[DriverEvent]) -> int:
        """Book ``events`` in order; returns how many changed the books."""
        n = 0
        for ev in events:
            if isinstance(ev, VenueTrade):
                if not self.engine.is_booked(ev) and self.engine.order(ev.client_order_id) \
                        is None and self.store is not None and ev.client_order_id:
                    found = await self.store.order_by_client_id(ev.client_order_id)
                    if found is not None:
                        self.engine.adopt([found])
                booking = self.engine.on_trade(ev)
                self.driver.advance(ev)
                if booking is None:
                    continue
                n += 1
                # The position a fill makes is committed with the fill, whatever commit comes
                # next (the one before a send carries no account snapshot).
                self.journal.record(self._snapshot_of(booking.position, ev.ts,
                                                      booking.fill.trace_id))
                if booking.was_open and not booking.position.is_open and \
                        booking.exit_reason in STOP_OUTS:
                    self.stop_outs[ev.symbol] = ev.ts
                self._fill_message(booking.fill, booking.order)
                if booking.overfilled:
                    self.log.error("overfill", client_order_id=booking.order.client_order_id,
                                   trade_id=ev.trade_id)
            elif isinstance(ev, FundingPayment):
                if self.engine.on_funding(ev):
                    n += 1
                    pos = self.portfolio.positions.get(ev.symbol)
                    if pos is not None:  # its funding total travels with the payment
                        self.journal.record(self._snapshot_of(pos, ev.ts, ""))
                self.driver.advance(ev)
            else:
                order = self.engine.order(ev.client_order_id)
                if order is None and self.store is not None and ev.client_order_id:
                    found = await self.store.order_by_client_id(ev.client_order_id)
                    if found is not None:
                        self.engine.adopt([found])
                order = self.engine.on_update(ev)
                if ev.status is OrderStatus.REJECTED and ev.code == \
                        WOULD_TRIGGER_IMMEDIATELY and order.tag in PROTECTIVE_TAGS:
                    await self._close_at_market(order.symbol, "stop_loss", "sl",
                                                f"{order.intent_id}:close")
        return n

    def _fill_message(self, fill: Fill, order: Order) -> None:
        pos = self.portfolio.positions.get(fill.symbol)
        entry = self.engine.entry_for(fill.client_order_id)
        payload: dict[str, Any] = {
            "fill": to_payload(fill),
            "known_at": self.market_now,  # market time at which the system learned of it
            "purpose": order.purpose.value,
            "tag": order.tag,
            "origin": order.origin.value,
            "entry": to_payload(entry) if entry is not None else None,
            "position": to_payload(self._snapshot_of(pos, fill.ts, fill.trace_id))
            if pos is not None else None,
        }
        self._say("executions", "fill", payload, fill.trace_id, f"fill-{fill.id}")

    def _say(self, topic: str, type_: str, payload: dict[str, Any], trace_id: str,
             msg_id: str) -> None:
        """A message that goes out once the current batch is committed (the outbox)."""
        self.journal.record(OutboundMessage(topic, msg_id, type_, payload, wall_ms(), trace_id,
                                            self.name))

    # --- bars and polling ----------------------------------------------------------------------
    async def on_bar(self, msg: Message) -> None:
        bar = bar_from(msg)
        if bar.ts <= self.last_bar_ts.get(bar.symbol, -1):
            return  # redelivered after a restart: already handled
        self._note_bar_published(bar.close_ts, msg.ts)
        async with self._lock:
            self.market_now = max(self.market_now, bar.close_ts)
            await self._apply(await self._venue(self.driver.on_bar(bar)))
            self.portfolio.mark(bar.symbol, bar.close, bar.close_ts)
            self.last_prices[bar.symbol] = bar.close
            self.last_bar_ts[bar.symbol] = bar.ts
            await self._release_held()
            await self._guard_positions()
            await self._commit(account=True)

    async def _venue(self, call: Awaitable[list[DriverEvent]]) -> list[DriverEvent]:
        try:
            return await call
        except ExchangeError as exc:
            self.log.warning("venue_read_failed", error=str(exc))
            return []

    async def _poll_loop(self) -> None:
        """Trades and funding as the venue makes them (between bars too)."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.exchange.poll_s)
            if self._stop.is_set() or self.refusal is not None:
                continue
            async with self._lock:
                if await self._apply(await self._venue(self.driver.poll())):
                    await self._release_held()
                    await self._commit(account=True)

    async def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.exchange.reconcile_s)
            if self._stop.is_set() or self.refusal is not None:
                continue
            try:
                async with self._lock:
                    await self._reconcile()
                    await self._guard_positions()
                    await self._commit(account=True)
            except ExchangeError as exc:
                self.log.warning("reconciliation_skipped", error=str(exc))

    async def _reconcile(self, first_start: bool = False) -> None:
        """Compare our books with the venue and take the venue's word where they differ."""
        engine = self.engine
        now = self.market_now
        await self._apply(await self.driver.poll(funding=True))
        snap = await self.driver.snapshot()
        late = await self.driver.poll()
        await self._apply(late)
        on_venue = {u.client_order_id: u for u in snap.open_orders}
        clean = True
        for update in snap.open_orders:
            order = engine.order(update.client_order_id)
            if order is None and self.store is not None:
                stored = await self.store.order_by_client_id(update.client_order_id)
                if stored is not None:
                    engine.adopt([stored])
            await self._apply([update])  # unknown: adopted as EXTERNAL, with its size
            if order is None and engine.order(update.client_order_id) is not None and \
                    engine.order(update.client_order_id).origin is not OrderOrigin.OURS:  # type: ignore[union-attr]
                clean = False
        for order in engine.live_orders():
            cid = order.client_order_id
            if cid in on_venue or order.status is OrderStatus.NEW:
                continue
            if order.status is OrderStatus.SUBMITTED:
                found = await self.driver.query(order.symbol, cid)
                if found is not None:
                    await self._apply([found])
                elif self.driver.conclusive(order.sent_ts):
                    clean = False
                    halted = self.driver.breaker.state is not TradingState.ACTIVE
                    if order.expired(now) or (halted and not order.reduce_only):
                        engine.refuse(order, now, "lost in flight: never reached the venue "
                                                  "(not re-sent)")
                    else:
                        await self._submit(order, recovering=True)
                continue
            if order.origin is not OrderOrigin.OURS and not order.status.is_open:
                continue
            found = await self.driver.query(order.symbol, cid)
            if found is not None:
                await self._apply([found])
            elif order.status.is_open:
                clean = False
                engine.refuse(order, now, "no longer on the venue", OrderStatus.CANCELED)
        if not late:
            adjustments = engine.adopt_account(snap.account, now,
                                               wallet_tolerance=self.settings.exchange
                                               .wallet_tolerance)
            for a in adjustments:
                clean = False
                level = "info" if first_start else "error"
                getattr(self.log, level)(a.kind, **a.detail)
                if not first_start:  # the first start takes over what it finds, as intended
                    BOOK_ADJUSTMENTS.labels(a.kind).inc()
        self.reconciled += 1
        self.last_reconcile_ok = clean

    # --- protection ---------------------------------------------------------------------------
    async def _guard_positions(self) -> None:
        """A position with no stop on the venue past the grace period gets one now."""
        if not self._protect:
            return
        now_wall = wall_ms()
        unprotected = set(self.engine.unprotected())
        for since_by_symbol in (self._unprotected_since, self._unprotected_first):
            for sym in list(since_by_symbol):
                if sym not in unprotected:
                    since_by_symbol.pop(sym)
        for sym in sorted(unprotected):
            self._unprotected_first.setdefault(sym, now_wall)
            since = self._unprotected_since.setdefault(sym, now_wall)
            if now_wall - since >= self._grace_ms:
                await self._place_guard(sym)
                self._unprotected_since[sym] = now_wall  # give it a grace period too
        POSITIONS_UNPROTECTED.set(sum(1 for t in self._unprotected_first.values()
                                      if now_wall - t >= self._grace_ms))

    async def _place_guard(self, symbol: str) -> None:
        pos = self.portfolio.positions[symbol]
        inst = self.instrument(symbol)
        closing = Side.SELL if pos.qty > 0 else Side.BUY
        level = self._stop_level(symbol)
        last = self.last_prices.get(symbol, pos.last_price)
        through = (closing is Side.SELL and last <= level) or \
            (closing is Side.BUY and last >= level)
        self._guard_seq += 1
        trace = f"guard:{symbol}"
        if through:
            await self._close_at_market(symbol, "stop_loss", "sl",
                                        f"{trace}:{self.market_now}:close:{self._guard_seq}")
            return
        intent = OrderIntent(
            id=f"{trace}:{self.market_now}:{self._guard_seq}", symbol=symbol, side=closing,
            quantity=inst.round_qty_down(abs(pos.qty)), order_type=OrderType.STOP_MARKET,
            purpose=IntentPurpose.EXIT, ts=self.market_now, expires_at=0, trace_id=trace,
            reduce_only=True, stop_price=level, reason="stop_loss", reference_price=level,
            tag="guard")
        self.log.warning("position_unprotected", symbol=symbol, stop=level)
        self.journal.record(AuditEvent("protective_stop_placed", wall_ms(),
                                       {"symbol": symbol, "stop": level, "qty": pos.qty}))
        await self._on_intent(intent, 0)

    def _stop_level(self, symbol: str) -> float:
        pos = self.portfolio.positions[symbol]
        long = pos.qty > 0
        inst = self.instrument(symbol)
        for intent in reversed(list(self.engine.entries.values())):
            if intent.symbol == symbol and intent.stop_loss and \
                    (intent.side is Side.BUY) == long:
                return inst.round_price_toward(intent.stop_loss, pos.avg_entry)
        dist = self.settings.risk.default_stop_distance
        raw = pos.avg_entry * (1.0 - dist if long else 1.0 + dist)
        return inst.round_price_toward(raw, pos.avg_entry)

    async def _close_at_market(self, symbol: str, reason: str, tag: str,
                               intent_id: str) -> None:
        """Close the position in ``symbol`` now (reduce-only market), unless a market exit
        covering it is on its way already."""
        pos = self.portfolio.positions.get(symbol)
        if pos is None or not pos.is_open or self.engine.closing(symbol):
            return
        inst = self.instrument(symbol)
        intent = OrderIntent(
            id=intent_id, symbol=symbol, side=Side.SELL if pos.qty > 0 else Side.BUY,
            quantity=inst.round_qty_down(abs(pos.qty)), order_type=OrderType.MARKET,
            purpose=IntentPurpose.EXIT, ts=self.market_now, expires_at=0,
            trace_id=intent_id.split(":close")[0], reduce_only=True, reason=reason,
            reference_price=self.last_prices.get(symbol, pos.last_price), tag=tag)
        self.journal.record(AuditEvent("position_closed_unprotected", wall_ms(),
                                       {"symbol": symbol, "qty": pos.qty, "reason": reason}))
        await self._on_intent(intent, 0)

    # --- operator ------------------------------------------------------------------------------
    async def on_control(self, msg: Message) -> None:
        if msg.type == "resume":
            self.driver.breaker.reset()
            return
        if msg.type != "kill":
            return
        flatten = bool(msg.payload.get("flatten", False))
        async with self._lock:
            await self.kill(f"operator kill switch ({msg.payload.get('by', 'operator')})",
                            flatten, msg.id, msg.trace_id)
            await self._commit(account=True)

    async def kill(self, reason: str, flatten: bool, kill_id: str,
                   trace_id: str = "") -> dict[str, Any]:
        """Halt. Without ``flatten`` protective stops stay (entries are canceled); with it,
        every order is canceled and every position closed at market (booked like any
        trade). Audited and announced either way, saying which."""
        self.driver.breaker.trip(f"kill switch: {reason}")
        canceled: list[str] = []
        kept: list[str] = []
        failed: list[str] = []
        for order in self.engine.working_orders():
            if not flatten and order.reduce_only:
                kept.append(order.client_order_id)
                continue
            update = await self._cancel(order.client_order_id, reason)
            if order.status is OrderStatus.CANCELED or (
                    update is not None and update.status.is_terminal):
                canceled.append(order.client_order_id)
            else:
                failed.append(order.client_order_id)
        closing: dict[str, float] = {}
        if flatten:
            for pos in list(self.portfolio.open_positions):
                closing[pos.symbol] = pos.qty
                await self._close_at_market(pos.symbol, "kill_switch", "kill",
                                            f"kill:{kill_id}:{pos.symbol}:close")
        detail: dict[str, Any] = {
            "mode": "flatten" if flatten else "keep_stops", "reason": reason,
            "canceled": canceled, "kept_stops": kept, "cancel_failed": failed,
            "closing": closing}
        self.journal.record(AuditEvent("kill_switch", wall_ms(), detail, trace_id))
        self._say("executions", "kill_result", detail, trace_id, f"kill-result-{kill_id}")
        self.log.warning("kill_switch", **detail)
        return detail

    # --- committing ----------------------------------------------------------------------------
    async def _commit(self, account: bool = False) -> None:
        """One transaction: what the engine journaled, the cursors past what was read, the
        messages it causes, the checkpoint. Then the outbox publishes."""
        events: list[Any] = self.journal.drain()
        if not events and not account:
            return
        ts = self.market_now
        for ev in events:
            if isinstance(ev, Order):
                self._say_order(ev)
            elif isinstance(ev, ClosedTrade):
                self._say("executions", "trade_closed", to_payload(ev), ev.trace_id,
                          f"trade-{ev.id}")
        if account:
            self._account_message(ts)
        events.extend(self.journal.drain())
        events.extend(self.driver.cursor_records(ts))
        events.append(self._checkpoint())
        await self._write(events)

    def _say_order(self, order: Order) -> None:
        self._say("executions", "order", {"order": order_payload(order)}, order.trace_id,
                  f"order-{order.id}-{order.status.value}-{order.filled_qty}")

    async def _write(self, events: list[Any]) -> None:
        """Commit ``events``; retry with the lock held while the store fails (the books must
        not run ahead of it), and give up the process if it keeps failing (crash-only: the
        restart recovers from the store)."""
        store = self.store
        if store is None:
            await self._publish_now([e for e in events if isinstance(e, OutboundMessage)])
            return
        batch: list[StoreEvent] = events
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.services.store_retry_s
        delay = 0.05
        while True:
            try:
                await store.write(batch)
                break
            except StoreError as exc:
                self.store_failing = f"store writes failing: {exc}"
                self.log.error("store_write_failed", error=str(exc))
                if loop.time() > deadline:
                    self.on_fatal(f"store writes failed for "
                                  f"{self.settings.services.store_retry_s:.0f}s: {exc}")
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.store_failing = None
        if self._outbox is not None:
            self._outbox.kick()

    async def _publish_now(self, messages: list[OutboundMessage]) -> None:
        for m in messages:
            await self.bus.publish(m.topic, Message(m.type, m.payload, m.ts, m.trace_id,
                                                    id=m.id))

    async def _audit_now(self, kind: str, detail: dict[str, Any], trace_id: str) -> None:
        async with self._lock:
            self.journal.record(AuditEvent(kind, wall_ms(), detail, trace_id))
            await self._commit()

    def _checkpoint(self) -> Checkpoint:
        pf = self.portfolio
        return Checkpoint(self.name, dict(self.last_bar_ts), pf.wallet, pf.peak_equity,
                          pf.max_drawdown, pf.day_start_ts, pf.day_start_equity, 0,
                          pf.fees_paid, pf.funding_paid, self.market_now,
                          {"open_trades": self.engine.open_trades_state(),
                           "last_close": dict(self.last_prices),
                           "stop_outs": dict(self.stop_outs),
                           "venue_ids": self.driver.exchange.ids()
                           if isinstance(self.driver, SimulatedVenue) else {}})

    def _snapshot_of(self, pos: Any, ts: int, trace_id: str) -> PositionSnapshot:
        entry = next((i for i in reversed(list(self.engine.entries.values()))
                      if i.symbol == pos.symbol), None)
        return PositionSnapshot(pos.symbol, pos.qty, pos.avg_entry, pos.realized_pnl,
                                pos.fees, pos.funding, pos.opened_ts, pos.last_price,
                                pos.leverage, ts, trace_id,
                                entry.stop_loss if entry and pos.is_open else None,
                                entry.take_profit if entry and pos.is_open else None)

    def _unprotected_past_grace(self) -> tuple[str, ...]:
        """Positions that have had no stop for longer than the grace period. A position that
        just opened is not one: its stop is on its way from the exit brain (as in a backtest,
        where it is placed in the same step), and entries are not refused for it."""
        if not self._protect:
            return ()
        now = wall_ms()
        return tuple(s for s in self.engine.unprotected()
                     if now - self._unprotected_since.get(s, now) >= self._grace_ms)

    def _account_message(self, ts: int) -> None:
        pf = self.portfolio
        snaps = tuple(PositionSnapshot(p.symbol, p.qty, p.avg_entry, p.realized_pnl, p.fees,
                                       p.funding, p.opened_ts, p.last_price, p.leverage, ts)
                      for p in pf.positions.values())
        for p in pf.positions.values():
            self.journal.record(self._snapshot_of(p, ts, ""))
        snap = AccountSnapshot(
            ts, pf.wallet, pf.equity, pf.peak_equity, pf.day_start_equity, snaps,
            stop_outs=dict(self.stop_outs), unprotected=self._unprotected_past_grace(),
            pending=self.engine.pending_entries(self.last_prices),
            recent_intents=tuple(self._recent_intents))
        EQUITY_USD.set(pf.equity)
        DRAWDOWN_RATIO.set(pf.drawdown)
        DAILY_LOSS_RATIO.set(max(0.0, 1 - pf.equity / pf.day_start_equity)
                             if pf.day_start_equity else 0.0)
        POSITIONS_OPEN.set(len(pf.open_positions))
        self._account_seq += 1
        self._say("positions", "account", to_payload(snap), "",
                  f"account-{ts}-{os.getpid()}-{self._account_seq}")

    # --- for tests and tools -------------------------------------------------------------------
    @property
    def node(self) -> ExecutionService:
        """Earlier name of the execution core (the engine now lives in ``self.engine``)."""
        return self

    async def settle(self) -> None:
        """Book whatever the venue has now and commit (tests, lockstep drivers)."""
        async with self._lock:
            await self._apply(await self._venue(self.driver.poll()))
            await self._release_held()
            await self._commit(account=True)

    async def on_stop(self) -> None:
        if self._outbox is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._outbox.drain(), 5.0)
        with contextlib.suppress(Exception):
            await self.driver.close()


def _exit_process(reason: str) -> None:
    """Crash-only: the supervisor restarts the process, which recovers from the store."""
    from quantum_trader.observability.logging import get_logger

    get_logger("quantum_trader.execution").critical("fatal", reason=reason)
    os._exit(70)


def latency_summary(samples: deque[float]) -> dict[str, float | int]:
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"count": len(ordered), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "max_ms": round(ordered[-1], 3)}


def order_payload(order: Order) -> dict[str, Any]:
    return {"id": order.id, "client_order_id": order.client_order_id,
            "intent_id": order.intent_id, "symbol": order.symbol, "side": order.side.value,
            "status": order.status.value, "filled_qty": order.filled_qty,
            "quantity": order.quantity, "tag": order.tag, "purpose": order.purpose.value,
            "reason": order.reason, "origin": order.origin.value,
            "order_type": order.order_type.value, "stop_price": order.stop_price,
            "reduce_only": order.reduce_only}


__all__ = ["ExecutionService", "latency_summary", "order_payload", "venue_driver_for"]

