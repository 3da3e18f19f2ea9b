"""Risk rules: each one small, each with its own typed rejection reason.

A rule may *reject* a request outright (``check``) and/or *cap* its notional (``headroom``).
Sizing takes the smallest cap; if that leaves less than the exchange minimum, the binding
rule's reason is the rejection. Exit requests only meet the rules marked ``for_exits``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from quantum_trader.domain.enums import Side, TradingState
from quantum_trader.domain.instruments import Instrument
from quantum_trader.domain.position import Position
from quantum_trader.domain.risk.limits import RiskLimits


class RejectReason(StrEnum):
    TRADING_HALTED = "TRADING_HALTED"
    TRADING_REDUCING = "TRADING_REDUCING"
    SIGNAL_EXPIRED = "SIGNAL_EXPIRED"
    LOW_CONFIDENCE = "LOW_CONFIDENCE"
    MAX_POSITION_NOTIONAL = "MAX_POSITION_NOTIONAL"
    MAX_GROSS_EXPOSURE = "MAX_GROSS_EXPOSURE"
    MAX_LEVERAGE = "MAX_LEVERAGE"
    MAX_OPEN_POSITIONS = "MAX_OPEN_POSITIONS"
    DAILY_LOSS_LIMIT = "DAILY_LOSS_LIMIT"
    MAX_DRAWDOWN = "MAX_DRAWDOWN"
    ORDER_RATE_LIMIT = "ORDER_RATE_LIMIT"
    COOLDOWN = "COOLDOWN"
    PRICE_SANITY = "PRICE_SANITY"
    NO_MARKET_PRICE = "NO_MARKET_PRICE"
    MIN_NOTIONAL = "MIN_NOTIONAL"
    STEP_SIZE = "STEP_SIZE"
    NOT_REDUCE_ONLY = "NOT_REDUCE_ONLY"
    NO_POSITION = "NO_POSITION"
    ALREADY_POSITIONED = "ALREADY_POSITIONED"
    INVALID_REQUEST = "INVALID_REQUEST"
    ACCOUNT_STALE = "ACCOUNT_STALE"  # the gate cannot see a current account: fail closed
    STALE_MARKET_DATA = "STALE_MARKET_DATA"  # the feed stopped: no new entries
    UNPROTECTED_POSITION = "UNPROTECTED_POSITION"  # a position has no working stop
    ENTRY_PENDING = "ENTRY_PENDING"  # an approved entry for the symbol has not finished yet


@dataclass(slots=True, frozen=True)
class Rejection:
    reason: RejectReason
    detail: str


@dataclass(slots=True, frozen=True)
class RiskRequest:
    """What the gate judges: an entry built from a signal, or an exit intent."""

    symbol: str
    side: Side
    price: float  # the requester's reference price
    now: int
    expires_at: int
    confidence: float = 1.0
    stop_distance: float = 0.0
    is_exit: bool = False
    reduce_only: bool = False
    quantity: float = 0.0  # exits: requested size; entries: computed by sizing


@dataclass(slots=True)
class RiskContext:
    """The gate's view of the account, kept current by the risk engine."""

    instruments: dict[str, Instrument]
    trading_state: TradingState = TradingState.ACTIVE
    equity: float = 0.0
    peak_equity: float = 0.0
    day_start_equity: float = 0.0
    positions: dict[str, Position] = field(default_factory=dict)
    last_prices: dict[str, float] = field(default_factory=dict)
    recent_orders: deque[int] = field(default_factory=deque)
    stop_outs: dict[str, int] = field(default_factory=dict)
    # Positions with no working protective stop on the venue: no new entry anywhere until
    # each is protected again (or closed).
    unprotected: frozenset[str] = frozenset()
    # Entries approved but not filled yet (in flight, working, or not yet seen by execution):
    # symbol -> signed notional (buy > 0). They count against the limits as if they had filled.
    pending: dict[str, float] = field(default_factory=dict)

    def gross_exposure(self) -> float:
        held = sum(abs(p.qty) * self.last_prices.get(s, p.last_price)
                   for s, p in self.positions.items() if p.is_open)
        return held + sum(abs(v) for v in self.pending.values()) if self.pending else held

    def position_notional(self, symbol: str) -> float:
        p = self.positions.get(symbol)
        pending = abs(self.pending.get(symbol, 0.0)) if self.pending else 0.0
        if p is None or not p.is_open:
            return pending
        return abs(p.qty) * self.last_prices.get(symbol, p.last_price) + pending


