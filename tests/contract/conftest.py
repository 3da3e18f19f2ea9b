"""The ``store`` fixture of the store contract suite: the same cases on SQLite and PostgreSQL.

SQLite gets a fresh file per test, created and migrated by ``SqlTradeStore(url, create=True)``
(embedded mode). PostgreSQL (``QT_TEST_PG_DSN``, default the local server as user postgres)
gets one database per test module, created, migrated with ``quantum_trader.store.migrate`` and
dropped afterwards; its tables are emptied before each test. The PostgreSQL cases fail, never
skip, when the server is unreachable: it is the production shape, and ``make test`` starts it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from quantum_trader.store import SqlTradeStore, sqlite_url
from quantum_trader.store.migrate import upgrade
from quantum_trader.store.schema import TABLES

#: An admin connection (may CREATE DATABASE). Trust auth on localhost by default.
ADMIN_DSN = os.environ.get("QT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass(frozen=True, slots=True)
class Backend:
    name: str  # "sqlite" or "postgresql"
    url: str


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _on_admin(statement: str) -> None:
    try:
        asyncio.run(_admin(statement))
    except (OSError, asyncpg.PostgresError) as exc:
        ci = " (CI is set)" if os.environ.get("CI") else ""
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_DSN}{ci}: {exc}. Start it or set "
            "QT_TEST_PG_DSN to an admin DSN; the store contract suite does not skip.",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A database for this module, migrated to head, dropped afterwards."""
    name = f"qt_contract_{secrets.token_hex(6)}"
    _on_admin(f'CREATE DATABASE "{name}"')
    url = make_url(ADMIN_DSN).set(drivername="postgresql+asyncpg", database=name)
    rendered = url.render_as_string(hide_password=False)
    try:
        upgrade(rendered)
        yield rendered
    finally:
        _on_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", sqlite_url(tmp_path / "contract.db"))
    return Backend("postgresql", request.getfixturevalue("pg_database"))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[SqlTradeStore]:
    if backend.name == "sqlite":
        s = SqlTradeStore(backend.url, create=True)
        await s.open()
    else:
        s = SqlTradeStore(backend.url)  # migrated already: the production path
        await s.open()
        names = ", ".join(f'"{tb.name}"' for tb in TABLES)
        async with s.engine.begin() as conn:  # what an earlier test left behind
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
    try:
        yield s
    finally:
        await s.close()
