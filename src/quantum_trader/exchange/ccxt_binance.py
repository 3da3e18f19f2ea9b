"""The ``Exchange`` port on Binance USDⓈ-M futures through ccxt (``binanceusdm``).

Modes: ``live``, ``demo`` (Binance's demo trading, what ccxt now calls the futures sandbox) and
``testnet`` (the legacy testnet.binancefuture.com URLs), or any of them with ``base_url`` pointed
at the simulator (``quantum-trader exchange-sim``).

Every request goes through one ``WeightLimiter`` and every answer is classified into the typed
errors of ``exchange.errors`` by HTTP status and Binance code (ccxt's own exception classes put
"may have happened" and "did not happen" in the same family): an answer without a Binance error
body (HTTP 408 from the gateway, an HTML page from a proxy) is an unknown outcome, never a
rejection. Orders are checked against the venue's filters before anything is sent.

Conditional orders (stops) live in Binance's Algo Service (since December 2025): placed on
``/fapi/v1/algoOrder`` under our client id, they become a *regular* order with its own order id
when they trigger, and the trades carry that id. ccxt reports an algo order's ``TRIGGERED`` as
"closed"; this adapter reads the algo status itself and follows ``actualOrderId`` to the order
that really trades, so a triggered stop is working (or filled) and its trades are ours.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlsplit

import ccxt  # type: ignore[import-untyped]
import ccxt.async_support as ccxt_async  # type: ignore[import-untyped]
from pydantic import SecretStr

from quantum_trader.domain.enums import Liquidity, OrderStatus, OrderType, Side
from quantum_trader.domain.instruments import Instrument
from quantum_trader.domain.models import Bar, FundingPayment, timeframe_ms
from quantum_trader.domain.venue import (
    LEVERAGE_WITH_POSITION,
    MARGIN_TYPE_WITH_POSITION,
    NO_NEED_TO_CHANGE_MARGIN,
    OrderRequest,
    OrderUpdate,
    Ticker24h,
    VenueAccount,
    VenuePosition,
    VenueTrade,
)
from quantum_trader.exchange.errors import (
    ClockSkew,
    DuplicateOrder,
    ExchangeError,
    ExchangeRejected,
    IpBanned,
    OrderNotFound,
    OrderRefused,
    OutcomeUnknown,
    RateLimited,
)
from quantum_trader.exchange.protocol import Venue
from quantum_trader.exchange.ratelimit import WeightLimiter, binance_weight
from quantum_trader.observability.metrics import EXCHANGE_RATE_LIMIT_USED

if TYPE_CHECKING:
    from quantum_trader.config import Settings

Mode = Literal["live", "demo", "testnet"]

_TESTNET = "https://testnet.binancefuture.com"
_NOT_FOUND = {-2011, -2013}


@dataclass(slots=True)
class BinanceSettings:
    mode: Mode = "testnet"
    base_url: str | None = None  # e.g. the simulator: http://127.0.0.1:8900
    api_key: SecretStr | None = None
    api_secret: SecretStr | None = None
    timeout_ms: int = 10_000
    recv_window_ms: int = 5_000
    weight_limit: int = 2400
    weight_window_s: float = 60.0
    headroom: float = 0.9
    margin_mode: Literal["isolated", "cross"] = "isolated"
    leverage: dict[str, int] = field(default_factory=dict)  # symbol -> leverage at connect()

    @classmethod
    def from_config(cls, settings: Settings, mode: Mode = "testnet",
                    base_url: str | None = None,
                    symbols: tuple[str, ...] = (),
                    service: str | None = None) -> BinanceSettings:
        """Keys from the config's secrets (files or env), ``settings.leverage`` per symbol,
        and ``service``'s share of the IP's request weight (``exchange.weight_shares``)."""
        sec = settings.secrets
        shares = settings.exchange.weight_shares
        return cls(mode=mode, base_url=base_url, api_key=sec.exchange_api_key,
                   api_secret=sec.exchange_api_secret,
                   headroom=shares.get(service, 0.9) if service else 0.9,
                   leverage={s: int(settings.leverage) for s in symbols},
                   recv_window_ms=settings.exchange.recv_window_ms)


MODES: dict[str, Mode] = {"binance-testnet": "testnet", "binance-demo": "demo",
                          "binance-live": "live"}


def venue_for(settings: Settings, service: str) -> CcxtBinanceExchange:
    """The venue client of ``service``, limited to its share of the IP's request weight."""
    x = settings.exchange
    return CcxtBinanceExchange(BinanceSettings.from_config(
        settings, MODES[x.kind], x.base_url or None, x.symbols, service=service))


