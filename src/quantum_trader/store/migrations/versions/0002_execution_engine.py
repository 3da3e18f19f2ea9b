"""The execution engine's records: venue trades, funding payments, cursors, the outbox, and
what orders gained (expiry, origin, send time, the venue's cumulative fill).

Revision ID: 0002
Revises: 0001
Create Date: 2024-07-01 00:00:00

Backward compatible: only additions. The new order columns have server defaults (what an order
written before them meant: no expiry, ours, never sent, nothing reported filled), so a release
still on 0001's code keeps writing orders into a migrated database, and the new tables are
unknown to it.

On PostgreSQL the services' role may delete from the outbox (a published message is done
with; it is not trade history): whoever received INSERT on the new table through the owner's
default privileges (``deploy/postgres/roles.sql``: qt_app) gets DELETE on it too. No other
table gains DELETE.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ORDER_COLUMNS = ("expires_at", "origin", "sent_ts", "venue_filled_qty")

_GRANT_OUTBOX_DELETE = """
DO $$
DECLARE
    writer regrole;
BEGIN
    FOR writer IN
        SELECT DISTINCT a.grantee::regrole
        FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) AS a
        WHERE c.oid = 'outbox'::regclass AND a.privilege_type = 'INSERT'
          AND a.grantee <> c.relowner AND a.grantee <> 0
    LOOP
        EXECUTE format('GRANT DELETE ON outbox TO %s', writer);
    END LOOP;
END
$$
"""


def _ms(name: str, nullable: bool = False) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=nullable)


def _num(name: str, nullable: bool = False) -> sa.Column[float]:
    return sa.Column(name, sa.Double(), nullable=nullable)


def _str(name: str, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(), nullable=nullable)


def _index(table: str, *columns: str) -> None:
    op.create_index(f"ix_{table}_{'_'.join(columns)}", table, list(columns))


def upgrade() -> None:
    op.add_column("orders", sa.Column("expires_at", sa.BigInteger(), nullable=False,
                                      server_default=sa.text("0")))
    op.add_column("orders", sa.Column("origin", sa.String(), nullable=False,
                                      server_default="OURS"))
    op.add_column("orders", sa.Column("sent_ts", sa.BigInteger(), nullable=False,
                                      server_default=sa.text("0")))
    op.add_column("orders", sa.Column("venue_filled_qty", sa.Double(), nullable=False,
                                      server_default=sa.text("0")))

    _index("audit_events", "kind", "seq")

    op.create_table(
        "venue_trades",
        _str("symbol"),
        _str("trade_id"),
        _str("venue_order_id"),
        _str("client_order_id"),
        _str("side"),
        _num("quantity"),
        _num("price"),
        _num("fee"),
        _str("liquidity"),
        _ms("ts"),
        sa.PrimaryKeyConstraint("symbol", "trade_id", name="pk_venue_trades"),
    )
    _index("venue_trades", "ts")
    _index("venue_trades", "symbol", "ts")

    op.create_table(
        "funding_payments",
        _str("id"),
        _str("symbol"),
        _ms("ts"),
        _num("rate"),
        _num("mark_price"),
        _num("position_qty"),
        _num("amount"),
        sa.PrimaryKeyConstraint("id", name="pk_funding_payments"),
    )
    _index("funding_payments", "ts")
    _index("funding_payments", "symbol", "ts")

    op.create_table(
        "cursors",
        _str("name"),
        _str("value"),
        _ms("ts"),
        sa.PrimaryKeyConstraint("name", name="pk_cursors"),
    )

    op.create_table(
        "outbox",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        _str("id"),
        _str("topic"),
        _str("type"),
        sa.Column("payload", sa.JSON(), nullable=False),
        _ms("ts"),
        _str("trace_id"),
        sa.Column("source", sa.String(), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("seq", name="pk_outbox"),
        sa.UniqueConstraint("id", name="uq_outbox_id"),
        sqlite_autoincrement=True,  # a deleted seq is never handed out again
    )
    op.create_index("ix_outbox_source_seq", "outbox", ["source", "seq"])
    if op.get_context().dialect.name == "postgresql":
        op.execute(_GRANT_OUTBOX_DELETE)


def downgrade() -> None:
    for table in ("outbox", "cursors", "funding_payments", "venue_trades"):
        op.drop_table(table)  # drops the table's indexes and grants with it
    op.drop_index("ix_audit_events_kind_seq", table_name="audit_events")
    # SQLite cannot drop every column in place: batch mode copies the table instead.
    with op.batch_alter_table("orders") as batch:
        for column in _ORDER_COLUMNS:
            batch.drop_column(column)
