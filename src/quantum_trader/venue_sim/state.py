"""``SimState``: the venue behind the simulator. It holds the matching core (the backtests'
``SimulatedExchange``), the clocks, and the venue's own records of orders, trades and income.

Time. The wall clock signs requests (/fapi/v1/time and recvWindow use it); the *sim clock*
replays bars. A symbol's bars whose close time is at or before the sim clock are closed: they
are fed to the core (every symbol merged in time order, before any request is handled, so an
order never meets a bar that closed before it arrived) and served by /fapi/v1/klines. The sim
clock runs one of three ways:

* accelerated (default): ``bar_seconds`` of wall time per bar, from the close of ``start_bar``;
* lockstep (``bar_seconds=0``): it moves only on ``advance()`` and always stands on a bar
  boundary, so orders are matched from the next bar's open, as in a backtest;
* wall clock (``wall_clock=True``): the series are shifted so that ``start_bar`` closed at the
  last bar boundary before now, bars last their real timeframe, and /fapi/v1/klines ends, as
  Binance's does, with the still-open kline (its path so far, closeTime ahead).

Between two boundaries the clock is *inside* a bar. The venue's current price is then the price
on that bar's assumed path (``exchange.simulated.bar_path``: open, adverse extreme, favourable
extreme, close; a third of the bar each) at the clock's point, and an order carries the sim time
so the core matches it from that point, never from the bar's open. That price is what a
conditional order is checked against (-2021 when its trigger is already crossed) and the mark
price reported; on a boundary it is the last close.

Orders, as Binance's matching engine and Algo Service keep them:

* an order has an ``orderId``; client order ids are unique among *open* orders only (-4116): a
  done order's id can be used again, for a new order, and a query by client id answers with the
  most recent one. A rejected order never existed: nothing of it is kept.
* a conditional order (STOP_MARKET) is an algo order (``algoId``, ``clientAlgoId``, algoStatus
  NEW). Triggered, it becomes a regular MARKET order with its own orderId and a clientOrderId
  the venue makes up (the algo order's ``actualOrderId``); the algo order is TRIGGERED, then
  FINISHED once that order is filled, canceled or expired. Its trades belong to that order.
* the venue's own orders: liquidations (``autoclose-...``, filled in ``liquidation_trades``
  trades) and auto-deleveraging (``adl_autoclose-...``, on ``adl()``). Orders the venue cancels
  itself (reduce-only orders with nothing left to reduce) end EXPIRED.

A trade is stamped with its bar's time, but never before its order arrived nor before the
symbol's previous trade. Each trade books its income rows (REALIZED_PNL, COMMISSION) and each
funding payment a FUNDING_FEE row with a ``tranId``, so the wallet is always the initial balance
plus the sum of all income. ``records()`` is everything at once, for checking a client's books
against the venue's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from quantum_trader.domain.enums import Liquidity, OrderStatus, OrderType, Side
from quantum_trader.domain.instruments import Instrument, instrument_for
from quantum_trader.domain.models import Bar, timeframe_ms
from quantum_trader.domain.position import Position
from quantum_trader.domain.venue import (
    OrderOrigin,
    OrderRequest,
    OrderUpdate,
    VenueEvent,
    VenueTrade,
    venue_origin,
)
from quantum_trader.exchange.simulated import (
    OrderRejected,
    SimExchangeSettings,
    SimulatedExchange,
    price_on_path,
)
from quantum_trader.marketdata.series import BarSeries
from quantum_trader.venue_sim.faults import FaultConfig, FaultInjector
from quantum_trader.venue_sim.limits import WeightLimits
from quantum_trader.venue_sim.wire import ApiError, rejection

#: Trades a liquidation fills in on the server (Binance's often come in several; backtests: 1).
LIQUIDATION_TRADES = 3

_OPEN = ("NEW", "PARTIALLY_FILLED")
_DONE = ("FILLED", "CANCELED", "EXPIRED")


def server_exchange_settings(**overrides: Any) -> SimExchangeSettings:
    """The core's settings as the server uses them (liquidations in several trades)."""
    return dataclasses.replace(SimExchangeSettings(liquidation_trades=LIQUIDATION_TRADES),
                               **overrides)


