"""The venue simulator on loopback, driven by the real, unmodified ccxt ``binanceusdm`` client
(its REST URLs rebased onto the simulator) and by raw signed HTTP where ccxt has no call.

Each Binance behaviour that can hurt a client has a test here that shows the simulator does
the same. Scenarios that need exact prices run in lockstep on hand-made bars with slippage
off; the others replay the shipped XRP sample."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import ccxt  # type: ignore[import-untyped]
import httpx
import numpy as np
import pytest

from quantum_trader.domain.enums import OrderType, Side
from quantum_trader.exchange.ratelimit import WeightLimiter, binance_weight
from quantum_trader.marketdata.series import BarSeries
from quantum_trader.marketdata.synthetic import synthetic_series
from quantum_trader.venue_sim import (
    LIQUIDATION_TRADES,
    ApiError,
    SimServer,
    SimServerConfig,
    SimState,
    load_series,
    server_exchange_settings,
)

SYM = "XRPUSDT"
CCXT_SYM = "XRP/USDT:USDT"
H30 = 1_800_000
T0 = 1_700_006_400_000 // (8 * 3_600_000) * (8 * 3_600_000)  # a funding boundary
FLAT = (1.0, 1.0, 1.0, 1.0, 1e6)
EXACT = server_exchange_settings(slippage_bps=0.0, impact=0.0)  # fills at the model's prices
MMR = 0.005  # XRPUSDT's maintenance margin rate
WOULD_TRIGGER = re.escape('{"code":-2021,"msg":"Order would immediately trigger."}')


# --- harness ---------------------------------------------------------------------------------

def bars(rows: list[tuple[float, float, float, float, float]]) -> BarSeries:
    """Hand-made 30m bars (open, high, low, close, volume) from ``T0``."""
    a = np.array(rows, dtype=float)
    return BarSeries(SYM, "30m", T0 + np.arange(len(rows), dtype=np.int64) * H30,
                     a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy(), a[:, 3].copy(),
                     a[:, 4].copy())


def start(series: list[BarSeries] | None = None, **kw: Any) -> SimServer:
    cfg = SimServerConfig(series=series or load_series(["sample:XRP"]), **kw)
    return SimServer(SimState(cfg)).start()


def lockstep(rows: list[tuple[float, float, float, float, float]], **kw: Any) -> SimServer:
    """Bars 0-2 closed, the clock on bar 3's open; it moves only on ``advance``."""
    return start([bars(rows)], bar_seconds=0, start_bar=2, exchange=kw.pop("exchange", EXACT),
                 **kw)


@pytest.fixture
def server() -> Iterator[SimServer]:
    srv = start(bar_seconds=0)
    yield srv
    srv.stop()


def ccxt_for(srv: SimServer) -> Any:
    """The real ccxt client, every REST URL rebased onto the simulator (keeping the paths)."""
    c = srv.state.config
    x = ccxt.binanceusdm({"apiKey": c.api_key, "secret": c.api_secret,
                          "enableRateLimit": False,
                          "options": {"warnOnFetchOpenOrdersWithoutSymbol": False}})
    api = x.urls["api"]
    for key, url in list(api.items()):
        if isinstance(url, str) and url.startswith("http"):
            api[key] = srv.url + urlsplit(url).path
    x.load_markets()
    return x


class Signed:
    """Raw signed HTTP, as Binance wants it: HMAC-SHA256 of query string + body."""

    def __init__(self, srv: SimServer) -> None:
        self.srv = srv
        self.http = httpx.Client(base_url=srv.url, timeout=10)

    def __call__(self, method: str, path: str, **params: Any) -> httpx.Response:
        c = self.srv.state.config
        params["timestamp"] = int(time.time() * 1000)
        q = urlencode(params)
        sig = hmac.new(c.api_secret.encode(), q.encode(), hashlib.sha256).hexdigest()
        signed = f"{q}&signature={sig}"
        headers = {"X-MBX-APIKEY": c.api_key}
        if method in ("POST", "PUT"):
            return self.http.request(method, path, content=signed, headers=headers | {
                "Content-Type": "application/x-www-form-urlencoded"})
        return self.http.request(method, f"{path}?{signed}", headers=headers)

    def ok(self, method: str, path: str, **params: Any) -> Any:
        r = self(method, path, **params)
        assert r.status_code == 200, r.text
        return r.json()

    def error(self, method: str, path: str, **params: Any) -> int:
        r = self(method, path, **params)
        assert r.status_code >= 400, r.text
        code: int = r.json()["code"]
        return code


def signed(srv: SimServer, params: dict[str, object], secret: str | None = None) -> str:
    q = urlencode(params)
    sig = hmac.new((secret or srv.state.config.api_secret).encode(), q.encode(),
                   hashlib.sha256).hexdigest()
    return f"{q}&signature={sig}"


def wait_for(cond: Callable[[], bool], within_s: float = 10.0, what: str = "condition",
             every_s: float = 0.02) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, f"{what} not met in time"
        time.sleep(every_s)


def bar_fraction(st: SimState) -> tuple[int, float]:
    """Which bar the sim clock is inside, and how far into it."""
    t = st.sim_now()
    i = (t - T0) // H30
    return int(i), (t - T0 - i * H30) / H30


