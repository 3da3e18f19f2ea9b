"""``TradingNode``: the whole trading cycle for one process, one bar at a time.

bar → exchange matches working orders → fills update our books → exit brain guards positions
→ signal source → risk gate → orders to the exchange. The same node runs backtests (journal
off, simulated clock) and embedded paper trading (journal to the SQL store).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from quantum_trader.domain.enums import IntentPurpose, OrderStatus, Side, TradingState
from quantum_trader.domain.exits import ExitActions, ExitBrain
from quantum_trader.domain.models import Bar, Fill, OrderIntent, RiskDecision, Signal
from quantum_trader.domain.orders import Order, client_order_id_for
from quantum_trader.domain.portfolio import Portfolio
from quantum_trader.domain.position import Position
from quantum_trader.domain.records import AuditEvent, ClosedTrade, PositionSnapshot
from quantum_trader.domain.risk.engine import RiskEngine
from quantum_trader.domain.strategy import SignalSource
from quantum_trader.domain.tracking import OrderTracker
from quantum_trader.exchange.protocol import ExecutionReport
from quantum_trader.exchange.simulated import OrderRejected, SimulatedExchange
from quantum_trader.store.protocol import StoreEvent

EXIT_REASONS = {"sl": "stop_loss", "tp": "take_profit", "trail": "trailing_stop",
                "time": "time_exit", "signal": "signal_exit", "liq": "liquidation",
                "external": "external"}
STOP_OUTS = frozenset({"stop_loss", "liquidation"})


class Journal(Protocol):
    def record(self, event: StoreEvent) -> None: ...


class NullJournal:
    """Backtests keep nothing but what the result needs."""

    def record(self, event: StoreEvent) -> None:
        return None


class ListJournal:
    def __init__(self) -> None:
        self.events: list[StoreEvent] = []

    def record(self, event: StoreEvent) -> None:
        self.events.append(event)

    def drain(self) -> list[StoreEvent]:
        out, self.events = self.events, []
        return out


class _OpenTrade:
    __slots__ = (
        "entry_price",
        "entry_side",
        "fees0",
        "funding0",
        "max_qty",
        "opened_ts",
        "realized0",
        "trace_id",
    )

    def __init__(self, pos: Position, side: Side, trace_id: str, fee: float) -> None:
        self.entry_side = side
        self.max_qty = abs(pos.qty)
        self.opened_ts = pos.opened_ts
        self.realized0 = pos.realized_pnl
        self.fees0 = pos.fees - fee  # the opening fill's fee belongs to this trade
        self.funding0 = pos.funding
        self.trace_id = trace_id
        self.entry_price = pos.avg_entry


class TradingNode:
    def __init__(self, source: SignalSource, risk: RiskEngine, exits: ExitBrain,
                 exchange: SimulatedExchange, portfolio: Portfolio,
                 journal: Journal | None = None, name: str = "embedded") -> None:
        self.name = name
        self.source = source
        self.risk = risk
        self.exits = exits
        self.exchange = exchange
        self.portfolio = portfolio
        self.journal: Journal = journal or NullJournal()
        self.orders = OrderTracker()
        self.trades: list[ClosedTrade] = []
        self._entries: dict[str, OrderIntent] = {}  # client id -> entry intent (for stops)
        self._open_trades: dict[str, _OpenTrade] = {}
        self._funding_seen = 0
        self.bars_seen = 0
        self.signals_seen = 0
        self.rejections: dict[str, int] = {}
        self.on_order_accepted: Callable[[Order], None] | None = None
        self._deferred: list[tuple[ExitActions, int]] | None = None
        self._halt_at = risk.limits.max_drawdown
        risk.sync(portfolio)

    # --- the cycle ------------------------------------------------------------------------------
    def on_bar(self, bar: Bar) -> Signal | None:
        self.bars_seen += 1
        sym = bar.symbol
        reports = self.exchange.on_bar(bar)
        if reports:
            # Apply everything the exchange did in this bar before reacting to any of it, so a
            # reaction (say, replacing a stop) never races a report still in the list.
            self._deferred = []
            for report in reports:
                self.apply_report(report)
            deferred, self._deferred = self._deferred, None
            for deferred_acts, ts in deferred:
                self._act(deferred_acts, ts)
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
        decision = self.risk.evaluate_signal(signal, now)
        self.journal.record(decision)
        if decision.approved and decision.intent is not None:
            self._entries[client_order_id_for(decision.intent.id)] = decision.intent
            self._place(decision.intent, now)
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
        """Place an intent approved elsewhere (the execution service's entry point)."""
        self.remember_entry(intent)
        return self._place(intent, now)

    def remember_entry(self, intent: OrderIntent) -> None:
        """Keep an entry's intent: its stop and target travel with the fill to the exit brain."""
        if intent.purpose is IntentPurpose.ENTRY:
            self._entries[client_order_id_for(intent.id)] = intent

    def entry_for(self, client_order_id: str) -> OrderIntent | None:
        return self._entries.get(client_order_id)

    def _place(self, intent: OrderIntent, now: int) -> Order:
        order = self.orders.create(intent, now)
        if order.status is not OrderStatus.NEW:
            return order  # already placed: a retry or replay never places it twice
        self.journal.record(order)  # persisted before it is sent
        try:
            report = self.exchange.submit(OrderTracker.request_for(order), now)
        except OrderRejected as exc:  # duplicate id: the exchange already has it
            found = self.exchange.query(order.client_order_id)
            if found is None:
                raise
            report = found
            del exc
        self.apply_report(report)
        if report.status is OrderStatus.ACCEPTED and self.on_order_accepted is not None:
            self.on_order_accepted(order)
        return order

    def cancel(self, client_order_id: str, now: int, reason: str) -> None:
        order = self.orders.open.get(client_order_id)
        if order is None:
            return
        try:
            report = self.exchange.cancel(client_order_id, now, reason)
        except OrderRejected:
            return  # already done on the exchange; its report has been applied
        self.apply_report(report)

    def apply_report(self, report: ExecutionReport) -> None:
        """Move our books as an exchange report says (fills update positions and trades)."""
        order, fill = self.orders.apply(report)
        self.journal.record(order)
        if fill is not None:
            self._on_fill(order, fill)

    def _on_fill(self, order: Order, fill: Fill) -> None:
        pf = self.portfolio
        pos = pf.position(fill.symbol)
        was_open = pos.is_open
        before_sign = pos.side_sign
        realized = pf.apply_fill(fill, self.risk.limits.order_leverage)
        fill = replace(fill, realized_pnl=realized)
        self.journal.record(fill)
        self.risk.sync(pf)
        sym = fill.symbol
        if pos.is_open and (not was_open or pos.side_sign != before_sign):
            self._open_trades[sym] = _OpenTrade(pos, fill.side, order.trace_id, fill.fee)
        trade = self._open_trades.get(sym)
        if trade is not None and pos.is_open:
            trade.max_qty = max(trade.max_qty, abs(pos.qty))
        if order.purpose is IntentPurpose.ENTRY and pos.is_open:
            entry = self._entries.get(order.client_order_id)
            self._act(self.exits.on_entry_fill(entry, pos, fill.ts, order.trace_id), fill.ts)
        if was_open and not pos.is_open:
            self._close_trade(sym, pos, order, fill)
        self.journal.record(self.snapshot(pos, fill.ts, order.trace_id))

    def _close_trade(self, sym: str, pos: Position, order: Order, fill: Fill) -> None:
        trade = self._open_trades.pop(sym, None)
        reason = EXIT_REASONS.get(order.tag, order.reason or "exit")
        if trade is not None:
            closed = ClosedTrade(
                id=f"{trade.trace_id}:{fill.ts}", symbol=sym, side=trade.entry_side,
                quantity=trade.max_qty, entry_price=trade.entry_price, exit_price=fill.price,
                opened_ts=trade.opened_ts, closed_ts=fill.ts,
                realized_pnl=pos.realized_pnl - trade.realized0, fees=pos.fees - trade.fees0,
                funding=pos.funding - trade.funding0, exit_reason=reason,
                trace_id=trade.trace_id)
            self.trades.append(closed)
            self.journal.record(closed)
        if reason in STOP_OUTS:
            self.risk.record_stop_out(sym, fill.ts)
        self._act(self.exits.on_position_closed(sym), fill.ts)

    def _apply_funding(self) -> None:
        payments = self.exchange.funding_payments
        for p in payments[self._funding_seen:]:
            self.portfolio.apply_funding(p)
        self._funding_seen = len(payments)

    def snapshot(self, pos: Position, ts: int, trace_id: str) -> PositionSnapshot:
        g = self.exits.guards.get(pos.symbol)
        return PositionSnapshot(pos.symbol, pos.qty, pos.avg_entry, pos.realized_pnl, pos.fees,
                                pos.funding, pos.opened_ts, pos.last_price, pos.leverage, ts,
                                trace_id, g.stop if g else None, g.target if g else None)

    # --- restart ---------------------------------------------------------------------------
    def open_trades_state(self) -> dict[str, dict[str, object]]:
        """What a restart needs to finish the round trips that are open now."""
        return {sym: {k: getattr(t, k) for k in _OpenTrade.__slots__}
                | {"entry_side": t.entry_side.value} for sym, t in self._open_trades.items()}

    def restore_open_trades(self, state: dict[str, dict[str, Any]]) -> None:
        for sym, values in state.items():
            t = _OpenTrade.__new__(_OpenTrade)
            for k in _OpenTrade.__slots__:
                setattr(t, k, values[k])
            t.entry_side = Side(values["entry_side"])
            self._open_trades[sym] = t

    # --- operator -------------------------------------------------------------------------------
    def set_trading_state(self, state: TradingState, reason: str, ts: int) -> None:
        audit = self.risk.set_trading_state(state, reason, ts)
        if audit is not None:
            self.journal.record(audit)
        if state is TradingState.HALTED:
            for order in list(self.orders.open.values()):
                if not order.reduce_only:
                    self.cancel(order.client_order_id, ts, "trading halted")

    def audit(self, kind: str, ts: int, **detail: object) -> None:
        self.journal.record(AuditEvent(kind, ts, dict(detail)))

