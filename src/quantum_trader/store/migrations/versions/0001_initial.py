"""Initial trade store schema.

Revision ID: 0001
Revises:
Create Date: 2024-06-01 00:00:00

Written by hand and frozen: later schema changes get a new revision, never an edit here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ms(name: str, nullable: bool = False) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=nullable)


def _num(name: str, nullable: bool = False) -> sa.Column[float]:
    return sa.Column(name, sa.Double(), nullable=nullable)


def _str(name: str, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(), nullable=nullable)


def _index(table: str, *columns: str) -> None:
    op.create_index(f"ix_{table}_{'_'.join(columns)}", table, list(columns))


def upgrade() -> None:
    op.create_table(
        "signals",
        _str("id"),
        _str("symbol"),
        _str("direction"),
        _num("confidence"),
        _ms("ts"),
        _ms("expires_at"),
        _num("price"),
        _str("source"),
        _str("trace_id"),
        _str("timeframe"),
        _num("stop_distance", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_signals"),
    )
    _index("signals", "trace_id")
    _index("signals", "symbol", "ts")

    op.create_table(
        "risk_decisions",
        _str("id"),
        _str("subject_id"),
        sa.Column("approved", sa.Boolean(), nullable=False),
        _str("reason"),
        sa.Column("detail", sa.Text(), nullable=False),
        _ms("ts"),
        _str("trace_id"),
        sa.Column("intent", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_risk_decisions"),
    )
    _index("risk_decisions", "trace_id")
    _index("risk_decisions", "subject_id")

    op.create_table(
        "orders",
        _str("id"),
        _str("client_order_id"),
        _str("intent_id"),
        _str("symbol"),
        _str("side"),
        _str("order_type"),
        _num("quantity"),
        _str("purpose"),
        _ms("created_ts"),
        _str("trace_id"),
        sa.Column("reduce_only", sa.Boolean(), nullable=False),
        _num("price", nullable=True),
        _num("stop_price", nullable=True),
        _str("status"),
        _num("filled_qty"),
        _num("avg_fill_price"),
        _num("fees"),
        _ms("updated_ts"),
        _str("exchange_order_id", nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        _str("tag"),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_orders"),
        sa.UniqueConstraint("client_order_id", name="uq_orders_client_order_id"),
    )
    _index("orders", "trace_id")
    _index("orders", "status")
    _index("orders", "symbol", "created_ts")

    op.create_table(
        "fills",
        _str("id"),
        _str("order_id"),
        _str("client_order_id"),
        _str("symbol"),
        _str("side"),
        _num("quantity"),
        _num("price"),
        _num("fee"),
        _str("liquidity"),
        _ms("ts"),
        _str("trace_id"),
        _num("realized_pnl"),
        sa.Column("is_liquidation", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fills"),
    )
    _index("fills", "trace_id")
    _index("fills", "order_id")
    _index("fills", "symbol", "ts")

    op.create_table(
        "positions",
        _str("symbol"),
        _num("qty"),
        _num("avg_entry"),
        _num("realized_pnl"),
        _num("fees"),
        _num("funding"),
        _ms("opened_ts"),
        _num("last_price"),
        _num("leverage"),
        _ms("ts"),
        _str("trace_id"),
        _num("stop_loss", nullable=True),
        _num("take_profit", nullable=True),
        sa.PrimaryKeyConstraint("symbol", name="pk_positions"),
    )

    op.create_table(
        "equity_snapshots",
        sa.Column("ts", sa.BigInteger(), autoincrement=False, nullable=False),
        _num("equity"),
        _num("wallet"),
        _num("unrealized"),
        _num("drawdown"),
        _num("gross_exposure"),
        sa.PrimaryKeyConstraint("ts", name="pk_equity_snapshots"),
    )

    op.create_table(
        "closed_trades",
        _str("id"),
        _str("symbol"),
        _str("side"),
        _num("quantity"),
        _num("entry_price"),
        _num("exit_price"),
        _ms("opened_ts"),
        _ms("closed_ts"),
        _num("realized_pnl"),
        _num("fees"),
        _num("funding"),
        _str("exit_reason"),
        _str("trace_id"),
        sa.PrimaryKeyConstraint("id", name="pk_closed_trades"),
    )
    _index("closed_trades", "symbol", "closed_ts")
    _index("closed_trades", "closed_ts")

    op.create_table(
        "audit_events",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        _str("key"),
        _str("kind"),
        _ms("ts"),
        sa.Column("detail", sa.JSON(), nullable=False),
        _str("trace_id"),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_events"),
        sa.UniqueConstraint("key", name="uq_audit_events_key"),
    )
    _index("audit_events", "kind", "ts")

    op.create_table(
        "checkpoints",
        _str("node"),
        sa.Column("last_bar_ts", sa.JSON(), nullable=False),
        _num("wallet"),
        _num("peak_equity"),
        _num("max_drawdown"),
        _ms("day_start_ts"),
        _num("day_start_equity"),
        sa.Column("trading_state", sa.Integer(), nullable=False),
        _num("fees_paid"),
        _num("funding_paid"),
        _ms("ts"),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("node", name="pk_checkpoints"),
    )


def downgrade() -> None:
    for table in (
        "checkpoints",
        "audit_events",
        "closed_trades",
        "equity_snapshots",
        "positions",
        "fills",
        "orders",
        "risk_decisions",
        "signals",
    ):
        op.drop_table(table)  # drops the table's indexes with it