def path_price(o: float, h: float, lo: float, c: float, f: float, long_or_flat: bool) -> float:
    """The core's assumed path through a bar, written out again: open, adverse extreme,
    favourable extreme, close, a third of the bar each."""
    pts = (o, lo, h, c) if long_or_flat else (o, h, lo, c)
    leg = min(int(f * 3), 2)
    return pts[leg] + (pts[leg + 1] - pts[leg]) * (f * 3 - leg)


def order(x: Any, **params: Any) -> dict[str, Any]:
    """GET /fapi/v1/order through ccxt's implicit API (the raw Binance answer)."""
    result: dict[str, Any] = x.fapiPrivateGetOrder({"symbol": SYM, **params})
    return result


def algo(x: Any, algo_id: str) -> dict[str, Any]:
    result: dict[str, Any] = x.fapiPrivateGetAlgoOrder({"algoId": algo_id})
    return result


# --- the order cycle -------------------------------------------------------------------------

def test_order_cycle_on_the_accelerated_clock() -> None:
    srv = start(bar_seconds=0.05)
    try:
        x = ccxt_for(srv)
        market = x.market(CCXT_SYM)
        assert (market["precision"]["price"], market["precision"]["amount"],
                market["limits"]["cost"]["min"]) == (0.0001, 0.1, 5.0)
        x.set_leverage(5, CCXT_SYM)
        assert srv.state.core.leverage(SYM) == 5
        http = Signed(srv)
        start_wallet = float(http.ok("GET", "/fapi/v2/account")["totalWalletBalance"])
        mark = srv.state.price_now(SYM)
        assert mark is not None
        buy = x.create_order(CCXT_SYM, "market", "buy", 200)
        assert buy["status"] == "open"  # NEW: Binance answers before the fill
        limit = x.create_order(CCXT_SYM, "limit", "buy", 200, round(mark / 3, 4))
        wait_for(lambda: x.fetch_order(buy["id"], CCXT_SYM)["status"] == "closed", 10,
                 "the market order to fill")
        filled = x.fetch_order(buy["id"], CCXT_SYM)
        assert filled["filled"] == 200
        stop = x.create_order(CCXT_SYM, "STOP_MARKET", "sell", 200, None,
                              {"triggerPrice": round(mark * 0.3, 4), "reduceOnly": True})
        assert stop["info"]["algoStatus"] == "NEW"
        assert {o["id"] for o in x.fetch_open_orders(CCXT_SYM)} == {limit["id"]}
        assert {o["id"] for o in x.fetch_open_orders(CCXT_SYM, None, None,
                                                     {"trigger": True})} == {stop["id"]}
        [pos] = x.fetch_positions([CCXT_SYM])
        assert (pos["contracts"], pos["side"], pos["leverage"]) == (200, "long", 5)
        assert pos["entryPrice"] == pytest.approx(filled["average"], abs=1e-8)
        assert x.cancel_order(limit["id"], CCXT_SYM)["status"] == "canceled"
        x.cancel_order(stop["id"], CCXT_SYM, {"trigger": True})
        assert algo(x, stop["id"])["algoStatus"] == "CANCELED"
        close = x.create_order(CCXT_SYM, "market", "sell", 200, None, {"reduceOnly": True})
        wait_for(lambda: x.fetch_positions([CCXT_SYM]) == [], 10, "the position to close")
        assert x.fetch_open_orders(CCXT_SYM) == []
        trades = x.fetch_my_trades(CCXT_SYM)
        assert [t["order"] for t in trades] == [buy["id"], close["id"]]
        assert sum(t["amount"] * (1 if t["side"] == "buy" else -1) for t in trades) == 0
        pnl = sum(float(t["info"]["realizedPnl"]) for t in trades)
        # prices go out with 8 decimals: 200 * two roundings of 5e-9, and the PnL's own
        assert pnl == pytest.approx(200 * (trades[1]["price"] - trades[0]["price"]), abs=3e-6)
        fees = sum(t["fee"]["cost"] for t in trades)
        funding = sum(f["amount"] for f in x.fetch_funding_history(CCXT_SYM))
        wallet = float(http.ok("GET", "/fapi/v2/account")["totalWalletBalance"])
        assert wallet == pytest.approx(start_wallet + pnl - fees + funding, abs=1e-6)
    finally:
        srv.stop()


def test_bad_input_is_refused_with_binance_codes_and_leaves_no_trace(server: SimServer) -> None:
    http = Signed(server)
    base = {"symbol": SYM, "side": "BUY", "type": "MARKET", "quantity": "100"}
    cases = {
        -1121: base | {"symbol": "DOGEUSDX"},
        -4164: base | {"quantity": "1"},  # below the minimum notional
        -1111: base | {"quantity": "100.05"},  # not on the step
        -4014: base | {"type": "LIMIT", "price": "0.123456"},  # not on the tick
        -4003: base | {"quantity": "0"},
        -1100: base | {"newClientOrderId": "has spaces#"},
        -1117: base | {"side": "HOLD"},
        -1116: base | {"type": "ICEBERG"},
    }
    for code, params in cases.items():
        assert http.error("POST", "/fapi/v1/order", **params) == code, params
    r = http("POST", "/fapi/v1/order", **base | {"quantity": "1"})
    assert r.json()["msg"] == ("Order's notional must be no smaller than 5 (unless you choose "
                               "reduce only).")
    assert server.state.order_count() == 0
    assert server.state.records().orders == ()


