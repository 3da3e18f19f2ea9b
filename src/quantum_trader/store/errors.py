"""Errors the store raises, so callers never need to import SQLAlchemy to handle them."""

from __future__ import annotations

UPGRADE_COMMAND = "quantum-trader db upgrade"


class StoreError(RuntimeError):
    """The store could not do what was asked; nothing was written."""


class SchemaOutOfDate(StoreError):
    """The database schema is not at the migration this code was written for."""

    def __init__(self, current: str | None, head: str, *, known: bool = True) -> None:
        self.current = current
        self.head = head
        if known:
            msg = (
                f"database schema is at revision {current or 'none (empty database)'}, "
                f"this version needs {head}: run `{UPGRADE_COMMAND}`"
            )
        else:
            # Rolled-back code against a database migrated by a newer release.
            msg = (
                f"database schema is at revision {current}, which this version of "
                f"quantum-trader does not know (its latest is {head}): upgrade quantum-trader"
            )
        super().__init__(msg)
