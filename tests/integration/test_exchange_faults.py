"""Exactly-once order placement through real ccxt against a simulator that misbehaves."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

import httpx
import pytest
from pydantic import SecretStr

from quantum_trader.domain.enums import OrderStatus, OrderType, Side, TradingState
from quantum_trader.domain.orders import client_order_id_for
from quantum_trader.exchange.ccxt_binance import BinanceSettings, CcxtBinanceExchange
from quantum_trader.exchange.errors import OrderRefused
from quantum_trader.exchange.protocol import ExecutionReport, OrderRequest
from quantum_trader.exchange.reliable import (
    CircuitBreaker,
    KillSwitch,
    OpenOrderRef,
    PlacementUnknown,
    Reconciler,
    ReliablePlacer,
    call_with_retries,
)
from quantum_trader.venue_sim import (
    FaultConfig,
    SimServer,
    SimServerConfig,
    SimState,
    load_series,
)

SYM = "XRPUSDT"


def start(**kw: object) -> SimServer:
    cfg = SimServerConfig(series=load_series(["sample:XRP"]), bar_seconds=0,
                          **kw)  # type: ignore[arg-type]
    return SimServer(SimState(cfg)).start()


def venue_for(srv: SimServer, timeout_ms: int = 10_000) -> CcxtBinanceExchange:
    c = srv.state.config
    return CcxtBinanceExchange(BinanceSettings(
        mode="live", base_url=srv.url, api_key=SecretStr(c.api_key),
        api_secret=SecretStr(c.api_secret), timeout_ms=timeout_ms,
        weight_limit=c.weight_limit, weight_window_s=c.weight_window_s))


class Store:
    """The persisted side: what the execution service would write before sending."""

    def __init__(self) -> None:
        self.orders: dict[str, OrderRequest] = {}

    async def save(self, req: OrderRequest) -> None:
        self.orders[req.client_order_id] = req


def positions_from(fills: list[ExecutionReport]) -> dict[str, float]:
    pos: dict[str, float] = defaultdict(float)
    for f in fills:
        pos[f.symbol] += f.side.sign * f.fill_qty
    return {s: round(q, 6) for s, q in pos.items() if abs(q) > 1e-9}


async def test_500_intents_with_20_percent_faults_place_exactly_one_order_each() -> None:
    faults = FaultConfig(probabilities={"timeout": 0.04, "error_5xx": 0.04, "rate_limit": 0.04,
                                        "clock_skew": 0.04, "drop": 0.04},
                         timeout_s=1.2, retry_after_s=0.05, seed=7)
    mix = dict(faults.probabilities)
    srv = start(faults=faults)
    st = srv.state
    st.config.faults.probabilities = {}  # connect cleanly, then turn the faults on
    venue = venue_for(srv, timeout_ms=1000)
    store = Store()
    placer = ReliablePlacer(venue, store.save, CircuitBreaker(reduce_after=12, halt_after=20),
                            backoff_s=0.02, max_backoff_s=0.2)
    rng = random.Random(1)
    try:
        await venue.connect()
        await venue.set_leverage(SYM, 5)
        st.config.faults.probabilities = mix
        t0 = time.monotonic()
        mark = st.core.last_price(SYM)
        assert mark is not None
        intents = []
        for i in range(500):
            side = rng.choice((Side.BUY, Side.SELL))
            qty = float(rng.randrange(500, 1200)) / 10
            if rng.random() < 0.2:  # a resting limit far from the market
                px = round(mark * (0.5 if side is Side.BUY else 1.5), 4)
                intents.append(OrderRequest(client_order_id_for(f"intent-{i}"), SYM, side,
                                            OrderType.LIMIT, qty, price=px))
            else:
                intents.append(OrderRequest(client_order_id_for(f"intent-{i}"), SYM, side,
                                            OrderType.MARKET, qty))
        sem = asyncio.Semaphore(25)
        results: dict[str, ExecutionReport] = {}

        async def run(req: OrderRequest) -> None:
            async with sem:
                results[req.client_order_id] = await placer.place(req)

        for chunk in range(0, 500, 50):
            await asyncio.gather(*(run(r) for r in intents[chunk:chunk + 50]))
            st.advance(1)  # market orders fill on the next bar
        st.advance(2)
        print(f"500 intents in {time.monotonic() - t0:.1f}s; stats {placer.stats}; "
              f"faults {dict(st.faults_injected)}; requests {sum(st.requests.values())}")
        injected = sum(st.faults_injected.values())
        total = sum(st.requests.values())
        assert injected / total > 0.15, (injected, total)
        # exactly one exchange order per intent
        assert len(results) == 500
        assert all(r.status is not OrderStatus.REJECTED for r in results.values())
        assert all(st.order_count(r.client_order_id) == 1 for r in intents)
        assert st.order_count() == 500
        assert placer.stats.found_after_uncertainty > 0
        # our records (fills, through the faults) match the exchange's positions
        fills = await call_with_retries(lambda: venue.fills(SYM), attempts=30)
        assert len({f.trade_id for f in fills}) == len(fills)
        assert {f.client_order_id for f in fills} <= set(store.orders)
        ours = positions_from(fills)
        theirs = {p.symbol: p.qty for p in
                  await call_with_retries(venue.positions, attempts=30)}
        assert ours == pytest.approx(theirs)
        recon = await Reconciler(venue, qty_tolerance=1e-6).run_once(
            [OpenOrderRef(SYM, r.client_order_id) for r in intents
             if r.order_type is OrderType.LIMIT], ours)
        assert recon.adopted == []
        assert recon.position_mismatches == []
        assert all(found is not None for _ref, found in recon.resolved)
        assert st.status_counts[429] > 0
        assert st.status_counts[503] > 0
    finally:
        await venue.close()
        srv.stop()


async def test_crash_between_send_and_ack_recovers_by_client_id() -> None:
    srv = start(faults=FaultConfig(timeout_s=1.0))
    st = srv.state
    store = Store()
    v1 = venue_for(srv)
    await v1.connect()
    req = OrderRequest(client_order_id_for("intent-crash"), SYM, Side.BUY, OrderType.MARKET,
                       100.0)
    st.force_fault("timeout", "/fapi/v1/order")  # the exchange accepts, the ack never comes
    task = asyncio.create_task(ReliablePlacer(v1, store.save).place(req))
    for _ in range(200):
        if st.order_count(req.client_order_id):
            break
        await asyncio.sleep(0.01)
    task.cancel()  # kill -9: the placer and its memory are gone
    with pytest.raises(asyncio.CancelledError):
        await task
    await v1.close()
    assert req.client_order_id in store.orders  # persisted before the send

    v2 = venue_for(srv)
    await v2.connect()
    try:
        placer = ReliablePlacer(v2, store.save)
        report = await placer.recover(store.orders[req.client_order_id])
        assert report.status is OrderStatus.ACCEPTED
        assert report.client_order_id == req.client_order_id
        assert placer.stats.found_after_uncertainty == 1
        assert placer.stats.attempts == 0
        assert st.order_count() == 1
        assert st.order_requests() == 1
        # the reconciler sees it as ours and open: nothing to adopt or resolve
        recon = await Reconciler(v2).run_once([OpenOrderRef(SYM, req.client_order_id)], {})
        assert recon.clean
    finally:
        await v2.close()
        srv.stop()


async def test_an_order_lost_in_flight_is_resolved_and_external_orders_adopted() -> None:
    srv = start()
    st = srv.state
    v = venue_for(srv)
    await v.connect()
    try:
        mark = st.core.last_price(SYM)
        assert mark is not None
        # placed by someone else (the web UI): unknown to our store
        ext = await v.submit(OrderRequest("web_manual_1", SYM, Side.BUY, OrderType.LIMIT, 100.0,
                                          price=round(mark / 2, 4)))
        lost = OpenOrderRef(SYM, client_order_id_for("never-arrived"))
        recon = await Reconciler(v).run_once([lost], {SYM: 50.0})
        assert [r.client_order_id for r in recon.adopted] == [ext.client_order_id]
        assert recon.resolved == [(lost, None)]
        assert recon.position_mismatches == [(SYM, 50.0, 0.0)]
    finally:
        await v.close()
        srv.stop()


async def test_418_ban_halts_order_flow_and_recovers_after_the_window() -> None:
    srv = start(weight_limit=200, weight_window_s=10.0, ban_seconds=1.5)
    st = srv.state
    states: list[TradingState] = []
    v = venue_for(srv)
    await v.connect()
    breaker = CircuitBreaker(cooldown_s=0.0, on_state=lambda s, _why: states.append(s))
    placer = ReliablePlacer(v, Store().save, breaker)
    try:
        # another process on the same IP ignores a 429 and gets the IP banned
        async with httpx.AsyncClient(base_url=srv.url) as c:
            for _ in range(1000):
                if (await c.get("/fapi/v1/time")).status_code == 418:
                    break
        assert st.status_counts[418] >= 1
        req = OrderRequest(client_order_id_for("intent-ban"), SYM, Side.BUY, OrderType.MARKET,
                           100.0)
        with pytest.raises(OrderRefused, match="HALTED"):
            await placer.place(req)
        assert states == [TradingState.HALTED]
        assert st.order_count() == 0
        # while halted, entries are refused without a request
        sent = v.requests_sent
        with pytest.raises(OrderRefused):
            await placer.place(req)
        assert v.requests_sent == sent
        # after the ban window a probe closes the breaker and orders flow again
        t0 = time.monotonic()
        while not await placer.probe():
            await asyncio.sleep(0.1)
            assert time.monotonic() - t0 < 10
        assert states == [TradingState.HALTED, TradingState.ACTIVE]
        report = await placer.place(req)
        assert report.status is OrderStatus.ACCEPTED
        assert st.order_count() == 1
    finally:
        await v.close()
        srv.stop()


async def test_kill_switch_cancels_everything_and_flattens() -> None:
    srv = start()
    st = srv.state
    v = venue_for(srv)
    await v.connect()
    states: list[TradingState] = []
    placer = ReliablePlacer(v, Store().save,
                            CircuitBreaker(on_state=lambda s, _w: states.append(s)))
    try:
        mark = st.core.last_price(SYM)
        assert mark is not None
        await placer.place(OrderRequest("qt-entry", SYM, Side.BUY, OrderType.MARKET, 200.0))
        st.advance(1)
        await placer.place(OrderRequest("qt-sl", SYM, Side.SELL, OrderType.STOP_MARKET, 200.0,
                                        True, stop_price=round(mark * 0.5, 4)))
        await placer.place(OrderRequest("qt-lim", SYM, Side.BUY, OrderType.LIMIT, 100.0,
                                        price=round(mark * 0.5, 4)))
        result = await KillSwitch(v, placer).trigger("operator", flatten=True, kill_id="k1")
        assert sorted(result.canceled) == ["qt-lim", "qt-sl"]
        assert [r.status for r in result.flatten_orders] == [OrderStatus.ACCEPTED]
        assert states == [TradingState.HALTED]
        with pytest.raises(OrderRefused):
            await placer.place(OrderRequest("qt-new", SYM, Side.BUY, OrderType.MARKET, 100.0))
        st.advance(1)
        assert await v.positions() == []
        assert await v.open_orders() == []
        # the same kill again (a retry) cannot close twice: same client id
        again = await KillSwitch(v, placer).trigger("operator", flatten=True, kill_id="k1")
        assert again.flatten_orders == []
        assert st.order_count() == 4
    finally:
        await v.close()
        srv.stop()


async def test_unknown_placement_when_the_venue_never_answers() -> None:
    srv = start(faults=FaultConfig(probabilities={"drop": 1.0}))
    st = srv.state
    st.config.faults.probabilities = {}
    v = venue_for(srv, timeout_ms=300)
    await v.connect()
    st.config.faults.probabilities = {"drop": 1.0}
    placer = ReliablePlacer(v, Store().save, CircuitBreaker(reduce_after=100, halt_after=200),
                            max_attempts=3, backoff_s=0.01)
    try:
        with pytest.raises(PlacementUnknown):
            await placer.place(OrderRequest("qt-x", SYM, Side.BUY, OrderType.MARKET, 100.0))
        assert st.order_count() == 1  # it did land; nothing was sent twice
    finally:
        await v.close()
        srv.stop()
