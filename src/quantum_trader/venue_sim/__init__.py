"""A fake Binance USDⓈ-M venue: REST the real, unmodified ccxt ``binanceusdm`` client (or any
Binance client) talks to as if it were the exchange, matching on historical bars with the
backtests' core (``exchange.simulated.SimulatedExchange``), so a strategy behaves the same in a
backtest, against this venue and (modulo the market) on Binance.

It is a venue, not an adapter: where Binance's behaviour can hurt a client (client ids reused
once an order is done, -2021 on stops already crossed, conditional orders that become other
orders with other ids, liquidations in several trades, ADL, 408s with an empty body, the still
open kline), it behaves the same, so a client is tested against what it will meet.

* ``state``: ``SimState``, the venue (core, clocks, orders, trades, income; ``records()``);
* ``limits``: request weight, 429 Retry-After, 418 bans;
* ``faults``: injected faults (``FaultConfig``);
* ``wire``: Binance's JSON;
* ``routes``: the REST paths and the admin ones (``/sim/...``);
* ``server``: ``SimApp`` (ASGI) and ``SimServer`` (a background thread on loopback).

Deviation, on purpose: new orders weigh 1 on the IP limit (Binance: 0 IP weight, order-count
limits instead), so one budget governs everything.
"""

from quantum_trader.venue_sim.faults import FAULT_KINDS, FaultConfig
from quantum_trader.venue_sim.server import SimApp, SimServer, load_series
from quantum_trader.venue_sim.state import (
    LIQUIDATION_TRADES,
    IncomeRecord,
    Kline,
    OrderSource,
    PositionRecord,
    SimOrder,
    SimRecords,
    SimServerConfig,
    SimState,
    TradeRecord,
    server_exchange_settings,
)
from quantum_trader.venue_sim.wire import ApiError

__all__ = [
    "FAULT_KINDS",
    "LIQUIDATION_TRADES",
    "ApiError",
    "FaultConfig",
    "IncomeRecord",
    "Kline",
    "OrderSource",
    "PositionRecord",
    "SimApp",
    "SimOrder",
    "SimRecords",
    "SimServer",
    "SimServerConfig",
    "SimState",
    "TradeRecord",
    "load_series",
    "server_exchange_settings",
]