def test_signatures_timestamps_and_error_codes(server: SimServer) -> None:
    key = {"X-MBX-APIKEY": server.state.config.api_key}
    now = int(time.time() * 1000)
    with httpx.Client(base_url=server.url) as c:
        r = c.get(f"/fapi/v2/balance?{signed(server, {'timestamp': now}, 'wrong')}",
                  headers=key)
        assert (r.status_code, r.json()["code"]) == (400, -1022)
        r = c.get(f"/fapi/v2/balance?{signed(server, {'timestamp': now - 70_000})}",
                  headers=key)
        assert r.json()["code"] == -1021
        r = c.get(f"/fapi/v2/balance?{signed(server, {'timestamp': now, 'recvWindow': 70_000})}",
                  headers=key)
        assert r.json()["code"] == -1131
        r = c.get(f"/fapi/v2/balance?{signed(server, {'timestamp': now})}",
                  headers={"X-MBX-APIKEY": "nope"})
        assert r.json()["code"] == -2015
        r = c.get(f"/fapi/v2/balance?{signed(server, {'timestamp': now})}", headers=key)
        assert r.status_code == 200
        assert int(r.headers["x-mbx-used-weight-1m"]) >= 5
        body = signed(server, {"symbol": SYM, "side": "BUY", "timestamp": now})
        hdr = key | {"Content-Type": "application/x-www-form-urlencoded"}
        r = c.post("/fapi/v1/order", content=body, headers=hdr)
        assert r.json()["code"] == -1102
        order_ = {"symbol": SYM, "side": "BUY", "type": "MARKET", "quantity": "100",
                  "newClientOrderId": "dup1", "timestamp": now}
        assert c.post("/fapi/v1/order", content=signed(server, order_), headers=hdr).is_success
        r = c.post("/fapi/v1/order", content=signed(server, order_), headers=hdr)
        assert r.json() == {"code": -4116, "msg": "ClientOrderId is duplicated."}  # still open
        huge = order_ | {"quantity": "10000000", "newClientOrderId": "big"}
        r = c.post("/fapi/v1/order", content=signed(server, huge), headers=hdr)
        assert r.json() == {"code": -2019, "msg": "Margin is insufficient."}
        r = c.delete(f"/fapi/v1/order?{signed(server, {'symbol': SYM, 'orderId': 1, 'timestamp': now})}",  # noqa: E501
                     headers=key)
        assert r.json()["code"] == -2011
        stop = order_ | {"type": "STOP_MARKET", "stopPrice": "0.1", "newClientOrderId": "s"}
        r = c.post("/fapi/v1/order", content=signed(server, stop), headers=hdr)
        assert r.json()["code"] == -4120  # conditional orders live on the algo endpoints
        assert server.state.order_count() == 1


def test_429_then_418_for_a_client_that_keeps_going() -> None:
    srv = start(bar_seconds=0, weight_limit=20, weight_window_s=5, ban_seconds=1.0)
    try:
        if time.time() % 5 > 4:  # weight windows are fixed: do not straddle a boundary
            time.sleep(5 - time.time() % 5 + 0.01)
        with httpx.Client(base_url=srv.url) as c:
            codes = [c.get("/fapi/v1/time").status_code for _ in range(22)]
            assert codes[:20] == [200] * 20
            assert codes[20] == 429
            assert codes[21] == 418  # ignored the Retry-After
            r = c.get("/fapi/v1/time")
            assert r.status_code == 418
            assert int(r.headers["retry-after"]) >= 1
            time.sleep(1.05)
            assert c.get("/fapi/v1/ping").status_code in (200, 429)  # ban over
    finally:
        srv.stop()


async def test_a_client_budgeting_binance_weights_never_meets_a_429() -> None:
    """The simulator counts what ``binance_weight`` says and advertises its limit; a client
    holding to that budget through 200 concurrent orders gets no 429."""
    srv = start(bar_seconds=0, weight_limit=100, weight_window_s=2.0)
    c = srv.state.config
    try:
        async with httpx.AsyncClient(base_url=srv.url) as http:
            info = (await http.get("/fapi/v1/exchangeInfo")).json()
            [weights] = [r for r in info["rateLimits"] if r["rateLimitType"] == "REQUEST_WEIGHT"]
            # Requests acquired at the end of one window can reach the server in the next
            # (by a lot on a loaded machine): half the limit is this client's.
            limiter = WeightLimiter(weights["limit"], 2.0, headroom=0.5)

            async def place(i: int) -> int:
                await limiter.acquire(binance_weight("/fapi/v1/order", {}))
                # signed when sent, as ccxt does: a wait for the next window must not age it
                # past the recvWindow (a 400 -1021, not the 429 this is about)
                params = {"symbol": SYM, "side": "BUY", "type": "MARKET", "quantity": "100",
                          "newClientOrderId": f"burst-{i}",
                          "timestamp": int(time.time() * 1000)}
                r = await http.post("/fapi/v1/order", content=signed(srv, params), headers={
                    "X-MBX-APIKEY": c.api_key,
                    "Content-Type": "application/x-www-form-urlencoded"})
                limiter.observe(int(r.headers["x-mbx-used-weight-1m"]))
                return r.status_code

            t0 = time.monotonic()
            codes = await asyncio.gather(*(place(i) for i in range(200)))
        assert codes == [200] * 200, [(i, c) for i, c in enumerate(codes) if c != 200][:5]
        assert srv.state.status_counts[429] == srv.state.status_counts[418] == 0
        assert time.monotonic() - t0 > 1.0  # it had to wait for a new window at least once
        assert srv.state.order_count() == 200
    finally:
        srv.stop()


