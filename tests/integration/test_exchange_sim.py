"""The real, unmodified ccxt client against the Binance-compatible simulator on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlencode

import httpx
import pytest
from pydantic import SecretStr

from quantum_trader.domain.enums import OrderStatus, OrderType, Side
from quantum_trader.domain.orders import client_order_id_for
from quantum_trader.exchange.ccxt_binance import BinanceSettings, CcxtBinanceExchange
from quantum_trader.exchange.errors import OrderRefused
from quantum_trader.exchange.protocol import OrderRequest
from quantum_trader.exchange.sim_server import SimServer, SimServerConfig, SimState, load_series

SYM = "XRPUSDT"


def make_server(**kw: object) -> SimServer:
    cfg = SimServerConfig(series=load_series(["sample:XRP"]), **kw)  # type: ignore[arg-type]
    return SimServer(SimState(cfg)).start()


@pytest.fixture
def server() -> Iterator[SimServer]:
    srv = make_server(bar_seconds=0)
    yield srv
    srv.stop()


def client_for(srv: SimServer, **kw: object) -> CcxtBinanceExchange:
    st = srv.state.config
    return CcxtBinanceExchange(BinanceSettings(
        mode="live", base_url=srv.url, api_key=SecretStr(st.api_key),
        api_secret=SecretStr(st.api_secret), leverage={SYM: 5}, **kw))  # type: ignore[arg-type]


@pytest.fixture
async def venue(server: SimServer) -> AsyncIterator[CcxtBinanceExchange]:
    v = client_for(server)
    await v.connect()
    yield v
    await v.close()


def req(n: str, side: Side, qty: float, kind: OrderType = OrderType.MARKET,
        price: float | None = None, stop: float | None = None,
        reduce_only: bool = False) -> OrderRequest:
    return OrderRequest(client_order_id_for(n), SYM, side, kind, qty, reduce_only, price, stop)


async def test_order_cycle_on_the_accelerated_clock() -> None:
    srv = make_server(bar_seconds=0.05)
    v = client_for(srv)
    try:
        await v.connect()
        inst = v.instruments[SYM]
        assert (inst.tick_size, inst.step_size, inst.min_notional) == (0.0001, 0.1, 5.0)
        assert srv.state.core.account.leverage[SYM] == 5
        start_wallet = await v.balance()
        mark = srv.state.core.last_price(SYM)
        assert mark is not None
        buy = await v.submit(req("buy", Side.BUY, 200))
        assert buy.status is OrderStatus.ACCEPTED
        assert buy.exchange_order_id
        round(mark * 3, 4)
        limit = await v.submit(req("far", Side.BUY, 200, OrderType.LIMIT, price=round(mark / 3, 4)))
        assert limit.status is OrderStatus.ACCEPTED
        # the accelerated clock fills the market order on the next bar
        for _ in range(100):
            q = await v.query(SYM, buy.client_order_id)
            if q is not None and q.status is OrderStatus.FILLED:
                break
            await asyncio.sleep(0.05)
        assert q is not None
        assert q.status is OrderStatus.FILLED
        assert q.cum_qty == 200
        stop = await v.submit(req("sl", Side.SELL, 200, OrderType.STOP_MARKET,
                                  stop=round(mark * 0.3, 4), reduce_only=True))
        assert stop.status is OrderStatus.ACCEPTED
        opened = {r.client_order_id for r in await v.open_orders(SYM)}
        assert opened == {limit.client_order_id, stop.client_order_id}
        [pos] = await v.positions()
        assert (pos.symbol, pos.qty, pos.leverage) == (SYM, 200.0, 5.0)
        assert pos.avg_entry == pytest.approx(q.avg_price)
        # cancel both protective orders, close the position
        assert (await v.cancel(SYM, limit.client_order_id)).status is OrderStatus.CANCELED
        assert (await v.cancel(SYM, stop.client_order_id)).status is OrderStatus.CANCELED
        close = await v.submit(req("close", Side.SELL, 200, reduce_only=True))
        for _ in range(100):
            if not await v.positions():
                break
            await asyncio.sleep(0.05)
        assert await v.positions() == []
        assert await v.open_orders() == []
        fills = await v.fills(SYM)
        assert [f.client_order_id for f in fills] == [buy.client_order_id,
                                                        close.client_order_id]
        assert sum(f.side.sign * f.fill_qty for f in fills) == 0
        # wallet = start + realized PnL - fees - funding, to the cent
        pnl = sum(-f.side.sign * f.fill_qty * f.fill_price for f in fills)
        fees = sum(f.fee for f in fills)
        funding = sum(p.amount for p in await v.funding(SYM))
        assert await v.balance() == pytest.approx(start_wallet + pnl - fees - funding, abs=1e-6)
    finally:
        await v.close()
        srv.stop()


async def test_bad_input_is_refused_before_reaching_the_exchange(
        server: SimServer, venue: CcxtBinanceExchange) -> None:
    seen = sum(server.state.requests.values())
    cases = {
        "unknown symbol 'DOGEUSDX'": OrderRequest("a", "DOGEUSDX", Side.BUY, OrderType.MARKET,
                                                  100),
        "below the minimum notional": req("b", Side.BUY, 1.0),
        "not a multiple of the step size 0.1": req("c", Side.BUY, 100.05),
        "not a multiple of the tick size": req("d", Side.BUY, 100, OrderType.LIMIT,
                                               price=0.123456),
        "quantity must be positive": req("e", Side.BUY, 0),
    }
    for reason, bad in cases.items():
        with pytest.raises(OrderRefused, match=reason):
            await venue.submit(bad)
    assert sum(server.state.requests.values()) == seen  # nothing was sent
    assert server.state.order_count() == 0


def signed(srv: SimServer, params: dict[str, object], secret: str | None = None) -> str:
    q = urlencode(params)
    sig = hmac.new((secret or srv.state.config.api_secret).encode(), q.encode(),
                   hashlib.sha256).hexdigest()
    return f"{q}&signature={sig}"


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
        r = c.get(f"/fapi/v2/balance?{signed(server, {'timestamp': now})}",
                  headers={"X-MBX-APIKEY": "nope"})
        assert r.json()["code"] == -2015
        r = c.get(f"/fapi/v2/balance?{signed(server, {'timestamp': now})}", headers=key)
        assert r.status_code == 200
        assert int(r.headers["x-mbx-used-weight-1m"]) >= 5
        body = signed(server, {"symbol": SYM, "side": "BUY", "timestamp": now})
        r = c.post("/fapi/v1/order", content=body, headers=key | {
            "Content-Type": "application/x-www-form-urlencoded"})
        assert r.json()["code"] == -1102
        order = {"symbol": SYM, "side": "BUY", "type": "MARKET", "quantity": "100",
                 "newClientOrderId": "dup1", "timestamp": now}
        hdr = key | {"Content-Type": "application/x-www-form-urlencoded"}
        assert c.post("/fapi/v1/order", content=signed(server, order), headers=hdr).is_success
        r = c.post("/fapi/v1/order", content=signed(server, order), headers=hdr)
        assert r.json()["code"] == -4116
        huge = order | {"quantity": "10000000", "newClientOrderId": "big"}
        r = c.post("/fapi/v1/order", content=signed(server, huge), headers=hdr)
        assert r.json()["code"] == -2019
        r = c.delete(f"/fapi/v1/order?{signed(server, {'symbol': SYM, 'orderId': 1, 'timestamp': now})}",  # noqa: E501
                     headers=key)
        assert r.json()["code"] == -2011
        stop = order | {"type": "STOP_MARKET", "stopPrice": "0.1", "newClientOrderId": "s"}
        r = c.post("/fapi/v1/order", content=signed(server, stop), headers=hdr)
        assert r.json()["code"] == -4120  # conditional orders live on the algo endpoints
        assert server.state.order_count() == 1


def test_429_then_418_for_a_client_that_keeps_going() -> None:
    srv = make_server(bar_seconds=0, weight_limit=20, weight_window_s=5, ban_seconds=1.0)
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
        assert [r[0] for r in more] == [last + i * 1_800_000 for i in (1, 2, 3)]
        r = c.get("/fapi/v1/klines", params={"symbol": SYM, "interval": "5m"})
        assert r.json()["code"] == -1120


async def test_the_client_budgets_for_the_limit_the_venue_advertises() -> None:
    srv = make_server(bar_seconds=0, weight_limit=6_000)
    v = client_for(srv)  # configured for Binance's usual 2,400
    try:
        assert v.limiter.limit == 2_400
        await v.connect()
        assert v.limiter.limit == 6_000  # from exchangeInfo's rateLimits
        assert v.limiter.budget == 5_400
    finally:
        await v.close()
        srv.stop()


async def test_the_weighted_limiter_keeps_a_busy_client_under_the_limit() -> None:
    srv = make_server(bar_seconds=0, weight_limit=100, weight_window_s=1.0)
    # Requests acquired at the end of one window can reach the server in the next; with 200 in
    # flight on a loaded machine that spill-over needs more room than Binance's 10% default.
    v = client_for(srv, weight_limit=100, weight_window_s=1.0, headroom=0.6)
    try:
        await v.connect()
        t0 = time.monotonic()
        reports = await asyncio.gather(*(v.submit(req(f"burst-{i}", Side.BUY, 100))
                                         for i in range(200)))
        elapsed = time.monotonic() - t0
        assert all(r.status is OrderStatus.ACCEPTED for r in reports)
        assert srv.state.status_counts[429] == 0
        assert srv.state.status_counts[418] == 0
        assert elapsed > 1.0  # it had to wait for a new window at least once
        assert v.limiter.waited_s > 0
    finally:
        await v.close()
        srv.stop()


def test_exchange_sim_command_serves_ccxt_paths() -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from quantum_trader.cli_exchange import exchange_app; "
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
    finally:
        proc.terminate()
        proc.wait(timeout=10)
