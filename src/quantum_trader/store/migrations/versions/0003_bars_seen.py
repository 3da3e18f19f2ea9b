"""The bars a node saw: what ``parity`` replays through the backtester.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-15 00:00:00

Backward compatible: one new table, nothing else changes, so a release still on 0002's code
keeps working on a migrated database (it never writes bars; parity then has nothing to replay
for its runs and says so).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bars",
        sa.Column("symbol", sa.String(), nullable=False),
        sa.Column("timeframe", sa.String(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("open", sa.Double(), nullable=False),
        sa.Column("high", sa.Double(), nullable=False),
        sa.Column("low", sa.Double(), nullable=False),
        sa.Column("close", sa.Double(), nullable=False),
        sa.Column("volume", sa.Double(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.Column("decided_ms", sa.BigInteger(), nullable=False),
        sa.Column("late", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("symbol", "timeframe", "ts", name="pk_bars"),
    )
    op.create_index("ix_bars_role_ts", "bars", ["role", "ts"])


def downgrade() -> None:
    op.drop_table("bars")  # its index goes with it