# --- client order ids ------------------------------------------------------------------------

def test_a_client_order_id_is_unique_among_open_orders_only() -> None:
    srv = lockstep([FLAT] * 10)
    x = ccxt_for(srv)
    try:
        # open: the same id is refused
        first = x.create_order(CCXT_SYM, "limit", "buy", 100, 0.5, {"clientOrderId": "qt-a"})
        with pytest.raises(ccxt.ExchangeError, match="-4116"):
            x.create_order(CCXT_SYM, "limit", "buy", 100, 0.5, {"clientOrderId": "qt-a"})
        # canceled: the id is free again, for a new order with a new orderId
        x.cancel_order(first["id"], CCXT_SYM)
        again = x.create_order(CCXT_SYM, "limit", "buy", 100, 0.5, {"clientOrderId": "qt-a"})
        assert again["id"] != first["id"]
        # filled: a re-send is a second order, a second fill: the double order a client must
        # prevent itself
        buy = x.create_order(CCXT_SYM, "market", "buy", 100, None, {"clientOrderId": "qt-b"})
        srv.state.advance()
        assert order(x, orderId=buy["id"])["status"] == "FILLED"
        twice = x.create_order(CCXT_SYM, "market", "buy", 100, None, {"clientOrderId": "qt-b"})
        srv.state.advance()
        assert twice["id"] != buy["id"]
        # a query by client id answers with the newest order of that id
        assert order(x, origClientOrderId="qt-b")["orderId"] == int(twice["id"])
        assert order(x, origClientOrderId="qt-a")["orderId"] == int(again["id"])
        assert order(x, orderId=first["id"])["status"] == "CANCELED"  # the old one is kept
        [pos] = x.fetch_positions([CCXT_SYM])
        assert pos["contracts"] == 200
        assert srv.state.order_count("qt-b") == 2
        assert [t["order"] for t in x.fetch_my_trades(CCXT_SYM)] == [buy["id"], twice["id"]]
    finally:
        srv.stop()


def test_a_rejected_order_never_existed(server: SimServer) -> None:
    http = Signed(server)
    params = {"symbol": SYM, "side": "BUY", "type": "MARKET", "newClientOrderId": "qt-r"}
    assert http.error("POST", "/fapi/v1/order", **params, quantity="10000000") == -2019
    assert http.error("GET", "/fapi/v1/order", symbol=SYM, origClientOrderId="qt-r") == -2013
    # the retry is judged on its own, not refused like its predecessor
    placed = http.ok("POST", "/fapi/v1/order", **params, quantity="100")
    assert (placed["clientOrderId"], placed["status"]) == ("qt-r", "NEW")
    assert server.state.order_count("qt-r") == 1


# --- -2021 -------------------------------------------------------------------------------------

def test_a_stop_already_crossed_is_rejected_with_2021() -> None:
    srv = lockstep([FLAT] * 10)  # last close 1.0
    x = ccxt_for(srv)
    try:
        for side, trigger in (("sell", 1.0), ("sell", 1.1), ("buy", 1.0), ("buy", 0.9)):
            with pytest.raises(ccxt.ExchangeError, match=WOULD_TRIGGER):
                x.create_order(CCXT_SYM, "STOP_MARKET", side, 100, None,
                               {"triggerPrice": trigger})
        ok = x.create_order(CCXT_SYM, "STOP_MARKET", "sell", 100, None, {"triggerPrice": 0.99})
        assert ok["info"]["algoStatus"] == "NEW"
        assert len(srv.state.records().orders) == 1  # the rejected ones never existed
    finally:
        srv.stop()


def test_2021_inside_a_bar_is_judged_at_the_price_on_the_bars_path() -> None:
    """Every bar: 1.0 → 0.80 → 1.002 → 1.0 (flat account: the low comes first). On a bar
    boundary a sell stop at 0.95 is fine (last close 1.0); while the path is below 0.95 it
    would trigger at once; a stop at 0.79 is fine throughout."""
    shape = (1.0, 1.002, 0.80, 1.0, 1e6)
    srv = start([bars([FLAT] * 3 + [shape] * 200)], bar_seconds=3.0, start_bar=2,
                exchange=EXACT)
    st = srv.state
    x = ccxt_for(srv)
    try:
        for _attempt in range(5):  # a slow machine may miss the window: take the next bar
            wait_for(lambda: 0.2 <= bar_fraction(st)[1] <= 0.4, 10, "the low part of a bar")
            i, before = bar_fraction(st)
            err: Exception | None = None
            try:
                x.create_order(CCXT_SYM, "STOP_MARKET", "sell", 100, None,
                               {"triggerPrice": 0.95})
            except ccxt.ExchangeError as exc:
                err = exc
            j, after = bar_fraction(st)
            if i == j and after < 0.55:
                break
        else:
            pytest.fail("never placed inside the window")
        assert err is not None
        assert re.search(WOULD_TRIGGER, str(err))
        assert path_price(*shape[:4], before, True) < 0.95
        low = x.create_order(CCXT_SYM, "STOP_MARKET", "sell", 100, None, {"triggerPrice": 0.79})
        assert low["info"]["algoStatus"] == "NEW"
        wait_for(lambda: bar_fraction(st)[1] >= 0.75, 10, "the high part of the bar")
        high = x.create_order(CCXT_SYM, "STOP_MARKET", "sell", 100, None,
                              {"triggerPrice": 0.95})
        assert high["info"]["algoStatus"] == "NEW"
    finally:
        srv.stop()


