"""A signal's suggested take-profit distance (a strategy's target hint).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 00:00:00

Backward compatible: one nullable column; a release still on 0003's code never writes it and
reads signals without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("signals", sa.Column("target_distance", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("signals") as batch:  # SQLite rebuilds the table
        batch.drop_column("target_distance")