@dataclass(slots=True, frozen=True)
class MarkInfo:
    """Mark price and funding of a perpetual, as ``/fapi/v1/premiumIndex`` reports them."""

    symbol: str
    mark_price: float
    funding_rate: float  # the last (current period's) rate
    next_funding_ts: int
    ts: int


class _Client(ccxt_async.binanceusdm):  # type: ignore[misc]
    """ccxt's client with our limiter in front and our error classification behind."""

    qt_limiter: WeightLimiter
    qt_requests: int = 0

    async def fetch(self, url: str, method: str = "GET", headers: Any = None,
                    body: Any = None) -> Any:
        parts = urlsplit(url)
        # Orders and cancels may use the reserve the limiter keeps; polls and queries are paced.
        await self.qt_limiter.acquire(binance_weight(parts.path, dict(parse_qsl(parts.query))),
                                      urgent=method.upper() in ("POST", "DELETE", "PUT"))
        EXCHANGE_RATE_LIMIT_USED.set(self.qt_limiter.used / self.qt_limiter.limit)
        self.qt_requests += 1
        try:
            result = await super().fetch(url, method, headers, body)
        except ExchangeError:
            raise
        except ccxt.RequestTimeout as exc:
            raise OutcomeUnknown(f"timeout: {method} {parts.path}") from exc
        except ccxt.BaseError as exc:  # connection refused/reset, unreadable answer
            raise OutcomeUnknown(f"no answer: {method} {parts.path}: "
                                 f"{type(exc).__name__}") from exc
        if parts.path.endswith("/exchangeInfo") and isinstance(result, dict):
            # load_markets reads exchangeInfo anyway: budget for the request-weight limit the
            # venue advertises there (accounts and venues differ), without asking twice.
            for rl in result.get("rateLimits", []):
                if rl.get("rateLimitType") == "REQUEST_WEIGHT" and rl.get("interval") == \
                        "MINUTE" and int(rl.get("intervalNum", 1)) == 1 and int(rl["limit"]) > 0:
                    self.qt_limiter.set_limit(int(rl["limit"]))
        return result

    def handle_errors(self, code: int, reason: str, url: str, method: str, headers: Any,
                      body: str, response: Any, request_headers: Any,
                      request_body: Any) -> Any:
        h = {str(k).lower(): v for k, v in (headers or {}).items()}
        used = h.get("x-mbx-used-weight-1m")
        if used is not None and str(used).isdigit():
            self.qt_limiter.observe(int(used))
            EXCHANGE_RATE_LIMIT_USED.set(self.qt_limiter.used / self.qt_limiter.limit)
        if code is None or code < 400:
            if isinstance(response, dict) and str(response.get("code", "200")) not in (
                    "200", "0") and "msg" in response:
                _raise_for(400, response, body, h)
            return super().handle_errors(code, reason, url, method, headers, body, response,
                                         request_headers, request_body)
        if code in (418, 429):
            self.qt_limiter.block_for(_retry_after(h))  # nothing goes out until it has passed
        _raise_for(code, response, body, h)
        return None


def _raise_for(status: int, response: Any, body: str, headers: dict[str, Any]) -> None:
    err_code = 0
    msg = (body or "")[:300]
    binance_body = isinstance(response, dict) and "code" in response
    if isinstance(response, dict):
        err_code = int(response.get("code", 0) or 0)
        msg = str(response.get("msg", msg))
    text = f"HTTP {status} code {err_code}: {msg}"
    if status in (418, 429):
        raise (IpBanned if status == 418 else RateLimited)(text, err_code, _retry_after(headers))
    if status >= 500 or status == 408 or not binance_body:
        # No answer from Binance's engine (a gateway timeout, a proxy's page): the request
        # may have been processed. Only a Binance error body is a definite "no".
        raise OutcomeUnknown(text, err_code)
    if err_code == -1021:
        raise ClockSkew(text, err_code)
    if err_code in _NOT_FOUND:
        raise OrderNotFound(text, err_code)
    if err_code == -4116:
        raise DuplicateOrder(text, err_code)
    if err_code in (-1000, -1001, -1007):  # internal error / disconnected / backend timeout
        raise OutcomeUnknown(text, err_code)
    raise ExchangeRejected(text, err_code)