# --- conditional (algo) orders -----------------------------------------------------------------

def test_a_triggered_algo_order_becomes_another_order_and_its_rest_is_worked_at_market() -> None:
    rows = [FLAT] * 3 + [
        FLAT,  # 3: the entry fills at 1.0
        (1.0, 1.01, 0.90, 0.93, 50_000.0),  # 4: the stop at 0.95 triggers; 5,000 of volume
        (0.97, 0.98, 0.96, 0.97, 1e6),  # 5: back above the stop: the rest fills at the open
    ] + [(0.97, 0.97, 0.97, 0.97, 1e6)] * 5
    srv = lockstep(rows)
    st = srv.state
    x = ccxt_for(srv)
    try:
        x.create_order(CCXT_SYM, "market", "buy", 10_000)
        st.advance()
        stop = x.create_order(CCXT_SYM, "STOP_MARKET", "sell", 10_000, None,
                              {"triggerPrice": 0.95, "reduceOnly": True,
                               "clientOrderId": "qt-stop"})
        info = stop["info"]
        assert (info["clientAlgoId"], info["algoStatus"], info["actualOrderId"]) == (
            "qt-stop", "NEW", "")
        assert [o["id"] for o in x.fetch_open_orders(CCXT_SYM, None, None,
                                                     {"trigger": True})] == [stop["id"]]
        # an algoId is no orderId
        with pytest.raises(ccxt.OrderNotFound):
            order(x, orderId=stop["id"])

        st.advance()  # bar 4: triggered, 10% of 50,000 filled at the stop
        a = algo(x, stop["id"])
        assert a["algoStatus"] == "TRIGGERED"
        actual = a["actualOrderId"]
        assert actual
        assert actual != stop["id"]
        child = order(x, orderId=actual)
        assert (child["status"], child["type"], child["executedQty"]) == (
            "PARTIALLY_FILLED", "MARKET", "5000")
        assert child["clientOrderId"] != "qt-stop"  # the venue names it, not us
        assert child["reduceOnly"] is True
        assert x.fetch_open_orders(CCXT_SYM, None, None, {"trigger": True}) == []
        assert [o["id"] for o in x.fetch_open_orders(CCXT_SYM)] == [actual]
        with pytest.raises(ccxt.ExchangeError, match="-2011"):  # the algo order is done
            x.cancel_order(stop["id"], CCXT_SYM, {"trigger": True})

        st.advance()  # bar 5: the rest at market, at the open 0.97 (0.95 is not touched)
        a = algo(x, stop["id"])
        assert (a["algoStatus"], a["actualOrderId"]) == ("FINISHED", actual)
        child = order(x, orderId=actual)
        assert (child["status"], child["executedQty"]) == ("FILLED", "10000")
        assert float(child["avgPrice"]) == pytest.approx(0.96)
        trades = x.fetch_my_trades(CCXT_SYM)[1:]
        assert [(t["order"], t["price"], t["amount"]) for t in trades] == [
            (actual, 0.95, 5000), (actual, 0.97, 5000)]
        assert x.fetch_positions([CCXT_SYM]) == []
    finally:
        srv.stop()


# --- venue-initiated orders ------------------------------------------------------------------

def test_liquidation_at_the_exact_isolated_price_in_several_trades() -> None:
    rows = [FLAT] * 3 + [FLAT, (1.0, 1.0, 0.85, 0.88, 1e6)] + [(0.88,) * 4 + (1e6,)] * 5
    srv = lockstep(rows)
    st = srv.state
    x = ccxt_for(srv)
    try:
        x.set_leverage(10, CCXT_SYM)
        x.create_order(CCXT_SYM, "market", "buy", 10_000)
        st.advance()
        liq = 1.0 * (1 - 1 / 10) / (1 - MMR)  # Binance's isolated formula: 0.90452...
        [pos] = x.fetch_positions([CCXT_SYM])
        assert float(pos["info"]["liquidationPrice"]) == pytest.approx(liq, abs=1e-8)
        assert pos["liquidationPrice"] == pytest.approx(liq, abs=1e-8)
        guard = x.create_order(CCXT_SYM, "STOP_MARKET", "sell", 10_000, None,
                               {"triggerPrice": 0.80, "reduceOnly": True})
        wallet = st.core.wallet
        st.advance()  # bar 4 falls to 0.85 through the liquidation price
        trades = x.fetch_my_trades(CCXT_SYM)[1:]
        assert len(trades) == LIQUIDATION_TRADES == 3
        assert {t["order"] for t in trades} == {trades[0]["order"]}
        assert [t["amount"] for t in trades] == [3333.3, 3333.3, 3333.4]
        assert all(t["price"] == pytest.approx(liq, abs=1e-8) for t in trades)
        assert all(t["fee"]["cost"] == pytest.approx(t["amount"] * liq * 0.0125, abs=1e-8)
                   for t in trades)
        liquidation = order(x, orderId=trades[0]["order"])
        assert liquidation["clientOrderId"].startswith("autoclose-")
        assert (liquidation["status"], liquidation["executedQty"]) == ("FILLED", "10000")
        assert x.fetch_positions([CCXT_SYM]) == []
        assert algo(x, guard["id"])["algoStatus"] == "EXPIRED"  # nothing left to protect
        assert st.core.wallet == pytest.approx(
            wallet + 10_000 * (liq - 1.0) - 10_000 * liq * 0.0125, abs=1e-6)
    finally:
        srv.stop()