class RiskRule:
    """Base of every rule: reject nothing, cap nothing."""

    reason: RejectReason
    for_exits = False

    def __init__(self, limits: RiskLimits) -> None:
        self.limits = limits

    def check(self, req: RiskRequest, ctx: RiskContext) -> Rejection | None:
        return None

    def headroom(self, req: RiskRequest, ctx: RiskContext) -> float | None:
        """Largest notional this rule allows for the request, or None for no cap."""
        return None


class ProtectionRule(RiskRule):
    """No new exposure while a position is unprotected: fix that first."""

    reason = RejectReason.UNPROTECTED_POSITION

    def check(self, req: RiskRequest, ctx: RiskContext) -> Rejection | None:
        if ctx.unprotected:
            names = ", ".join(sorted(ctx.unprotected))
            return Rejection(self.reason, f"position without a working stop: {names}; "
                                          "entries refused until it is protected or closed")
        return None


class PendingEntryRule(RiskRule):
    """One entry per symbol and side at a time: a second one waits until the first filled."""

    reason = RejectReason.ENTRY_PENDING

    def check(self, req: RiskRequest, ctx: RiskContext) -> Rejection | None:
        pending = ctx.pending.get(req.symbol, 0.0) if ctx.pending else 0.0
        if pending * req.side.sign > 0:
            return Rejection(self.reason, f"an approved {req.side} entry for {req.symbol} "
                                          f"({abs(pending):.2f} notional) has not filled yet")
        return None


class TradingStateRule(RiskRule):
    reason = RejectReason.TRADING_HALTED

    def check(self, req: RiskRequest, ctx: RiskContext) -> Rejection | None:
        if ctx.trading_state is TradingState.HALTED:
            return Rejection(RejectReason.TRADING_HALTED, "trading is HALTED: entries refused")
        if ctx.trading_state is TradingState.REDUCING:
            return Rejection(RejectReason.TRADING_REDUCING, "trading is REDUCING: exits only")
        return None


class ExpiryRule(RiskRule):
    reason = RejectReason.SIGNAL_EXPIRED
    for_exits = True

    def check(self, req: RiskRequest, ctx: RiskContext) -> Rejection | None:
        if req.now > req.expires_at:
            return Rejection(self.reason,
                             f"expired {req.now - req.expires_at} ms ago (at {req.expires_at})")
        return None


class MinConfidenceRule(RiskRule):
    reason = RejectReason.LOW_CONFIDENCE

    def check(self, req: RiskRequest, ctx: RiskContext) -> Rejection | None:
        if req.confidence < self.limits.min_confidence:
            return Rejection(self.reason, f"confidence {req.confidence:.3f} < "
                                          f"{self.limits.min_confidence}")
        return None


class MaxPositionNotionalRule(RiskRule):
    reason = RejectReason.MAX_POSITION_NOTIONAL

    def headroom(self, req: RiskRequest, ctx: RiskContext) -> float | None:
        return self.limits.max_position_notional - ctx.position_notional(req.symbol)


class MaxGrossExposureRule(RiskRule):
    reason = RejectReason.MAX_GROSS_EXPOSURE

    def headroom(self, req: RiskRequest, ctx: RiskContext) -> float | None:
        return self.limits.max_gross_exposure - ctx.gross_exposure()


class MaxLeverageRule(RiskRule):
    reason = RejectReason.MAX_LEVERAGE

    def headroom(self, req: RiskRequest, ctx: RiskContext) -> float | None:
        return max(ctx.equity, 0.0) * self.limits.max_leverage - ctx.gross_exposure()


