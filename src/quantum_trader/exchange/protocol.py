"""The async venue port that execution talks to, and the value types it speaks (which live in
``domain/venue.py``: the domain and every adapter share them).

Two drivers carry the execution engine's orders to a venue: the backtest node calls the
simulated exchange directly (synchronous, in bar time), and the execution service goes through
this port (``CcxtBinanceExchange`` for Binance and our Binance-compatible simulator server,
``SimulatedVenue`` for the in-process simulated exchange).
"""

from __future__ import annotations

from typing import Protocol

from quantum_trader.domain.models import FundingPayment
from quantum_trader.domain.venue import (
    OrderRequest,
    OrderUpdate,
    VenueAccount,
    VenuePosition,
    VenueTrade,
)

#: Earlier name of ``VenuePosition``.
ExchangePosition = VenuePosition


class Venue(Protocol):
    """What the execution service needs from a venue."""

    async def submit(self, request: OrderRequest) -> OrderUpdate:
        """Place an order; the answer is its first state (ACCEPTED, FILLED, ... or REJECTED
        with the venue's code). Raises the typed errors of ``exchange.errors``."""

    async def cancel(self, symbol: str, client_order_id: str) -> OrderUpdate: ...

    async def query(self, symbol: str, client_order_id: str) -> OrderUpdate | None:
        """The order's current state, or None if the venue does not know it."""

    async def open_orders(self, symbol: str | None = None) -> list[OrderUpdate]: ...

    async def trades(self, symbol: str, from_id: int | None = None) -> list[VenueTrade]:
        """Our trades in ``symbol`` from trade id ``from_id`` on, oldest first (all of them
        the venue keeps when None)."""

    async def latest_trade_id(self, symbol: str) -> int | None:
        """The id of our newest trade in ``symbol`` (None: no trade yet): a first start books
        from there on, not the account's whole history."""

    async def funding(self, since_ts: int) -> list[FundingPayment]:
        """Funding paid or received since ``since_ts`` (inclusive), each with its venue id."""

    async def latest_funding_time(self) -> int | None:
        """The time of the newest funding payment (venue clock): a first start reads from
        after it."""

    async def account(self) -> VenueAccount:
        """Wallet balance and positions, as the venue holds them."""

    async def resync_time(self) -> None: ...


__all__ = ["ExchangePosition", "FundingPayment", "OrderRequest", "OrderUpdate", "Venue",
           "VenueAccount", "VenuePosition", "VenueTrade"]