def test_auto_deleveraging_closes_part_then_all_of_the_position() -> None:
    srv = lockstep([FLAT] * 10)
    st = srv.state
    x = ccxt_for(srv)
    http = httpx.Client(base_url=srv.url)
    try:
        x.create_order(CCXT_SYM, "market", "buy", 10_000)
        st.advance()
        guard = x.create_order(CCXT_SYM, "STOP_MARKET", "sell", 10_000, None,
                               {"triggerPrice": 0.9, "reduceOnly": True})
        r = http.post("/sim/adl", params={"symbol": SYM, "fraction": 0.5}).json()
        assert r["clientOrderId"].startswith("adl_autoclose")
        assert (r["side"], r["executedQty"]) == ("SELL", 5000)
        [pos] = x.fetch_positions([CCXT_SYM])
        assert pos["contracts"] == 5000
        assert algo(x, guard["id"])["algoStatus"] == "NEW"  # still a position to protect
        adl = order(x, orderId=r["orderId"])
        assert (adl["clientOrderId"], adl["status"]) == (r["clientOrderId"], "FILLED")
        everything = http.post("/sim/adl", params={"symbol": SYM, "fraction": 1.0}).json()
        assert everything["executedQty"] == 5000
        trades = x.fetch_my_trades(CCXT_SYM)
        assert [(t["order"], t["side"], t["amount"]) for t in trades[1:]] == [
            (str(r["orderId"]), "sell", 5000), (str(everything["orderId"]), "sell", 5000)]
        assert x.fetch_positions([CCXT_SYM]) == []
        assert algo(x, guard["id"])["algoStatus"] == "EXPIRED"
        assert http.post("/sim/adl", params={"symbol": SYM}).json()["orderId"] is None
    finally:
        http.close()
        srv.stop()


# --- the clock -------------------------------------------------------------------------------

def test_an_order_arriving_inside_a_bar_fills_from_its_arrival_not_the_bars_open() -> None:
    shape = (1.0, 1.10, 0.90, 1.0, 1e6)  # flat account: 1.0 → 0.90 → 1.10 → 1.0
    srv = start([bars([FLAT] * 3 + [shape] * 200)], bar_seconds=3.0, start_bar=2,
                exchange=EXACT)
    st = srv.state
    x = ccxt_for(srv)
    try:
        for _attempt in range(5):  # a slow machine may miss the window: take the next bar
            wait_for(lambda: 0.1 <= bar_fraction(st)[1] <= 0.25, 10, "early in a bar")
            buy = x.create_order(CCXT_SYM, "market", "buy", 100)
            arrived = int(buy["info"]["time"])
            i = (arrived - T0) // H30
            f = (arrived - T0 - i * H30) / H30
            if 0 < f < 0.3 and bar_fraction(st)[0] == i:
                break
            x.cancel_order(buy["id"], CCXT_SYM)  # still open: it fills when its bar closes
        else:
            pytest.fail("never placed inside the window")
        wait_for(lambda: bar_fraction(st)[0] > i, 10, "the bar to close")
        [trade] = x.fetch_my_trades(CCXT_SYM)
        expected = path_price(*shape[:4], f, True)
        assert trade["price"] == pytest.approx(expected, abs=1e-8)
        assert trade["price"] < 0.99  # the open was 1.0
        assert trade["timestamp"] >= arrived  # never before the order
    finally:
        srv.stop()


def test_klines_serve_closed_bars_up_to_the_sim_clock(server: SimServer) -> None:
    st = server.state
    with httpx.Client(base_url=server.url) as c:
        rows = c.get("/fapi/v1/klines", params={"symbol": SYM, "interval": "30m",
                                                "limit": 1000}).json()
        assert len(rows) == st.config.start_bar + 1
        last = rows[-1][0]
        assert rows[-1][6] + 1 <= st.sim_now()  # closed
        st.advance(3)
        more = c.get("/fapi/v1/klines", params={"symbol": SYM, "interval": "30m",
                                                "startTime": last + 1}).json()
        assert [r[0] for r in more] == [last + i * H30 for i in (1, 2, 3)]
        r = c.get("/fapi/v1/klines", params={"symbol": SYM, "interval": "5m"})
        assert r.json()["code"] == -1120


