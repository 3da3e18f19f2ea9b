"""Alembic environment of the trade store.

``quantum_trader.store.migrate`` hands us an open connection in
``config.attributes["connection"]`` (the normal path). Run by the ``alembic`` command line
instead, we connect to ``sqlalchemy.url`` through the async driver ourselves.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from quantum_trader.store.engine import make_engine
from quantum_trader.store.schema import metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode lets future migrations copy-and-swap.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def _run_migrations(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_url(url: str) -> None:
    engine = make_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run_migrations(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: set sqlalchemy.url or pass a connection")
    asyncio.run(_run_from_url(url))


def run_migrations_offline() -> None:
    """Print the SQL (``alembic upgrade --sql``) for a DBA to review and apply."""
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
