"""A Binance USDⓈ-M-compatible REST simulator around the backtests' ``SimulatedExchange``.

The real, unmodified ccxt ``binanceusdm`` client talks to it as if it were the exchange: the
same paths, parameters, HMAC-SHA256 signatures, recvWindow, error JSON ``{"code", "msg"}``,
``X-MBX-USED-WEIGHT-1M`` headers, 429 with ``Retry-After`` and 418 IP bans for clients that
keep going after a 429. Matching is the backtests' core, so a strategy behaves the same in a
backtest, against this server and (modulo the market) on the venue.

Time: the wall clock signs requests (``/fapi/v1/time`` and recvWindow use it); the *sim clock*
replays historical bars. Each symbol's bars whose close time is at or before the sim clock are
"closed": they are fed to the core (in time order, before any request is handled, so an order
never sees a bar that closed before it arrived) and served by ``/fapi/v1/klines``. The sim clock
runs ``bar_seconds`` of wall time per bar, or only moves on ``advance()`` when ``bar_seconds``
is 0 (tests).

Deviations, on purpose: new orders weigh 1 on the IP limit (Binance: 0 IP weight, order-count
limits instead) so one budget governs everything; a client order id is unique for the life of
the server (Binance: among open orders), which is what makes retries safe to reason about.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from quantum_trader.domain.enums import OrderStatus, OrderType, Side
from quantum_trader.domain.instruments import Instrument, instrument_for
from quantum_trader.domain.models import timeframe_ms
from quantum_trader.exchange.protocol import ExecutionReport, OrderRequest
from quantum_trader.exchange.ratelimit import binance_weight
from quantum_trader.exchange.simulated import OrderRejected, SimExchangeSettings, SimulatedExchange
from quantum_trader.marketdata.series import BarSeries

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

FAULT_KINDS = ("timeout", "error_5xx", "rate_limit", "clock_skew", "drop")


class ApiError(Exception):
    """A Binance error answer: HTTP status plus ``{"code": .., "msg": ..}``."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status


@dataclass(slots=True)
class FaultConfig:
    """Probability per request of each injected fault (they are exclusive; total <= 1).

    * ``timeout``: the request is processed, the answer is held ``timeout_s`` (client times out);
    * ``error_5xx``: 503; the request is processed first with probability ``p_5xx_processed``;
    * ``rate_limit``: 429 with ``Retry-After: retry_after_s`` (not processed, no ban penalty);
    * ``clock_skew``: -1021 timestamp outside recvWindow (not processed);
    * ``drop``: processed, then the connection is closed without an answer.
    """

    probabilities: dict[str, float] = field(default_factory=dict)
    timeout_s: float = 2.0
    p_5xx_processed: float = 0.5
    retry_after_s: float = 1.0  # Binance sends whole seconds; tests may use fractions
    paths: tuple[str, ...] = ("/fapi",)  # path prefixes faults apply to
    seed: int | None = None

    def __post_init__(self) -> None:
        unknown = set(self.probabilities) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; use {FAULT_KINDS}")
        if sum(self.probabilities.values()) > 1.0 + 1e-9:
            raise ValueError("fault probabilities add up to more than 1")


@dataclass(slots=True)
class SimServerConfig:
    series: list[BarSeries]
    bar_seconds: float = 1.0  # wall seconds per bar; 0 = the clock moves only on advance()
    start_bar: int = 500  # bars already closed when the server starts (kline history)
    api_key: str = "sim-key"
    api_secret: str = "sim-secret"
    weight_limit: int = 2400
    weight_window_s: float = 60.0
    ban_seconds: float = 120.0
    max_recv_window_ms: int = 60_000
    exchange: SimExchangeSettings = field(default_factory=SimExchangeSettings)
    instruments: Callable[[str], Instrument] = instrument_for
    faults: FaultConfig = field(default_factory=FaultConfig)


@dataclass(slots=True)
class _Ord:
    order_id: int
    cid: str
    symbol: str
    side: Side
    type: str
    qty: float
    price: float
    stop_price: float
    reduce_only: bool
    time: int
    update_time: int
    algo: bool = False
    status: str = "NEW"
    executed: float = 0.0
    cum_quote: float = 0.0

    @property
    def avg_price(self) -> float:
        return self.cum_quote / self.executed if self.executed > 0 else 0.0


_STATUS = {OrderStatus.ACCEPTED: "NEW", OrderStatus.SUBMITTED: "NEW", OrderStatus.NEW: "NEW",
           OrderStatus.PARTIALLY_FILLED: "PARTIALLY_FILLED", OrderStatus.FILLED: "FILLED",
           OrderStatus.CANCELED: "CANCELED", OrderStatus.EXPIRED: "EXPIRED",
           OrderStatus.REJECTED: "REJECTED"}
_ALGO_STATUS = {"NEW": "NEW", "PARTIALLY_FILLED": "TRIGGERED", "FILLED": "FINISHED",
                "CANCELED": "CANCELED", "EXPIRED": "EXPIRED", "REJECTED": "REJECTED"}


def _f(x: float) -> str:
    return f"{x:.8f}".rstrip("0").rstrip(".") or "0"