@dataclass(slots=True)
class SimServerConfig:
    series: list[BarSeries]
    bar_seconds: float = 1.0  # wall seconds per bar; 0 = the clock moves only on advance()
    start_bar: int = 500  # bars already closed when the server starts (kline history)
    wall_clock: bool = False  # replay aligned to the wall clock, serve the open kline
    api_key: str = "sim-key"
    api_secret: str = "sim-secret"
    weight_limit: int = 2400
    weight_window_s: float = 60.0
    ban_seconds: float = 120.0
    max_recv_window_ms: int = 60_000
    exchange: SimExchangeSettings = field(default_factory=server_exchange_settings)
    instruments: Callable[[str], Instrument] = instrument_for
    faults: FaultConfig = field(default_factory=FaultConfig)


class OrderSource(StrEnum):
    """Who made an order, on the venue's side."""

    API = "API"  # placed by a client (a regular or an algo order)
    TRIGGER = "TRIGGER"  # the regular order a triggered algo order became
    LIQUIDATION = "LIQUIDATION"
    ADL = "ADL"


@dataclass(slots=True)
class SimOrder:
    """One order as the venue keeps it. Statuses are Binance's: a regular order's NEW,
    PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED; an algo order's NEW, TRIGGERED, FINISHED,
    CANCELED, EXPIRED."""

    order_id: int  # orderId; an algo order's algoId
    client_id: str  # clientOrderId; an algo order's clientAlgoId
    symbol: str
    side: Side
    type: str  # MARKET, LIMIT, STOP_MARKET
    qty: float
    price: float
    stop_price: float
    reduce_only: bool
    time: int
    update_time: int
    algo: bool = False
    source: OrderSource = OrderSource.API
    status: str = "NEW"
    executed: float = 0.0
    cum_quote: float = 0.0
    parent: int | None = None  # a triggered order: the algoId it came from
    actual: int | None = None  # an algo order: the orderId it became
    trigger_time: int = 0
    core_id: str = ""  # its order's client id in the matching core

    @property
    def avg_price(self) -> float:
        return self.cum_quote / self.executed if self.executed > 0 else 0.0

    @property
    def is_open(self) -> bool:
        return self.status == "NEW" if self.algo else self.status in _OPEN

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "orderId": self.order_id,
                "clientOrderId": self.client_id, "algo": self.algo,
                "source": self.source.value, "type": self.type, "side": self.side.value,
                "status": self.status, "origQty": self.qty, "executedQty": self.executed,
                "avgPrice": self.avg_price, "cumQuote": self.cum_quote, "price": self.price,
                "stopPrice": self.stop_price, "reduceOnly": self.reduce_only, "time": self.time,
                "updateTime": self.update_time, "triggerTime": self.trigger_time,
                "algoId": self.parent, "actualOrderId": self.actual}


@dataclass(slots=True, frozen=True)
class TradeRecord:
    symbol: str
    id: int
    order_id: int
    client_order_id: str  # of the order it belongs to (userTrades does not say it)
    side: Side
    price: float
    qty: float
    commission: float
    realized_pnl: float
    time: int
    maker: bool

    @property
    def quote_qty(self) -> float:
        return self.price * self.qty

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "id": self.id, "orderId": self.order_id,
                "clientOrderId": self.client_order_id, "side": self.side.value,
                "price": self.price, "qty": self.qty, "quoteQty": self.quote_qty,
                "commission": self.commission, "realizedPnl": self.realized_pnl,
                "time": self.time, "maker": self.maker}


@dataclass(slots=True, frozen=True)
class IncomeRecord:
    symbol: str
    income_type: str  # FUNDING_FEE, REALIZED_PNL, COMMISSION
    income: float  # what the wallet gained (negative: paid)
    time: int
    tran_id: int
    trade_id: str = ""  # the trade it comes from ("" for funding)
    info: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "incomeType": self.income_type, "income": self.income,
                "time": self.time, "tranId": self.tran_id, "tradeId": self.trade_id,
                "info": self.info}


@dataclass(slots=True, frozen=True)
class PositionRecord:
    symbol: str
    qty: float  # signed: positive long
    entry_price: float
    mark_price: float
    leverage: float
    liquidation_price: float  # Binance's isolated-margin formula (0 when flat)
    margin_type: str  # isolated | cross (recorded; the core margins isolated)
    maint_margin_rate: float

    @property
    def unrealized_pnl(self) -> float:
        return self.qty * (self.mark_price - self.entry_price) if self.qty else 0.0

    @property
    def isolated_wallet(self) -> float:
        return abs(self.qty) * self.entry_price / self.leverage if self.qty else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "positionAmt": self.qty, "entryPrice": self.entry_price,
                "markPrice": self.mark_price, "leverage": self.leverage,
                "liquidationPrice": self.liquidation_price, "marginType": self.margin_type,
                "unRealizedProfit": self.unrealized_pnl}


