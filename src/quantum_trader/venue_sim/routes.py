"""The HTTP routes: Binance USDⓈ-M's REST paths over ``SimState``, plus the admin ones.

Signed requests are checked as Binance checks them: the ``X-MBX-APIKEY`` header (-2015), an
HMAC-SHA256 of the query string followed by the body (-1022), ``timestamp`` within
``recvWindow`` of the wall clock (-1021; the window at most ``max_recv_window_ms``, -1131).

Admin routes (``/sim/...``: no signature, no weight, no faults), for tests and operators:

* ``GET /sim/state``: ``{"sim_time", "bars": {symbol: bars closed}, "orders", "trades",
  "wallet", "requests": {"METHOD /path": n}, "faults": {kind: n}}``;
* ``GET /sim/records``: the venue's books (``SimRecords.to_json``);
* ``POST /sim/advance?bars=N``: move the sim clock on (not in wall-clock mode);
* ``POST /sim/adl?symbol=S&fraction=F``: auto-deleverage that share of the position;
* ``POST /sim/fault?kind=K&path=P&method=M``: inject fault K into the next such request.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from quantum_trader.domain.enums import OrderType, Side
from quantum_trader.venue_sim.state import SimOrder, SimState
from quantum_trader.venue_sim.wire import (
    ApiError,
    account_json,
    algo_json,
    balance_json,
    client_id,
    exchange_info_json,
    flag,
    fmt,
    income_json,
    integer,
    kline_row,
    need,
    num,
    opt_int,
    order_json,
    position_json,
    trade_json,
)

_CONDITIONAL = ("STOP_MARKET", "STOP", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                "TRAILING_STOP_MARKET")


def build_api(st: SimState) -> FastAPI:
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
        ts = integer(p, "timestamp")
        window = int(p.get("recvWindow", "5000"))
        if not 0 < window <= st.config.max_recv_window_ms:
            raise ApiError(-1131, "recvWindow must be less than 60000")
        now = st.wall_ms()
        if ts >= now + 1000 or now - ts > window:
            raise ApiError(-1021, "Timestamp for this request is outside of the recvWindow.")
        return p

    def symbol(p: dict[str, str]) -> str:
        sym = need(p, "symbol")
        if sym not in st.series:
            raise ApiError(-1121, "Invalid symbol.")
        return sym

    def algo_out(o: SimOrder) -> dict[str, Any]:
        return algo_json(o, st.actual_of(o))

    # --- public -----------------------------------------------------------------------------
    @app.get("/fapi/v1/ping")
    async def ping() -> dict[str, Any]:
        return {}

    @app.get("/fapi/v1/time")
    async def server_time() -> dict[str, Any]:
        return {"serverTime": st.wall_ms()}

    @app.get("/fapi/v1/exchangeInfo")
    async def exchange_info() -> dict[str, Any]:
        return exchange_info_json([st.config.instruments(s) for s in st.series],
                                  st.config.weight_limit, st.wall_ms())

    @app.get("/fapi/v1/klines")
    async def klines(request: Request) -> list[list[Any]]:
        p = await params(request, signed=False)
        sym = symbol(p)
        if need(p, "interval") != st.timeframes[sym]:
            raise ApiError(-1120, f"Invalid interval: the simulator serves {sym} in "
                                  f"{st.timeframes[sym]} only.")
        limit = min(int(p.get("limit", "500") or 500), 1500)
        if limit <= 0:
            raise ApiError(-1130, "Invalid data sent for a parameter: limit.")
        rows = st.klines(sym, opt_int(p, "startTime"), opt_int(p, "endTime"), limit)
        return [kline_row(k) for k in rows]

    def ticker(sym: str) -> dict[str, Any]:
        d = st.stats_24h(sym)
        change = float(d["last"]) - float(d["open"])
        return {"symbol": sym, "priceChange": fmt(change),
                "priceChangePercent": f"{100 * change / float(d['open']):.3f}"
                if d["open"] else "0.000",
                "weightedAvgPrice": fmt(float(d["quote_volume"]) / float(d["volume"]))
                if d["volume"] else fmt(float(d["last"])),
                "lastPrice": fmt(float(d["last"])), "lastQty": "0",
                "openPrice": fmt(float(d["open"])), "highPrice": fmt(float(d["high"])),
                "lowPrice": fmt(float(d["low"])), "volume": fmt(float(d["volume"])),
                "quoteVolume": fmt(float(d["quote_volume"])), "openTime": d["open_time"],
                "closeTime": d["close_time"], "firstId": 0, "lastId": 0, "count": d["count"]}

    @app.get("/fapi/v1/ticker/24hr")
    async def ticker_24hr(request: Request) -> Any:
        p = await params(request, signed=False)
        if p.get("symbol"):
            return ticker(symbol(p))
        return [ticker(s) for s in st.series]

    def premium(sym: str) -> dict[str, Any]:
        mark = st.price_now(sym) or 0.0
        iv = st.config.exchange.funding_interval_ms
        now = st.sim_now()
        return {"symbol": sym, "markPrice": fmt(mark), "indexPrice": fmt(mark),
                "estimatedSettlePrice": fmt(mark),
                "lastFundingRate": fmt(st.config.exchange.funding_rate),
                "interestRate": "0.00010000", "nextFundingTime": (now // iv + 1) * iv,
                "time": now}

    @app.get("/fapi/v1/premiumIndex")
    async def premium_index(request: Request) -> Any:
        p = await params(request, signed=False)
        if "symbol" in p:
            return premium(symbol(p))
        return [premium(s) for s in st.series]

    @app.get("/fapi/v1/fundingRate")
    async def funding_rate(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=False)
        sym = symbol(p)
        iv = st.config.exchange.funding_interval_ms
        start = opt_int(p, "startTime") or int(st.series[sym].ts[0])
        end = opt_int(p, "endTime") or st.sim_now()
        limit = min(int(p.get("limit", "100")), 1000)
        t = -(-start // iv) * iv
        out: list[dict[str, Any]] = []
        while t <= end and len(out) < limit:
            out.append({"symbol": sym, "fundingTime": t,
                        "fundingRate": fmt(st.config.exchange.funding_rate), "markPrice": ""})
            t += iv
        return out

    # --- account ----------------------------------------------------------------------------
    def account_out() -> dict[str, Any]:
        wallet, available = st.wallet()
        now = st.sim_now()
        positions = [position_json(x, now) for x in st.positions()]
        return account_json(wallet, available, positions, now)

    @app.get("/fapi/v2/balance")
    @app.get("/fapi/v3/balance")
    async def balance(request: Request) -> list[dict[str, Any]]:
        await params(request, signed=True)
        return balance_json(account_out())

    @app.get("/fapi/v2/account")
    @app.get("/fapi/v3/account")
    async def account(request: Request) -> dict[str, Any]:
        await params(request, signed=True)
        return account_out()

    @app.get("/fapi/v2/positionRisk")
    async def position_risk_v2(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=True)
        sym = symbol(p) if "symbol" in p else None
        now = st.sim_now()
        return [position_json(x, now) for x in st.positions(sym)]

    @app.get("/fapi/v3/positionRisk")
    async def position_risk_v3(request: Request) -> list[dict[str, Any]]:
        # v3 lists only symbols with a position or open orders
        p = await params(request, signed=True)
        sym = symbol(p) if "symbol" in p else None
        busy = {o.symbol for o in st.open_orders(sym)} | \
            {o.symbol for o in st.open_orders(sym, algo=True)}
        now = st.sim_now()
        return [position_json(x, now) for x in st.positions(sym) if x.qty or x.symbol in busy]

    @app.get("/fapi/v1/leverageBracket")
    async def leverage_bracket(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=True)
        syms = [symbol(p)] if "symbol" in p else list(st.series)
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
        return {"dualSidePosition": st.dual_side_position}

    @app.get("/fapi/v1/multiAssetsMargin")
    async def multi_assets(request: Request) -> dict[str, Any]:
        await params(request, signed=True)
        return {"multiAssetsMargin": False}

    @app.get("/fapi/v1/symbolConfig")
    async def symbol_config(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=True)
        syms = [symbol(p)] if "symbol" in p else list(st.series)
        return [{"symbol": s, "marginType": st.margin_type.get(s, "ISOLATED").upper(),
                 "isAutoAddMargin": False, "leverage": int(st.core.leverage(s)),
                 "maxNotionalValue": "1000000"} for s in syms]

    @app.post("/fapi/v1/leverage")
    async def leverage(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        sym = symbol(p)
        lev = integer(p, "leverage")
        st.set_leverage(sym, lev)
        return {"leverage": lev, "maxNotionalValue": "1000000", "symbol": sym}

    @app.post("/fapi/v1/marginType")
    async def margin_type(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        st.set_margin_type(symbol(p), need(p, "marginType"))
        return {"code": 200, "msg": "success"}

    # --- orders -----------------------------------------------------------------------------
    def place(p: dict[str, str], algo: bool) -> SimOrder:
        sym = symbol(p)
        side_s = need(p, "side").upper()
        if side_s not in ("BUY", "SELL"):
            raise ApiError(-1117, "Invalid side.")
        kind = (p.get("type") or need(p, "orderType") if algo else need(p, "type")).upper()
        if algo:
            if kind != "STOP_MARKET":
                raise ApiError(-4120, f"Order type {kind} not supported by the simulator.")
            stop: float | None = num(p, "triggerPrice")
            otype = OrderType.STOP_MARKET
            cid = client_id(p, "clientAlgoId")
        elif kind in _CONDITIONAL:
            raise ApiError(-4120, "Order type not supported for this endpoint. Please use the "
                                  "Algo Order API endpoints instead.")
        elif kind in ("MARKET", "LIMIT"):
            otype = OrderType(kind)
            stop = None
            cid = client_id(p, "newClientOrderId")
            if otype is OrderType.LIMIT and "price" not in p:
                raise ApiError(-1102, "Mandatory parameter 'price' was not sent, was "
                                      "empty/null, or malformed.")
        else:
            raise ApiError(-1116, "Invalid orderType.")
        if flag(p, "closePosition"):
            raise ApiError(-4120, "closePosition is not supported by the simulator.")
        price = num(p, "price") if otype is OrderType.LIMIT else None
        return st.place(sym, Side(side_s), otype, num(p, "quantity"), price=price, stop=stop,
                        reduce_only=flag(p, "reduceOnly"), client_id=cid, algo=algo)

    @app.post("/fapi/v1/order")
    async def new_order(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        return order_json(place(p, algo=False))

    @app.get("/fapi/v1/order")
    async def get_order(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        return order_json(st.find(symbol(p), opt_int(p, "orderId"),
                                  p.get("origClientOrderId") or None))

    @app.delete("/fapi/v1/order")
    async def cancel_order(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        return order_json(st.cancel(symbol(p), opt_int(p, "orderId"),
                                    p.get("origClientOrderId") or None))

    @app.get("/fapi/v1/openOrders")
    async def open_orders(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=True)
        return [order_json(o) for o in st.open_orders(symbol(p) if "symbol" in p else None)]

    @app.get("/fapi/v1/allOrders")
    async def all_orders(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=True)
        rows = [order_json(o) for o in st.all_orders(symbol(p))]
        if "orderId" in p:
            rows = [r for r in rows if r["orderId"] >= integer(p, "orderId")]
        return window(p, rows, "time", 500, 1000)

    @app.delete("/fapi/v1/allOpenOrders")
    async def cancel_all(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        st.cancel_all(symbol(p))
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    @app.post("/fapi/v1/algoOrder")
    async def new_algo(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        if p.get("algoType", "CONDITIONAL") != "CONDITIONAL":
            raise ApiError(-1130, "Invalid algoType.")
        return algo_out(place(p, algo=True))

    @app.get("/fapi/v1/algoOrder")
    async def get_algo(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        return algo_out(st.find(None, opt_int(p, "algoId"), p.get("clientAlgoId") or None,
                                algo=True))

    @app.delete("/fapi/v1/algoOrder")
    async def cancel_algo(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        o = st.cancel(None, opt_int(p, "algoId"), p.get("clientAlgoId") or None, algo=True)
        return {"algoId": o.order_id, "clientAlgoId": o.client_id, "code": "200",
                "msg": "success"}

    @app.get("/fapi/v1/openAlgoOrders")
    async def open_algo_orders(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=True)
        return [algo_out(o) for o in st.open_orders(symbol(p) if "symbol" in p else None,
                                                    algo=True)]

    @app.get("/fapi/v1/allAlgoOrders")
    async def all_algo_orders(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=True)
        rows = [algo_out(o) for o in st.all_orders(symbol(p), algo=True)]
        return window(p, rows, "createTime", 500, 1000)

    @app.delete("/fapi/v1/algoOpenOrders")
    async def cancel_all_algo(request: Request) -> dict[str, Any]:
        p = await params(request, signed=True)
        st.cancel_all(symbol(p), algo=True)
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    def window(p: dict[str, str], rows: list[dict[str, Any]], key: str,
               default_limit: int, max_limit: int) -> list[dict[str, Any]]:
        if "startTime" in p:
            rows = [r for r in rows if r[key] >= integer(p, "startTime")]
        if "endTime" in p:
            rows = [r for r in rows if r[key] <= integer(p, "endTime")]
        limit = min(int(p.get("limit", str(default_limit))), max_limit)
        return rows[:limit] if "startTime" in p or "fromId" in p or "orderId" in p \
            else rows[-limit:]

    @app.get("/fapi/v1/userTrades")
    async def user_trades(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=True)
        rows = [trade_json(t) for t in st.trades(symbol(p))]
        if "orderId" in p:
            rows = [t for t in rows if t["orderId"] == integer(p, "orderId")]
        if "fromId" in p:
            rows = [t for t in rows if t["id"] >= integer(p, "fromId")]
        return window(p, rows, "time", 500, 1000)

    @app.get("/fapi/v1/income")
    async def income(request: Request) -> list[dict[str, Any]]:
        p = await params(request, signed=True)
        rows = [income_json(r) for r in st.income()]
        if "symbol" in p:
            rows = [r for r in rows if r["symbol"] == p["symbol"]]
        if "incomeType" in p:
            rows = [r for r in rows if r["incomeType"] == p["incomeType"]]
        return window(p, rows, "time", 100, 1000)

    # --- spot-wallet paths ccxt reads while loading markets with keys: empty answers ------
    @app.get("/sapi/v1/capital/config/getall")
    @app.get("/sapi/v1/margin/allPairs")
    @app.get("/sapi/v1/margin/isolated/allPairs")
    async def sapi_empty(request: Request) -> list[Any]:
        await params(request, signed=True)
        return []

    # --- admin --------------------------------------------------------------------------------
    @app.get("/sim/state")
    async def sim_state() -> dict[str, Any]:
        with st.lock:
            wallet, _ = st.wallet()
            return {"sim_time": st.sim_now(), "bars": st.bars_closed(),
                    "orders": st.order_count(), "trades": len(st.trades()),
                    "wallet": wallet, "requests": dict(st.requests),
                    "faults": dict(st.faults_injected)}

    @app.get("/sim/records")
    async def sim_records() -> dict[str, Any]:
        return st.records().to_json()

    @app.post("/sim/advance")
    async def sim_advance(bars: int = 1) -> dict[str, Any]:
        try:
            st.advance(bars)
        except ValueError as exc:
            raise ApiError(-1130, str(exc)) from None
        return {"sim_time": st.sim_now()}

    @app.post("/sim/adl")
    async def sim_adl(symbol: str, fraction: float = 1.0) -> dict[str, Any]:
        try:
            o = st.adl(symbol, fraction)
        except ValueError as exc:
            raise ApiError(-1130, str(exc)) from None
        if o is None:
            return {"symbol": symbol, "orderId": None}
        return {"symbol": symbol, "orderId": o.order_id, "clientOrderId": o.client_id,
                "side": o.side.value, "executedQty": o.executed, "avgPrice": o.avg_price,
                "trades": [t.to_json() for t in st.trades(symbol) if t.order_id == o.order_id]}

    @app.post("/sim/fault")
    async def sim_fault(kind: str, path: str, method: str = "POST") -> dict[str, Any]:
        try:
            st.force_fault(kind, path, method)
        except ValueError as exc:
            raise ApiError(-1130, str(exc)) from None
        return {"kind": kind, "path": path, "method": method.upper()}

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def unknown(rest: str) -> JSONResponse:
        return JSONResponse({"code": -5000, "msg": f"Path /{rest} not served by the simulator."},
                            status_code=404)

    return app


__all__ = ["build_api"]
