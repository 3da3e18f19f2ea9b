"""SQL tables of the trade store (SQLAlchemy Core), portable between SQLite and PostgreSQL.

Conventions, chosen so the same schema works on both databases and round-trips exactly:

- times are ``BigInteger`` epoch milliseconds, like the domain (no time zones to get wrong);
- prices and quantities are ``Double`` (IEEE double, the same as a Python ``float``);
- ids are unbounded ``String``; enums are stored as their string value;
- dict, list and tuple fields (and nested dataclasses) are ``JSON``.

Column names are the domain's field names: ``mapping.py`` derives every row from that.

Primary keys are the domain ids, so replaying a message writes nothing new. There are no foreign
keys on purpose: the store records what happened, and reconciliation can report a fill for an
order this node never saw.

``migrations/versions`` must describe exactly these tables; a test compares the two.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

#: Deterministic constraint names, so migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only auto-increments an ``INTEGER PRIMARY KEY``; PostgreSQL gets a BIGSERIAL.
_SEQ = BigInteger().with_variant(Integer(), "sqlite")


def _ms(name: str, *, nullable: bool = False) -> Column[int]:
    return Column(name, BigInteger, nullable=nullable)


def _num(name: str, *, nullable: bool = False) -> Column[float]:
    return Column(name, Double, nullable=nullable)


def _str(name: str, *, nullable: bool = False) -> Column[str]:
    return Column(name, String, nullable=nullable)


signals = Table(
    "signals",
    metadata,
    Column("id", String, primary_key=True),
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
    _num("target_distance", nullable=True),
    Index(None, "trace_id"),
    Index(None, "symbol", "ts"),
)

risk_decisions = Table(
    "risk_decisions",
    metadata,
    Column("id", String, primary_key=True),
    _str("subject_id"),
    Column("approved", Boolean, nullable=False),
    _str("reason"),
    Column("detail", Text, nullable=False),
    _ms("ts"),
    _str("trace_id"),
    # Every OrderIntent field, so the approved intent can be rebuilt as it was signed.
    Column("intent", JSON(none_as_null=True), nullable=True),
    Column("checks", JSON, nullable=False),
    Index(None, "trace_id"),
    Index(None, "subject_id"),
)

orders = Table(
    "orders",
    metadata,
    Column("id", String, primary_key=True),
    _str("client_order_id"),
    _str("intent_id"),
    _str("symbol"),
    _str("side"),
    _str("order_type"),
    _num("quantity"),
    _str("purpose"),
    _ms("created_ts"),
    _str("trace_id"),
    Column("reduce_only", Boolean, nullable=False),
    _num("price", nullable=True),
    _num("stop_price", nullable=True),
    _str("status"),
    _num("filled_qty"),
    _num("avg_fill_price"),
    _num("fees"),
    _ms("updated_ts"),
    _str("exchange_order_id", nullable=True),
    Column("reason", Text, nullable=False),
    _str("tag"),
    # [[status, ts], ...]: the states the order left and when it entered them.
    Column("history", JSON, nullable=False),
    # Added in 0002 with server defaults, so rows written before it read as they meant.
    Column("expires_at", BigInteger, nullable=False, server_default=text("0")),
    Column("origin", String, nullable=False, server_default="OURS"),
    Column("sent_ts", BigInteger, nullable=False, server_default=text("0")),
    Column("venue_filled_qty", Double, nullable=False, server_default=text("0")),
    # Client order ids are derived from intent ids: two orders sharing one is a double order.
    UniqueConstraint("client_order_id"),
    Index(None, "trace_id"),
    Index(None, "status"),
    Index(None, "symbol", "created_ts"),
)

fills = Table(
    "fills",
    metadata,
    Column("id", String, primary_key=True),
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
    Column("is_liquidation", Boolean, nullable=False),
    Index(None, "trace_id"),
    Index(None, "order_id"),
    Index(None, "symbol", "ts"),
)

positions = Table(
    "positions",
    metadata,
    # One row per symbol: the latest snapshot (history lives in fills and closed_trades).
    Column("symbol", String, primary_key=True),
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
)

equity_snapshots = Table(
    "equity_snapshots",
    metadata,
    Column("ts", BigInteger, primary_key=True, autoincrement=False),
    _num("equity"),
    _num("wallet"),
    _num("unrealized"),
    _num("drawdown"),
    _num("gross_exposure"),
)

closed_trades = Table(
    "closed_trades",
    metadata,
    Column("id", String, primary_key=True),
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
    Index(None, "symbol", "closed_ts"),
    Index(None, "closed_ts"),
)

audit_events = Table(
    "audit_events",
    metadata,
    # Audit events have no id of their own: ``seq`` keeps insertion order and ``key`` (a hash
    # of the content) makes a replayed event a no-op.
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    _str("key"),
    _str("kind"),
    _ms("ts"),
    Column("detail", JSON, nullable=False),
    _str("trace_id"),
    UniqueConstraint("key"),
    Index(None, "kind", "ts"),
    # The latest event of a kind by insertion order (``trading_state()``), without a scan.
    Index(None, "kind", "seq"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("node", String, primary_key=True),
    Column("last_bar_ts", JSON, nullable=False),
    _num("wallet"),
    _num("peak_equity"),
    _num("max_drawdown"),
    _ms("day_start_ts"),
    _num("day_start_equity"),
    Column("trading_state", Integer, nullable=False),
    _num("fees_paid"),
    _num("funding_paid"),
    _ms("ts"),
    Column("extra", JSON, nullable=False),
)

venue_trades = Table(
    "venue_trades",
    metadata,
    # One execution on the venue, booked once: (symbol, trade id) is its identity for ever.
    Column("symbol", String, primary_key=True),
    Column("trade_id", String, primary_key=True),
    _str("venue_order_id"),
    _str("client_order_id"),
    _str("side"),
    _num("quantity"),
    _num("price"),
    _num("fee"),
    _str("liquidity"),
    _ms("ts"),
    Index(None, "ts"),
    Index(None, "symbol", "ts"),
)

funding_payments = Table(
    "funding_payments",
    metadata,
    # The venue's id of the payment, or "<symbol>:<ts>" when it gives none.
    Column("id", String, primary_key=True),
    _str("symbol"),
    _ms("ts"),
    _num("rate"),
    _num("mark_price"),
    _num("position_qty"),
    _num("amount"),
    Index(None, "ts"),
    Index(None, "symbol", "ts"),
)

cursors = Table(
    "cursors",
    metadata,
    # How far a reader has got through a venue's stream (e.g. trades:XRPUSDT -> trade id).
    Column("name", String, primary_key=True),
    _str("value"),
    _ms("ts"),
)

outbox = Table(
    "outbox",
    metadata,
    # Bus messages committed with their cause, published from here, deleted once the bus has
    # them. ``seq`` is commit order; ``id`` (the message id) makes journaling one twice a no-op.
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    _str("id"),
    _str("topic"),
    _str("type"),
    Column("payload", JSON, nullable=False),
    _ms("ts"),
    _str("trace_id"),
    Column("source", String, nullable=False, server_default=""),
    UniqueConstraint("id"),
    Index(None, "source", "seq"),
    # Rows are deleted here: SQLite must never hand a deleted seq out again (a publisher
    # still holding it would delete the new message), which plain rowids would once emptied.
    sqlite_autoincrement=True,
)

bars = Table(
    "bars",
    metadata,
    # Every bar a node saw (warm-up and traded), so parity can replay exactly those. Added in
    # 0003: a release before it never writes here.
    Column("symbol", String, primary_key=True),
    Column("timeframe", String, primary_key=True),
    Column("ts", BigInteger, primary_key=True, autoincrement=False),
    _num("open"),
    _num("high"),
    _num("low"),
    _num("close"),
    _num("volume"),
    _str("role"),
    _ms("received_ms"),
    _ms("decided_ms"),
    Column("late", Text, nullable=False),
    Index(None, "role", "ts"),
)

#: Every table, in the order ``counts()`` reports them.
TABLES: tuple[Table, ...] = (
    signals,
    risk_decisions,
    orders,
    fills,
    positions,
    equity_snapshots,
    closed_trades,
    audit_events,
    checkpoints,
    venue_trades,
    funding_payments,
    cursors,
    outbox,
    bars,
)