@dataclass(slots=True, frozen=True)
class Kline:
    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    close_time: int
    closed: bool = True


@dataclass(slots=True, frozen=True)
class SimRecords:
    """The venue's books at one moment: what a client's books must agree with."""

    sim_time: int
    initial_balance: float
    wallet: float
    orders: tuple[SimOrder, ...]  # every order, algo and venue-initiated ones included
    trades: tuple[TradeRecord, ...]
    income: tuple[IncomeRecord, ...]
    positions: tuple[PositionRecord, ...]  # open positions

    def to_json(self) -> dict[str, Any]:
        return {"sim_time": self.sim_time, "initial_balance": self.initial_balance,
                "wallet": self.wallet, "orders": [o.to_json() for o in self.orders],
                "trades": [t.to_json() for t in self.trades],
                "income": [r.to_json() for r in self.income],
                "positions": [p.to_json() for p in self.positions]}


class SimState:
    """Everything the server knows: the matching core, the clocks, the venue's records, the
    weight limits and the faults. Safe to call from any thread."""

    def __init__(self, config: SimServerConfig) -> None:
        if not config.series:
            raise ValueError("the simulator needs at least one bar series")
        self.config = config
        self.core = SimulatedExchange(config.exchange, config.instruments)
        self.core.keep_trades = True
        first = config.series[0]
        self._bar_ms = timeframe_ms(first.timeframe)
        start = min(config.start_bar, len(first) - 1)
        sim_start = int(first.ts[start]) + self._bar_ms  # the close of the start bar
        series = config.series
        if config.wall_clock:
            # Shift by whole bars of every timeframe, so klines stay on the wall's bar grid.
            grid = math.lcm(*(timeframe_ms(s.timeframe) for s in series))
            shift = (self.wall_ms() - sim_start) // grid * grid
            series = [_shifted(s, shift) for s in series]
            sim_start += shift
        self.series = {s.symbol: s for s in series}
        self.timeframes = {s.symbol: s.timeframe for s in series}
        self._tf = {s.symbol: timeframe_ms(s.timeframe) for s in series}
        self._sim_start = sim_start
        self._sim_offset = 0  # manual advances
        self._wall_start = time.monotonic()
        self._fed = dict.fromkeys(self.series, 0)  # bars already given to the core
        self.lock = threading.RLock()
        self._orders: dict[int, SimOrder] = {}  # orderId -> regular order
        self._algos: dict[int, SimOrder] = {}  # algoId -> algo order
        self._latest: dict[str, int] = {}  # clientOrderId -> orderId of its newest order
        self._latest_algo: dict[str, int] = {}  # clientAlgoId -> algoId of its newest one
        self._untriggered: dict[int, SimOrder] = {}  # algoId -> algo order still NEW
        self._by_core: dict[str, SimOrder] = {}  # the core's order id -> the order owning it
        self._trades: list[TradeRecord] = []
        self._income: list[IncomeRecord] = []
        self._shadow: dict[str, Position] = {}  # the core's positions, replayed: realized PnL
        self._last_trade_time: dict[str, int] = {}
        self._funding_seen = 0
        self._placed: Counter[str] = Counter()  # client id -> orders placed with it
        self.margin_type: dict[str, str] = {}
        # Hedge mode (Binance's dualSidePosition): positions per side. The matching core is
        # one-way only; the flag is reported so clients can be tested refusing it.
        self.dual_side_position = False
        self._next_order = 4_000_000_000
        self._next_algo = 1_000_000_000_000  # a range of its own: an algoId is no orderId
        self._next_trade = 200_000_000
        self._next_tran = 9_000_000_000
        self._next_cid = 0
        self.limits = WeightLimits(config.weight_limit, config.weight_window_s,
                                   config.ban_seconds)
        self.faults = FaultInjector(config.faults)
        self.requests: Counter[str] = Counter()  # "METHOD /path" -> count, faults included
        self.status_counts: Counter[int] = Counter()
        self.sync()

    # --- clocks -----------------------------------------------------------------------------
    def sim_now(self) -> int:
        if self.config.wall_clock:
            return self.wall_ms()
        elapsed = 0
        if self.config.bar_seconds > 0:
            elapsed = int((time.monotonic() - self._wall_start) / self.config.bar_seconds
                          * self._bar_ms)
        return self._sim_start + self._sim_offset + elapsed

    def advance(self, bars: int = 1) -> None:
        """Move the sim clock ``bars`` bars on and match them (lockstep and accelerated)."""
        if self.config.wall_clock:
            raise ValueError("a wall-clock replay moves with the wall clock only")
        with self.lock:
            self._sim_offset += bars * self._bar_ms
            self.sync()

    def set_pace(self, bar_seconds: float) -> None:
        """Go on from the sim time now at a new pace (0: stand still until ``advance``)."""
        if self.config.wall_clock:
            raise ValueError("a wall-clock replay moves with the wall clock only")
        with self.lock:
            now = self.sim_now()
            self._sim_offset = now - self._sim_start
            self._wall_start = time.monotonic()
            self.config.bar_seconds = bar_seconds
            self.sync()

    def freeze(self) -> None:
        """Stop the sim clock where it is now (the market pauses; ``advance`` moves it on)."""
        if self.config.wall_clock:
            raise ValueError("a wall-clock replay moves with the wall clock only")
        with self.lock:
            now = self.sim_now()
            self.config.bar_seconds = 0
            self._sim_offset = now - self._sim_start
            self.sync()

    @staticmethod
    def wall_ms() -> int:
        return int(time.time() * 1000)

    def sync(self) -> int:
        """Feed every newly closed bar to the core, all symbols merged in time order; returns
        the sim time it synced to (use it for everything the request does next)."""
        with self.lock:
            now = self.sim_now()
            due: list[tuple[int, str, int]] = []
            for sym, s in self.series.items():
                end = int(np.searchsorted(s.ts, now - self._tf[sym], side="right"))
                due.extend((int(s.ts[i]), sym, i) for i in range(self._fed[sym], end))
                self._fed[sym] = max(self._fed[sym], end)
            due.sort()
            for _ts, sym, i in due:
                bar = self.series[sym].bar(i)
                events = self.core.on_bar(bar)
                self._collect_funding()  # settled at the bar's open, before its fills
                for ev in events:
                    self._apply(ev)
                self._check_triggers(sym, bar.ts)
            return now

    def closed_bars(self, symbol: str) -> BarSeries:
        return self.series[symbol].slice(0, self._fed[symbol])

    def bars_closed(self) -> dict[str, int]:
        """Bars of each symbol closed (fed to the core) so far."""
        with self.lock:
            self.sync()
            return dict(self._fed)

    def _inside(self, symbol: str, now: int) -> tuple[Bar, float] | None:
        """The bar of ``symbol`` the clock is inside, and how far into it; None on a
        boundary (or in a gap of the data)."""
        s = self.series[symbol]
        i = self._fed[symbol]
        if i >= len(s):
            return None
        t0 = int(s.ts[i])
        tf = self._tf[symbol]
        if not t0 < now < t0 + tf:
            return None
        return s.bar(i), (now - t0) / tf

    def _price(self, symbol: str, now: int) -> float | None:
        inside = self._inside(symbol, now)
        if inside is None:
            return self.core.last_price(symbol)
        bar, f = inside
        return price_on_path(self.core.path(bar), f)

    def price_now(self, symbol: str) -> float | None:
        """The venue's current price of ``symbol`` (the mark price it reports)."""
        with self.lock:
            return self._price(symbol, self.sync())

    def stats_24h(self, symbol: str) -> dict[str, float | int]:
        """/fapi/v1/ticker/24hr's rolling window over the closed bars of the last 24 hours of
        sim time (volume in the base asset, quote volume as volume x close per bar)."""
        with self.lock:
            now = self.sync()
            s = self.series[symbol]
            n = self._fed[symbol]
            lo = int(np.searchsorted(s.ts[:n], now - 86_400_000, side="left"))
            if n == 0 or lo >= n:
                return {"open": 0.0, "high": 0.0, "low": 0.0, "last": 0.0, "volume": 0.0,
                        "quote_volume": 0.0, "open_time": now - 86_400_000,
                        "close_time": now, "count": 0}
            sl = slice(lo, n)
            return {"open": float(s.open[lo]), "high": float(s.high[sl].max()),
                    "low": float(s.low[sl].min()), "last": float(s.close[n - 1]),
                    "volume": float(s.volume[sl].sum()),
                    "quote_volume": float((s.volume[sl] * s.close[sl]).sum()),
                    "open_time": int(s.ts[lo]), "close_time": now, "count": n - lo}

    def klines(self, symbol: str, start: int | None = None, end: int | None = None,
               limit: int = 500) -> list[Kline]:
        """Closed klines by open time, as /fapi/v1/klines pages them (from ``start`` on, or the
        newest up to ``end``), then the open one in wall-clock mode."""
        with self.lock:
            now = self.sync()
            s = self.series[symbol]
            n = self._fed[symbol]
            ts = s.ts[:n]
            hi = n if end is None else int(np.searchsorted(ts, end, side="right"))
            lo = 0 if start is None else int(np.searchsorted(ts, start, side="left"))
            live = self._open_kline(symbol, now) if self.config.wall_clock else None
            if live is not None and ((end is not None and live.open_time > end)
                                     or (start is not None and live.open_time < start)):
                live = None
            room = limit - (1 if live is not None else 0)
            if start is not None:
                hi = min(hi, lo + limit)
                if hi - lo >= limit:
                    live = None
            else:
                lo = max(lo, hi - room)
            tf = self._tf[symbol]
            rows = [Kline(int(s.ts[i]), float(s.open[i]), float(s.high[i]), float(s.low[i]),
                          float(s.close[i]), float(s.volume[i]), int(s.ts[i]) + tf - 1)
                    for i in range(lo, max(lo, hi))]
            if live is not None:
                rows.append(live)
            return rows

    def _open_kline(self, symbol: str, now: int) -> Kline | None:
        inside = self._inside(symbol, now)
        if inside is None:
            return None
        bar, f = inside
        points = self.core.path(bar)
        price = price_on_path(points, f)
        seen = (*points[:min(int(f * 3), 2) + 1], price)
        return Kline(bar.ts, bar.open, max(seen), min(seen), price, bar.volume * f,
                     bar.close_ts - 1, closed=False)

    # --- orders -----------------------------------------------------------------------------
    def place(self, symbol: str, side: Side, order_type: OrderType, qty: float, *,
              price: float | None = None, stop: float | None = None, reduce_only: bool = False,
              client_id: str | None = None, algo: bool = False) -> SimOrder:
        """Accept an order (a STOP_MARKET only as an algo order) or raise the venue's error."""
        self._symbol_known(symbol)
        inst = self.config.instruments(symbol)
        for value in (price, stop):
            if value and not inst.on_tick(value):
                raise ApiError(-4014, "Price not increased by tick size.")
        with self.lock:
            now = self.sync()
            cid = client_id or self._venue_client_id()
            twin = self._algos.get(self._latest_algo.get(cid, -1)) if algo else \
                self._orders.get(self._latest.get(cid, -1))
            if twin is not None and twin.is_open:
                raise ApiError(-4116, "ClientOrderId is duplicated.")
            oid = self._new_algo_id() if algo else self._new_order_id()
            # Algo ids live apart from client order ids ('#' is not allowed in either).
            core_id = f"#algo{oid}" if algo else cid
            req = OrderRequest(core_id, symbol, side, order_type, qty, reduce_only,
                               price if order_type is OrderType.LIMIT else None,
                               stop if order_type is OrderType.STOP_MARKET else None)
            try:
                update = self.core.submit(req, now, self._inside_price(symbol, now))
            except OrderRejected as exc:
                raise rejection(exc.code, exc.message, inst) from None
            if update.status is OrderStatus.REJECTED:
                raise rejection(update.code or -2010, update.reason, inst)
            o = SimOrder(oid, cid, symbol, side, order_type.value, qty, price or 0.0,
                         stop or 0.0, reduce_only, now, now, algo=algo, core_id=core_id)
            if algo:
                self._algos[oid] = o
                self._latest_algo[cid] = oid
                self._untriggered[oid] = o
            else:
                self._orders[oid] = o
                self._latest[cid] = oid
            self._by_core[update.venue_order_id] = o
            self._placed[cid] += 1
            return o

    def _inside_price(self, symbol: str, now: int) -> float | None:
        inside = self._inside(symbol, now)
        return None if inside is None else price_on_path(self.core.path(inside[0]), inside[1])

    def find(self, symbol: str | None, order_id: int | None = None,
             client_id: str | None = None, algo: bool = False) -> SimOrder:
        """An order by id (or the newest with that client id); -2013 if there is none."""
        with self.lock:
            self.sync()
            table, latest = (self._algos, self._latest_algo) if algo else \
                (self._orders, self._latest)
            if order_id is not None:
                o = table.get(order_id)
            elif client_id is not None:
                o = table.get(latest.get(client_id, -1))
            else:
                key = "algoId" if algo else "orderId"
                raise ApiError(-1102, f"Mandatory parameter '{key}' was not sent, was "
                                      "empty/null, or malformed.")
            if o is None or (symbol is not None and o.symbol != symbol):
                raise ApiError(-2013, "Order does not exist.")
            return o

    def actual_of(self, algo: SimOrder) -> SimOrder | None:
        """The regular order a triggered algo order became."""
        return None if algo.actual is None else self._orders[algo.actual]

    def cancel(self, symbol: str | None, order_id: int | None = None,
               client_id: str | None = None, algo: bool = False) -> SimOrder:
        with self.lock:
            now = self.sync()
            try:
                o = self.find(symbol, order_id, client_id, algo)
            except ApiError as exc:
                if exc.code == -2013:
                    raise ApiError(-2011, "Unknown order sent.") from None
                raise
            if not o.is_open:
                raise ApiError(-2011, "Unknown order sent.")
            try:
                self.core.cancel(o.core_id, now)
            except OrderRejected:
                raise ApiError(-2011, "Unknown order sent.") from None
            o.status = "CANCELED"
            o.update_time = max(o.update_time, now)
            if o.parent is not None:
                parent = self._algos[o.parent]
                parent.status = "FINISHED"
                parent.update_time = o.update_time
            if o.algo:
                self._untriggered.pop(o.order_id, None)
            return o

    def cancel_all(self, symbol: str, algo: bool = False) -> list[SimOrder]:
        with self.lock:
            return [self.cancel(symbol, o.order_id, algo=algo)
                    for o in self.open_orders(symbol, algo)]

    def open_orders(self, symbol: str | None = None, algo: bool = False) -> list[SimOrder]:
        """Open orders; for algo orders, the untriggered ones (a triggered one is a regular
        order now)."""
        with self.lock:
            self.sync()
            table = self._algos if algo else self._orders
            return [o for o in table.values()
                    if o.is_open and (symbol is None or o.symbol == symbol)]

    def all_orders(self, symbol: str, algo: bool = False) -> list[SimOrder]:
        with self.lock:
            self.sync()
            table = self._algos if algo else self._orders
            return [o for o in table.values() if o.symbol == symbol]

    def trades(self, symbol: str | None = None) -> list[TradeRecord]:
        with self.lock:
            self.sync()
            return [t for t in self._trades if symbol is None or t.symbol == symbol]

    def income(self) -> list[IncomeRecord]:
        with self.lock:
            self.sync()
            return list(self._income)

    # --- account ----------------------------------------------------------------------------
    def positions(self, symbol: str | None = None) -> list[PositionRecord]:
        """Every symbol's position (flat ones too), at the current price."""
        with self.lock:
            now = self.sync()
            out = []
            for sym in self.series:
                if symbol is not None and sym != symbol:
                    continue
                pos = self.core.account.positions.get(sym)
                open_ = pos is not None and pos.is_open
                mmr = self.config.instruments(sym).maintenance_margin_rate
                out.append(PositionRecord(
                    sym, pos.qty if pos is not None and open_ else 0.0,
                    pos.avg_entry if pos is not None and open_ else 0.0,
                    self._price(sym, now) or 0.0,
                    pos.leverage if pos is not None and open_ else self.core.leverage(sym),
                    pos.liquidation_price(mmr) if pos is not None and open_ else 0.0,
                    self.margin_type.get(sym, "isolated"), mmr))
            return out

    def wallet(self) -> tuple[float, float]:
        """Wallet balance and available margin."""
        with self.lock:
            self.sync()
            return self.core.wallet, self.core.available_margin()

    def set_leverage(self, symbol: str, leverage: int) -> None:
        self._symbol_known(symbol)
        with self.lock:
            self.sync()
            try:
                self.core.set_leverage(symbol, leverage)
            except OrderRejected as exc:
                raise ApiError(exc.code, exc.message) from None

    def set_margin_type(self, symbol: str, margin_type: str) -> None:
        self._symbol_known(symbol)
        mt = margin_type.upper()
        if mt not in ("ISOLATED", "CROSSED"):
            raise ApiError(-1130, "Invalid marginType.")
        wanted = "isolated" if mt == "ISOLATED" else "cross"
        with self.lock:
            if self.margin_type.get(symbol, "isolated") == wanted:
                raise ApiError(-4046, "No need to change margin type.")
            self.margin_type[symbol] = wanted  # recorded and reported; matched isolated

    def adl(self, symbol: str, fraction: float) -> SimOrder | None:
        """Auto-deleverage ``fraction`` of the position at the current price (the venue's
        ``adl_autoclose-...`` order); None when there is no position."""
        self._symbol_known(symbol)
        if not 0 < fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")
        with self.lock:
            now = self.sync()
            price = self._price(symbol, now)
            if price is None:
                return None
            events = self.core.auto_deleverage(symbol, fraction, price, now)
            for ev in events:
                self._apply(ev)
            oid = next((ev.venue_order_id for ev in events
                        if ev.origin is OrderOrigin.ADL), None)
            return None if oid is None else self._by_core[oid]

    # --- the venue's records ----------------------------------------------------------------
    def records(self) -> SimRecords:
        with self.lock:
            now = self.sync()
            orders = sorted([*self._orders.values(), *self._algos.values()],
                            key=lambda o: (o.time, o.order_id))
            return SimRecords(
                now, self.config.exchange.initial_balance, self.core.wallet,
                tuple(dataclasses.replace(o) for o in orders), tuple(self._trades),
                tuple(self._income), tuple(p for p in self.positions() if p.qty))

    def order_count(self, cid: str | None = None) -> int:
        """Orders clients placed (regular and algo; not what the venue made): all of them, or
        those with client id ``cid`` (more than one once a done order's id is used again)."""
        with self.lock:
            return self._placed[cid] if cid is not None else sum(self._placed.values())

    def order_requests(self) -> int:
        return sum(n for k, n in self.requests.items()
                   if k.startswith("POST") and k.endswith(("/order", "/algoOrder")))

    # --- limits and faults (the HTTP layer uses these) --------------------------------------
    def charge(self, ip: str, weight: int) -> int:
        return self.limits.charge(ip, weight)

    def used_weight(self, ip: str) -> int:
        return self.limits.used(ip)

    def retry_after(self, ip: str) -> float:
        return self.limits.retry_after(ip)

    def ban(self, ip: str, seconds: float) -> None:
        self.limits.ban(ip, seconds)

    def force_fault(self, kind: str, path: str, method: str = "POST") -> None:
        """Inject ``kind`` into the next ``method path`` request (deterministic tests)."""
        self.faults.force(kind, path, method)

    def pick_fault(self, path: str, method: str = "GET") -> str | None:
        return self.faults.pick(path, method)

    @property
    def faults_injected(self) -> Counter[str]:
        return self.faults.injected

    # --- bookkeeping of the core's events ---------------------------------------------------
    def _apply(self, ev: VenueEvent) -> None:
        owner = self._by_core.get(ev.venue_order_id)
        if owner is None:
            owner = self._venue_order(ev)
        order = owner
        if owner.algo:
            if owner.actual is None and isinstance(ev, OrderUpdate):
                # Closed by the venue before it ever triggered (nothing left to protect).
                owner.status = "EXPIRED"
                owner.update_time = max(owner.update_time, ev.ts)
                self._untriggered.pop(owner.order_id, None)
                return
            order = self._trigger(owner, ev.ts)
        if isinstance(ev, VenueTrade):
            self._book_trade(order, ev)
            return
        # Canceled here means by the venue itself (a client's cancel does not come this way).
        order.status = "EXPIRED" if ev.status in (OrderStatus.CANCELED, OrderStatus.EXPIRED) \
            else ev.status.value
        order.update_time = max(order.update_time, ev.ts)
        if order.parent is not None and order.status in _DONE:
            parent = self._algos[order.parent]
            parent.status = "FINISHED"
            parent.update_time = order.update_time

    def _venue_order(self, ev: VenueEvent) -> SimOrder:
        """The record of an order the venue made itself (liquidation, ADL)."""
        source = OrderSource.ADL if venue_origin(ev.client_order_id) is OrderOrigin.ADL \
            else OrderSource.LIQUIDATION
        o = SimOrder(self._new_order_id(), ev.client_order_id, ev.symbol, ev.side,
                     OrderType.MARKET.value, 0.0, 0.0, 0.0, True, ev.ts, ev.ts, source=source,
                     core_id=ev.client_order_id)
        self._orders[o.order_id] = o
        self._latest[o.client_id] = o.order_id
        self._by_core[ev.venue_order_id] = o
        return o

    def _trigger(self, algo: SimOrder, ts: int) -> SimOrder:
        """The regular order ``algo`` became when it triggered (made on first call)."""
        if algo.actual is not None:
            return self._orders[algo.actual]
        t = max(ts, algo.time)
        child = SimOrder(self._new_order_id(), self._venue_client_id(), algo.symbol, algo.side,
                         OrderType.MARKET.value, algo.qty, 0.0, 0.0, algo.reduce_only, t, t,
                         source=OrderSource.TRIGGER, parent=algo.order_id, core_id=algo.core_id)
        self._orders[child.order_id] = child
        self._latest[child.client_id] = child.order_id
        algo.actual = child.order_id
        algo.status = "TRIGGERED"
        algo.trigger_time = algo.update_time = t
        self._untriggered.pop(algo.order_id, None)
        return child

    def _check_triggers(self, symbol: str, ts: int) -> None:
        # A stop can trigger on a bar with no volume left for it: no trade, yet triggered.
        for algo in [a for a in self._untriggered.values() if a.symbol == symbol]:
            if self.core.triggered(algo.core_id):
                self._trigger(algo, ts)

    def _book_trade(self, order: SimOrder, t: VenueTrade) -> None:
        sym = t.symbol
        when = max(t.ts, order.time, self._last_trade_time.get(sym, t.ts))
        self._last_trade_time[sym] = when
        shadow = self._shadow.get(sym)
        if shadow is None:
            shadow = self._shadow[sym] = Position(sym)
        # The core's own position takes the same fills in the same order: the same PnL.
        realized = shadow.apply_fill(t.side.sign * t.quantity, t.price, t.fee, t.ts)
        order.executed += t.quantity
        order.cum_quote += t.quantity * t.price
        if order.source in (OrderSource.LIQUIDATION, OrderSource.ADL):
            order.qty = order.executed
        order.update_time = max(order.update_time, when)
        if order.parent is not None:
            parent = self._algos[order.parent]
            parent.executed, parent.cum_quote = order.executed, order.cum_quote
        self._next_trade += 1
        rec = TradeRecord(sym, self._next_trade, order.order_id, order.client_id, t.side,
                          t.price, t.quantity, t.fee, realized, when,
                          t.liquidity is Liquidity.MAKER)
        self._trades.append(rec)
        if realized:
            self._income.append(IncomeRecord(sym, "REALIZED_PNL", realized, when,
                                             self._new_tran_id(), str(rec.id)))
        if t.fee:
            self._income.append(IncomeRecord(sym, "COMMISSION", -t.fee, when,
                                             self._new_tran_id(), str(rec.id)))

    def _collect_funding(self) -> None:
        pays = self.core.funding_payments
        for p in pays[self._funding_seen:]:
            self._income.append(IncomeRecord(p.symbol, "FUNDING_FEE", -p.amount, p.ts,
                                             self._new_tran_id()))
        self._funding_seen = len(pays)

    def _new_order_id(self) -> int:
        self._next_order += 1
        return self._next_order

    def _new_algo_id(self) -> int:
        self._next_algo += 1
        return self._next_algo

    def _new_tran_id(self) -> int:
        self._next_tran += 1
        return self._next_tran

    def _venue_client_id(self) -> str:
        """A client id the venue makes up (an order sent without one, a triggered order)."""
        self._next_cid += 1
        return hashlib.blake2b(str(self._next_cid).encode(), digest_size=11).hexdigest()

    def _symbol_known(self, symbol: str) -> None:
        if symbol not in self.series:
            raise ApiError(-1121, "Invalid symbol.")


def _shifted(s: BarSeries, shift: int) -> BarSeries:
    return BarSeries(s.symbol, s.timeframe, s.ts + shift, s.open, s.high, s.low, s.close,
                     s.volume)


__all__ = ["LIQUIDATION_TRADES", "IncomeRecord", "Kline", "OrderSource", "PositionRecord",
           "SimOrder", "SimRecords", "SimServerConfig", "SimState", "TradeRecord",
           "server_exchange_settings"]
