"""SqlTradeStore against a real PostgreSQL (a throwaway database per test).

Never skipped: PostgreSQL is part of the production shape, so a machine without it fails here
with a message saying how to point the test at one (``QT_TEST_PG_DSN``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, TypeVar

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection, make_url

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
from quantum_trader.domain.records import AuditEvent, Checkpoint, ClosedTrade, PositionSnapshot
from quantum_trader.store import (
    SchemaOutOfDate,
    SqlTradeStore,
    StoreError,
    current_revision,
    head_revision,
    upgrade,
)
from quantum_trader.store.migrate import upgrade_async
from quantum_trader.store.protocol import StoreEvent
from quantum_trader.store.schema import metadata

pytestmark = pytest.mark.integration

#: An admin connection (may CREATE DATABASE). Trust auth on localhost by default.
ADMIN_DSN = os.environ.get("QT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

E = TypeVar("E")
T0 = 1_717_200_000_000
TRACE = "trace-pg"


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(ADMIN_DSN, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        ci = " (CI is set)" if os.environ.get("CI") else ""
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_DSN}{ci}: {exc}. Start it or set "
            "QT_TEST_PG_DSN to an admin DSN; this test does not skip.",
            pytrace=False,
        )


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, empty database, dropped afterwards."""
    name = f"qt_test_{secrets.token_hex(6)}"
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(ADMIN_DSN).set(drivername="postgresql+asyncpg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        admin = await _admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[SqlTradeStore]:
    upgrade(pg_url)
    s = SqlTradeStore(pg_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def of(events: list[StoreEvent], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def make_order(intent_id: str, status_to: OrderStatus | None = None) -> Order:
    order = Order(
        id=f"ord-{intent_id}",
        client_order_id=client_order_id_for(intent_id),
        intent_id=intent_id,
        symbol="BTCUSDT",
        side=Side.SELL,
        order_type=OrderType.STOP_MARKET,
        quantity=0.3,
        purpose=IntentPurpose.EXIT,
        created_ts=T0 + 2,
        trace_id=TRACE,
        reduce_only=True,
        stop_price=61_000.25,
        updated_ts=T0 + 2,
        tag="sl",
    )
    if status_to is not None:
        order.transition(OrderStatus.SUBMITTED, T0 + 3)
        order.transition(status_to, T0 + 4)
    return order


def sample_events() -> list[StoreEvent]:
    intent = OrderIntent(
        "int-1",
        "BTCUSDT",
        Side.SELL,
        0.3,
        OrderType.STOP_MARKET,
        IntentPurpose.EXIT,
        T0 + 1,
        T0 + 60_000,
        TRACE,
        reduce_only=True,
        stop_price=61_000.25,
        signal_id=None,
        reason="stop_loss",
        reference_price=62_000.1,
        tag="sl",
    )
    filled = make_order("int-2", OrderStatus.ACCEPTED)
    filled.apply_fill(0.3, 61_000.0, 0.0366, T0 + 5)
    return [
        Signal(
            "sig-1",
            "BTCUSDT",
            Direction.SHORT,
            0.61,
            T0,
            T0 + 60_000,
            62_000.1,
            "m-v1",
            TRACE,
            "1h",
            None,
        ),
        RiskDecision("dec-1", "int-1", True, "APPROVED", "", T0 + 1, TRACE, intent, ("a", "b")),
        RiskDecision("dec-2", "sig-1", False, "STALE_SIGNAL", "late by 5s", T0 + 1, TRACE),
        make_order("int-1", OrderStatus.ACCEPTED),
        filled,
        Fill(
            "fill-1",
            filled.id,
            filled.client_order_id,
            "BTCUSDT",
            Side.SELL,
            0.3,
            61_000.0,
            0.0366,
            Liquidity.TAKER,
            T0 + 5,
            TRACE,
            realized_pnl=-300.03,
        ),
        PositionSnapshot(
            "BTCUSDT",
            -0.3,
            62_000.0,
            0.0,
            0.0366,
            0.0,
            T0,
            61_000.0,
            5.0,
            T0 + 5,
            TRACE,
            63_000.0,
            58_000.0,
        ),
        PositionSnapshot("ETHUSDT", 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.0, 1.0, T0),
        EquityPoint(T0 + 5, 9_700.1, 9_999.9, -299.8, 0.03, 18_300.0),
        ClosedTrade(
            "tr-1",
            "ETHUSDT",
            Side.BUY,
            1.0,
            3_000.0,
            3_100.0,
            T0 - 10,
            T0 - 1,
            100.0,
            0.6,
            0.05,
            "take_profit",
            "t0",
        ),
        AuditEvent("kill_switch", T0 + 6, {"by": "operator", "levels": [1, 2.5, None]}, TRACE),
        Checkpoint(
            "node-pg",
            {"BTCUSDT": T0},
            9_999.9,
            10_000.0,
            0.03,
            T0 // 86_400_000,
            10_000.0,
            int(TradingState.HALTED),
            0.0366,
            0.0,
            T0 + 6,
            {"k": {"v": 1}},
        ),
    ]


async def test_round_trip_on_postgresql(store: SqlTradeStore) -> None:
    events = sample_events()
    await store.write(events)
    assert await store.signals(TRACE) == of(events, Signal)
    assert await store.decisions(TRACE) == of(events, RiskDecision)
    assert await store.orders(TRACE) == of(events, Order)
    assert await store.open_orders() == of(events, Order)[:1]
    assert await store.fills("ord-int-2") == of(events, Fill)
    assert await store.positions() == of(events, PositionSnapshot)[:1]
    assert await store.equity_curve() == of(events, EquityPoint)
    assert await store.trades(symbol="ETHUSDT") == of(events, ClosedTrade)
    assert await store.audit("kill_switch") == of(events, AuditEvent)
    assert await store.checkpoint("node-pg") == of(events, Checkpoint)[0]


async def test_idempotent_writes_and_order_upsert(store: SqlTradeStore) -> None:
    events = sample_events()
    await store.write(events)
    first = await store.counts()
    assert first["orders"] == 2
    assert first["audit_events"] == 1
    await store.write(events + events)
    assert await store.counts() == first

    order = make_order("int-1", OrderStatus.ACCEPTED)
    order.transition(OrderStatus.CANCELED, T0 + 9, reason="position closed")
    await store.write([order])
    assert await store.open_orders() == []
    assert order in await store.orders()
    assert (await store.counts())["orders"] == 2


async def test_record_decision_first_answer_wins(store: SqlTradeStore) -> None:
    decision = of(sample_events(), RiskDecision)[0]
    assert await store.record_decision(decision) is decision  # new: recorded as given
    # A redelivery decided differently (say, now expired) gets the answer on record.
    late = replace(decision, approved=False, reason="SIGNAL_EXPIRED", intent=None, ts=T0 + 99)
    assert await store.record_decision(late) == decision
    assert await store.decisions(trace_id=decision.trace_id) == [decision]


async def test_dead_pooled_connections_are_replaced_without_an_error(
        store: SqlTradeStore, pg_url: str) -> None:
    """What a PostgreSQL restart does to a pool: every connection dies. The next write and
    read must go through on fresh connections, not fail once per dead connection."""
    events = sample_events()
    await store.write(events[:3])
    database = make_url(pg_url).database
    for _ in range(2):  # kill them twice: a retried transaction must not reuse a dead one
        admin = await _admin()
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()", database)
        finally:
            await admin.close()
        assert killed >= 1  # the store's pooled connection was there to kill
        await store.write(events[3:])
        assert (await store.counts())["orders"] == 2


async def test_a_bad_row_rolls_back_the_whole_batch(store: SqlTradeStore) -> None:
    events = sample_events()
    bad_fill = replace(of(events, Fill)[0], id=None)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="rolled back"):
        await store.write([*events, bad_fill])
    assert set((await store.counts()).values()) == {0}


async def test_fresh_database_is_refused_without_create(pg_url: str) -> None:
    with pytest.raises(SchemaOutOfDate, match="quantum-trader db upgrade"):
        await SqlTradeStore(pg_url).open()
    async with SqlTradeStore(pg_url, create=True) as store:
        assert set((await store.counts()).values()) == {0}
    assert current_revision(pg_url) == head_revision()


async def test_migrated_schema_matches_schema_py(store: SqlTradeStore) -> None:
    def diff(conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_concurrent_upgrades_from_several_processes(pg_url: str) -> None:
    # Services starting together each run the upgrade; the advisory lock serialises them.
    code = "import sys; from quantum_trader.store import upgrade; upgrade(sys.argv[1])"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, pg_url, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    results = await asyncio.gather(*(p.communicate() for p in procs))
    assert [p.returncode for p in procs] == [0, 0, 0], [err.decode() for _, err in results]
    assert current_revision(pg_url) == head_revision()


async def test_concurrent_upgrades_in_one_process(pg_url: str) -> None:
    # Alembic's global context would make interleaved upgrades hang; they must queue instead.
    await asyncio.wait_for(asyncio.gather(*(upgrade_async(pg_url) for _ in range(3))), 60)
    assert current_revision(pg_url) == head_revision()
