"""Alembic migrations run from code: no ``alembic.ini`` is needed at runtime.

The migration scripts ship inside the package (``store/migrations``). Migrations run on the
store's own async driver through ``run_sync``, so no second (sync) database driver is needed.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from quantum_trader.store.engine import make_engine
from quantum_trader.store.urls import ensure_sqlite_dir

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")

# Two services starting at once on PostgreSQL must not both run the same migration:
# the upgrade holds this transaction-scoped advisory lock.
_PG_MIGRATION_LOCK = 0x71745F6D6967  # "qt_mig"

T = TypeVar("T")

# Alembic keeps the running migration in a module global (``alembic.context``), so two upgrades
# in one process must never interleave: they would clobber each other and hang. Coroutines on
# one loop queue on an asyncio lock (without blocking the loop); other threads on a plain lock.
_thread_lock = threading.Lock()
_loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _loop_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _loop_locks.get(loop)
    if lock is None:
        lock = _loop_locks[loop] = asyncio.Lock()
    return lock


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations (usable with ``alembic.command``;
    pass a connection in ``config.attributes["connection"]``)."""
    cfg = Config()
    # "%" would be read as configparser interpolation.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest migration this code ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships 0001
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def _revision_of(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _upgrade_connection(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    with _thread_lock:
        command.upgrade(cfg, "head")


async def upgrade_engine(engine: AsyncEngine) -> None:
    """Migrate ``engine``'s database to head in one transaction (DDL is transactional on both
    PostgreSQL and, with our engine setup, SQLite)."""
    async with _loop_lock(), engine.begin() as conn:
        await conn.run_sync(_upgrade_connection)


async def engine_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_revision_of)


async def upgrade_async(url: str) -> None:
    ensure_sqlite_dir(url)
    engine = make_engine(url, poolclass=NullPool)
    try:
        await upgrade_engine(engine)
    finally:
        await engine.dispose()


async def current_revision_async(url: str) -> str | None:
    engine = make_engine(url, poolclass=NullPool)
    try:
        return await engine_revision(engine)
    finally:
        await engine.dispose()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside an event loop (a notebook, an async test): asyncio.run would refuse,
    # so run on a private loop in a worker thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def upgrade(url: str) -> None:
    """Migrate the database at ``url`` to the latest schema (``quantum-trader db upgrade``)."""
    _run(upgrade_async(url))


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at, or None for a database never migrated."""
    return _run(current_revision_async(url))