class MaxOpenPositionsRule(RiskRule):
    reason = RejectReason.MAX_OPEN_POSITIONS

    def check(self, req: RiskRequest, ctx: RiskContext) -> Rejection | None:
        held = ctx.positions.get(req.symbol)
        if held is not None and held.is_open:
            return None  # adding to an existing position opens nothing new
        n_open = sum(1 for p in ctx.positions.values() if p.is_open)
        for sym in ctx.pending:  # an entry on its way opens a position too
            pos = ctx.positions.get(sym)
            if pos is None or not pos.is_open:
                n_open += 1
        if n_open >= self.limits.max_open_positions:
            return Rejection(self.reason, f"{n_open} positions open, limit "
                                          f"{self.limits.max_open_positions}")
        return None


class DailyLossRule(RiskRule):
    """Blocks entries for the rest of the UTC day once the day's loss reaches the limit."""

    reason = RejectReason.DAILY_LOSS_LIMIT

    def check(self, req: RiskRequest, ctx: RiskContext) -> Rejection | None:
        if ctx.day_start_equity <= 0:
            return None
        loss = (ctx.day_start_equity - ctx.equity) / ctx.day_start_equity
        if loss >= self.limits.daily_loss_limit:
            return Rejection(self.reason, f"day's loss {loss:.2%} >= limit "
                                          f"{self.limits.daily_loss_limit:.2%}")
        return None


class MaxDrawdownRule(RiskRule):
    reason = RejectReason.MAX_DRAWDOWN

    def check(self, req: RiskRequest, ctx: RiskContext) -> Rejection | None:
        if ctx.peak_equity <= 0:
            return None
        dd = 1.0 - ctx.equity / ctx.peak_equity
        if dd >= self.limits.max_drawdown:
            return Rejection(self.reason, f"drawdown {dd:.2%} >= limit "
                                          f"{self.limits.max_drawdown:.2%}")
        return None


class OrderRateRule(RiskRule):
    reason = RejectReason.ORDER_RATE_LIMIT

    def check(self, req: RiskRequest, ctx: RiskContext) -> Rejection | None:
        window_start = req.now - 60_000
        q = ctx.recent_orders
        while q and q[0] <= window_start:
            q.popleft()
        if len(q) >= self.limits.max_orders_per_minute:
            return Rejection(self.reason, f"{len(q)} orders in the last minute, limit "
                                          f"{self.limits.max_orders_per_minute}")
        return None


class CooldownRule(RiskRule):
    reason = RejectReason.COOLDOWN

    def check(self, req: RiskRequest, ctx: RiskContext) -> Rejection | None:
        last = ctx.stop_outs.get(req.symbol)
        if last is not None and req.now < last + self.limits.cooldown_after_stop_ms:
            left = (last + self.limits.cooldown_after_stop_ms - req.now) // 1000
            return Rejection(self.reason, f"{req.symbol} stopped out; cooldown {left}s left")
        return None


class PriceSanityRule(RiskRule):
    reason = RejectReason.PRICE_SANITY

    def check(self, req: RiskRequest, ctx: RiskContext) -> Rejection | None:
        last = ctx.last_prices.get(req.symbol)
        if last is None or last <= 0:
            return Rejection(RejectReason.NO_MARKET_PRICE, f"no last price for {req.symbol}")
        if req.price <= 0:
            return Rejection(self.reason, f"reference price {req.price} is not positive")
        dev = abs(req.price / last - 1.0)
        if dev > self.limits.max_price_deviation:
            return Rejection(self.reason, f"price {req.price} is {dev:.2%} from last {last}")
        return None


ENTRY_RULES: tuple[type[RiskRule], ...] = (
    TradingStateRule, ExpiryRule, MinConfidenceRule, MaxDrawdownRule, DailyLossRule,
    ProtectionRule, PendingEntryRule, CooldownRule, OrderRateRule, MaxOpenPositionsRule,
    PriceSanityRule, MaxPositionNotionalRule, MaxGrossExposureRule, MaxLeverageRule,
)
