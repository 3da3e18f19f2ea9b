"""The SQL trade store: schema, Alembic migrations, and ``SqlTradeStore`` (SQLite/PostgreSQL)."""

from quantum_trader.store.errors import SchemaOutOfDate, StoreError
from quantum_trader.store.migrate import current_revision, head_revision, upgrade
from quantum_trader.store.protocol import StoreEvent, TradeStore
from quantum_trader.store.sql import SqlTradeStore
from quantum_trader.store.urls import sqlite_url

__all__ = [
    "SchemaOutOfDate",
    "SqlTradeStore",
    "StoreError",
    "StoreEvent",
    "TradeStore",
    "current_revision",
    "head_revision",
    "sqlite_url",
    "upgrade",
]
