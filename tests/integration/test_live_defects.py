"""The live path's defects, each reproduced against the real parts: the execution service in
process, our Binance-compatible simulator through the real ccxt client, real Redis, a real SQL
store (SQLite; PostgreSQL where the defect is about the database), and checked against the
venue's own records. Each of these failed on the implementation the live path had before the
one execution engine (``LiveExecutionService``); the engine-level ones are in
tests/unit/test_execution_engine.py and tests/unit/test_exchange_reliable.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from quantum_trader.bus.codec import to_payload
from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import Message
from quantum_trader.bus.redis_streams import RedisStreamBus
from quantum_trader.config import Settings
from quantum_trader.domain.enums import (
    Direction,
    IntentPurpose,
    OrderStatus,
    OrderType,
    Side,
    TradingState,
)
from quantum_trader.domain.models import OrderIntent, Signal
from quantum_trader.domain.orders import client_order_id_for
from quantum_trader.domain.records import (
    AccountSnapshot,
    AuditEvent,
    Checkpoint,
    PositionSnapshot,
)
from quantum_trader.domain.venue import OrderOrigin
from quantum_trader.observability.metrics import REGISTRY
from quantum_trader.services.execution import ExecutionService
from quantum_trader.services.messages import bar_id, bar_payload
from quantum_trader.services.risk_safety import RiskSafetyService
from quantum_trader.services.signing import sign
from quantum_trader.store.sql import SqlTradeStore
from quantum_trader.store.urls import sqlite_url
from quantum_trader.venue_sim import SimServer, SimServerConfig, SimState, load_series
from tests.support.pg_server import PgServer
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration
KEY = b"k" * 32
SYM = "XRPUSDT"
HOUR = 3_600_000


def _gauge(name: str, **labels: str) -> float:
    """A metric's value as /metrics would show it (0 before its first sample)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Stack:
    """A simulator on a loopback port and the settings an execution service needs for it."""

    def __init__(self, tmp: Path, **sim: Any) -> None:
        self.state = SimState(SimServerConfig(series=load_series(["sample:XRP"]),
                                              bar_seconds=0, start_bar=600, **sim))
        self.srv = SimServer(self.state).start()
        self.tmp = tmp
        self.store_url = sqlite_url(tmp / "qt.db")
        self.namespace = f"qt-defects:{uuid.uuid4().hex[:10]}:"
        self.services: list[ExecutionService] = []

    def settings(self, **overrides: Any) -> Settings:
        cfg: dict[str, Any] = {
            "exchange": {"kind": "binance-live", "base_url": self.srv.url,
                         "symbols": [SYM], "poll_s": 3600, "reconcile_s": 3600,
                         "recv_window_ms": 1_000, "protection_grace_s": 3600,
                         "send_margin_s": 0.0},
            "secrets": {"exchange_api_key": self.state.config.api_key,
                        "exchange_api_secret": self.state.config.api_secret,
                        "approval_hmac_key": KEY.decode()},
            "services": {"signal_max_age_ms": 30_000, "store_retry_s": 60},
        }
        for dotted, value in overrides.items():
            node = cfg
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return Settings.model_validate(cfg)

    async def execution(self, store_url: str | None = None, redis_url: str | None = None,
                        **overrides: Any) -> ExecutionService:
        store = SqlTradeStore(store_url or self.store_url, create=True)
        bus = RedisStreamBus(redis_url or "redis://127.0.0.1:6379/0", namespace=self.namespace)
        svc = ExecutionService(self.settings(**overrides), bus, store, KEY)

        def fatal(reason: str) -> None:
            raise AssertionError(f"execution gave up: {reason}")

        svc.on_fatal = fatal
        await svc.start()
        self.services.append(svc)
        return svc

    def now(self) -> int:
        return self.state.sim_now()

    def last_bar_message(self) -> Message:
        s = self.state.closed_bars(SYM)
        bar = s.bar(len(s) - 1)
        return Message("bar", bar_payload(bar), int(time.time() * 1000), bar_id(bar))

    async def next_bar(self, svc: ExecutionService, n: int = 1) -> None:
        """The venue's clock moves ``n`` bars on; execution hears of each (as market-data
        would tell it) and books what the venue did."""
        for _ in range(n):
            self.state.advance(1)
            await svc.on_bar(self.last_bar_message())

    def entry(self, iid: str, side: Side = Side.BUY, qty: float = 2000.0,
              ttl_ms: int = 6 * HOUR) -> OrderIntent:
        now = self.now()
        return OrderIntent(iid, SYM, side, qty, OrderType.MARKET, IntentPurpose.ENTRY, now,
                           now + ttl_ms, iid, reference_price=self.price())

    def stop(self, iid: str, side: Side, qty: float, level: float) -> OrderIntent:
        now = self.now()
        return OrderIntent(iid, SYM, side, qty, OrderType.STOP_MARKET, IntentPurpose.EXIT, now,
                           now + 24 * HOUR, iid, reduce_only=True, stop_price=level,
                           reason="stop_loss", reference_price=level, tag="sl")

    def price(self) -> float:
        p = self.state.price_now(SYM)
        assert p is not None
        return p

    async def close(self) -> None:
        for svc in reversed(self.services):
            with contextlib.suppress(Exception):
                await svc.stop()
        self.srv.stop()
        client = Redis()
        keys = [k async for k in client.scan_iter(match=self.namespace + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def approval(intent: OrderIntent, age_ms: int = 0) -> Message:
    payload = to_payload(intent)
    payload["kind"] = "order"
    return Message("intent", {"intent": payload, "signature": sign(payload, KEY)},
                   int(time.time() * 1000) - age_ms, intent.trace_id)


@contextlib.asynccontextmanager
async def stack(tmp: Path, **sim: Any) -> AsyncIterator[Stack]:
    st = Stack(tmp, **sim)
    try:
        yield st
    finally:
        await st.close()


async def test_a_redelivered_approval_after_a_restart_never_places_a_second_order(
        tmp_path: Path) -> None:
    """Defect: only open orders were restored, and Binance keeps client ids unique among
    open orders only, so a redelivered approval of a filled order was a second order."""
    async with stack(tmp_path) as st:
        svc = await st.execution()
        msg = approval(st.entry("e1"))
        await svc.on_approved(msg)
        await st.next_bar(svc)  # it fills: its client id is free again on the venue
        cid = client_order_id_for("e1")
        assert svc.engine.order(cid).status is OrderStatus.FILLED  # type: ignore[union-attr]
        await svc.stop()
        again = await st.execution()  # a restart: the filled order is not in memory
        await again.on_approved(msg)  # the bus delivers the approval once more
        await again.on_approved(msg)
        assert st.state.order_count(cid) == 1
        assert [o.client_order_id for o in await again.store.orders()  # type: ignore[union-attr]
                ].count(cid) == 1


async def test_a_stale_approval_is_refused_recorded_and_never_sent(tmp_path: Path) -> None:
    """Defect: the live path dropped the wall-clock age check on approvals."""
    async with stack(tmp_path) as st:
        svc = await st.execution()
        await svc.on_approved(approval(st.entry("old"), age_ms=120_000))
        order = svc.engine.order(client_order_id_for("old"))
        assert order is not None
        assert order.status is OrderStatus.EXPIRED
        assert "stale" in order.reason
        assert st.state.order_count() == 0


async def test_recovery_expires_an_unsent_order_instead_of_sending_it(tmp_path: Path) -> None:
    """Defect: orders carried no expiry and restart recovery sent expired entries."""
    async with stack(tmp_path) as st:
        store = SqlTradeStore(st.store_url, create=True)
        await store.open()
        from quantum_trader.domain.orders import Order

        now = st.now()
        cid = client_order_id_for("late")
        await store.claim_order(Order(cid, cid, "late", SYM, Side.BUY, OrderType.MARKET,
                                      2000.0, IntentPurpose.ENTRY, now - 3 * HOUR, "late",
                                      updated_ts=now - 3 * HOUR, expires_at=now - 2 * HOUR))
        await store.write([Checkpoint("execution", {SYM: now - 1_800_000}, 10_000.0,
                                      10_000.0, 0.0, 0, 10_000.0, 0, 0.0, 0.0, now)])
        await store.close()
        svc = await st.execution()
        order = svc.engine.order(cid)
        assert order is not None
        assert order.status is OrderStatus.EXPIRED
        assert st.state.order_count() == 0


async def test_a_trade_is_booked_once_through_a_database_outage_and_a_restart(
        tmp_path: Path) -> None:
    """Defect: a failed write killed the fill poller for good, the next checkpoint already held
    the fill's PnL, and after a restart the cursor (derived from the stored trade ids) read
    the trade again."""
    async with stack(tmp_path) as st:
        with PgServer(tmp_path / "pg") as pg:
            url = pg.createdb("qt")
            svc = await st.execution(store_url=url)
            await svc.on_approved(approval(st.entry("e1")))
            pg.stop("immediate")  # the database goes away ...
            st.state.advance(1)  # ... while the venue fills the order
            booking = asyncio.create_task(svc.on_bar(st.last_bar_message()))
            await asyncio.sleep(2.0)
            assert not booking.done()  # it waits for the store, books nothing ahead of it
            assert svc.store_failing is not None
            pg.start()
            await asyncio.wait_for(booking, 60)
            assert svc.store_failing is None
            await svc.stop()
            again = await st.execution(store_url=url)
            await st.next_bar(again, 2)
            await again._reconcile()
            store = again.store
            assert store is not None
            trades = await store.venue_trades()
            assert len(trades) == len(st.state.trades()) >= 1
            assert len(await store.fills()) == len(trades)
            assert again.portfolio.positions[SYM].qty == st.state.positions()[0].qty
            await again.stop()


async def test_venue_made_orders_are_booked_and_a_first_start_begins_from_the_venue(
        tmp_path: Path) -> None:
    """Defects: trades of manual, ADL and liquidation orders were skipped while the cursor
    moved on; a first start read the whole trade history into today's books."""
    async with stack(tmp_path) as st:
        # before we ever start: someone traded on this account
        st.state.place(SYM, Side.BUY, OrderType.MARKET, 3000.0, client_id="web_manual_1")
        st.state.advance(1)
        history = len(st.state.trades())
        assert history >= 1
        svc = await st.execution()
        store = svc.store
        assert store is not None
        assert await store.venue_trades() == []  # the account's past is not ours to book
        assert svc.portfolio.positions[SYM].qty == 3000.0  # the venue's position, adopted
        assert any(a.kind == "position_adopted" for a in await store.audit())
        # after: the venue auto-deleverages half of it, an operator adds by hand
        st.state.adl(SYM, 0.5)
        st.state.place(SYM, Side.BUY, OrderType.MARKET, 500.0, client_id="web_manual_2")
        await st.next_bar(svc)
        await svc._reconcile()
        venue_qty = next(q.qty for q in st.state.positions() if q.qty)
        assert svc.portfolio.positions[SYM].qty == pytest.approx(venue_qty)
        booked = await store.venue_trades()
        assert len(booked) == len(st.state.trades()) - history
        origins = {svc.engine.order(t.client_order_id).origin  # type: ignore[union-attr]
                   for t in booked}
        assert {OrderOrigin.ADL, OrderOrigin.EXTERNAL} <= origins


async def test_the_kill_switch_keeps_stops_or_flattens_and_says_which(tmp_path: Path) -> None:
    """Defect: /kill canceled every protective stop and told nobody."""
    async with stack(tmp_path) as st:
        svc = await st.execution()
        await svc.on_approved(approval(st.entry("e1")))
        await st.next_bar(svc)
        level = round(st.price() * 0.8, 4)
        await svc.on_approved(approval(st.stop("e1:sl", Side.SELL, 2000.0, level)))
        far = OrderIntent("e2", SYM, Side.BUY, 2000.0, OrderType.LIMIT, IntentPurpose.ENTRY,
                          st.now(), st.now() + 6 * HOUR, "e2", price=round(st.price() * 0.5, 4),
                          reference_price=st.price())
        await svc.on_approved(approval(far))
        async with svc._lock:
            kept = await svc.kill("test", flatten=False, kill_id="k1")
            await svc._commit()
        assert kept["mode"] == "keep_stops"
        assert kept["kept_stops"] == [client_order_id_for("e1:sl")]
        assert kept["canceled"] == [client_order_id_for("e2")]
        working = {o.client_id for o in st.state.open_orders(SYM, algo=True)}
        assert client_order_id_for("e1:sl") in working  # the position is still protected
        assert svc.driver.breaker.state is TradingState.HALTED
        async with svc._lock:
            flat = await svc.kill("test", flatten=True, kill_id="k2")
            await svc._commit()
        assert flat["mode"] == "flatten"
        assert flat["closing"] == {SYM: 2000.0}
        await st.next_bar(svc)
        assert [q for q in st.state.positions() if q.qty] == []
        assert not svc.portfolio.positions[SYM].is_open  # the flatten fill is booked as ours
        store = svc.store
        assert store is not None
        audits = list(await store.audit("kill_switch"))
        assert [a.detail["mode"] for a in audits] == ["keep_stops", "flatten"]
        told = [m for _s, m in await store.outbox_pending(100) if m.type == "kill_result"]
        published = await svc.bus.entries("executions")  # type: ignore[attr-defined]
        assert told or any(b'"kill_result"' in raw for _id, raw in published)


async def test_a_stop_refused_because_it_would_trigger_at_once_closes_the_position(
        tmp_path: Path) -> None:
    """Defect: a protective stop refused with -2021 was ignored: the position stayed open
    with no stop."""
    async with stack(tmp_path) as st:
        svc = await st.execution()
        await svc.on_approved(approval(st.entry("e1")))
        await st.next_bar(svc)
        above = round(st.price() * 1.05, 4)  # a sell stop above the market: triggers at once
        await svc.on_approved(approval(st.stop("e1:sl", Side.SELL, 2000.0, above)))
        stop = svc.engine.order(client_order_id_for("e1:sl"))
        assert stop is not None
        assert stop.status is OrderStatus.REJECTED
        assert svc.engine.closing(SYM)  # a market close went out at once
        await st.next_bar(svc)
        assert [q for q in st.state.positions() if q.qty] == []
        assert not svc.portfolio.positions[SYM].is_open


async def test_an_unprotected_position_gets_a_stop_and_entries_hear_of_it(
        tmp_path: Path) -> None:
    async with stack(tmp_path) as st:
        svc = await st.execution(**{"exchange.protection_grace_s": 0.2})
        await svc.on_approved(approval(st.entry("e1")))
        await st.next_bar(svc)  # the entry fills; nobody places a stop
        await asyncio.sleep(0.3)
        assert _gauge("positions_unprotected") == 0  # within the grace period: not yet
        await st.next_bar(svc)  # the grace period is over: execution guards it itself
        assert _gauge("positions_unprotected") == 1  # ... and the alert's gauge says so
        stops = list(st.state.open_orders(SYM, algo=True))
        assert len(stops) == 1
        assert stops[0].side is Side.SELL
        assert stops[0].reduce_only
        assert svc.engine.unprotected() == []
        await st.next_bar(svc)
        assert _gauge("positions_unprotected") == 0


async def test_the_venue_is_the_truth_for_the_wallet_and_funding_is_booked(
        tmp_path: Path) -> None:
    """Defect: the venue wallet and funding were never read; sizing and limits ran on made-up
    equity."""
    async with stack(tmp_path) as st:
        svc = await st.execution()
        await svc.on_approved(approval(st.entry("e1")))
        await st.next_bar(svc, 20)  # held across a funding time (every 8 h)
        adopted_before = _gauge("book_adjustments_total", kind="wallet_adopted")
        with st.state.lock:
            st.state.core.account.wallet += 250.0  # a deposit
        async with svc._lock:
            await svc._reconcile()
            await svc._commit()
        assert svc.portfolio.wallet == pytest.approx(st.state.records().wallet, abs=1e-6)
        funding = [r for r in st.state.income() if r.income_type == "FUNDING_FEE"]
        assert funding
        store = svc.store
        assert store is not None
        ours = await store.funding_payments()
        assert len(ours) == len(funding)
        assert sum(p.amount for p in ours) == pytest.approx(-sum(r.income for r in funding))
        assert any(a.kind == "wallet_adopted" for a in await store.audit())
        assert _gauge("book_adjustments_total", kind="wallet_adopted") == adopted_before + 1


async def test_leverage_that_cannot_change_is_kept_and_reported_not_a_crash_loop(
        tmp_path: Path) -> None:
    """Defect: execution crash-looped when leverage or margin mode could not be changed with
    a position open (-4161/-4048)."""
    async with stack(tmp_path) as st:
        st.state.set_leverage(SYM, 5)
        st.state.place(SYM, Side.BUY, OrderType.MARKET, 1000.0, client_id="web_manual_1")
        st.state.advance(1)
        svc = await st.execution(leverage=3)
        await svc.health.refresh()
        assert SYM in svc.kept_settings
        assert "5x" in svc.kept_settings[SYM]
        assert svc.health.status.value == "DEGRADED"
        assert any("venue settings" in r for r in svc.health.as_dict()["reasons"])


async def test_hedge_mode_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    async with stack(tmp_path) as st:
        st.state.dual_side_position = True
        svc = await st.execution()
        await svc.health.refresh()
        assert svc.health.status.value == "DOWN"
        assert "hedge mode" in " ".join(svc.health.as_dict()["reasons"])
        await svc.on_approved(approval(st.entry("e1")))
        assert st.state.order_count() == 0


async def test_a_fill_committed_while_redis_is_down_still_reaches_the_bus(
        tmp_path: Path) -> None:
    """Defect: a publish that failed after the store commit was never retried, so the exit
    brain never heard of the fill and never placed the stop."""
    async with stack(tmp_path) as st:
        with RedisServer(tmp_path / "redis") as redis_srv:
            svc = await st.execution(redis_url=redis_srv.url)
            await svc.on_approved(approval(st.entry("e1")))
            redis_srv.stop()  # Redis goes away: the commit goes on, the publish cannot
            await st.next_bar(svc)
            store = svc.store
            assert store is not None
            assert await store.venue_trades()  # booked and committed ...
            pending = [m for _s, m in await store.outbox_pending(100) if m.type == "fill"]
            assert pending  # ... and its message waits in the outbox
            redis_srv.start()
            for _ in range(150):  # the publisher backs off while Redis was away
                if not await store.outbox_pending(100):
                    break
                await asyncio.sleep(0.2)
            assert await store.outbox_pending(100) == []
            raw = [r for _id, r in await svc.bus.entries("executions")]  # type: ignore[attr-defined]
            assert any(b'"fill"' in r for r in raw)


async def test_approved_entries_that_have_not_filled_count_against_the_limits() -> None:
    """Defect: the gate did not count approved entries that had not filled yet, so up to 14
    entries for one symbol were approved at once."""
    settings = Settings.model_validate({
        "secrets": {"approval_hmac_key": KEY.decode()}, "risk": {"min_confidence": 0.5},
        "services": {"bus": "memory", "view_wait_s": 0.2}})
    bus = InMemoryBus()
    svc = RiskSafetyService(settings, bus, None, KEY)
    await svc.start()
    try:
        now = int(time.time() * 1000)
        svc.market_now = now
        svc.engine.on_price(SYM, 0.5)
        snap = AccountSnapshot(now, 10_000.0, 10_000.0, 10_000.0, 10_000.0, ())
        await svc.on_account(Message("account", to_payload(snap), now, ""))
        decisions = []
        for i in range(5):
            sig = Signal(f"s{i}", SYM, Direction.LONG, 0.9, now, now + 60_000, 0.5, "t",
                         f"s{i}", stop_distance=0.02)
            await svc.on_signal(Message("signal", to_payload(sig), now, sig.trace_id))
            decisions.append(svc._decided[f"s{i}:risk"])
        assert [d.approved for d in decisions] == [True, False, False, False, False]
        assert {d.reason for d in decisions[1:]} == {"ENTRY_PENDING"}
    finally:
        await svc.stop()


async def test_a_halt_survives_a_restart_whatever_clocks_the_audit_mixes(
        tmp_path: Path) -> None:
    """Defect: the trading state was restored from audit events sorted by time, mixing market
    time (a drawdown halt in a replay) and wall time (an operator's resume): the halt, newer
    but with the older time, was lost."""
    url = sqlite_url(tmp_path / "qt.db")
    store = SqlTradeStore(url, create=True)
    await store.open()
    wall = int(time.time() * 1000)
    await store.write([AuditEvent("trading_state", wall, {"from": "HALTED", "to": "ACTIVE",
                                                          "reason": "operator: resume"})])
    await store.write([AuditEvent("trading_state", 1_508_000_000_000, {
        "from": "ACTIVE", "to": "HALTED", "reason": "max drawdown breached: 21%"})])
    await store.write([PositionSnapshot(SYM, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.5, 3.0, 0)])
    await store.close()
    settings = Settings.model_validate({"secrets": {"approval_hmac_key": KEY.decode()},
                                        "services": {"bus": "memory"}})
    svc = RiskSafetyService(settings, InMemoryBus(), SqlTradeStore(url), KEY)
    await svc.start()
    try:
        assert svc.engine.trading_state is TradingState.HALTED
    finally:
        await svc.stop()


async def test_a_fill_and_the_position_it_makes_are_committed_together(
        tmp_path: Path) -> None:
    """Defect (found by the chaos soak): a commit made on the way to sending an order (the
    "may be on the venue" record) carried the fills booked just before it but not their
    positions, which only account commits wrote. A reader, or a restart after a crash
    during the send, saw a trade booked and the position it made missing."""
    from quantum_trader.domain.models import Fill

    async with stack(tmp_path) as st:
        svc = await st.execution()
        store = svc.store
        assert store is not None
        batches: list[list[Any]] = []
        write = store.write

        async def recording(events: Any) -> None:
            batches.append(list(events))
            await write(events)

        store.write = recording  # type: ignore[method-assign]
        await svc.on_approved(approval(st.entry("e1")))
        await st.next_bar(svc)  # long 2000
        series = st.state.series[SYM]
        while series.bar(len(st.state.closed_bars(SYM))).low >= st.price() * 0.999:
            await st.next_bar(svc)  # to a bar that trades below the market
        level = round(st.price() * 0.9995, 4)
        await svc.on_approved(approval(st.stop("e1:sl", Side.SELL, 2000.0, level)))
        # A short entry against the long waits for the exit: it goes once the stop has
        # filled, which is the send that committed the stop's fill without its position.
        await svc.on_approved(approval(st.entry("e2", Side.SELL)))
        assert svc.engine.order(client_order_id_for("e2")).status is OrderStatus.NEW  # type: ignore[union-attr]
        await st.next_bar(svc)
        assert svc.engine.order(client_order_id_for("e1:sl")).status is OrderStatus.FILLED  # type: ignore[union-attr]
        assert svc.engine.order(client_order_id_for("e2")).status is not OrderStatus.NEW  # type: ignore[union-attr]
        with_fills = [b for b in batches if any(isinstance(e, Fill) for e in b)]
        assert len(with_fills) >= 2
        for batch in with_fills:
            for i, ev in enumerate(batch):
                if isinstance(ev, Fill):
                    after = [e for e in batch[i + 1:] if isinstance(e, PositionSnapshot)
                             and e.symbol == ev.symbol]
                    assert after, f"fill {ev.id} committed without its position"


async def test_an_entry_sent_late_is_not_sent_once_the_market_has_moved_away(
        tmp_path: Path) -> None:
    """Found by the chaos soak: an entry held or recovered until late in its life went out
    at a price 4% from the one it was sized at, and the position passed its notional limit.
    At send time the market must still be within the gate's price band."""
    async with stack(tmp_path) as st:
        svc = await st.execution(**{"risk.max_price_deviation": 0.02})
        await st.next_bar(svc)  # execution knows the last price
        now, last = st.now(), st.price()
        for iid, ref in (("moved", round(last / 1.03, 4)), ("near", round(last / 1.01, 4))):
            await svc.on_approved(approval(OrderIntent(
                iid, SYM, Side.BUY, 2000.0, OrderType.MARKET, IntentPurpose.ENTRY, now,
                now + 6 * HOUR, iid, reference_price=ref)))
        moved = svc.engine.order(client_order_id_for("moved"))
        assert moved is not None
        assert moved.status is OrderStatus.EXPIRED
        assert moved.reason.startswith("the market moved 3.00% since the approval")
        assert st.state.order_count(client_order_id_for("moved")) == 0
        assert st.state.order_count(client_order_id_for("near")) == 1
