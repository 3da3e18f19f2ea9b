"""``RiskEngine``: the single gate between signal sources and the exchange.

Entries meet every rule and are sized; exits meet only the rules that must still hold for a
reduce-only order (expiry, reduce-only, an open position to reduce), so protection is never
blocked by entry limits or by a HALTED state.
"""

from __future__ import annotations

from collections.abc import Callable

from quantum_trader.domain.enums import (
    Direction,
    IntentPurpose,
    OrderType,
    Side,
    TradingState,
)
from quantum_trader.domain.instruments import Instrument, instrument_for
from quantum_trader.domain.models import OrderIntent, RiskDecision, Signal
from quantum_trader.domain.portfolio import Portfolio
from quantum_trader.domain.records import AuditEvent
from quantum_trader.domain.risk.limits import RiskLimits
from quantum_trader.domain.risk.rules import (
    ENTRY_RULES,
    Rejection,
    RejectReason,
    RiskContext,
    RiskRequest,
    RiskRule,
)
from quantum_trader.domain.risk.sizing import risk_notional, size_quantity

APPROVED = "APPROVED"


class RiskEngine:
    def __init__(self, limits: RiskLimits,
                 instruments: Callable[[str], Instrument] = instrument_for,
                 exit_rr: float = 2.0, intent_ttl_ms: int = 60_000) -> None:
        self.limits = limits
        self._instrument = instruments
        self.rules: list[RiskRule] = [rule(limits) for rule in ENTRY_RULES]
        self._exit_rules = [r for r in self.rules if r.for_exits]
        self.ctx = RiskContext(instruments={})
        self.exit_rr = exit_rr
        self.intent_ttl_ms = intent_ttl_ms
        self.state_reason = ""

    # --- keeping the view current -------------------------------------------------------------
    def sync(self, portfolio: Portfolio) -> None:
        ctx = self.ctx
        ctx.equity = portfolio.equity
        ctx.peak_equity = portfolio.peak_equity
        ctx.day_start_equity = portfolio.day_start_equity
        ctx.positions = portfolio.positions

    def on_price(self, symbol: str, price: float) -> None:
        self.ctx.last_prices[symbol] = price

    def record_order(self, ts: int) -> None:
        self.ctx.recent_orders.append(ts)

    def record_stop_out(self, symbol: str, ts: int) -> None:
        self.ctx.stop_outs[symbol] = ts

    @property
    def trading_state(self) -> TradingState:
        return self.ctx.trading_state

    def set_trading_state(self, state: TradingState, reason: str, ts: int,
                          trace_id: str = "") -> AuditEvent | None:
        """Move the trading state; returns the audit event, or None if nothing changed."""
        old = self.ctx.trading_state
        if state == old:
            return None
        self.ctx.trading_state = state
        self.state_reason = reason
        return AuditEvent("trading_state", ts, {"from": old.name, "to": state.name,
                                                "reason": reason}, trace_id)

    def check_breakers(self, ts: int) -> AuditEvent | None:
        """Escalate automatically (never de-escalate: only an operator does that)."""
        ctx = self.ctx
        if ctx.peak_equity > 0 and ctx.trading_state is not TradingState.HALTED:
            dd = 1.0 - ctx.equity / ctx.peak_equity
            if dd >= self.limits.max_drawdown:
                return self.set_trading_state(
                    TradingState.HALTED, f"max drawdown breached: {dd:.2%}", ts)
        return None

    # --- the gate -------------------------------------------------------------------------------
    def evaluate_signal(self, signal: Signal, now: int) -> RiskDecision:
        """Judge an entry signal; approved decisions carry a sized market ``OrderIntent``."""
        if signal.direction is Direction.FLAT:
            return self._reject(signal.id, signal.trace_id, now,
                                Rejection(RejectReason.INVALID_REQUEST,
                                          "FLAT is not an entry; exits come from the exit brain"))
        side = Side.BUY if signal.direction is Direction.LONG else Side.SELL
        held = self.ctx.positions.get(signal.symbol)
        replaces = 0.0
        if held is not None and held.is_open:
            if (held.qty > 0) == (side is Side.BUY):
                return self._reject(signal.id, signal.trace_id, now, Rejection(
                    RejectReason.ALREADY_POSITIONED,
                    f"already {'long' if held.qty > 0 else 'short'} {signal.symbol}"))
            replaces = self.ctx.position_notional(signal.symbol)  # the signal exit closes it
        stop_distance = signal.stop_distance or self.limits.default_stop_distance
        req = RiskRequest(signal.symbol, side, signal.price, now, signal.expires_at,
                          signal.confidence, stop_distance)
        checks: list[str] = []
        for rule in self.rules:
            rejection = rule.check(req, self.ctx)
            checks.append(type(rule).__name__)
            if rejection is not None:
                return self._reject(signal.id, signal.trace_id, now, rejection, checks)

        notional = risk_notional(self.ctx.equity, self.limits.risk_per_trade, stop_distance)
        binding: RejectReason | None = None
        for rule in self.rules:
            cap = rule.headroom(req, self.ctx)
            if cap is None:
                continue
            cap += replaces  # the opposite position the signal exit closes frees its room
            if cap < notional:
                notional, binding = cap, rule.reason
        inst = self._instrument(signal.symbol)
        qty = size_quantity(notional, signal.price, inst)
        if qty < inst.min_qty or qty * signal.price < inst.min_notional:
            reason = binding or RejectReason.MIN_NOTIONAL
            return self._reject(signal.id, signal.trace_id, now, Rejection(
                reason, f"size {qty} ({qty * signal.price:.2f} notional) below exchange "
                        f"minimum {inst.min_notional} after limits"), checks)
        sign = 1.0 if side is Side.BUY else -1.0
        intent = OrderIntent(
            id=f"{signal.id}:entry",
            symbol=signal.symbol,
            side=side,
            quantity=qty,
            order_type=OrderType.MARKET,
            purpose=IntentPurpose.ENTRY,
            ts=now,
            expires_at=min(signal.expires_at, now + self.intent_ttl_ms),
            trace_id=signal.trace_id,
            signal_id=signal.id,
            reason="signal",
            reference_price=signal.price,
            stop_loss=inst.round_price(signal.price * (1.0 - sign * stop_distance)),
            take_profit=inst.round_price(signal.price * (1.0 + sign * (
                signal.target_distance or stop_distance * self.exit_rr))),
            target_distance=signal.target_distance,
        )
        self.record_order(now)
        return RiskDecision(f"{signal.id}:risk", signal.id, True, APPROVED,
                            f"{side} {qty} {signal.symbol} (~{qty * signal.price:.2f} notional)",
                            now, signal.trace_id, intent, tuple(checks))

    def evaluate_exit(self, intent: OrderIntent, now: int) -> RiskDecision:
        """Judge a reduce-only exit: never blocked by entry limits or trading state."""
        if not intent.reduce_only:
            return self._reject(intent.id, intent.trace_id, now, Rejection(
                RejectReason.NOT_REDUCE_ONLY, "exit intents must be reduce-only"))
        pos = self.ctx.positions.get(intent.symbol)
        if pos is None or not pos.is_open or (pos.qty > 0) == (intent.side is Side.BUY):
            return self._reject(intent.id, intent.trace_id, now, Rejection(
                RejectReason.NO_POSITION, f"no {intent.side.opposite} position in "
                                          f"{intent.symbol} to reduce"))
        req = RiskRequest(intent.symbol, intent.side, intent.reference_price, now,
                          intent.expires_at, is_exit=True, reduce_only=True,
                          quantity=intent.quantity)
        for rule in self._exit_rules:
            rejection = rule.check(req, self.ctx)
            if rejection is not None:
                return self._reject(intent.id, intent.trace_id, now, rejection)
        inst = self._instrument(intent.symbol)
        qty = min(intent.quantity, abs(pos.qty))
        if not inst.on_step(qty):
            qty = inst.round_qty_down(qty)
            if qty <= 0:
                return self._reject(intent.id, intent.trace_id, now, Rejection(
                    RejectReason.STEP_SIZE, f"quantity {intent.quantity} rounds to zero"))
        approved = intent if qty == intent.quantity else _with_qty(intent, qty)
        return RiskDecision(f"{intent.id}:risk", intent.id, True, APPROVED,
                            f"reduce-only {intent.side} {qty} {intent.symbol} "
                            f"({intent.reason})", now, intent.trace_id, approved)

    def _reject(self, subject: str, trace_id: str, now: int, rejection: Rejection,
                checks: list[str] | None = None) -> RiskDecision:
        return RiskDecision(f"{subject}:risk", subject, False, rejection.reason.value,
                            rejection.detail, now, trace_id, None, tuple(checks or ()))


def _with_qty(intent: OrderIntent, qty: float) -> OrderIntent:
    from dataclasses import replace

    return replace(intent, quantity=qty)
