"""What every exchange (simulated, ccxt) reports back, and the ``Exchange`` port."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from quantum_trader.domain.enums import Liquidity, OrderStatus, OrderType, Side
from quantum_trader.domain.models import FundingPayment


@dataclass(slots=True, frozen=True)
class OrderRequest:
    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: float
    reduce_only: bool = False
    price: float | None = None
    stop_price: float | None = None


@dataclass(slots=True, frozen=True)
class ExecutionReport:
    """One change of an order on the exchange: acceptance, a fill, a cancel or a rejection."""

    client_order_id: str
    exchange_order_id: str
    symbol: str
    status: OrderStatus
    ts: int
    side: Side
    fill_qty: float = 0.0
    fill_price: float = 0.0
    fee: float = 0.0
    liquidity: Liquidity | None = None
    trade_id: str = ""
    reason: str = ""
    is_liquidation: bool = False
    # Snapshots (a venue's answer to submit/query/open orders) carry the order's cumulative
    # fill here and leave ``fill_qty`` at 0: individual fills come with trade ids, separately.
    cum_qty: float = 0.0
    avg_price: float = 0.0


@dataclass(slots=True, frozen=True)
class ExchangePosition:
    symbol: str
    qty: float
    avg_entry: float
    leverage: float
    liquidation_price: float


class Exchange(Protocol):
    """The async port the execution service talks to (ccxt for real venues)."""

    async def submit(self, request: OrderRequest) -> ExecutionReport: ...

    async def cancel(self, symbol: str, client_order_id: str) -> ExecutionReport: ...

    async def query(self, symbol: str, client_order_id: str) -> ExecutionReport | None:
        """The order's current state, or None if the exchange does not know it."""

    async def open_orders(self, symbol: str | None = None) -> list[ExecutionReport]: ...

    async def positions(self) -> list[ExchangePosition]: ...

    async def set_leverage(self, symbol: str, leverage: float) -> None: ...

    async def balance(self) -> float: ...


__all__ = ["Exchange", "ExchangePosition", "ExecutionReport", "FundingPayment", "OrderRequest"]