def test_on_the_wall_clock_the_last_kline_is_the_open_one_as_on_binance() -> None:
    """1m bars aligned to the wall clock. The last kline is the open one: the path so far,
    closeTime in the future; once its minute is over the same open time comes back closed,
    with the bar's full values, and a new open kline follows it."""
    series = synthetic_series(3000, "SYNUSDT", "1m", seed=3)
    srv = start([series], wall_clock=True, start_bar=1000)
    st = srv.state
    try:
        with httpx.Client(base_url=srv.url) as c:

            def klines() -> list[list[Any]]:
                rows: list[list[Any]] = c.get("/fapi/v1/klines", params={
                    "symbol": "SYNUSDT", "interval": "1m", "limit": 5}).json()
                return rows

            before = c.get("/fapi/v1/time").json()["serverTime"]
            rows = klines()
            after = c.get("/fapi/v1/time").json()["serverTime"]
            live, closed = rows[-1], rows[-2]
            assert live[0] <= after
            assert live[6] + 1 > before  # it closes in the future
            assert live[0] % 60_000 == 0  # on the wall clock's minute grid
            assert closed[6] < after  # everything before it has closed
            shifted = st.series["SYNUSDT"]
            i = int(np.searchsorted(shifted.ts, live[0]))
            assert float(closed[5]) == pytest.approx(float(shifted.volume[i - 1]), abs=1e-8)
            assert 0 <= float(live[5]) < float(shifted.volume[i])  # volume so far
            assert float(live[1]) == pytest.approx(float(shifted.open[i]), abs=1e-8)
            assert float(live[2]) <= float(shifted.high[i]) + 1e-8
            assert float(live[3]) >= float(shifted.low[i]) - 1e-8
            time.sleep(0.5)
            assert float(klines()[-1][5]) >= float(live[5])  # it is still filling in
            # the minute ends: the same kline comes back closed, complete (polled gently: a
            # poll every 20 ms would take the venue's 2,400 weight a minute, and get a 429)
            wait_for(lambda: klines()[-1][0] > live[0], 65, "the minute to end", every_s=0.25)
            rows = klines()
            done = next(r for r in rows if r[0] == live[0])
            assert rows[-1][0] == live[0] + 60_000
            assert rows.index(done) == len(rows) - 2
            assert [float(v) for v in done[1:6]] == pytest.approx(
                [float(shifted.open[i]), float(shifted.high[i]), float(shifted.low[i]),
                 float(shifted.close[i]), float(shifted.volume[i])], abs=1e-8)
        with pytest.raises(ValueError, match="wall clock"):
            st.advance()
    finally:
        srv.stop()


# --- faults and the venue's records ----------------------------------------------------------

def test_a_408_with_an_empty_body_after_the_order_was_placed() -> None:
    srv = lockstep([FLAT] * 10)
    st = srv.state
    http = Signed(srv)
    x = ccxt_for(srv)
    try:
        st.force_fault("timeout_408", "/fapi/v1/order", "POST")
        r = http("POST", "/fapi/v1/order", symbol=SYM, side="BUY", type="MARKET",
                 quantity="100", newClientOrderId="qt-408")
        assert (r.status_code, r.content) == (408, b"")
        assert order(x, origClientOrderId="qt-408")["status"] == "NEW"  # it was placed
        st.force_fault("timeout_408", "/fapi/v1/order", "POST")
        with pytest.raises(ccxt.RequestTimeout):
            x.create_order(CCXT_SYM, "market", "buy", 100, None, {"clientOrderId": "qt-409"})
        st.advance()
        # both filled: a client that took the 408 for "not placed" and sent again would now
        # hold a second position
        assert order(x, origClientOrderId="qt-409")["status"] == "FILLED"
        assert st.faults_injected["timeout_408"] == 2
    finally:
        srv.stop()


def test_records_hold_everything_a_client_is_checked_against() -> None:
    rows = [FLAT] * 3 + [FLAT] * 14 + [(1.0, 1.01, 0.90, 0.93, 1e6)] + [(0.93,) * 4 + (1e6,)] * 4
    srv = lockstep(rows)
    st = srv.state
    x = ccxt_for(srv)
    http = httpx.Client(base_url=srv.url)
    try:
        buy = x.create_order(CCXT_SYM, "market", "buy", 10_000, None, {"clientOrderId": "qt-e"})
        st.advance()  # bar 3: filled
        stop = x.create_order(CCXT_SYM, "STOP_MARKET", "sell", 5_000, None,
                              {"triggerPrice": 0.95, "reduceOnly": True,
                               "clientOrderId": "qt-s"})
        st.advance(13)  # through bar 16: funding at T0 + 8h on the open long
        http.post("/sim/adl", params={"symbol": SYM, "fraction": 0.2})
        st.advance()  # bar 17: the stop triggers at 0.95
        rec = http.get("/sim/records").json()
        assert rec == st.records().to_json()
        by_cid = {o["clientOrderId"]: o for o in rec["orders"]}
        assert (by_cid["qt-e"]["status"], by_cid["qt-e"]["executedQty"]) == ("FILLED", 10_000)
        assert (by_cid["qt-s"]["algo"], by_cid["qt-s"]["status"],
                by_cid["qt-s"]["executedQty"]) == (True, "FINISHED", 5_000)
        child = next(o for o in rec["orders"] if o["orderId"] == by_cid["qt-s"]["actualOrderId"])
        assert (child["source"], child["algoId"], child["status"]) == (
            "TRIGGER", int(stop["id"]), "FILLED")
        assert [o["source"] for o in rec["orders"]].count("ADL") == 1
        # trades: what userTrades says, plus the client id of each trade's order
        wire = x.fetch_my_trades(CCXT_SYM)
        assert [(str(t["id"]), str(t["orderId"]), t["qty"]) for t in rec["trades"]] == [
            (w["id"], w["order"], w["amount"]) for w in wire]
        assert [t["realizedPnl"] for t in rec["trades"]] == pytest.approx(
            [float(w["info"]["realizedPnl"]) for w in wire], abs=1e-8)
        assert rec["trades"][2]["realizedPnl"] == pytest.approx(5_000 * (0.95 - 1.0))
        assert [t["clientOrderId"] for t in rec["trades"]] == [
            "qt-e", by_cid_adl(rec), child["clientOrderId"]]
        assert rec["trades"][0]["orderId"] == int(buy["id"])
        # income: funding with its tranId, as /fapi/v1/income has it
        funding = [r for r in rec["income"] if r["incomeType"] == "FUNDING_FEE"]
        assert [r["time"] for r in funding] == [T0 + 8 * 3_600_000]
        assert funding[0]["income"] == pytest.approx(-10_000 * 1.0 * 0.0001)
        [paid] = x.fetch_funding_history(CCXT_SYM)
        assert paid["id"] == str(funding[0]["tranId"])
        # the wallet is the initial balance plus every income row
        assert rec["wallet"] == pytest.approx(
            rec["initial_balance"] + sum(r["income"] for r in rec["income"]), abs=1e-9)
        [pos] = rec["positions"]
        assert pos["positionAmt"] == pytest.approx(10_000 - 2_000 - 5_000)
    finally:
        http.close()
        srv.stop()


