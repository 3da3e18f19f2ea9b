"""Immutable value objects that flow through the trading cycle.

Times are integers in epoch milliseconds (UTC): the domain never reads a clock, and integer
times make ordering and equality exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from quantum_trader.domain.enums import (
    Direction,
    IntentPurpose,
    Liquidity,
    OrderType,
    Side,
)

TIMEFRAME_MS: dict[str, int] = {
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}


def timeframe_ms(timeframe: str) -> int:
    try:
        return TIMEFRAME_MS[timeframe]
    except KeyError:
        known = ", ".join(TIMEFRAME_MS)
        raise ValueError(f"unknown timeframe {timeframe!r}; use one of {known}") from None


class InvalidBar(ValueError):
    """A bar whose prices cannot be real."""


@dataclass(slots=True, frozen=True)
class Bar:
    """One OHLCV candle. ``ts`` is the open time; the bar is known only at ``close_ts``."""

    symbol: str
    timeframe: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float

    @property
    def close_ts(self) -> int:
        return self.ts + TIMEFRAME_MS[self.timeframe]

    def validate(self) -> None:
        values = (self.open, self.high, self.low, self.close, self.volume)
        if not all(math.isfinite(v) for v in values):
            raise InvalidBar(f"{self.symbol} bar at {self.ts}: non-finite value in {values}")
        if min(self.open, self.high, self.low, self.close) <= 0 or self.volume < 0:
            raise InvalidBar(f"{self.symbol} bar at {self.ts}: non-positive price or volume")
        if self.high < max(self.open, self.close, self.low) or self.low > min(
            self.open, self.close
        ):
            raise InvalidBar(f"{self.symbol} bar at {self.ts}: high/low do not bound open/close")


@dataclass(slots=True, frozen=True)
class Signal:
    """A signal source's opinion: what position it wants in ``symbol``, and how sure it is."""

    id: str
    symbol: str
    direction: Direction
    confidence: float
    ts: int  # when it was produced (the close time of the bar it saw)
    expires_at: int
    price: float  # the last price the source saw; risk uses it for sanity checks and sizing
    source: str  # strategy name or model version
    trace_id: str
    timeframe: str = "30m"
    stop_distance: float | None = None  # suggested stop distance as a fraction of price
    target_distance: float | None = None  # suggested take-profit distance, likewise


@dataclass(slots=True, frozen=True)
class OrderIntent:
    """An order the system wants to place; risk-safety approves (and sizes) it or rejects it."""

    id: str
    symbol: str
    side: Side
    quantity: float
    order_type: OrderType
    purpose: IntentPurpose
    ts: int
    expires_at: int
    trace_id: str
    reduce_only: bool = False
    price: float | None = None  # limit price
    stop_price: float | None = None  # trigger for stop orders
    signal_id: str | None = None
    reason: str = ""  # e.g. "signal", "stop_loss", "take_profit", "trailing_stop"
    reference_price: float = 0.0  # last price known when the intent was made
    stop_loss: float | None = None  # protective levels for the position an entry opens
    take_profit: float | None = None
    tag: str = ""  # protective-order role, e.g. "sl" or "tp"
    # The signal's own target distance (a strategy's hint), a fraction of the fill price:
    # the exit brain sets the target there instead of at take_profit_rr x the stop distance.
    target_distance: float | None = None


@dataclass(slots=True, frozen=True)
class Fill:
    id: str
    order_id: str
    client_order_id: str
    symbol: str
    side: Side
    quantity: float
    price: float
    fee: float  # in quote currency, positive is a cost
    liquidity: Liquidity
    ts: int
    trace_id: str = ""
    realized_pnl: float = 0.0  # filled in by the portfolio when the fill reduces a position
    is_liquidation: bool = False


@dataclass(slots=True, frozen=True)
class FundingPayment:
    symbol: str
    ts: int
    rate: float
    mark_price: float
    position_qty: float
    amount: float  # what the account paid (positive) or received (negative)
    id: str = ""  # the venue's id of the payment (Binance: the income tranId): booked once


@dataclass(slots=True, frozen=True)
class RiskDecision:
    """The gate's answer for one signal or intent; rejections carry a typed reason."""

    id: str
    subject_id: str  # the signal or intent it judges
    approved: bool
    reason: str  # RejectReason value, or "APPROVED"
    detail: str
    ts: int
    trace_id: str
    intent: OrderIntent | None = None
    checks: tuple[str, ...] = field(default_factory=tuple)
