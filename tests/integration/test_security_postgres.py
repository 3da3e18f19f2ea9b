"""deploy/postgres/roles.sql on a real PostgreSQL: migrations run as the owner role, the
services' role can read and write trading records but cannot delete them, truncate, or change
the schema; the backup role can only read.

Role names get a random suffix here (roles are cluster-wide and the test server is shared);
everything else is the shipped SQL, run through psql as the init hook runs it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.engine import make_url

from quantum_trader.domain.enums import Direction
from quantum_trader.domain.models import Signal
from quantum_trader.domain.records import OutboundMessage
from quantum_trader.store import SqlTradeStore
from quantum_trader.store.migrate import upgrade_async

pytestmark = pytest.mark.integration

ADMIN_DSN = os.environ.get("QT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
ROLES_SQL = Path(__file__).resolve().parents[2] / "deploy" / "postgres" / "roles.sql"


@dataclass
class Db:
    name: str
    owner: str
    app: str
    backup: str
    monitor: str
    password: str

    def dsn(self, role: str) -> str:
        url = make_url(ADMIN_DSN).set(username=role, password=self.password,
                                      database=self.name)
        return url.render_as_string(hide_password=False)

    def sa_url(self, role: str) -> str:
        return self.dsn(role).replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Db]:
    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("psql is not installed (apt-get install postgresql-client)")
    suffix = secrets.token_hex(4)
    d = Db(f"qt_sec_{suffix}", f"qt_owner_{suffix}", f"qt_app_{suffix}", f"qt_backup_{suffix}",
           f"qt_monitor_{suffix}", "pw-" + secrets.token_urlsafe(12))
    admin = await asyncpg.connect(ADMIN_DSN, timeout=10)
    await admin.execute(f'CREATE DATABASE "{d.name}"')
    sql = ROLES_SQL.read_text()
    for role in ("qt_owner", "qt_app", "qt_backup", "qt_monitor"):
        sql = sql.replace(role, f"{role}_{suffix}")
    (tmp_path / "roles.sql").write_text(sql)
    try:
        r = await asyncio.to_thread(
            subprocess.run,
            [psql, ADMIN_DSN, "-v", "ON_ERROR_STOP=1", "-v", f"dbname={d.name}",
             "-v", f"owner_password={d.password}", "-v", f"app_password={d.password}",
             "-v", f"backup_password={d.password}", "-v", f"monitor_password={d.password}",
             "-f", str(tmp_path / "roles.sql")],
            capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        yield d
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{d.name}" WITH (FORCE)')
        for role in (d.owner, d.app, d.backup, d.monitor):
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_services_role_is_least_privilege(db: Db) -> None:
    await upgrade_async(db.sa_url(db.owner))  # `quantum-trader db upgrade` as qt_owner
    store = SqlTradeStore(db.sa_url(db.app))
    await store.open()  # the services' role passes the schema check
    try:
        sig = Signal("sig-1", "BTCUSDT", Direction.LONG, 0.7, 1, 2, 100.0, "t", "trace")
        await store.write([sig])
        await store.write([sig])  # upserts need UPDATE: allowed
        assert [s.id for s in await store.signals()] == ["sig-1"]
    finally:
        await store.close()

    app = await asyncpg.connect(db.dsn(db.app), timeout=10)
    try:
        for stmt in ("DELETE FROM signals", "TRUNCATE signals", "DROP TABLE signals",
                     "ALTER TABLE signals ADD COLUMN x int", "CREATE TABLE evil (x int)",
                     "UPDATE alembic_version SET version_num = 'x'",
                     f'CREATE DATABASE "{db.name}_x"', "CREATE ROLE intruder"):
            with pytest.raises(asyncpg.PostgresError, match=r"permission denied|must be owner"):
                await app.execute(stmt)
        assert await app.fetchval("SELECT count(*) FROM signals") == 1
    finally:
        await app.close()

    backup = await asyncpg.connect(db.dsn(db.backup), timeout=10)
    try:
        assert await backup.fetchval("SELECT count(*) FROM signals") == 1
        with pytest.raises(asyncpg.PostgresError, match="permission denied"):
            await backup.execute("INSERT INTO audit_events SELECT * FROM audit_events")
    finally:
        await backup.close()

    monitor = await asyncpg.connect(db.dsn(db.monitor), timeout=10)
    try:  # postgres_exporter: server statistics yes, trading data no
        assert await monitor.fetchval("SELECT count(*) FROM pg_stat_database") > 0
        assert await monitor.fetchval("SELECT count(*) FROM pg_stat_activity") > 0
        with pytest.raises(asyncpg.PostgresError, match="permission denied"):
            await monitor.fetchval("SELECT count(*) FROM signals")
    finally:
        await monitor.close()


async def test_services_role_may_clear_the_outbox_and_nothing_else(db: Db) -> None:
    """Migration 0002 gives the services' role DELETE on the outbox alone: a published message
    is done with, trade history never is."""
    await upgrade_async(db.sa_url(db.owner))
    store = SqlTradeStore(db.sa_url(db.app))
    await store.open()
    try:
        await store.write([OutboundMessage("executions", "m-1", "fill", {"n": 1}, 1)])
        [(seq, _)] = await store.outbox_pending()
        await store.outbox_done([seq])
        assert await store.outbox_pending() == []
    finally:
        await store.close()

    app = await asyncpg.connect(db.dsn(db.app), timeout=10)
    try:
        for table in ("venue_trades", "funding_payments", "cursors", "orders", "audit_events"):
            with pytest.raises(asyncpg.PostgresError, match="permission denied"):
                await app.execute(f"DELETE FROM {table}")
    finally:
        await app.close()
    backup = await asyncpg.connect(db.dsn(db.backup), timeout=10)
    try:
        with pytest.raises(asyncpg.PostgresError, match="permission denied"):
            await backup.execute("DELETE FROM outbox")
    finally:
        await backup.close()
