"""What a venue (the simulated exchange, Binance through ccxt, our Binance-compatible simulator)
tells us, as values. Two kinds of news, never mixed:

* an ``OrderUpdate`` is the venue's *view of one order*: its status and its cumulative fill.
  Updates can be late, repeated or older than what we already know; they move an order through
  the state table only forwards, and they never book a fill.
* a ``VenueTrade`` is *one execution*: quantity, price, fee, keyed by (symbol, trade id). Trades
  are the only thing that moves positions and the wallet, each exactly once, whatever order the
  updates came in (a trade on an order already CANCELED is still booked: trades beat snapshots).

Orders the venue creates on its own are recognised by the client ids Binance gives them:
liquidations (``autoclose-``), auto-deleveraging (``adl_autoclose``) and delivery settlement
(``settlement_autoclose-``). Anything else we did not place is EXTERNAL (a manual order).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from quantum_trader.domain.enums import Liquidity, OrderStatus, OrderType, Side


class OrderOrigin(StrEnum):
    """Who created an order."""

    OURS = "OURS"  # placed by this system, for one intent
    EXTERNAL = "EXTERNAL"  # placed on the account by someone else (a manual order)
    LIQUIDATION = "LIQUIDATION"
    ADL = "ADL"
    SETTLEMENT = "SETTLEMENT"

    @property
    def is_venue_initiated(self) -> bool:
        return self in (OrderOrigin.LIQUIDATION, OrderOrigin.ADL, OrderOrigin.SETTLEMENT)


def venue_origin(client_order_id: str) -> OrderOrigin | None:
    """The origin of an order the venue itself created, from its client id; None otherwise."""
    if client_order_id.startswith("autoclose-"):
        return OrderOrigin.LIQUIDATION
    if client_order_id.startswith("adl_autoclose"):
        return OrderOrigin.ADL
    if client_order_id.startswith("settlement_autoclose"):
        return OrderOrigin.SETTLEMENT
    return None


@dataclass(slots=True, frozen=True)
class OrderRequest:
    """What is sent to the venue for one order (derived from an ``Order``, never edited)."""

    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: float
    reduce_only: bool = False
    price: float | None = None
    stop_price: float | None = None


@dataclass(slots=True, frozen=True)
class OrderUpdate:
    """The venue's view of one order at ``ts``: status and cumulative fill, no trade."""

    client_order_id: str
    venue_order_id: str
    symbol: str
    side: Side
    status: OrderStatus
    ts: int
    filled_qty: float = 0.0  # cumulative, as the venue reports it
    avg_price: float = 0.0
    quantity: float = 0.0  # the order's size on the venue (0: not reported)
    reason: str = ""
    code: int = 0  # the venue's error code of a rejection (e.g. -2021 would trigger at once)
    order_type: OrderType | None = None
    reduce_only: bool = False

    @property
    def origin(self) -> OrderOrigin | None:
        return venue_origin(self.client_order_id)


@dataclass(slots=True, frozen=True)
class VenueTrade:
    """One execution on the venue. ``(symbol, trade_id)`` identifies it for ever."""

    symbol: str
    trade_id: str
    venue_order_id: str
    client_order_id: str
    side: Side
    quantity: float
    price: float
    fee: float  # quote currency, positive is a cost
    liquidity: Liquidity
    ts: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.symbol, self.trade_id)

    @property
    def origin(self) -> OrderOrigin | None:
        return venue_origin(self.client_order_id)


#: Everything a venue reports about orders, in the order it happened.
VenueEvent = OrderUpdate | VenueTrade


@dataclass(slots=True, frozen=True)
class VenuePosition:
    symbol: str
    qty: float  # signed: positive long
    avg_entry: float
    leverage: float
    liquidation_price: float


@dataclass(slots=True, frozen=True)
class VenueAccount:
    """The account as the venue holds it: the truth our books are compared with."""

    ts: int
    wallet: float  # wallet balance: deposits + realized PnL - fees - funding
    positions: tuple[VenuePosition, ...] = ()
    available: float = 0.0

    def position(self, symbol: str) -> float:
        return next((p.qty for p in self.positions if p.symbol == symbol), 0.0)


@dataclass(slots=True, frozen=True)
class Ticker24h:
    """A symbol's rolling 24-hour market statistics (what pair lists rank by)."""

    symbol: str
    last_price: float
    volume: float  # base asset
    quote_volume: float  # quote asset (USDT): the liquidity measure
    change_pct: float
    trades: int


#: Binance error codes that matter to execution.
WOULD_TRIGGER_IMMEDIATELY = -2021
REDUCE_ONLY_REJECTED = -2022
MARGIN_INSUFFICIENT = -2019
DUPLICATE_CLIENT_ID = -4116
LEVERAGE_WITH_POSITION = -4161  # cannot change leverage (or reduce it) with an open position
MARGIN_TYPE_WITH_POSITION = -4048  # cannot change margin type with an open position or order
NO_NEED_TO_CHANGE_MARGIN = -4046

__all__ = [
    "DUPLICATE_CLIENT_ID",
    "LEVERAGE_WITH_POSITION",
    "MARGIN_INSUFFICIENT",
    "MARGIN_TYPE_WITH_POSITION",
    "NO_NEED_TO_CHANGE_MARGIN",
    "REDUCE_ONLY_REJECTED",
    "WOULD_TRIGGER_IMMEDIATELY",
    "OrderOrigin",
    "OrderRequest",
    "OrderUpdate",
    "Ticker24h",
    "VenueAccount",
    "VenueEvent",
    "VenuePosition",
    "VenueTrade",
    "venue_origin",
]
