"""``TradingNode``: the whole trading cycle for one process, one bar at a time.

bar → the simulated exchange matches working orders → the execution engine books what it
reports → the exit brain guards positions → signal source → risk gate → orders to the exchange.
The same node runs backtests (journal off, simulated clock) and embedded paper trading
(journal to the SQL store). Its execution is ``ExecutionEngine`` (``domain/execution.py``), the
one the execution service runs in distributed mode; this node is its synchronous driver over the
simulated exchange.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quantum_trader.domain.enums import IntentPurpose, OrderStatus, OrderType, TradingState
from quantum_trader.domain.execution import (
    EXIT_REASONS,
    PROTECTIVE_TAGS,
    STOP_OUTS,
    Booking,
    ExecutionEngine,
    Journal,
    ListJournal,
    NullJournal,
)
from quantum_trader.domain.exits import ExitActions, ExitBrain
from quantum_trader.domain.instruments import Instrument, instrument_for
from quantum_trader.domain.models import Bar, OrderIntent, RiskDecision, Signal
from quantum_trader.domain.orders import Order, client_order_id_for
from quantum_trader.domain.portfolio import Portfolio
from quantum_trader.domain.position import Position
from quantum_trader.domain.records import AuditEvent, ClosedTrade, PositionSnapshot
from quantum_trader.domain.risk.engine import RiskEngine
from quantum_trader.domain.strategy import SignalSource
from quantum_trader.domain.venue import WOULD_TRIGGER_IMMEDIATELY, OrderUpdate, VenueTrade
from quantum_trader.exchange.simulated import OrderRejected, SimulatedExchange

__all__ = ["EXIT_REASONS", "STOP_OUTS", "Journal", "ListJournal", "NullJournal", "TradingNode"]


class TradingNode:
    def __init__(self, source: SignalSource, risk: RiskEngine, exits: ExitBrain,
                 exchange: SimulatedExchange, portfolio: Portfolio,
                 journal: Journal | None = None, name: str = "embedded",
                 instruments: Callable[[str], Instrument] = instrument_for) -> None:
        self.name = name
        self.source = source
        self.risk = risk
        self.exits = exits
        self.exchange = exchange
        self.portfolio = portfolio
        self.journal: Journal = journal or NullJournal()
        self.engine = ExecutionEngine(portfolio, self.journal, risk.limits.order_leverage,
                                      instruments)
        self._funding_seen = 0
        self.bars_seen = 0
        self.signals_seen = 0
        self.rejections: dict[str, int] = {}
        # Trading-state changes of this run (a halt is the one a trader must be told about:
        # when, and why), whatever the journal keeps.
        self.state_changes: list[AuditEvent] = []
        self.on_order_accepted: Callable[[Order], None] | None = None
        self._deferred: list[tuple[ExitActions, int]] | None = None
        self._held: list[Order] = []  # entries waiting for the exit of the opposite position
        self._halt_at = risk.limits.max_drawdown
        self._protect = exits.settings.stop_loss
        risk.sync(portfolio)

    @property
    def trades(self) -> list[ClosedTrade]:
        return self.engine.trades

    # --- the cycle ------------------------------------------------------------------------------
    def on_bar(self, bar: Bar) -> Signal | None:
        self.bars_seen += 1
        sym = bar.symbol
        events = self.exchange.on_bar(bar)
        if events:
            # Apply everything the exchange did in this bar before reacting to any of it, so a
            # reaction (say, replacing a stop) never races a report still in the list.
            self._deferred = []
            for event in events:
                self.apply(event)
            deferred, self._deferred = self._deferred, None
            for deferred_acts, ts in deferred:
                self._act(deferred_acts, ts)
            if self._held:
                self._release_held(bar.close_ts)
        if len(self.exchange.funding_payments) != self._funding_seen:
            self._apply_funding()
        pf = self.portfolio
        close_ts = bar.close_ts
        pf.mark(sym, bar.close, close_ts)
        risk = self.risk
        risk.ctx.last_prices[sym] = bar.close
        # The gate's view is synced where it decides (on_signal, _act); here only the drawdown
        # breaker needs the fresh equity, and only once it is actually breached.
        if pf.peak_equity > 0 and 1.0 - pf.equity / pf.peak_equity >= self._halt_at:
            risk.sync(pf)
            audit = risk.check_breakers(close_ts)
            if audit is not None:
                self.state_changes.append(audit)
                self.journal.record(audit)
        pos = pf.positions.get(sym)
        if pos is not None and pos.qty != 0.0:
            acts = self.exits.on_bar(bar, pos)
            if acts is not None:
                self._act(acts, close_ts)
        signal = self.source.on_bar(bar)
        if signal is not None:
            self.on_signal(signal, bar.close_ts)
        return signal

    def on_signal(self, signal: Signal, now: int) -> RiskDecision | None:
        self.signals_seen += 1
        self.risk.sync(self.portfolio)
        self.journal.record(signal)
        pos = self.portfolio.positions.get(signal.symbol)
        acts = self.exits.on_signal(signal, pos)
        if acts is not None:
            self._act(acts, now)
        if signal.direction.sign == 0:
            return None
        ctx = self.risk.ctx
        engine = self.engine
        if self._protect:
            ctx.unprotected = frozenset(engine.unprotected())
        ctx.pending = engine.pending_entries(ctx.last_prices)
        decision = self.risk.evaluate_signal(signal, now)
        self.journal.record(decision)
        if decision.approved and decision.intent is not None:
            self._place(decision.intent, now)  # the engine keeps the entry's levels
        else:
            self.rejections[decision.reason] = self.rejections.get(decision.reason, 0) + 1
        return decision

    # --- orders ---------------------------------------------------------------------------------
    def _act(self, acts: ExitActions, now: int) -> None:
        if self._deferred is not None:
            self._deferred.append((acts, now))
            return
        for intent_id in acts.cancels:
            self.cancel(client_order_id_for(intent_id), now, "replaced or position closed")
        if acts.intents:
            self.risk.sync(self.portfolio)
        for intent in acts.intents:
            pos = self.portfolio.positions.get(intent.symbol)
            if pos is None or not pos.is_open:
                continue  # closed in the meantime: nothing left to protect
            decision = self.risk.evaluate_exit(intent, now)
            self.journal.record(decision)
            if decision.approved and decision.intent is not None:
                self._place(decision.intent, now)
            else:
                self.rejections[decision.reason] = self.rejections.get(decision.reason, 0) + 1

    def place(self, intent: OrderIntent, now: int) -> Order:
        """Place an intent approved elsewhere (the engine keeps an entry's levels)."""
        return self._place(intent, now)

    def remember_entry(self, intent: OrderIntent) -> None:
        self.engine.remember_entry(intent)

    def entry_for(self, client_order_id: str) -> OrderIntent | None:
        return self.engine.entry_for(client_order_id)

    def _place(self, intent: OrderIntent, now: int) -> Order:
        engine = self.engine
        order = engine.create(intent, now)
        if order.status is not OrderStatus.NEW:
            return order  # already placed: a retry or replay never places it twice
        if engine.hold_reason(order) is not None:
            self.journal.record(order)
            self._held.append(order)
            return order
        self._send(order, now)
        return order

    def _send(self, order: Order, now: int) -> None:
        engine = self.engine
        engine.sent(order, now, now)  # persisted before it is sent
        try:
            update = self.exchange.submit(engine.request_for(order), now)
        except OrderRejected:  # duplicate id: the exchange already has it working
            found = self.exchange.query(order.client_order_id)
            if found is None:
                raise
            update = found
        self.apply(update)
        if update.status is OrderStatus.ACCEPTED and self.on_order_accepted is not None:
            self.on_order_accepted(order)

    def hold(self, order: Order) -> None:
        """Keep an entry back until the opposite position's exit is on the venue (a restart
        found it waiting)."""
        self._held.append(order)

    def _release_held(self, now: int) -> None:
        still: list[Order] = []
        for order in self._held:
            if order.status is not OrderStatus.NEW:
                continue
            if order.expired(now):
                self.engine.refuse(order, now, "expired waiting for the opposite exit",
                                   OrderStatus.EXPIRED)
            elif self.engine.hold_reason(order) is None:
                self._send(order, now)
            else:
                still.append(order)
        self._held = still

    def cancel(self, client_order_id: str, now: int, reason: str) -> None:
        order = self.engine.order(client_order_id)
        if order is None or not order.status.is_open:
            return
        if order.status is OrderStatus.NEW:  # held, never sent
            self.engine.refuse(order, now, reason, OrderStatus.CANCELED)
            return
        try:
            update = self.exchange.cancel(client_order_id, now, reason)
        except OrderRejected:
            return  # already done on the exchange; its report has been applied
        self.apply(update)

    def apply(self, event: OrderUpdate | VenueTrade) -> None:
        """Move our books as the exchange says (trades update positions and round trips)."""
        if isinstance(event, VenueTrade):
            booking = self.engine.on_trade(event)
            if booking is not None:
                self._on_booked(booking)
            return
        order = self.engine.on_update(event)
        if event.status is OrderStatus.REJECTED and event.code == WOULD_TRIGGER_IMMEDIATELY \
                and order.tag in PROTECTIVE_TAGS:
            self._protective_close(order, event.ts)

    def apply_report(self, event: OrderUpdate | VenueTrade) -> None:
        self.apply(event)

    def _protective_close(self, stop: Order, ts: int) -> None:
        """A stop refused because the price is already through it: the position it was to
        protect is closed at market now (the exit the stop would have made)."""
        pos = self.portfolio.positions.get(stop.symbol)
        if pos is None or not pos.is_open or (pos.qty > 0) == (stop.side.value == "BUY"):
            return
        if self.engine.closing(stop.symbol):
            return  # a market exit is on its way already
        intent = OrderIntent(
            id=f"{stop.intent_id}:close", symbol=stop.symbol, side=stop.side,
            quantity=abs(pos.qty), order_type=OrderType.MARKET, purpose=IntentPurpose.EXIT,
            ts=ts, expires_at=ts + self.exits.settings.intent_ttl_ms, trace_id=stop.trace_id,
            reduce_only=True, reason="stop_loss", reference_price=stop.stop_price or 0.0,
            tag=stop.tag)
        self._act(ExitActions(intents=[intent]), ts)

    def _on_booked(self, b: Booking) -> None:
        pos = b.position
        self.risk.sync(self.portfolio)
        order, fill = b.order, b.fill
        if order.purpose is IntentPurpose.ENTRY and pos.is_open:
            entry = self.engine.entry_for(order.client_order_id)
            self._act(self.exits.on_entry_fill(entry, pos, fill.ts, order.trace_id), fill.ts)
        if b.was_open and not pos.is_open:
            if b.exit_reason in STOP_OUTS:
                self.risk.record_stop_out(fill.symbol, fill.ts)
            self._act(self.exits.on_position_closed(fill.symbol), fill.ts)
        self.journal.record(self.snapshot(pos, fill.ts, order.trace_id))

    def _apply_funding(self) -> None:
        payments = self.exchange.funding_payments
        for p in payments[self._funding_seen:]:
            self.engine.on_funding(p)
        self._funding_seen = len(payments)

    def snapshot(self, pos: Position, ts: int, trace_id: str) -> PositionSnapshot:
        g = self.exits.guards.get(pos.symbol)
        return PositionSnapshot(pos.symbol, pos.qty, pos.avg_entry, pos.realized_pnl, pos.fees,
                                pos.funding, pos.opened_ts, pos.last_price, pos.leverage, ts,
                                trace_id, g.stop if g else None, g.target if g else None)

    # --- restart ---------------------------------------------------------------------------
    def open_trades_state(self) -> dict[str, dict[str, object]]:
        return self.engine.open_trades_state()

    def restore_open_trades(self, state: dict[str, dict[str, Any]]) -> None:
        self.engine.restore_open_trades(state)

    # --- operator -------------------------------------------------------------------------------
    def set_trading_state(self, state: TradingState, reason: str, ts: int) -> None:
        audit = self.risk.set_trading_state(state, reason, ts)
        if audit is not None:
            self.state_changes.append(audit)
            self.journal.record(audit)
        if state is TradingState.HALTED:
            for order in self.engine.working_orders():
                if not order.reduce_only:
                    self.cancel(order.client_order_id, ts, "trading halted")

    def audit(self, kind: str, ts: int, **detail: object) -> None:
        self.journal.record(AuditEvent(kind, ts, dict(detail)))
