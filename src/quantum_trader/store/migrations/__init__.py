"""Alembic migration scripts of the trade store (run them with ``quantum_trader.store.migrate``)."""