def _retry_after(headers: dict[str, Any]) -> float:
    try:
        return max(0.0, float(headers.get("retry-after", 1)))
    except ValueError:
        return 1.0


_CCXT_STATUS = {"canceled": OrderStatus.CANCELED, "expired": OrderStatus.EXPIRED,
                "rejected": OrderStatus.REJECTED}
_BINANCE_STATUS = {"NEW": OrderStatus.ACCEPTED, "PARTIALLY_FILLED": OrderStatus.PARTIALLY_FILLED,
                   "FILLED": OrderStatus.FILLED, "CANCELED": OrderStatus.CANCELED,
                   "EXPIRED": OrderStatus.EXPIRED, "EXPIRED_IN_MATCH": OrderStatus.EXPIRED,
                   "REJECTED": OrderStatus.REJECTED}
_ALGO_OPEN = {"NEW"}
_ALGO_IN_ENGINE = {"TRIGGERING", "TRIGGERED", "FINISHED"}
_ALGO_DONE = {"CANCELED": OrderStatus.CANCELED, "EXPIRED": OrderStatus.EXPIRED,
              "REJECTED": OrderStatus.REJECTED}


class HedgeModeRefused(ExchangeError):
    """The account is in hedge mode (dualSidePosition); this system trades one-way mode."""


@dataclass(slots=True)
class VenueSetup:
    """What ``connect()`` found: settings the venue kept because they could not be changed
    (a position is open), and why. Execution runs with them, DEGRADED, instead of crashing."""

    leverage: dict[str, float] = field(default_factory=dict)  # symbol -> leverage in force
    margin_mode: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)  # symbol -> reason a setting was kept


