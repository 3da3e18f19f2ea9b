"""Engine factory shared by the store and the migrations, so both see the same SQLite setup."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from quantum_trader.store.errors import StoreError
from quantum_trader.store.urls import async_url, redact

SQLITE_BUSY_TIMEOUT_MS = 10_000

# busy_timeout first so switching to WAL waits for other connections instead of failing.
# WAL lets readers (dashboard, backups) run while the node writes. synchronous=NORMAL is safe
# against process crashes in WAL mode; only an OS crash or power loss can drop the last commits,
# which is the embedded-mode trade-off (production uses PostgreSQL).
_SQLITE_PRAGMAS = (
    f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module, which would otherwise not BEGIN
    # before DDL (migrations would not be atomic); SQLAlchemy emits BEGIN below instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


def make_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """An async engine for a SQLite or PostgreSQL URL (sync driver names are translated)."""
    u = async_url(url) if isinstance(url, str) else url
    backend = u.get_backend_name()
    if backend == "sqlite":
        engine = create_async_engine(u, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        return engine
    if backend == "postgresql":
        # No pool_pre_ping (a round trip on every checkout, on the order path): the store
        # retries a transaction once when it finds its connection dead (SqlTradeStore).
        # Bounded waits: a database that restarts must not hold a service (and its lock on
        # the books) for asyncpg's default minute; the caller retries.
        connect_args = {"timeout": 5, "command_timeout": 30, **kwargs.pop("connect_args", {})}
        return create_async_engine(u, connect_args=connect_args, **kwargs)
    raise StoreError(f"unsupported database {redact(u)!r}: use sqlite or postgresql")
