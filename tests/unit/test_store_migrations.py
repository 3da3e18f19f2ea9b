"""The packaged Alembic migrations: they run from code, reach head, and match schema.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from quantum_trader.domain.enums import IntentPurpose, OrderStatus, OrderType, Side
from quantum_trader.domain.orders import Order
from quantum_trader.domain.venue import OrderOrigin
from quantum_trader.store import (
    SqlTradeStore,
    current_revision,
    head_revision,
    sqlite_url,
    upgrade,
)
from quantum_trader.store.migrate import MIGRATIONS_DIR, alembic_config
from quantum_trader.store.schema import TABLES, metadata


@pytest.fixture
def url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path / "m.db")


def sync_url(url: str) -> str:
    return url.replace("sqlite+aiosqlite", "sqlite")


def test_migrations_ship_inside_the_package() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert head_revision() == "0004"


def test_upgrade_reaches_head_and_is_repeatable(url: str) -> None:
    assert current_revision(url) is None
    upgrade(url)
    assert current_revision(url) == head_revision()
    upgrade(url)  # nothing to do, nothing breaks
    assert current_revision(url) == head_revision()
    tables = set(inspect(create_engine(sync_url(url))).get_table_names())
    assert tables == {t.name for t in TABLES} | {"alembic_version"}


def test_migrated_schema_matches_schema_py(url: str) -> None:
    upgrade(url)
    with create_engine(sync_url(url)).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, metadata) == []


def test_downgrade_to_base_and_back(url: str) -> None:
    upgrade(url)
    engine = create_engine(sync_url(url))
    with engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    assert current_revision(url) is None
    upgrade(url)
    assert current_revision(url) == head_revision()


async def test_upgrade_from_0001_keeps_rows_and_reads_them_with_defaults(url: str) -> None:
    """0002 only adds: an order written under 0001 reads, after the upgrade, as the domain's
    defaults say (no expiry, ours, never sent, nothing reported filled)."""
    engine = create_engine(sync_url(url))
    with engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.exec_driver_sql(
            "INSERT INTO orders (id, client_order_id, intent_id, symbol, side, order_type, "
            "quantity, purpose, created_ts, trace_id, reduce_only, price, stop_price, status, "
            "filled_qty, avg_fill_price, fees, updated_ts, exchange_order_id, reason, tag, "
            "history) VALUES ('o-1', 'c-1', 'i-1', 'BTCUSDT', 'BUY', 'MARKET', 0.1, 'ENTRY', "
            "5, 'tr', 0, NULL, NULL, 'SUBMITTED', 0.0, 0.0, 0.0, 6, NULL, '', '', "
            "'[[\"NEW\", 5]]')")
    upgrade(url)
    async with SqlTradeStore(url) as store:
        [order] = await store.orders()
    assert order == Order("o-1", "c-1", "i-1", "BTCUSDT", Side.BUY, OrderType.MARKET, 0.1,
                          IntentPurpose.ENTRY, 5, "tr", status=OrderStatus.SUBMITTED,
                          updated_ts=6, history=[(OrderStatus.NEW, 5)])
    assert (order.expires_at, order.origin, order.sent_ts, order.venue_filled_qty) == (
        0, OrderOrigin.OURS, 0, 0.0)