class CcxtBinanceExchange:
    """``Exchange`` port implementation. Call ``connect()`` first and ``close()`` at the end."""

    def __init__(self, settings: BinanceSettings, limiter: WeightLimiter | None = None) -> None:
        self.settings = s = settings
        self.limiter = limiter or WeightLimiter(s.weight_limit, s.weight_window_s, s.headroom)
        cfg: dict[str, Any] = {"enableRateLimit": False, "timeout": s.timeout_ms,
                               "options": {"recvWindow": s.recv_window_ms,
                                           "disableFuturesSandboxWarning": True,
                                           # weighed by our limiter (40 without a symbol)
                                           "warnOnFetchOpenOrdersWithoutSymbol": False}}
        if s.api_key is not None and s.api_secret is not None:
            cfg["apiKey"] = s.api_key.get_secret_value()
            cfg["secret"] = s.api_secret.get_secret_value()
        client = _Client(cfg)
        client.qt_limiter = self.limiter
        if s.mode == "demo":
            client.enable_demo_trading(True)
        elif s.mode == "testnet":
            _rebase(client, _TESTNET)
        if s.base_url:
            _rebase(client, s.base_url.rstrip("/"))
        self._x = client
        self.instruments: dict[str, Instrument] = {}
        self._ccxt_symbol: dict[str, str] = {}
        self._marks: dict[str, float] = {}
        self._cid_by_order: dict[str, str] = {}  # exchange order id -> client id
        self._algo: set[str] = set()  # client ids known to be conditional (algo) orders
        self._actual: dict[str, str] = {}  # algo client id -> the regular order it became
        self.setup = VenueSetup()

    def __repr__(self) -> str:  # never show keys
        return f"CcxtBinanceExchange(mode={self.settings.mode}, base_url={self.settings.base_url})"

    @property
    def requests_sent(self) -> int:
        return int(self._x.qt_requests)

    # --- set-up -----------------------------------------------------------------------------
    async def connect(self) -> None:
        """Load markets and filters, sync the clock, refuse hedge mode, set leverage and margin
        mode (keeping the venue's where an open position forbids a change: ``setup.kept``),
        read marks. Transient venue errors are retried: a start through a flaky venue comes up
        instead of crash-looping."""
        from quantum_trader.exchange.reliable import call_with_retries

        await call_with_retries(self._load_markets, attempts=10, max_backoff_s=5.0)
        await call_with_retries(self.resync_time, attempts=10, max_backoff_s=5.0)
        if self.settings.api_key is not None:
            dual = await call_with_retries(self._x.fapiPrivateGetPositionSideDual, attempts=10,
                                           max_backoff_s=5.0)
            if str((dual or {}).get("dualSidePosition", "false")).lower() == "true":
                raise HedgeModeRefused(
                    "the account is in hedge mode (dualSidePosition): Quantum Trader trades "
                    "one-way mode only; switch it in the venue's preferences (Position Mode: "
                    "One-way) with no position open, then start again")
        for sym, lev in self.settings.leverage.items():
            await self._configure(sym, lev)
        await call_with_retries(self.refresh_marks, attempts=10, max_backoff_s=5.0)

    async def _configure(self, symbol: str, leverage: int) -> None:
        from quantum_trader.exchange.reliable import call_with_retries

        try:
            await call_with_retries(lambda: self.set_margin_mode(symbol,
                                                                 self.settings.margin_mode))
            self.setup.margin_mode[symbol] = self.settings.margin_mode
        except ExchangeRejected as exc:
            if exc.code != MARGIN_TYPE_WITH_POSITION:
                raise
            self.setup.kept[symbol] = (f"margin mode kept as the venue has it: {exc} (a "
                                       "position or order is open)")
        try:
            await call_with_retries(lambda: self.set_leverage(symbol, leverage))
            self.setup.leverage[symbol] = float(leverage)
        except ExchangeRejected as exc:
            if exc.code not in (LEVERAGE_WITH_POSITION, MARGIN_TYPE_WITH_POSITION):
                raise
            current = await self._current_leverage(symbol)
            self.setup.leverage[symbol] = current
            self.setup.kept[symbol] = (f"leverage kept at {current:g}x (wanted {leverage}x): "
                                       f"{exc}")

    async def _current_leverage(self, symbol: str) -> float:
        from quantum_trader.exchange.reliable import call_with_retries

        rows = await call_with_retries(lambda: self._x.fapiPrivateV2GetPositionRisk(
            {"symbol": symbol}))
        for r in rows or []:
            if r.get("symbol") == symbol and float(r.get("leverage") or 0) > 0:
                return float(r["leverage"])
        return float(self.settings.leverage.get(symbol, 1))

    async def _load_markets(self) -> None:
        markets = await self._x.load_markets(reload=bool(self.instruments))
        for m in markets.values():
            if not (m.get("linear") and m.get("swap")):
                continue
            info = m["info"]
            filters = {f["filterType"]: f for f in info.get("filters", [])}
            lot = filters.get("LOT_SIZE", {})
            self.instruments[m["id"]] = Instrument(
                m["id"], tick_size=float(filters.get("PRICE_FILTER", {}).get("tickSize", 0.01)),
                step_size=float(lot.get("stepSize", 0.001)),
                min_qty=float(lot.get("minQty", 0.001)),
                min_notional=float(filters.get("MIN_NOTIONAL", {}).get("notional", 5.0)))
            self._ccxt_symbol[m["id"]] = m["symbol"]

    async def resync_time(self) -> None:
        """Measure the venue's clock offset (after a -1021) so signatures carry its time."""
        self._x.options["adjustForTimeDifference"] = True
        await self._x.load_time_difference()

    async def refresh_marks(self) -> None:
        if self.settings.leverage:  # one light request per symbol traded (all: weight 40)
            rows = [await self._x.fapiPublicGetPremiumIndex({"symbol": s})
                    for s in self.settings.leverage if s in self.instruments]
        else:
            rows = await self._x.fapiPublicGetPremiumIndex()
        for r in rows:
            if r.get("symbol") in self.instruments and float(r.get("markPrice") or 0) > 0:
                self._marks[r["symbol"]] = float(r["markPrice"])

    async def mark_info(self, symbol: str) -> MarkInfo:
        r = await self._x.fapiPublicGetPremiumIndex({"symbol": symbol})
        info = MarkInfo(symbol, float(r["markPrice"]), float(r.get("lastFundingRate") or 0.0),
                        int(r.get("nextFundingTime") or 0), int(r.get("time") or 0))
        if info.mark_price > 0:
            self._marks[symbol] = info.mark_price
        return info

    def update_mark(self, symbol: str, price: float) -> None:
        """A fresher reference price (e.g. the last closed bar) for the min-notional check."""
        self._marks[symbol] = price

    async def close(self) -> None:
        await self._x.close()

    # --- checks before sending --------------------------------------------------------------
    def check(self, req: OrderRequest) -> None:
        """Raise ``OrderRefused`` with the rule that fails; sends nothing."""
        inst = self.instruments.get(req.symbol)
        if inst is None:
            known = ", ".join(sorted(self.instruments)[:10])
            raise OrderRefused(f"unknown symbol {req.symbol!r} (the venue lists {known}, ...)")
        if not math.isfinite(req.quantity) or req.quantity <= 0:
            raise OrderRefused(f"{req.symbol}: quantity must be positive, got {req.quantity}")
        if not inst.on_step(req.quantity):
            raise OrderRefused(f"{req.symbol}: quantity {req.quantity} is not a multiple of the "
                               f"step size {inst.step_size}")
        if req.quantity < inst.min_qty:
            raise OrderRefused(f"{req.symbol}: quantity {req.quantity} below the minimum "
                               f"{inst.min_qty}")
        for name, px in (("price", req.price), ("stop price", req.stop_price)):
            if px is None:
                continue
            if not math.isfinite(px) or px <= 0:
                raise OrderRefused(f"{req.symbol}: {name} must be positive, got {px}")
            ticks = px / inst.tick_size
            if abs(ticks - round(ticks)) > 1e-6:
                raise OrderRefused(f"{req.symbol}: {name} {px} is not a multiple of the tick "
                                   f"size {inst.tick_size}")
        if req.order_type is OrderType.LIMIT and req.price is None:
            raise OrderRefused(f"{req.symbol}: a limit order needs a price")
        if req.order_type is OrderType.STOP_MARKET and req.stop_price is None:
            raise OrderRefused(f"{req.symbol}: a stop order needs a stop price")
        if req.reduce_only:
            return  # Binance exempts reduce-only orders from MIN_NOTIONAL
        ref = req.price or req.stop_price or self._marks.get(req.symbol)
        if ref is None:
            raise OrderRefused(f"{req.symbol}: no reference price to check the minimum notional")
        if req.quantity * ref < inst.min_notional:
            raise OrderRefused(f"{req.symbol}: notional {req.quantity * ref:.4f} below the "
                               f"minimum notional {inst.min_notional}")

    def _sym(self, symbol: str) -> str:
        try:
            return self._ccxt_symbol[symbol]
        except KeyError:
            raise OrderRefused(f"unknown symbol {symbol!r}") from None

    # --- orders -----------------------------------------------------------------------------
    async def submit(self, request: OrderRequest) -> OrderUpdate:
        self.check(request)
        sym = self._sym(request.symbol)
        params: dict[str, Any] = {"clientOrderId": request.client_order_id}
        if request.reduce_only:
            params["reduceOnly"] = True
        kind = "limit" if request.order_type is OrderType.LIMIT else "market"
        if request.order_type is OrderType.STOP_MARKET:
            params["triggerPrice"] = request.stop_price
            self._algo.add(request.client_order_id)
        order = await self._x.create_order(sym, kind, request.side.value.lower(),
                                           request.quantity, request.price, params)
        return await self._update(order, request.symbol)

    def remember_algo(self, client_order_ids: Any) -> None:
        """Client ids known to be conditional orders (after a restart, from our store), so
        their queries go straight to the Algo Service."""
        self._algo.update(client_order_ids)

    async def cancel(self, symbol: str, client_order_id: str) -> OrderUpdate:
        sym = self._sym(symbol)
        if client_order_id in self._algo:
            await self._x.cancel_order(None, sym, {"clientOrderId": client_order_id,
                                                   "trigger": True})
        else:
            try:
                await self._x.cancel_order(None, sym, {"clientOrderId": client_order_id})
            except OrderNotFound:
                await self._x.cancel_order(None, sym, {"clientOrderId": client_order_id,
                                                       "trigger": True})
                self._algo.add(client_order_id)
        update = await self.query(symbol, client_order_id)
        if update is None:
            raise OrderNotFound(f"{client_order_id} vanished after its cancel")
        return update

    async def query(self, symbol: str, client_order_id: str) -> OrderUpdate | None:
        """The order's state, looked up by client id; None if the venue does not know it."""
        sym = self._sym(symbol)
        kinds = (True, False) if client_order_id in self._algo else (False, True)
        for algo in kinds:
            params: dict[str, Any] = {"clientOrderId": client_order_id}
            if algo:
                params["trigger"] = True
            try:
                order = await self._x.fetch_order(None, sym, params)
            except OrderNotFound:
                continue
            if algo:
                self._algo.add(client_order_id)
            return await self._update(order, symbol)
        return None

    async def open_orders(self, symbol: str | None = None) -> list[OrderUpdate]:
        """Open orders (regular and conditional). Without ``symbol``: those of the symbols
        this client trades, one light request each (Binance weighs a request for all symbols
        40), or every symbol's when it trades none in particular."""
        symbols: list[str | None] = [symbol] if symbol else \
            list(self.settings.leverage) or [None]
        out = []
        for one in symbols:
            sym = self._sym(one) if one else None
            for algo in (False, True):
                params = {"trigger": True} if algo else {}
                for o in await self._x.fetch_open_orders(sym, None, None, params):
                    if algo and o.get("clientOrderId"):
                        self._algo.add(o["clientOrderId"])
                    out.append(await self._update(o, one))
        return out

    async def _update(self, o: dict[str, Any], symbol: str | None) -> OrderUpdate:
        info = o.get("info") or {}
        sym = symbol or str(info.get("symbol") or self._market_id(o.get("symbol")))
        if "algoStatus" in info or "clientAlgoId" in info:
            return await self._algo_update(info, sym)
        cid = str(o.get("clientOrderId") or info.get("clientOrderId") or "")
        oid = str(o.get("id") or info.get("orderId") or "")
        if oid in self._cid_by_order:
            cid = self._cid_by_order[oid]  # e.g. the regular order one of our stops became
        elif oid:
            cid = await self._resolve_algo(sym, oid) or cid
            self._cid_by_order[oid] = cid
        raw = str(info.get("status") or "")
        status = _BINANCE_STATUS.get(raw)
        filled = float(o.get("filled") or 0.0)
        if status is None:
            status_s = o.get("status")
            if status_s == "open":
                status = OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.ACCEPTED
            elif status_s == "closed":
                status = OrderStatus.FILLED
            else:
                status = _CCXT_STATUS.get(str(status_s), OrderStatus.ACCEPTED)
        ts = int(o.get("lastUpdateTimestamp") or o.get("timestamp") or 0)
        side = Side(str(o.get("side") or info.get("side") or "buy").upper())
        kind = _order_type(str(info.get("type") or info.get("origType") or ""))
        return OrderUpdate(cid, oid, sym, side, status, ts, filled,
                           float(o.get("average") or 0.0), float(o.get("amount") or 0.0),
                           order_type=kind, reduce_only=bool(info.get("reduceOnly") or False))

    async def _algo_update(self, info: dict[str, Any], symbol: str) -> OrderUpdate:
        """An algo order's state as an order of ours: untriggered = working; triggered = the
        state of the regular order it became (whose id its trades carry)."""
        cid = str(info.get("clientAlgoId") or "")
        self._algo.add(cid)
        algo_id = str(info.get("algoId") or "")
        side = Side(str(info.get("side") or "BUY").upper())
        qty = float(info.get("quantity") or 0.0)
        ts = int(info.get("updateTime") or info.get("createTime") or 0)
        raw = str(info.get("algoStatus") or "NEW")
        actual = str(info.get("actualOrderId") or "")
        if actual:
            self._actual[cid] = actual
            self._cid_by_order[actual] = cid
        if raw in _ALGO_DONE:
            status, filled, avg = _ALGO_DONE[raw], float(info.get("executedQty") or 0), 0.0
        elif raw in _ALGO_IN_ENGINE and actual:
            try:
                real = await self._x.fetch_order(actual, self._sym(symbol))
            except OrderNotFound:
                real = None
            if real is None:
                status, filled, avg = OrderStatus.ACCEPTED, 0.0, 0.0
            else:
                rinfo = real.get("info") or {}
                status = _BINANCE_STATUS.get(str(rinfo.get("status") or ""),
                                             OrderStatus.ACCEPTED)
                filled = float(real.get("filled") or 0.0)
                avg = float(real.get("average") or 0.0)
        else:
            status = OrderStatus.ACCEPTED
            filled = float(info.get("executedQty") or 0.0)
            avg = float(info.get("avgPrice") or 0.0)
        return OrderUpdate(cid, algo_id, symbol, side, status, ts, filled, avg, qty,
                           order_type=OrderType.STOP_MARKET,
                           reduce_only=bool(info.get("reduceOnly") or False))

    def _market_id(self, ccxt_symbol: Any) -> str:
        for mid, s in self._ccxt_symbol.items():
            if s == ccxt_symbol:
                return mid
        return str(ccxt_symbol)

    # --- account ----------------------------------------------------------------------------
    async def positions(self) -> list[VenuePosition]:
        out = []
        for p in await self._x.fetch_positions():
            qty = float(p.get("contracts") or 0.0)
            if qty == 0:
                continue
            sign = -1.0 if p.get("side") == "short" else 1.0
            out.append(VenuePosition(self._market_id(p["symbol"]), sign * qty,
                                     float(p.get("entryPrice") or 0.0),
                                     float(p.get("leverage") or 1.0),
                                     float(p.get("liquidationPrice") or 0.0)))
        return out

    async def account(self) -> VenueAccount:
        """Wallet balance and positions as the venue holds them (one consistent read each)."""
        b = await self._x.fetch_balance()
        info = b.get("info") or {}
        wallet = float(info["totalWalletBalance"]) if "totalWalletBalance" in info else \
            float((b.get("USDT") or {}).get("total") or 0.0)
        available = float(info.get("availableBalance") or 0.0)
        positions = await self.positions()
        return VenueAccount(int(self._x.milliseconds()), wallet, tuple(positions), available)

    async def set_leverage(self, symbol: str, leverage: float) -> None:
        await self._x.set_leverage(int(leverage), self._sym(symbol))

    async def set_margin_mode(self, symbol: str, mode: Literal["isolated", "cross"]) -> None:
        try:
            await self._x.set_margin_mode(mode, self._sym(symbol))
        except ccxt.MarginModeAlreadySet:
            pass
        except ExchangeRejected as exc:
            if exc.code != NO_NEED_TO_CHANGE_MARGIN:
                raise

    async def balance(self) -> float:
        """Wallet balance in USDT (margin balance less unrealized PnL)."""
        return (await self.account()).wallet

    async def trades(self, symbol: str, from_id: int | None = None,
                     limit: int = 1000) -> list[VenueTrade]:
        """Our trades from trade id ``from_id`` on (all the venue keeps when None), oldest
        first; paginated by trade id. Each carries the client id of the order it belongs to
        (for a triggered stop: ours, through ``actualOrderId``)."""
        sym = self._sym(symbol)
        out: list[VenueTrade] = []
        params: dict[str, Any] = {"fromId": from_id if from_id is not None else 0}
        while True:
            page = await self._x.fetch_my_trades(sym, None, limit, params)
            for t in page:
                oid = str(t.get("order") or "")
                cid = self._cid_by_order.get(oid) or await self._cid_of(symbol, oid)
                fee = float((t.get("fee") or {}).get("cost") or 0.0)
                liq = Liquidity.MAKER if t.get("takerOrMaker") == "maker" else Liquidity.TAKER
                out.append(VenueTrade(symbol, str(t["id"]), oid, cid,
                                      Side(str(t["side"]).upper()), float(t["amount"]),
                                      float(t["price"]), fee, liq, int(t["timestamp"])))
            if len(page) < limit:
                return out
            params = {"fromId": int(page[-1]["id"]) + 1}

    async def latest_trade_id(self, symbol: str) -> int | None:
        page = await self._x.fetch_my_trades(self._sym(symbol), None, 10)
        ids = [int(t["id"]) for t in page if str(t.get("id") or "").isdigit()]
        return max(ids) if ids else None

    async def fills(self, symbol: str, from_id: int | None = None,
                    limit: int = 1000) -> list[VenueTrade]:
        return await self.trades(symbol, from_id, limit)

    async def _resolve_algo(self, symbol: str, order_id: str) -> str | None:
        """Our stop that became the regular order ``order_id`` when it triggered, asked of the
        Algo Service for each of our stops not yet known to have triggered; None if none."""
        sym = self._sym(symbol)
        for cid in [c for c in self._algo if c not in self._actual]:
            try:
                algo = await self._x.fetch_order(None, sym, {"clientOrderId": cid,
                                                             "trigger": True})
            except OrderNotFound:
                continue
            actual = str((algo.get("info") or {}).get("actualOrderId") or "")
            if actual:
                self._actual[cid] = actual
                self._cid_by_order[actual] = cid
            if actual == order_id:
                return cid
        return None

    async def _cid_of(self, symbol: str, order_id: str) -> str:
        """The client id of the order ``order_id``: ours when it is the regular order one of
        our stops became, else the id the venue has for it (a manual, liquidation or ADL
        order)."""
        if not order_id:
            return ""
        sym = self._sym(symbol)
        mine = await self._resolve_algo(symbol, order_id)
        if mine is not None:
            return mine
        try:
            o = await self._x.fetch_order(order_id, sym)
        except OrderNotFound:
            return ""
        cid = str(o.get("clientOrderId") or "")
        self._cid_by_order[order_id] = cid
        return cid

    async def latest_funding_time(self) -> int | None:
        """The time of the newest funding payment on the account (venue clock), None if
        there is none."""
        rows = await self._x.fapiPrivateGetIncome({"incomeType": "FUNDING_FEE", "limit": 1000})
        times = [int(r["time"]) for r in rows]
        return max(times) if times else None

    async def funding(self, since_ts: int, limit: int = 1000) -> list[FundingPayment]:
        """Funding income since ``since_ts`` for every symbol, oldest first, each with its
        tranId (Binance reports income: negative when the account paid; a FundingPayment
        counts paid as positive)."""
        out: list[FundingPayment] = []
        start = since_ts
        while True:
            rows = await self._x.fapiPrivateGetIncome({"incomeType": "FUNDING_FEE",
                                                       "startTime": start, "limit": limit})
            for r in rows:
                out.append(FundingPayment(str(r.get("symbol") or ""), int(r["time"]), 0.0, 0.0,
                                          0.0, -float(r["income"]),
                                          id=str(r.get("tranId") or f"{r['symbol']}:{r['time']}")))
            if len(rows) < limit:
                return out
            start = int(rows[-1]["time"])

    async def tickers_24h(self) -> list[Ticker24h]:
        """Every symbol's rolling 24-hour statistics (one request, weight 40)."""
        rows = await self._x.fapiPublicGetTicker24hr()
        return [Ticker24h(str(r["symbol"]), float(r["lastPrice"]), float(r["volume"]),
                          float(r["quoteVolume"]), float(r["priceChangePercent"]),
                          int(r["count"])) for r in rows]

    async def bars(self, symbol: str, timeframe: str, since: int | None = None,
                   limit: int = 500) -> list[Bar]:
        """Closed klines from ``since``. Binance includes the kline still open as the last one;
        it is dropped (by the venue's clock: local time corrected by the measured offset),
        whichever URL the venue is at."""
        rows = await self._x.fetch_ohlcv(self._sym(symbol), timeframe, since, limit)
        tf = timeframe_ms(timeframe)
        venue_now = int(self._x.milliseconds()) - int(self._x.options.get("timeDifference") or 0)
        bars = [Bar(symbol, timeframe, int(r[0]), float(r[1]), float(r[2]), float(r[3]),
                    float(r[4]), float(r[5])) for r in rows if int(r[0]) + tf <= venue_now]
        if bars:
            self._marks[symbol] = bars[-1].close
        return bars


def _rebase(client: Any, base: str) -> None:
    """Point every REST API of the client at ``base``, keeping each path (/fapi/v1, ...)."""
    api = client.urls["api"]
    for key, url in list(api.items()):
        if isinstance(url, str) and url.startswith("http"):
            api[key] = base + urlsplit(url).path


def error_body(exc: BaseException) -> dict[str, Any] | None:
    """The Binance error JSON inside a ccxt exception message, if any."""
    text = str(exc)
    start = text.find("{")
    if start < 0:
        return None
    try:
        body = json.loads(text[start:])
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _order_type(raw: str) -> OrderType | None:
    raw = raw.upper()
    if raw in ("STOP_MARKET", "STOP"):
        return OrderType.STOP_MARKET
    if raw == "LIMIT":
        return OrderType.LIMIT
    if raw == "MARKET":
        return OrderType.MARKET
    return None


def _conforms(x: CcxtBinanceExchange) -> Venue:
    return x  # mypy proves the adapter implements the port


__all__ = ["BinanceSettings", "CcxtBinanceExchange", "HedgeModeRefused", "MarkInfo", "Mode",
           "VenueSetup"]