def test_the_venues_books_add_up_over_a_random_session() -> None:
    """Thousands of random orders at 20x on real XRP (market, limit, algo stops, cancels,
    client ids reused, ADL; liquidations follow): every order's executedQty is the sum of its
    trades, trades are never older than their order, positions are the sum of trades, realized
    PnL is the core's, the wallet is the initial balance plus all income, and the open orders
    are the core's."""
    st = SimState(SimServerConfig(series=load_series(["sample:XRP"]), bar_seconds=0,
                                  start_bar=600))
    st.set_leverage(SYM, 20)
    rng = random.Random(1)
    refused = 0
    for _ in range(1500):
        px = st.price_now(SYM)
        assert px is not None
        side = rng.choice([Side.BUY, Side.SELL])
        qty = round(rng.uniform(50, 3000), 1)
        r = rng.random()
        try:
            if r < 0.3:
                st.place(SYM, side, OrderType.MARKET, qty)
            elif r < 0.45:
                trigger = round(px * (0.97 if side is Side.SELL else 1.03), 4)
                st.place(SYM, side, OrderType.STOP_MARKET, qty, stop=trigger, algo=True,
                         reduce_only=rng.random() < 0.5)
            elif r < 0.6:
                limit = round(px * (0.98 if side is Side.BUY else 1.02), 4)
                st.place(SYM, side, OrderType.LIMIT, qty, price=limit,
                         client_id=f"qt-{rng.randint(0, 20)}")
            elif r < 0.65:
                is_algo = rng.random() < 0.5
                if open_ := st.open_orders(SYM, algo=is_algo):
                    st.cancel(SYM, open_[0].order_id, algo=is_algo)
            elif r < 0.67:
                st.adl(SYM, rng.choice([0.3, 1.0]))
        except ApiError:
            refused += 1
        st.advance()
    rec = st.records()
    sources = Counter(o.source for o in rec.orders)
    assert min(sources.values()) > 10, sources  # every kind of order happened, liquidations too
    assert refused > 0
    executed: dict[int, float] = {}
    for t in rec.trades:
        executed[t.order_id] = executed.get(t.order_id, 0.0) + t.qty
    for o in rec.orders:
        done = executed.get(o.actual if o.algo and o.actual is not None else o.order_id, 0.0)
        assert o.executed == pytest.approx(done, abs=1e-6), o
    # one record per execution of the matching core, in its order
    assert [(t.side, t.qty, t.price, t.commission) for t in rec.trades] == [
        (t.side, t.quantity, t.price, t.fee) for t in st.core.trades]
    regular = {o.order_id: o for o in rec.orders if not o.algo}
    assert all(t.time >= regular[t.order_id].time for t in rec.trades)
    assert [t.time for t in rec.trades] == sorted(t.time for t in rec.trades)
    pos = st.core.position(SYM)
    assert sum(t.side.sign * t.qty for t in rec.trades) == pytest.approx(pos.qty, abs=1e-6)
    assert sum(t.realized_pnl for t in rec.trades) == pytest.approx(pos.realized_pnl, abs=1e-9)
    assert rec.wallet == pytest.approx(
        rec.initial_balance + sum(r.income for r in rec.income), abs=1e-8)
    assert {o.core_id for o in rec.orders if o.is_open or o.status == "TRIGGERED"} == {
        u.client_order_id for u in st.core.open_orders(SYM)}


def by_cid_adl(rec: dict[str, Any]) -> str:
    [adl] = [str(o["clientOrderId"]) for o in rec["orders"] if o["source"] == "ADL"]
    return adl


# --- the command -----------------------------------------------------------------------------

def test_exchange_sim_command_serves_ccxt_paths() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from quantum_trader.cli.exchange import exchange_app; "
         "exchange_app(prog_name='exchange-sim')", "--port", str(port), "--bar-seconds", "0.2",
         "--data", "sample:XRP"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/fapi/v1/time", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                assert proc.poll() is None
                time.sleep(0.1)
        assert r.status_code == 200
        assert "serverTime" in r.json()
        info = httpx.get(f"http://127.0.0.1:{port}/fapi/v1/exchangeInfo").json()
        assert [s["symbol"] for s in info["symbols"]] == [SYM]
        t1 = httpx.get(f"http://127.0.0.1:{port}/sim/state").json()["sim_time"]
        time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/sim/state").json()["sim_time"] > t1
        assert httpx.get(f"http://127.0.0.1:{port}/sim/records").json()["orders"] == []
    finally:
        proc.terminate()
        proc.wait(timeout=10)