class SimState:
    """Everything the server knows: the matching core, the clocks, accounts, limits, faults."""

    def __init__(self, config: SimServerConfig) -> None:
        if not config.series:
            raise ValueError("the simulator needs at least one bar series")
        self.config = config
        self.core = SimulatedExchange(config.exchange, config.instruments)
        self.series = {s.symbol: s for s in config.series}
        self.timeframes = {s.symbol: s.timeframe for s in config.series}
        first = config.series[0]
        start = min(config.start_bar, len(first) - 1)
        self._bar_ms = timeframe_ms(first.timeframe)
        self._sim_start = int(first.ts[start]) + self._bar_ms  # close of the start bar
        self._sim_offset = 0  # manual advances
        self._wall_start = time.monotonic()
        self._fed = dict.fromkeys(self.series, 0)  # bars already given to the core
        self.lock = threading.RLock()
        self.orders: dict[str, _Ord] = {}
        self.by_id: dict[int, _Ord] = {}
        self.rejected: dict[str, tuple[int, str]] = {}
        self.trades: list[dict[str, Any]] = []
        self.income: list[dict[str, Any]] = []
        self.margin_type: dict[str, str] = {}
        self._funding_seen = 0
        self._next_id = 1_000_000
        self._next_trade = 5_000_000
        # rate limiting: per IP, fixed windows aligned to the wall clock
        self._window: dict[str, tuple[int, int]] = {}  # ip -> (window index, used weight)
        self._penalty_until: dict[str, float] = {}  # ip -> end of the last 429's Retry-After
        self._banned_until: dict[str, float] = {}
        self._rng = random.Random(config.faults.seed)
        self.requests: Counter[str] = Counter()  # "METHOD /path" -> count, faults included
        self.faults_injected: Counter[str] = Counter()
        self._forced: list[tuple[str, str, str]] = []
        self.status_counts: Counter[int] = Counter()
        self.sync()

    # --- clocks -----------------------------------------------------------------------------
    def sim_now(self) -> int:
        elapsed = 0
        if self.config.bar_seconds > 0:
            elapsed = int((time.monotonic() - self._wall_start) / self.config.bar_seconds
                          * self._bar_ms)
        return self._sim_start + self._sim_offset + elapsed

    def advance(self, bars: int = 1) -> None:
        """Move the sim clock ``bars`` bars on and match them (manual and accelerated modes)."""
        with self.lock:
            self._sim_offset += bars * self._bar_ms
            self.sync()

    @staticmethod
    def wall_ms() -> int:
        return int(time.time() * 1000)

    def sync(self) -> None:
        """Feed every newly closed bar to the core, all symbols merged in time order."""
        with self.lock:
            now = self.sim_now()
            due: list[tuple[int, str, int]] = []
            for sym, s in self.series.items():
                tf = timeframe_ms(s.timeframe)
                end = int(np.searchsorted(s.ts, now - tf, side="right"))
                due.extend((int(s.ts[i]), sym, i) for i in range(self._fed[sym], end))
                self._fed[sym] = max(self._fed[sym], end)
            due.sort()
            for _ts, sym, i in due:
                for report in self.core.on_bar(self.series[sym].bar(i)):
                    self._apply(report)
            self._collect_funding()

    def closed_bars(self, symbol: str) -> BarSeries:
        return self.series[symbol].slice(0, self._fed[symbol])

    # --- order bookkeeping -------------------------------------------------------------------
    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _apply(self, r: ExecutionReport) -> None:
        o = self.orders.get(r.client_order_id)
        if o is None:  # a liquidation: Binance names these "autoclose-..."
            o = _Ord(self._new_id(), r.client_order_id, r.symbol, r.side, "MARKET", r.fill_qty,
                     0.0, 0.0, True, r.ts, r.ts)
            self.orders[o.cid] = o
            self.by_id[o.order_id] = o
        o.status = _STATUS[r.status]
        o.update_time = r.ts
        if r.fill_qty > 0:
            o.executed += r.fill_qty
            o.cum_quote += r.fill_qty * r.fill_price
            self._next_trade += 1
            self.trades.append({
                "symbol": r.symbol, "id": self._next_trade, "orderId": o.order_id,
                "side": r.side.value, "price": _f(r.fill_price), "qty": _f(r.fill_qty),
                "realizedPnl": "0", "marginAsset": "USDT",
                "quoteQty": _f(r.fill_qty * r.fill_price), "commission": _f(r.fee),
                "commissionAsset": "USDT", "time": r.ts, "positionSide": "BOTH",
                "buyer": r.side is Side.BUY, "maker": r.liquidity is not None
                and r.liquidity.value == "MAKER"})

    def _collect_funding(self) -> None:
        pays = self.core.funding_payments
        for p in pays[self._funding_seen:]:
            self._next_trade += 1
            self.income.append({"symbol": p.symbol, "incomeType": "FUNDING_FEE",
                                "income": _f(-p.amount), "asset": "USDT", "info": "",
                                "time": p.ts, "tranId": self._next_trade, "tradeId": ""})
        self._funding_seen = len(pays)

    def new_order(self, p: dict[str, str], algo: bool) -> _Ord:
        sym = self._symbol(p)
        side_s = _need(p, "side").upper()
        if side_s not in ("BUY", "SELL"):
            raise ApiError(-1117, "Invalid side.")
        side = Side(side_s)
        kind = (p.get("type") or _need(p, "orderType") if algo else _need(p, "type")).upper()
        cid = p.get("clientAlgoId" if algo else "newClientOrderId") or f"sim{self._new_id()}"
        qty = _num(p, "quantity")
        price = _num(p, "price") if "price" in p else 0.0
        if algo:
            if kind != "STOP_MARKET":
                raise ApiError(-4120, f"Order type {kind} not supported by the simulator.")
            stop = _num(p, "triggerPrice")
            otype = OrderType.STOP_MARKET
        elif kind in ("STOP_MARKET", "STOP", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                      "TRAILING_STOP_MARKET"):
            raise ApiError(-4120, "Order type not supported for this endpoint. Please use the "
                                  "Algo Order API endpoints instead.")
        elif kind in ("MARKET", "LIMIT"):
            otype = OrderType(kind)
            stop = 0.0
            if otype is OrderType.LIMIT and "price" not in p:
                raise ApiError(-1102, "Mandatory parameter 'price' was not sent, was empty/null, "
                                      "or malformed.")
        else:
            raise ApiError(-1116, "Invalid orderType.")
        reduce_only = p.get("reduceOnly", "false").lower() == "true"
        inst = self.config.instruments(sym)
        for value in (price, stop):
            if value and abs(value / inst.tick_size - round(value / inst.tick_size)) > 1e-6:
                raise ApiError(-4014, f"Price not increased by tick size {inst.tick_size}.")
        with self.lock:
            self.sync()
            if cid in self.rejected:  # a retry of a rejected order is rejected the same way
                raise ApiError(*self.rejected[cid])
            if cid in self.orders:
                raise ApiError(-4116, "ClientOrderId is duplicated.")
            now = self.sim_now()
            req = OrderRequest(cid, sym, side, otype, qty, reduce_only,
                               price if otype is OrderType.LIMIT else None,
                               stop if otype is OrderType.STOP_MARKET else None)
            try:
                report = self.core.submit(req, now)
            except OrderRejected as exc:
                raise ApiError(exc.code, exc.message) from None
            if report.status is OrderStatus.REJECTED:
                code = self.core.reject_codes.get(cid, -2010)
                self.rejected[cid] = (code, report.reason)
                raise ApiError(code, report.reason)
            o = _Ord(self._new_id(), cid, sym, side, otype.value, qty, price, stop, reduce_only,
                     now, now, algo=algo)
            self.orders[cid] = o
            self.by_id[o.order_id] = o
            return o

    def find(self, p: dict[str, str], algo: bool = False) -> _Ord:
        with self.lock:
            self.sync()
            o: _Ord | None = None
            if algo:
                if "clientAlgoId" in p:
                    o = self.orders.get(p["clientAlgoId"])
                elif "algoId" in p:
                    o = self.by_id.get(int(_num(p, "algoId")))
                else:
                    raise ApiError(-1102, "Mandatory parameter 'algoId' was not sent.")
            elif "origClientOrderId" in p:
                o = self.orders.get(p["origClientOrderId"])
            elif "orderId" in p:
                o = self.by_id.get(int(_num(p, "orderId")))
            else:
                raise ApiError(-1102, "Mandatory parameter 'orderId' was not sent, was "
                                      "empty/null, or malformed.")
            if o is None or o.algo != algo or ("symbol" in p and p["symbol"] != o.symbol):
                raise ApiError(-2013, "Order does not exist.")
            return o

    def cancel(self, p: dict[str, str], algo: bool = False) -> _Ord:
        with self.lock:
            try:
                o = self.find(p, algo)
            except ApiError:
                raise ApiError(-2011, "Unknown order sent.") from None
            if o.status not in ("NEW", "PARTIALLY_FILLED"):
                raise ApiError(-2011, "Unknown order sent.")
            report = self.core.cancel(o.cid, self.sim_now())
            self._apply(report)
            return o

    def _symbol(self, p: dict[str, str]) -> str:
        sym = _need(p, "symbol")
        if sym not in self.series:
            raise ApiError(-1121, "Invalid symbol.")
        return sym

    # --- limits ----------------------------------------------------------------------------
    def charge(self, ip: str, weight: int) -> int:
        """Count ``weight`` against ``ip``; raise 429/418 as Binance would. Returns used weight."""
        now = time.monotonic()
        with self.lock:
            if self._banned_until.get(ip, 0.0) > now:
                left = self._banned_until[ip] - now
                raise ApiError(-1003, f"Way too many requests; IP banned until "
                                      f"{int(time.time() + left)}.", 418)
            idx = int(time.time() // self.config.weight_window_s)
            w_idx, used = self._window.get(ip, (idx, 0))
            if w_idx != idx:
                used = 0
            if self._penalty_until.get(ip, 0.0) > now:
                # kept going after a 429: ban (the weight count starts afresh after it)
                self._banned_until[ip] = now + self.config.ban_seconds
                self._penalty_until.pop(ip, None)
                self._window.pop(ip, None)
                raise ApiError(-1003, "Way too many requests; IP banned.", 418)
            used += weight
            self._window[ip] = (idx, used)
            if used > self.config.weight_limit:
                self._penalty_until[ip] = now + self.retry_after(ip)
                raise ApiError(-1003, "Too many requests; current limit of IP is "
                                      f"{self.config.weight_limit} requests per minute.", 429)
            return used

    def used_weight(self, ip: str) -> int:
        idx = int(time.time() // self.config.weight_window_s)
        w_idx, used = self._window.get(ip, (idx, 0))
        return used if w_idx == idx else 0

    def retry_after(self, ip: str) -> float:
        """Seconds until the ban or the current weight window ends."""
        now = time.monotonic()
        ban = self._banned_until.get(ip, 0.0) - now
        if ban > 0:
            return ban
        w = self.config.weight_window_s
        return w - (time.time() % w)

    def ban(self, ip: str, seconds: float) -> None:
        with self.lock:
            self._banned_until[ip] = time.monotonic() + seconds

    def force_fault(self, kind: str, path: str, method: str = "POST") -> None:
        """Inject ``kind`` into the next ``method path`` request (deterministic tests)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        with self.lock:
            self._forced.append((method, path, kind))

    def pick_fault(self, path: str, method: str = "GET") -> str | None:
        with self.lock:
            for i, (m, p, kind) in enumerate(self._forced):
                if m == method and p == path:
                    del self._forced[i]
                    return kind
        fc = self.config.faults
        if not fc.probabilities or not path.startswith(fc.paths):
            return None
        x = self._rng.random()
        for kind in FAULT_KINDS:
            x -= fc.probabilities.get(kind, 0.0)
            if x < 0:
                return kind
        return None

    # --- account views ---------------------------------------------------------------------
    def positions_json(self, symbol: str | None = None) -> list[dict[str, Any]]:
        out = []
        with self.lock:
            self.sync()
            for sym in self.series:
                if symbol and sym != symbol:
                    continue
                pos = self.core.account.positions.get(sym)
                lev = self.core.account.leverage.get(sym, self.config.exchange.default_leverage)
                mark = self.core.last_price(sym) or 0.0
                qty = pos.qty if pos is not None and pos.is_open else 0.0
                entry = pos.avg_entry if pos is not None and qty else 0.0
                upnl = qty * (mark - entry) if qty else 0.0
                mmr = self.config.instruments(sym).maintenance_margin_rate
                liq = pos.liquidation_price(mmr) if pos is not None and qty else 0.0
                margin = abs(qty) * entry / lev if qty else 0.0
                out.append({
                    "symbol": sym, "positionSide": "BOTH", "positionAmt": _f(qty),
                    "entryPrice": _f(entry), "breakEvenPrice": _f(entry), "markPrice": _f(mark),
                    "unRealizedProfit": _f(upnl), "liquidationPrice": _f(liq),
                    "isolatedMargin": _f(margin + upnl), "notional": _f(qty * mark),
                    "marginAsset": "USDT", "isolatedWallet": _f(margin),
                    "initialMargin": _f(margin), "maintMargin": _f(abs(qty) * mark * mmr),
                    "positionInitialMargin": _f(margin), "openOrderInitialMargin": "0",
                    "adl": 0, "bidNotional": "0", "askNotional": "0", "leverage": str(int(lev)),
                    "marginType": self.margin_type.get(sym, "isolated"),
                    "isolated": self.margin_type.get(sym, "isolated") == "isolated",
                    "maxNotionalValue": "1000000", "updateTime": self.sim_now()})
        return out

    def account_json(self) -> dict[str, Any]:
        with self.lock:
            positions = self.positions_json()
            wallet = self.core.wallet
            upnl = sum(float(p["unRealizedProfit"]) for p in positions)
            im = sum(float(p["initialMargin"]) for p in positions)
            avail = self.core.available_margin()
            asset = {"asset": "USDT", "walletBalance": _f(wallet), "unrealizedProfit": _f(upnl),
                     "marginBalance": _f(wallet + upnl), "maintMargin": "0",
                     "initialMargin": _f(im), "positionInitialMargin": _f(im),
                     "openOrderInitialMargin": "0", "crossWalletBalance": _f(wallet),
                     "crossUnPnl": "0", "availableBalance": _f(avail),
                     "maxWithdrawAmount": _f(avail), "marginAvailable": True,
                     "updateTime": self.sim_now()}
            return {"feeTier": 0, "canTrade": True, "canDeposit": True, "canWithdraw": True,
                    "updateTime": 0, "multiAssetsMargin": False, "tradeGroupId": -1,
                    "totalInitialMargin": _f(im), "totalMaintMargin": "0",
                    "totalWalletBalance": _f(wallet), "totalUnrealizedProfit": _f(upnl),
                    "totalMarginBalance": _f(wallet + upnl),
                    "totalPositionInitialMargin": _f(im), "totalOpenOrderInitialMargin": "0",
                    "totalCrossWalletBalance": _f(wallet), "totalCrossUnPnl": "0",
                    "availableBalance": _f(avail), "maxWithdrawAmount": _f(avail),
                    "assets": [asset], "positions": positions}

    # --- introspection for tests -----------------------------------------------------------
    def order_count(self, cid: str | None = None) -> int:
        """Orders the exchange accepted (all, or with this client id: 0 or 1)."""
        with self.lock:
            if cid is not None:
                return 1 if cid in self.orders else 0
            return sum(1 for o in self.orders.values() if not o.cid.startswith("autoclose"))

    def order_requests(self) -> int:
        return sum(n for k, n in self.requests.items()
                   if k.startswith("POST") and k.endswith(("/order", "/algoOrder")))


def _need(p: dict[str, str], key: str) -> str:
    v = p.get(key)
    if v is None or v == "":
        raise ApiError(-1102, f"Mandatory parameter '{key}' was not sent, was empty/null, "
                              "or malformed.")
    return v


def _num(p: dict[str, str], key: str) -> float:
    v = _need(p, key)
    try:
        x = float(v)
    except ValueError:
        raise ApiError(-1102, f"Parameter '{key}' was malformed: {v!r}.") from None
    if not math.isfinite(x):
        raise ApiError(-1102, f"Parameter '{key}' was malformed: {v!r}.")
    return x


# --- HTTP ------------------------------------------------------------------------------------

class SimApp:
    """The ASGI application: limits and faults around a FastAPI router."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self.api = _build_api(state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        st = self.state
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/sim/"):  # admin: no limits, no faults
            await self.api(scope, receive, send)
            return
        st.requests[f"{method} {path}"] += 1
        ip = (scope.get("client") or ("?", 0))[0]
        query = dict(parse_qsl(scope.get("query_string", b"").decode()))
        weight = binance_weight(path, query)
        try:
            used = st.charge(ip, weight)
        except ApiError as exc:
            st.status_counts[exc.status] += 1
            await _send_json(send, exc.status, {"code": exc.code, "msg": exc.msg},
                             st.used_weight(ip), max(1, math.ceil(st.retry_after(ip))))
            return
        fault = st.pick_fault(path, method)
        if fault is not None:
            st.faults_injected[fault] += 1
        extra = [(b"x-mbx-used-weight-1m", str(used).encode())]

        async def send_with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                msg = dict(msg)
                msg["headers"] = list(msg.get("headers", [])) + extra
                st.status_counts[int(msg["status"])] += 1
            await send(msg)

        if fault is None:
            await self.api(scope, receive, send_with_headers)
            return
        fc = st.config.faults
        if fault == "rate_limit":
            st.status_counts[429] += 1
            await _send_json(send, 429, {"code": -1003, "msg": "Too many requests (injected)."},
                             used, fc.retry_after_s)
            return
        if fault == "clock_skew":
            st.status_counts[400] += 1
            await _send_json(send, 400, {"code": -1021, "msg": "Timestamp for this request is "
                                         "outside of the recvWindow."}, used)
            return
        if fault == "error_5xx" and st._rng.random() >= fc.p_5xx_processed:
            st.status_counts[503] += 1
            await _send_json(send, 503, {"code": -1000, "msg": "Service Unavailable."}, used)
            return

        # The remaining faults happen after the request was processed: swallow the answer.
        async def swallow(_msg: Message) -> None:
            return None

        await self.api(scope, receive, swallow)
        if fault == "error_5xx":
            st.status_counts[503] += 1
            await _send_json(send, 503, {"code": -1000, "msg": "Unknown error, please check "
                                         "your request or try again later."}, used)
        elif fault == "timeout":
            await asyncio.sleep(fc.timeout_s)
            await _send_json(send, 504, {"code": -1007, "msg": "Timeout waiting for response "
                                         "from backend server."}, used)
        else:  # drop: close the socket under the client
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if transport is not None:
                transport.close()
                await asyncio.sleep(0)  # let the server see the disconnect
            else:
                await asyncio.sleep(fc.timeout_s)
            # Written to a closed socket (dropped); keeps the server from logging an error.
            await _send_json(send, 500, {}, used)


async def _send_json(send: Send, status: int, body: Any, used: int,
                     retry_after: float | None = None) -> None:
    import json

    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(data)).encode()),
               (b"x-mbx-used-weight-1m", str(used).encode())]
    if retry_after is not None:
        value = retry_after if retry_after < 1 else math.ceil(retry_after)
        headers.append((b"retry-after", f"{value:g}".encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _build_api(st: SimState) -> FastAPI:
    app = FastAPI(title="Binance USDⓈ-M simulator", docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"code": exc.code, "msg": exc.msg}, status_code=exc.status)

    async def params(request: Request, signed: bool) -> dict[str, str]:
        query = request.url.query
        body = (await request.body()).decode() if request.method in ("POST", "PUT") else ""
        total = query + body  # Binance signs the query string followed by the body
        p = dict(parse_qsl(query))
        p.update(parse_qsl(body))
        if not signed:
            return p
        if request.headers.get("x-mbx-apikey") != st.config.api_key:
            raise ApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        payload, sep, sig = total.rpartition("&signature=")
        if not sep:
            raise ApiError(-1102, "Mandatory parameter 'signature' was not sent, was "
                                  "empty/null, or malformed.")
        want = hmac.new(st.config.api_secret.encode(), payload.encode(),
                        hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, sig):
            raise ApiError(-1022, "Signature for this request is not valid.")
        ts = int(_num(p, "timestamp"))
        window = int(p.get("recvWindow", "5000"))
        if not 0 < window <= st.config.max_recv_window_ms:
            raise ApiError(-1131, "recvWindow must be less than 60000")
        now = st.wall_ms()
        if ts >= now + 1000 or now - ts > window:
            raise ApiError(-1021, "Timestamp for this request is outside of the recvWindow.")
        return p

    def order_json(o: _Ord) -> dict[str, Any]:
        if o.algo:
            return {"algoId": o.order_id, "clientAlgoId": o.cid, "algoType": "CONDITIONAL",
                    "orderType": o.type, "symbol": o.symbol, "side": o.side.value,
                    "positionSide": "BOTH", "timeInForce": "GTC", "quantity": _f(o.qty),
                    "algoStatus": _ALGO_STATUS.get(o.status, o.status),
                    "triggerPrice": _f(o.stop_price), "price": "0",
                    "executedQty": _f(o.executed), "avgPrice": _f(o.avg_price),
                    "actualOrderId": str(o.order_id) if o.executed else "",
                    "icebergQuantity": None, "selfTradePreventionMode": "NONE",
                    "workingType": "CONTRACT_PRICE", "priceMatch": "NONE",
                    "closePosition": False, "priceProtect": False,
                    "reduceOnly": o.reduce_only, "createTime": o.time,
                    "updateTime": o.update_time, "triggerTime": 0, "goodTillDate": 0}
        return {"orderId": o.order_id, "symbol": o.symbol, "status": o.status,
                "clientOrderId": o.cid, "price": _f(o.price), "avgPrice": _f(o.avg_price),
                "origQty": _f(o.qty), "executedQty": _f(o.executed), "cumQty": _f(o.executed),
                "cumQuote": _f(o.cum_quote), "timeInForce": "GTC", "type": o.type,
                "reduceOnly": o.reduce_only, "closePosition": False, "side": o.side.value,
                "positionSide": "BOTH", "stopPrice": _f(o.stop_price),
                "workingType": "CONTRACT_PRICE", "priceProtect": False, "origType": o.type,
                "priceMatch": "NONE", "selfTradePreventionMode": "NONE", "goodTillDate": 0,
                "time": o.time, "updateTime": o.update_time}

    # --- public -------------------------------------------------------------------------
    @app.get("/fapi/v1/ping")
    async def ping() -> dict[str, Any]:
        return {}

    @app.get("/fapi/v1/time")
    async def server_time() -> dict[str, Any]:
        return {"serverTime": st.wall_ms()}

    @app.get("/fapi/v1/exchangeInfo")
    async def exchange_info() -> dict[str, Any]:
        symbols = []
        for sym in st.series:
            inst = st.config.instruments(sym)
            base = sym[:-4] if sym.endswith("USDT") else sym
            price_prec = max(0, -math.floor(math.log10(inst.tick_size) + 1e-9))
            qty_prec = max(0, -math.floor(math.log10(inst.step_size) + 1e-9))
            symbols.append({
                "symbol": sym, "pair": sym, "contractType": "PERPETUAL",
                "deliveryDate": 4133404800000, "onboardDate": 1569398400000,
                "status": "TRADING", "maintMarginPercent": "2.5000",
                "requiredMarginPercent": "5.0000", "baseAsset": base, "quoteAsset": "USDT",
                "marginAsset": "USDT", "pricePrecision": price_prec,
                "quantityPrecision": qty_prec, "baseAssetPrecision": 8, "quotePrecision": 8,
                "underlyingType": "COIN", "underlyingSubType": [], "settlePlan": 0,
                "triggerProtect": "0.0500", "liquidationFee": "0.012500",
                "marketTakeBound": "0.05", "maxMoveOrderLimit": 10000,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": _f(inst.tick_size),
                     "maxPrice": "10000000", "tickSize": _f(inst.tick_size)},
                    {"filterType": "LOT_SIZE", "minQty": _f(inst.min_qty),
                     "maxQty": "10000000", "stepSize": _f(inst.step_size)},
                    {"filterType": "MARKET_LOT_SIZE", "minQty": _f(inst.min_qty),
                     "maxQty": "10000000", "stepSize": _f(inst.step_size)},
                    {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                    {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
                    {"filterType": "MIN_NOTIONAL", "notional": _f(inst.min_notional)},
                    {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500",
                     "multiplierDown": "0.9500", "multiplierDecimal": "4"}],
                "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT",
                               "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"],
                "timeInForce": ["GTC", "IOC", "FOK", "GTX"], "permissionSets": ["GRID"]})
        return {"timezone": "UTC", "serverTime": st.wall_ms(), "futuresType": "U_MARGINED",
                "rateLimits": [
                    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                     "limit": st.config.weight_limit},
                    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1,
                     "limit": 1200}],
                "exchangeFilters": [],
                "assets": [{"asset": "USDT", "marginAvailable": True,
                            "autoAssetExchange": "-10000"}],
                "symbols": symbols}

    @app.get("/fapi/v1/klines")
    async def klines(request: Request) -> list[list[Any]]:
        p = await params(request, signed=False)
        sym = st._symbol(p)
        interval = _need(p, "interval")
        if interval != st.timeframes[sym]:
            raise ApiError(-1120, f"Invalid interval: the simulator serves {sym} in "
                                  f"{st.timeframes[sym]} only.")
        limit = min(int(p.get("limit", "500") or 500), 1500)
        if limit <= 0:
            raise ApiError(-1130, "Invalid data sent for a parameter: limit.")
        with st.lock:
            st.sync()
            s = st.closed_bars(sym)
        lo, hi = 0, len(s)
        if "endTime" in p:
            hi = int(np.searchsorted(s.ts, int(_num(p, "endTime")), side="right"))
        if "startTime" in p:
            lo = int(np.searchsorted(s.ts, int(_num(p, "startTime")), side="left"))
            hi = min(hi, lo + limit)
        else:
            lo = max(lo, hi - limit)
        tf = timeframe_ms(s.timeframe)
        return [[int(s.ts[i]), _f(float(s.open[i])), _f(float(s.high[i])),
                 _f(float(s.low[i])), _f(float(s.close[i])), _f(float(s.volume[i])),
                 int(s.ts[i]) + tf - 1, _f(float(s.volume[i] * s.close[i])), 0, "0", "0", "0"]
                for i in range(lo, max(lo, hi))]

    def premium(sym: str) -> dict[str, Any]:
        mark = st.core.last_price(sym) or 0.0
        iv = st.config.exchange.funding_interval_ms
        now = st.sim_now()
        return {"symbol": sym, "markPrice": _f(mark), "indexPrice": _f(mark),
                "estimatedSettlePrice": _f(mark),
                "lastFundingRate": _f(st.config.exchange.funding_rate),
                "interestRate": "0.00010000", "nextFundingTime": (now // iv + 1) * iv,
                "time": now}

    @app.get("/fapi/v1/premiumIndex")
    async def premium_index(request: Request) -> Any:
        p = await params(request, signed=False)
        if "symbol" in p:
            return premium(st._symbol(p))
        return [premium(s) for s in st.series]

    @app.get("/fapi/v1/fundingRate")
    async def funding_rate(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=False)
        sym = st._symbol(p)
        iv = st.config.exchange.funding_interval_ms
        s = st.series[sym]
        start = int(p.get("startTime", str(int(s.ts[0]))))
        end = int(p.get("endTime", str(st.sim_now())))
        limit = min(int(p.get("limit", "100")), 1000)
        t = -(-start // iv) * iv
        out: list[dict[str, Any]] = []
        while t <= end and len(out) < limit:
            out.append({"symbol": sym, "fundingTime": t,
                        "fundingRate": _f(st.config.exchange.funding_rate), "markPrice": ""})
            t += iv
        return out

    # --- account -------------------------------------------------------------------------
    @app.get("/fapi/v2/balance")
    @app.get("/fapi/v3/balance")
    async def balance(request: Request) -> list[dict[str, Any]]:
        await params(request, signed=True)
        a = st.account_json()["assets"][0]
        return [{"accountAlias": "SimAlias", "asset": "USDT", "balance": a["walletBalance"],
                 "crossWalletBalance": a["crossWalletBalance"], "crossUnPnl": "0",
                 "availableBalance": a["availableBalance"],
                 "maxWithdrawAmount": a["maxWithdrawAmount"], "marginAvailable": True,
                 "updateTime": a["updateTime"]}]

    @app.get("/fapi/v2/account")
    @app.get("/fapi/v3/account")
    async def account(request: Request) -> dict[str, Any]:
        await params(request, signed=True)
        return st.account_json()

    @app.get("/fapi/v2/positionRisk")
    @app.get("/fapi/v3/positionRisk")
    async def position_risk(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=True)
        return st.positions_json(p.get("symbol"))

    @app.get("/fapi/v1/leverageBracket")
    async def leverage_bracket(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=True)
        syms = [st._symbol(p)] if "symbol" in p else list(st.series)
        out: list[dict[str, Any]] = []
        for sym in syms:
            inst = st.config.instruments(sym)
            out.append({"symbol": sym, "notionalCoef": 1.0, "brackets": [
                {"bracket": 1, "initialLeverage": int(inst.max_leverage),
                 "notionalCap": 1_000_000_000, "notionalFloor": 0,
                 "maintMarginRatio": inst.maintenance_margin_rate, "cum": 0.0}]})
        return out

    @app.get("/fapi/v1/positionSide/dual")
    async def dual(request: Request) -> dict[str, Any]:
        await params(request, signed=True)
        return {"dualSidePosition": False}

    @app.get("/fapi/v1/multiAssetsMargin")
    async def multi_assets(request: Request) -> dict[str, Any]:
        await params(request, signed=True)
        return {"multiAssetsMargin": False}

    @app.get("/fapi/v1/symbolConfig")
    async def symbol_config(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=True)
        syms = [st._symbol(p)] if "symbol" in p else list(st.series)
        return [{"symbol": s, "marginType": st.margin_type.get(s, "ISOLATED").upper(),
                 "isAutoAddMargin": False,
                 "leverage": int(st.core.account.leverage.get(
                     s, st.config.exchange.default_leverage)),
                 "maxNotionalValue": "1000000"} for s in syms]

    @app.post("/fapi/v1/leverage")
    async def leverage(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        sym = st._symbol(p)
        lev = int(_num(p, "leverage"))
        with st.lock:
            st.sync()
            try:
                st.core.set_leverage(sym, lev)
            except OrderRejected as exc:
                raise ApiError(exc.code, exc.message) from None
        return {"leverage": lev, "maxNotionalValue": "1000000", "symbol": sym}

    @app.post("/fapi/v1/marginType")
    async def margin_type(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        sym = st._symbol(p)
        mt = _need(p, "marginType").upper()
        if mt not in ("ISOLATED", "CROSSED"):
            raise ApiError(-4046 if mt == "" else -1130, "Invalid marginType.")
        # The core margins isolated; CROSSED is recorded (and reported) but matched the same.
        current = st.margin_type.get(sym, "isolated")
        wanted = "isolated" if mt == "ISOLATED" else "cross"
        if current == wanted:
            raise ApiError(-4046, "No need to change margin type.")
        st.margin_type[sym] = wanted
        return {"code": 200, "msg": "success"}

    # --- orders --------------------------------------------------------------------------
    @app.post("/fapi/v1/order")
    async def new_order(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        return order_json(st.new_order(p, algo=False))

    @app.get("/fapi/v1/order")
    async def get_order(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        st._symbol(p)
        return order_json(st.find(p))

    @app.delete("/fapi/v1/order")
    async def cancel_order(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        st._symbol(p)
        return order_json(st.cancel(p))

    @app.post("/fapi/v1/algoOrder")
    async def new_algo(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        if p.get("algoType", "CONDITIONAL") != "CONDITIONAL":
            raise ApiError(-1130, "Invalid algoType.")
        return order_json(st.new_order(p, algo=True))

    @app.get("/fapi/v1/algoOrder")
    async def get_algo(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        return order_json(st.find(p, algo=True))

    @app.delete("/fapi/v1/algoOrder")
    async def cancel_algo(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        o = st.cancel(p, algo=True)
        return {"algoId": o.order_id, "clientAlgoId": o.cid, "code": "200", "msg": "success"}

    def open_list(p: dict[str, str], algo: bool) -> list[dict[str, Any]]:
        sym = st._symbol(p) if "symbol" in p else None
        with st.lock:
            st.sync()
            return [order_json(o) for o in st.orders.values()
                    if o.algo == algo and o.status in ("NEW", "PARTIALLY_FILLED")
                    and (sym is None or o.symbol == sym)]

    @app.get("/fapi/v1/openOrders")
    async def open_orders(request: Request) -> list[dict[str, Any]]:
        return open_list(await params(request, signed=True), algo=False)

    @app.get("/fapi/v1/openAlgoOrders")
    async def open_algo_orders(request: Request) -> list[dict[str, Any]]:
        return open_list(await params(request, signed=True), algo=True)

    @app.delete("/fapi/v1/allOpenOrders")
    async def cancel_all(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        sym = st._symbol(p)
        with st.lock:
            for o in list(st.orders.values()):
                if o.symbol == sym and not o.algo and o.status in ("NEW", "PARTIALLY_FILLED"):
                    st.cancel({"origClientOrderId": o.cid})
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    def _window(p: dict[str, str], rows: list[dict[str, Any]], key: str,
                default_limit: int, max_limit: int) -> list[dict[str, Any]]:
        if "startTime" in p:
            rows = [r for r in rows if r[key] >= int(_num(p, "startTime"))]
        if "endTime" in p:
            rows = [r for r in rows if r[key] <= int(_num(p, "endTime"))]
        limit = min(int(p.get("limit", str(default_limit))), max_limit)
        return rows[:limit] if "startTime" in p or "fromId" in p else rows[-limit:]

    @app.get("/fapi/v1/userTrades")
    async def user_trades(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=True)
        sym = st._symbol(p)
        with st.lock:
            st.sync()
            rows = [t for t in st.trades if t["symbol"] == sym]
        if "orderId" in p:
            rows = [t for t in rows if t["orderId"] == int(_num(p, "orderId"))]
        if "fromId" in p:
            rows = [t for t in rows if t["id"] >= int(_num(p, "fromId"))]
        return _window(p, rows, "time", 500, 1000)

    @app.get("/fapi/v1/income")
    async def income(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=True)
        with st.lock:
            st.sync()
            rows = list(st.income)
        if "symbol" in p:
            rows = [r for r in rows if r["symbol"] == p["symbol"]]
        if "incomeType" in p:
            rows = [r for r in rows if r["incomeType"] == p["incomeType"]]
        return _window(p, rows, "time", 100, 1000)

    # --- spot-wallet endpoints ccxt reads while loading markets with keys: empty answers ----
    @app.get("/sapi/v1/capital/config/getall")
    @app.get("/sapi/v1/margin/allPairs")
    @app.get("/sapi/v1/margin/isolated/allPairs")
    async def sapi_empty(request: Request) -> list[Any]:
        await params(request, signed=True)
        return []

    # --- admin (tests, operators): no signature, no weight, no faults -------------------
    @app.get("/sim/state")
    async def sim_state() -> dict[str, Any]:
        with st.lock:
            st.sync()
            return {"sim_time": st.sim_now(), "bars": dict(st._fed),
                    "orders": st.order_count(), "trades": len(st.trades),
                    "wallet": st.core.wallet, "requests": dict(st.requests),
                    "faults": dict(st.faults_injected)}

    @app.post("/sim/advance")
    async def sim_advance(bars: int = 1) -> dict[str, Any]:
        st.advance(bars)
        return {"sim_time": st.sim_now()}

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def unknown(rest: str) -> JSONResponse:
        return JSONResponse({"code": -5000, "msg": f"Path /{rest} not served by the simulator."},
                            status_code=404)

    return app


# --- running it --------------------------------------------------------------------------------

class SimServer:
    """The simulator on a loopback port in a background thread (tests, benchmarks, the CLI)."""

    def __init__(self, state: SimState, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.state = state
        self.host = host
        cfg = uvicorn.Config(SimApp(state), host=host, port=port, log_level="warning",
                             lifespan="off", access_log=False, timeout_keep_alive=30)
        self._server = uvicorn.Server(cfg)
        self._thread: threading.Thread | None = None
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SimServer:
        self._thread = threading.Thread(target=self._server.run, name="exchange-sim",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the exchange simulator did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def load_series(specs: list[str]) -> list[BarSeries]:
    from quantum_trader.marketdata.sample import resolve_source

    return [resolve_source(s) for s in specs]


__all__ = ["FAULT_KINDS", "ApiError", "FaultConfig", "SimApp", "SimServer", "SimServerConfig",
           "SimState", "load_series"]
