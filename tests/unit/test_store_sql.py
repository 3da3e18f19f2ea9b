"""SqlTradeStore on SQLite: round trips, idempotency, upserts, atomicity, schema checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import text

from quantum_trader.domain.enums import (
    Direction,
    IntentPurpose,
    Liquidity,
    OrderStatus,
    OrderType,
    Side,
    TradingState,
)
from quantum_trader.domain.models import Fill, OrderIntent, RiskDecision, Signal
from quantum_trader.domain.orders import Order, client_order_id_for
from quantum_trader.domain.portfolio import EquityPoint
from quantum_trader.domain.records import (
    AuditEvent,
    Checkpoint,
    ClosedTrade,
    PositionSnapshot,
    SeenBar,
)
from quantum_trader.store import (
    SchemaOutOfDate,
    SqlTradeStore,
    StoreError,
    current_revision,
    head_revision,
    sqlite_url,
    upgrade,
)
from quantum_trader.store.protocol import StoreEvent, TradeStore
from quantum_trader.store.urls import async_url, sqlite_file

E = TypeVar("E")

T0 = 1_717_200_000_000
TRACE = "trace-1"


def make_order(intent_id: str = "int-1", status_to: OrderStatus | None = None) -> Order:
    order = Order(
        id=f"ord-{intent_id}",
        client_order_id=client_order_id_for(intent_id),
        intent_id=intent_id,
        symbol="BTCUSDT",
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=0.5,
        purpose=IntentPurpose.ENTRY,
        created_ts=T0 + 2,
        trace_id=TRACE,
        price=64_999.5,
        stop_price=None,
        updated_ts=T0 + 2,
        tag="",
    )
    if status_to is not None:
        order.transition(OrderStatus.SUBMITTED, T0 + 3)
        order.transition(status_to, T0 + 4)
    return order


def sample_events() -> list[StoreEvent]:
    """One or more of every event type, with awkward values (None, 0.1, nested JSON)."""
    intent = OrderIntent(
        id="int-1",
        symbol="BTCUSDT",
        side=Side.BUY,
        quantity=0.5,
        order_type=OrderType.LIMIT,
        purpose=IntentPurpose.ENTRY,
        ts=T0 + 1,
        expires_at=T0 + 60_000,
        trace_id=TRACE,
        reduce_only=False,
        price=64_999.5,
        stop_price=None,
        signal_id="sig-1",
        reason="signal",
        reference_price=65_000.1,
        stop_loss=63_000.0,
        take_profit=70_000.0,
        tag="entry",
    )
    filled = make_order("int-2", OrderStatus.ACCEPTED)
    filled.apply_fill(0.2, 65_000.0, 0.013, T0 + 5)
    filled.apply_fill(0.3, 65_010.0, 0.0195, T0 + 6)
    return [
        Signal(
            "sig-1",
            "BTCUSDT",
            Direction.LONG,
            0.73,
            T0,
            T0 + 60_000,
            65_000.1,
            "lgbm-v3",
            TRACE,
            "30m",
            0.012,
        ),
        Signal(
            "sig-2",
            "ETHUSDT",
            Direction.FLAT,
            0.1,
            T0 + 1,
            T0 + 60_000,
            3_400.0,
            "lgbm-v3",
            "trace-2",
        ),
        RiskDecision(
            "dec-1",
            "sig-1",
            True,
            "APPROVED",
            "",
            T0 + 1,
            TRACE,
            intent,
            ("stale", "exposure", "daily_loss"),
        ),
        RiskDecision("dec-2", "sig-2", False, "LOW_CONFIDENCE", "0.1 < 0.55", T0 + 1, "trace-2"),
        make_order("int-1", OrderStatus.ACCEPTED),
        filled,
        Fill(
            "fill-1",
            filled.id,
            filled.client_order_id,
            "BTCUSDT",
            Side.BUY,
            0.2,
            65_000.0,
            0.013,
            Liquidity.MAKER,
            T0 + 5,
            TRACE,
        ),
        Fill(
            "fill-2",
            filled.id,
            filled.client_order_id,
            "BTCUSDT",
            Side.BUY,
            0.3,
            65_010.0,
            0.0195,
            Liquidity.TAKER,
            T0 + 6,
            TRACE,
            realized_pnl=-1.5,
            is_liquidation=True,
        ),
        PositionSnapshot(
            "BTCUSDT",
            0.5,
            65_006.0,
            0.0,
            0.0325,
            0.0,
            T0 + 5,
            65_100.0,
            3.0,
            T0 + 6,
            TRACE,
            63_000.0,
            None,
        ),
        PositionSnapshot("ETHUSDT", 0.0, 0.0, 12.5, 1.0, 0.1, T0 - 5, 3_400.0, 1.0, T0 + 6),
        EquityPoint(T0, 10_000.0, 10_000.0, 0.0, 0.0, 0.0),
        EquityPoint(T0 + 6, 10_047.2, 9_999.9, 47.3, 0.001, 32_550.0),
        ClosedTrade(
            "tr-1",
            "ETHUSDT",
            Side.SELL,
            2.0,
            3_500.0,
            3_450.0,
            T0 - 100,
            T0 - 5,
            100.0,
            1.0,
            0.1,
            "take_profit",
            "trace-0",
        ),
        ClosedTrade(
            "tr-2",
            "BTCUSDT",
            Side.BUY,
            0.1,
            60_000.0,
            59_000.0,
            T0 - 90,
            T0 - 4,
            -100.0,
            0.5,
            0.0,
            "stop_loss",
            "trace-9",
        ),
        AuditEvent(
            "trading_state",
            T0 + 7,
            {"from": "ACTIVE", "to": "REDUCING", "why": {"drawdown": 0.11, "limits": [1, 2.5]}},
            TRACE,
        ),
        AuditEvent("run_started", T0, {}),
        Checkpoint(
            "node-a",
            {"BTCUSDT": T0 - 1_800_000, "ETHUSDT": T0},
            9_999.9,
            10_100.0,
            0.02,
            T0 // 86_400_000,
            10_000.0,
            int(TradingState.REDUCING),
            0.0325,
            0.1,
            T0 + 7,
            {"version": "0.1.0", "nested": {"a": [1, None, "x"]}},
        ),
        SeenBar("BTCUSDT", "30m", T0 - 1_800_000, 64_000.0, 65_100.0, 63_900.0, 65_000.1,
                12.5, "trade", T0 + 10, T0 + 12),
    ]


def of(events: list[StoreEvent], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path / "store" / "trades.db")


@pytest.fixture
async def store(url: str) -> AsyncIterator[SqlTradeStore]:
    s = SqlTradeStore(url, create=True)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_sqlite_url_is_absolute_and_only_creating_the_store_makes_its_directory(
        tmp_path: Path) -> None:
    u = sqlite_url(tmp_path / "a" / "b" / "x.db")
    assert u == f"sqlite+aiosqlite:///{tmp_path}/a/b/x.db"
    assert not (tmp_path / "a").exists()  # naming a store writes nothing
    with pytest.raises(StoreError, match="no database at"):
        await SqlTradeStore(u).open()  # a reader never creates one
    assert not (tmp_path / "a").exists()
    async with SqlTradeStore(u, create=True):
        pass
    assert (tmp_path / "a" / "b" / "x.db").is_file()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_async_url_swaps_sync_drivers(given: str, expected: str) -> None:
    assert async_url(given).render_as_string() == expected


def test_store_satisfies_the_port() -> None:
    store: TradeStore = SqlTradeStore("sqlite+aiosqlite://")
    assert store is not None


async def test_round_trip_of_every_event_type(store: SqlTradeStore) -> None:
    events = sample_events()
    await store.write(events)

    assert await store.signals() == of(events, Signal)
    assert await store.signals(TRACE) == of(events, Signal)[:1]
    assert await store.decisions() == of(events, RiskDecision)
    assert await store.decisions("trace-2") == of(events, RiskDecision)[1:]
    assert await store.orders() == of(events, Order)
    assert await store.orders("nope") == []
    assert await store.fills() == of(events, Fill)
    assert await store.fills("ord-int-2") == of(events, Fill)
    assert await store.fills("ord-int-1") == []
    assert await store.positions() == of(events, PositionSnapshot)[:1]  # ETH is flat
    assert await store.equity_curve() == of(events, EquityPoint)
    assert await store.trades() == of(events, ClosedTrade)
    assert await store.audit() == of(events, AuditEvent)  # insertion order, not ts
    assert await store.audit("run_started") == of(events, AuditEvent)[1:]
    [checkpoint] = of(events, Checkpoint)
    assert await store.checkpoint("node-a") == checkpoint
    assert await store.checkpoint("node-b") is None


async def test_rebuilt_objects_have_domain_types(store: SqlTradeStore) -> None:
    await store.write(sample_events())
    [approved, rejected] = await store.decisions()
    assert approved.intent is not None
    assert rejected.intent is None
    assert type(approved.intent.side) is Side
    assert type(approved.intent.purpose) is IntentPurpose
    assert approved.checks == ("stale", "exposure", "daily_loss")
    filled = (await store.orders())[1]
    assert filled.status is OrderStatus.FILLED
    assert all(type(s) is OrderStatus for s, _ in filled.history)
    assert [s for s, _ in filled.history] == [
        OrderStatus.NEW,
        OrderStatus.SUBMITTED,
        OrderStatus.ACCEPTED,
        OrderStatus.PARTIALLY_FILLED,
    ]
    assert (await store.fills())[0].liquidity is Liquidity.MAKER
    assert (await store.signals())[0].direction is Direction.LONG


async def test_open_orders_and_trades_filters(store: SqlTradeStore) -> None:
    await store.write(sample_events())
    assert [o.id for o in await store.open_orders()] == ["ord-int-1"]
    assert [tr.id for tr in await store.trades(limit=1)] == ["tr-2"]  # the latest
    assert [tr.id for tr in await store.trades(symbol="ETHUSDT")] == ["tr-1"]
    assert [tr.id for tr in await store.trades(limit=5)] == ["tr-1", "tr-2"]  # oldest first


async def test_write_is_idempotent(store: SqlTradeStore) -> None:
    events = sample_events()
    await store.write(events)
    first = await store.counts()
    assert first == {
        "signals": 2,
        "risk_decisions": 2,
        "orders": 2,
        "fills": 2,
        "positions": 2,
        "equity_snapshots": 2,
        "closed_trades": 2,
        "audit_events": 2,
        "checkpoints": 1,
        "venue_trades": 0,
        "funding_payments": 0,
        "cursors": 0,
        "outbox": 0,
        "bars": 1,
    }
    await store.write(events)
    await store.write(events + events)  # duplicates inside one batch too
    assert await store.counts() == first
    assert await store.audit() == of(events, AuditEvent)


async def test_insert_or_ignore_keeps_the_first_fact(store: SqlTradeStore) -> None:
    fill = of(sample_events(), Fill)[0]
    await store.write([fill])
    await store.write([replace(fill, price=1.0)])  # a replay never rewrites history
    assert (await store.fills())[0].price == fill.price


async def test_order_upsert_changes_status(store: SqlTradeStore) -> None:
    order = make_order("int-9")
    await store.write([order])
    assert [o.status for o in await store.open_orders()] == [OrderStatus.NEW]

    order.transition(OrderStatus.SUBMITTED, T0 + 10)
    order.exchange_order_id = "ex-77"
    await store.write([order])
    order.transition(OrderStatus.CANCELED, T0 + 20, reason="operator cancel")
    await store.write([order])

    [stored] = await store.orders()
    assert stored == order
    assert stored.status is OrderStatus.CANCELED
    assert stored.reason == "operator cancel"
    assert stored.history == [(OrderStatus.NEW, T0 + 2), (OrderStatus.SUBMITTED, T0 + 10)]
    assert await store.open_orders() == []
    assert (await store.counts())["orders"] == 1


async def test_last_write_wins_within_a_batch(store: SqlTradeStore) -> None:
    a = make_order("int-5")
    b = make_order("int-5", OrderStatus.ACCEPTED)
    pos = of(sample_events(), PositionSnapshot)[0]
    await store.write([a, pos, b, replace(pos, qty=0.25, ts=pos.ts + 1)])
    assert [o.status for o in await store.orders()] == [OrderStatus.ACCEPTED]
    assert [p.qty for p in await store.positions()] == [0.25]


async def test_position_going_flat_disappears(store: SqlTradeStore) -> None:
    pos = of(sample_events(), PositionSnapshot)[0]
    await store.write([pos])
    await store.write([replace(pos, qty=0.0, ts=pos.ts + 1)])
    assert await store.positions() == []
    assert (await store.counts())["positions"] == 1


async def test_checkpoint_upsert(store: SqlTradeStore) -> None:
    cp = of(sample_events(), Checkpoint)[0]
    await store.write([cp])
    newer = replace(cp, last_bar_ts={"BTCUSDT": T0}, wallet=1.0, ts=cp.ts + 1)
    await store.write([newer])
    assert await store.checkpoint("node-a") == newer


async def test_a_bad_row_rolls_back_the_whole_batch(store: SqlTradeStore) -> None:
    events = sample_events()
    bad_fill = replace(of(events, Fill)[0], id=None)  # type: ignore[arg-type]
    # The bad row comes last, so every other table has been written when the database refuses.
    with pytest.raises(StoreError, match="rolled back"):
        await store.write([*events, bad_fill])
    assert set((await store.counts()).values()) == {0}


async def test_a_constraint_violation_rolls_back_the_whole_batch(store: SqlTradeStore) -> None:
    await store.write([make_order("int-1")])
    twin = make_order("int-1")
    twin.id = "another-id"  # same client order id: a double order, refused by the database
    with pytest.raises(StoreError, match="rolled back"):
        await store.write([of(sample_events(), Signal)[0], twin])
    counts = await store.counts()
    assert (counts["signals"], counts["orders"]) == (0, 1)


async def test_unknown_event_type_is_refused_before_writing(store: SqlTradeStore) -> None:
    with pytest.raises(StoreError, match="not a StoreEvent"):
        await store.write([of(sample_events(), Signal)[0], "oops"])  # type: ignore[list-item]
    assert (await store.counts())["signals"] == 0


async def test_empty_write_is_a_no_op(store: SqlTradeStore) -> None:
    await store.write([])
    assert set((await store.counts()).values()) == {0}


async def test_open_on_fresh_database_without_create_names_the_command(url: str) -> None:
    db = sqlite_file(url)
    assert db is not None
    db.parent.mkdir(parents=True)
    db.touch()  # an empty database file: there, but never migrated
    store = SqlTradeStore(url)
    with pytest.raises(SchemaOutOfDate, match="run `quantum-trader db upgrade`") as info:
        await store.open()
    assert info.value.current is None
    assert info.value.head == head_revision()
    with pytest.raises(StoreError, match="not open"):
        await store.counts()


async def test_open_after_upgrade_works_without_create(url: str) -> None:
    upgrade(url)  # the sync entry point, called from inside a running event loop
    async with SqlTradeStore(url) as store:
        await store.write(sample_events())
        assert (await store.counts())["fills"] == 2


async def test_database_from_a_newer_release_is_refused(store: SqlTradeStore, url: str) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(SchemaOutOfDate, match="does not know"):
        await SqlTradeStore(url).open()


async def test_sqlite_runs_in_wal_mode(store: SqlTradeStore) -> None:
    async with store.engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
        assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 1  # NORMAL
        assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
        assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 10_000


async def test_in_memory_database_with_create() -> None:
    async with SqlTradeStore("sqlite+aiosqlite://", create=True) as store:
        await store.write(sample_events())
        assert (await store.counts())["orders"] == 2


async def test_data_survives_reopening(url: str) -> None:
    events = sample_events()
    async with SqlTradeStore(url, create=True) as store:
        await store.write(events)
    async with SqlTradeStore(url) as store:
        assert await store.orders() == of(events, Order)
    assert current_revision(url) == head_revision()
