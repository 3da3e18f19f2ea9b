"""Exactly-once order placement through real ccxt against a simulator that misbehaves as
Binance can: client ids unique among open orders only, answers lost after the order was
processed, 5xx, 408 with an empty body, 429s, clock skew, dropped connections, IP bans."""

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
from quantum_trader.domain.venue import OrderRequest, OrderUpdate, VenueTrade
from quantum_trader.exchange.ccxt_binance import BinanceSettings, CcxtBinanceExchange
from quantum_trader.exchange.errors import OrderRefused
from quantum_trader.exchange.reliable import (
    CircuitBreaker,
    PlacementUnknown,
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

pytestmark = pytest.mark.integration
SYM = "XRPUSDT"
RECV_MS = 1_000


def start(**kw: object) -> SimServer:
    cfg = SimServerConfig(series=load_series(["sample:XRP"]), bar_seconds=0,
                          **kw)  # type: ignore[arg-type]
    return SimServer(SimState(cfg)).start()


def venue_for(srv: SimServer, timeout_ms: int = 10_000) -> CcxtBinanceExchange:
    c = srv.state.config
    return CcxtBinanceExchange(BinanceSettings(
        mode="live", base_url=srv.url, api_key=SecretStr(c.api_key),
        api_secret=SecretStr(c.api_secret), timeout_ms=timeout_ms, recv_window_ms=RECV_MS,
        weight_limit=c.weight_limit, weight_window_s=c.weight_window_s))


class Store:
    """The persisted side: what the execution service records before every send."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}

    async def save(self, req: OrderRequest, wall_ms: int) -> None:
        self.sent[req.client_order_id] = wall_ms


def placer_for(venue: CcxtBinanceExchange, breaker: CircuitBreaker | None = None,
               **kw: object) -> ReliablePlacer:
    return ReliablePlacer(venue, breaker, recv_window_ms=RECV_MS, settle_ms=200,
                          **kw)  # type: ignore[arg-type]


def positions_from(trades: list[VenueTrade]) -> dict[str, float]:
    pos: dict[str, float] = defaultdict(float)
    for t in trades:
        pos[t.symbol] += t.side.sign * t.quantity
    return {s: round(q, 6) for s, q in pos.items() if abs(q) > 1e-9}


@pytest.mark.timeout(600)
async def test_500_intents_with_20_percent_faults_place_exactly_one_order_each() -> None:
    faults = FaultConfig(probabilities={"timeout": 0.035, "error_5xx": 0.035,
                                        "rate_limit": 0.035, "clock_skew": 0.035,
                                        "drop": 0.03, "timeout_408": 0.03},
                         timeout_s=1.2, retry_after_s=0.05, seed=7)
    mix = dict(faults.probabilities)
    srv = start(faults=faults, weight_limit=24_000)
    st = srv.state
    st.config.faults.probabilities = {}  # connect cleanly, then turn the faults on
    venue = venue_for(srv, timeout_ms=1000)
    store = Store()
    placer = placer_for(venue, CircuitBreaker(reduce_after=12, halt_after=20),
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
        results: dict[str, OrderUpdate] = {}

        async def run(req: OrderRequest) -> None:
            async with sem:
                results[req.client_order_id] = await placer.place(req, store.save)

        for chunk in range(0, 500, 50):
            await asyncio.gather(*(run(r) for r in intents[chunk:chunk + 50]))
            st.advance(1)  # market orders fill on the next bar; their ids are free again
        st.advance(2)
        print(f"500 intents in {time.monotonic() - t0:.1f}s; stats {placer.stats}; "
              f"faults {dict(st.faults_injected)}; requests {sum(st.requests.values())}")
        injected = sum(st.faults_injected.values())
        total = sum(st.requests.values())
        assert injected / total > 0.15, (injected, total)
        # exactly one venue order per intent, though ids are unique among open orders only
        assert len(results) == 500
        assert all(r.status is not OrderStatus.REJECTED for r in results.values())
        assert all(st.order_count(r.client_order_id) == 1 for r in intents)
        assert st.order_count() == 500
        assert placer.stats.found_after_uncertainty > 0
        # the venue's trade list, read through the faults, matches its positions
        st.config.faults.probabilities = {}
        trades = await call_with_retries(lambda: venue.trades(SYM), attempts=30)
        assert len({t.trade_id for t in trades}) == len(trades)
        assert {t.client_order_id for t in trades} <= set(store.sent)
        ours = positions_from(trades)
        theirs = {p.symbol: p.qty for p in (await venue.account()).positions}
        assert ours == pytest.approx(theirs)
        open_ids = {u.client_order_id for u in await venue.open_orders()}
        assert open_ids == {r.client_order_id for r in intents
                            if r.order_type is OrderType.LIMIT}
        assert st.status_counts[429] > 0
        assert st.status_counts[503] > 0
        assert st.status_counts[408] > 0
    finally:
        await venue.close()
        srv.stop()


async def test_crash_between_send_and_ack_recovers_by_client_id() -> None:
    srv = start(faults=FaultConfig(timeout_s=3.0))
    st = srv.state
    store = Store()
    v1 = venue_for(srv)
    await v1.connect()
    req = OrderRequest(client_order_id_for("intent-crash"), SYM, Side.BUY, OrderType.MARKET,
                       100.0)
    st.force_fault("timeout", "/fapi/v1/order")  # the venue accepts, the ack never comes
    task = asyncio.create_task(placer_for(v1).place(req, store.save))
    for _ in range(200):
        if st.order_count(req.client_order_id):
            break
        await asyncio.sleep(0.01)
    task.cancel()  # kill -9: the placer and its memory are gone
    with pytest.raises(asyncio.CancelledError):
        await task
    await v1.close()
    assert req.client_order_id in store.sent  # on record before the send
    st.advance(1)  # it fills: on Binance its client id is free again from now on

    v2 = venue_for(srv)
    await v2.connect()
    try:
        placer = placer_for(v2)
        update = await placer.place(req, store.save,
                                    sent_before_ms=store.sent[req.client_order_id])
        assert update.status is OrderStatus.FILLED
        assert update.client_order_id == req.client_order_id
        assert placer.stats.found_after_uncertainty == 1
        assert placer.stats.attempts == 0
        assert st.order_count() == 1
        assert st.order_requests() == 1
    finally:
        await v2.close()
        srv.stop()


async def test_a_request_that_never_arrived_is_sent_again_after_its_recv_window() -> None:
    srv = start(faults=FaultConfig(p_5xx_processed=0.0))
    st = srv.state
    v = venue_for(srv)
    await v.connect()
    try:
        req = OrderRequest(client_order_id_for("intent-lost"), SYM, Side.BUY,
                           OrderType.MARKET, 100.0)
        st.force_fault("error_5xx", "/fapi/v1/order")  # 503, not processed
        placer = placer_for(v)
        t0 = time.monotonic()
        update = await placer.place(req, Store().save)
        assert update.status is OrderStatus.ACCEPTED
        assert time.monotonic() - t0 >= RECV_MS / 1000  # not before it could have landed
        assert st.order_count(req.client_order_id) == 1
        assert placer.stats.attempts == 2
    finally:
        await v.close()
        srv.stop()


async def test_a_408_with_an_empty_body_is_looked_up_never_rejected() -> None:
    """Binance's gateway answers 408 with no body when the engine is slow: the order may well
    have been placed. It is an unknown outcome (look up), not a rejection."""
    srv = start()
    st = srv.state
    v = venue_for(srv)
    await v.connect()
    try:
        req = OrderRequest(client_order_id_for("intent-408"), SYM, Side.BUY, OrderType.MARKET,
                           100.0)
        st.force_fault("timeout_408", "/fapi/v1/order")
        placer = placer_for(v)
        update = await placer.place(req, Store().save)
        assert update.status is OrderStatus.ACCEPTED
        assert placer.stats.found_after_uncertainty == 1
        assert st.order_count(req.client_order_id) == 1
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
    placer = placer_for(v, breaker)
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
            await placer.place(req, Store().save)
        assert states == [TradingState.HALTED]
        assert st.order_count() == 0
        # while halted, entries are refused without a request
        sent = v.requests_sent
        with pytest.raises(OrderRefused):
            await placer.place(req, Store().save)
        assert v.requests_sent == sent
        # after the ban window a probe closes the breaker and orders flow again
        t0 = time.monotonic()
        while not await placer.probe():
            await asyncio.sleep(0.1)
            assert time.monotonic() - t0 < 10
        assert states == [TradingState.HALTED, TradingState.ACTIVE]
        update = await placer.place(req, Store().save)
        assert update.status is OrderStatus.ACCEPTED
        assert st.order_count() == 1
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
    placer = placer_for(v, CircuitBreaker(reduce_after=100, halt_after=200),
                        max_attempts=3, backoff_s=0.01)
    try:
        with pytest.raises(PlacementUnknown):
            await placer.place(OrderRequest("qt-x", SYM, Side.BUY, OrderType.MARKET, 100.0),
                               Store().save)
        assert st.order_count() == 1  # it did land; nothing was sent twice
    finally:
        await v.close()
        srv.stop()


@pytest.mark.timeout(300)
async def test_start_up_comes_up_through_a_flaky_venue_every_time() -> None:
    """Defect: no retry at start-up, so about one start in four came up through venue
    faults. With 30% of requests failing in every way a venue fails, every start comes up,
    with its filters, leverage and marks loaded."""
    faults = FaultConfig(probabilities={"timeout": 0.05, "error_5xx": 0.06, "rate_limit": 0.05,
                                        "clock_skew": 0.04, "drop": 0.05, "timeout_408": 0.05},
                         timeout_s=1.2, retry_after_s=0.05, seed=11)
    srv = start(faults=faults, weight_limit=24_000)
    st = srv.state
    try:
        for attempt in range(8):
            v = CcxtBinanceExchange(BinanceSettings(
                mode="live", base_url=srv.url, api_key=SecretStr(st.config.api_key),
                api_secret=SecretStr(st.config.api_secret), timeout_ms=1000,
                recv_window_ms=RECV_MS, leverage={SYM: 3}, weight_limit=24_000))
            try:
                await v.connect()
                assert v.instruments[SYM].step_size > 0, attempt
                assert v.setup.leverage[SYM] == 3.0, attempt
                assert v._marks.get(SYM, 0.0) > 0, attempt
            finally:
                await v.close()
        assert sum(st.faults_injected.values()) >= 8  # the venue really was failing
    finally:
        srv.stop()
