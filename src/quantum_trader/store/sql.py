"""``SqlTradeStore``: the ``TradeStore`` port on SQLAlchemy async, for SQLite and PostgreSQL.

Every event type has one sink (``_SINKS``): its table through its ``RowMapping``
(``mapping.py``), its key, and what a second write of that key does. State is upserted, the
last write wins (orders, positions, equity points, checkpoints, cursors); facts are
insert-or-ignore, the first write wins (everything else: a replayed fact changes nothing).
``write`` builds every row before it opens the transaction, so a malformed event fails the
batch without touching the database, then runs one executemany per table, all in one
transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import Table, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Executable, Select

from quantum_trader.domain.enums import OrderStatus
from quantum_trader.domain.models import Fill, FundingPayment, RiskDecision, Signal
from quantum_trader.domain.orders import Order
from quantum_trader.domain.portfolio import EquityPoint
from quantum_trader.domain.records import (
    AuditEvent,
    Checkpoint,
    ClosedTrade,
    Cursor,
    OutboundMessage,
    PositionSnapshot,
    SeenBar,
)
from quantum_trader.domain.venue import VenueTrade
from quantum_trader.store import schema as t
from quantum_trader.store.engine import make_engine
from quantum_trader.store.errors import SchemaOutOfDate, StoreError
from quantum_trader.store.mapping import Row, RowMapping, plain
from quantum_trader.store.migrate import (
    engine_revision,
    head_revision,
    known_revisions,
    upgrade_engine,
)
from quantum_trader.store.protocol import StoreEvent
from quantum_trader.store.urls import async_url, ensure_sqlite_dir, redact, sqlite_file

_OPEN_STATUSES = [s.value for s in OrderStatus if s.is_open]
TRADING_STATE = "trading_state"


def audit_key(a: AuditEvent) -> str:
    """Content hash of an audit event: its identity, since the domain gives it no id."""
    canonical = json.dumps(
        [a.kind, int(a.ts), plain(a.detail), a.trace_id], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def funding_key(p: FundingPayment) -> str:
    """A funding payment's key: the venue's id, or "<symbol>:<ts>" (what the simulated
    exchange uses) when the venue gave none. A payment without an id reads back with it."""
    return p.id or f"{p.symbol}:{int(p.ts)}"


# --- the one mapping per table -------------------------------------------------------------

SIGNALS = RowMapping(Signal, t.signals)
DECISIONS = RowMapping(RiskDecision, t.risk_decisions)
ORDERS = RowMapping(Order, t.orders)
FILLS = RowMapping(Fill, t.fills)
POSITIONS = RowMapping(PositionSnapshot, t.positions)
EQUITY = RowMapping(EquityPoint, t.equity_snapshots)
TRADES = RowMapping(ClosedTrade, t.closed_trades)
AUDIT = RowMapping(AuditEvent, t.audit_events, computed={"key": audit_key})
CHECKPOINTS = RowMapping(Checkpoint, t.checkpoints)
VENUE_TRADES = RowMapping(VenueTrade, t.venue_trades)
FUNDING = RowMapping(FundingPayment, t.funding_payments, computed={"id": funding_key})
CURSORS = RowMapping(Cursor, t.cursors)
OUTBOX = RowMapping(OutboundMessage, t.outbox)
BARS = RowMapping(SeenBar, t.bars)


def _cause(exc: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's echo of the SQL and every parameter."""
    orig = getattr(exc, "orig", None)
    return f"{type(orig).__name__}: {orig}" if orig is not None else str(exc)


# --- write dispatch ------------------------------------------------------------------------


R = TypeVar("R")
E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class _Sink:
    """Where one event type goes: its table (through its mapping), its key, and upsert (last
    write wins) or insert-or-ignore (first write wins: replays of immutable facts change
    nothing)."""

    mapping: RowMapping[Any]
    key: tuple[str, ...]
    upsert: bool

    @property
    def table(self) -> Table:
        return self.mapping.table


_SINKS: dict[type, _Sink] = {
    Signal: _Sink(SIGNALS, ("id",), False),
    RiskDecision: _Sink(DECISIONS, ("id",), False),
    Order: _Sink(ORDERS, ("id",), True),
    Fill: _Sink(FILLS, ("id",), False),
    PositionSnapshot: _Sink(POSITIONS, ("symbol",), True),
    EquityPoint: _Sink(EQUITY, ("ts",), True),
    ClosedTrade: _Sink(TRADES, ("id",), False),
    AuditEvent: _Sink(AUDIT, ("key",), False),
    Checkpoint: _Sink(CHECKPOINTS, ("node",), True),
    VenueTrade: _Sink(VENUE_TRADES, ("symbol", "trade_id"), False),
    FundingPayment: _Sink(FUNDING, ("id",), False),
    Cursor: _Sink(CURSORS, ("name",), True),
    OutboundMessage: _Sink(OUTBOX, ("id",), False),
    SeenBar: _Sink(BARS, ("symbol", "timeframe", "ts"), False),
}


def _insert(dialect: str, table: Table) -> sqlite.Insert | postgresql.Insert:
    if dialect == "sqlite":
        return sqlite.insert(table)
    if dialect == "postgresql":
        return postgresql.insert(table)
    raise StoreError(f"unsupported dialect {dialect}")  # pragma: no cover - make_engine refuses


def _statement(dialect: str, sink: _Sink) -> Executable:
    stmt = _insert(dialect, sink.table)
    if not sink.upsert:
        return stmt.on_conflict_do_nothing(index_elements=list(sink.key))
    excluded = stmt.excluded
    updates = {
        c.name: excluded[c.name]
        for c in sink.table.c
        if c.name not in sink.key and not c.primary_key
    }
    return stmt.on_conflict_do_update(index_elements=list(sink.key), set_=updates)


def _row_of(mapping: RowMapping[E], event: E) -> Row:
    """``event``'s row; a StoreError naming the event when it cannot be one."""
    try:
        return mapping.to_row(event)
    except (TypeError, ValueError, AttributeError) as exc:
        raise StoreError(f"bad {type(event).__name__}: {exc}") from exc


def _group(events: Iterable[StoreEvent]) -> list[tuple[_Sink, list[Row]]]:
    """Rows per table, one per key. Within a batch the last event for a key wins: that is what
    sequential upserts would give, and PostgreSQL refuses one statement touching a row twice."""
    grouped: dict[Table, tuple[_Sink, dict[tuple[Any, ...], Row]]] = {}
    for event in events:
        sink = _SINKS.get(type(event))
        if sink is None:
            raise StoreError(f"cannot store {type(event).__name__}: not a StoreEvent")
        row = _row_of(sink.mapping, event)
        key = tuple(row[k] for k in sink.key)
        rows = grouped.setdefault(sink.table, (sink, {}))[1]
        if sink.upsert:
            rows.pop(key, None)  # re-insert so the final order follows the last write
            rows[key] = row
        else:
            rows.setdefault(key, row)
    return [(sink, list(rows.values())) for sink, rows in grouped.values()]


class SqlTradeStore:
    """The trade store on SQLite (embedded, WAL) or PostgreSQL (production).

    ``open()`` refuses a database whose schema is not at the latest migration, so a node never
    writes into tables it does not understand; ``create=True`` (embedded mode) migrates it
    instead.
    """

    def __init__(self, url: str, *, create: bool = False) -> None:
        try:
            self._url = async_url(url)
        except ArgumentError:
            # Not echoing the string: it may hold a password.
            raise StoreError(
                "invalid database URL (expected e.g. sqlite:///path or postgresql://user@host/db)"
            ) from None
        self._create = create
        self._engine: AsyncEngine | None = None
        self._statements: dict[Table, Executable] = {}
        self._record_decision: Executable | None = None
        self._claim_order: Executable | None = None

    def __repr__(self) -> str:
        return f"SqlTradeStore({redact(self._url)!r})"

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError(f"{self!r} is not open: call open() first")
        return self._engine

    async def open(self) -> None:
        if self._engine is not None:
            return
        engine = make_engine(self._url)
        try:
            await self._prepare(engine)
        except BaseException:
            await engine.dispose()
            raise
        dialect = engine.dialect.name
        self._statements = {s.table: _statement(dialect, s) for s in _SINKS.values()}
        # Inserts that say whether they inserted (built once, not per call).
        self._record_decision = (
            _insert(dialect, t.risk_decisions)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(t.risk_decisions.c.id)
        )
        self._claim_order = (
            _insert(dialect, t.orders)
            .on_conflict_do_nothing(index_elements=["client_order_id"])
            .returning(t.orders.c.id)
        )
        self._engine = engine

    async def _prepare(self, engine: AsyncEngine) -> None:
        db_file = sqlite_file(self._url)
        if db_file is not None and not self._create and not db_file.is_file():
            # Connecting would create an empty database: a reader must not write one.
            raise StoreError(f"no database at {db_file}")
        try:
            if self._create:
                ensure_sqlite_dir(self._url)
                await upgrade_engine(engine)
                return
            current, head = await engine_revision(engine), head_revision()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open {redact(self._url)}: {_cause(exc)}") from exc
        except OSError as exc:  # e.g. PostgreSQL not listening
            raise StoreError(f"cannot open {redact(self._url)}: {exc}") from exc
        if current != head:
            known = current is None or current in known_revisions()
            raise SchemaOutOfDate(current, head, known=known)

    async def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _transaction(self, work: Callable[[AsyncConnection], Awaitable[R]]) -> R:
        """Run ``work`` in one transaction. A connection the pool handed out dead (PostgreSQL
        restarted since it was last used) is detected by the failure itself and the work is
        retried once on a fresh one: cheaper than pinging on every checkout, and safe because
        a transaction on a dead connection cannot have committed."""
        for attempt in (1, 2):
            try:
                async with self.engine.begin() as conn:
                    return await work(conn)
            except DBAPIError as exc:
                if attempt == 1 and exc.connection_invalidated:
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def write(self, events: Sequence[StoreEvent]) -> None:
        # Rows are built before the transaction starts: a malformed event fails the batch
        # without touching the database.
        batches = _group(events)
        if not batches:
            return

        async def work(conn: AsyncConnection) -> None:
            for sink, rows in batches:
                # A list of parameter sets is one executemany per table.
                await conn.execute(self._statements[sink.table], rows)

        try:
            await self._transaction(work)
        except (SQLAlchemyError, OSError) as exc:
            # Writes are idempotent, so retrying the same batch is always safe.
            raise StoreError(
                f"write of {len(events)} events failed and was rolled back: {_cause(exc)}"
            ) from exc

    async def _claim(
        self, insert: Executable | None, row: Row, existing: Select[Any], what: str
    ) -> Mapping[str, Any] | None:
        """Insert ``row`` unless its key is taken; None if it went in, else the row on record.
        One round trip for the usual case (the insert says whether it inserted)."""
        if insert is None:
            raise StoreError(f"{self!r} is not open: call open() first")

        async def work(conn: AsyncConnection) -> list[Mapping[str, Any]]:
            if (await conn.execute(insert, row)).first() is not None:
                return []
            return list((await conn.execute(existing)).mappings().all())

        try:
            found = await self._transaction(work)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"recording {what} failed: {_cause(exc)}") from exc
        return found[0] if found else None

    async def record_decision(self, decision: RiskDecision) -> RiskDecision:
        """Put ``decision`` on record unless a decision with its id already is, and return
        the one on record: a redelivered signal gets the answer it got the first time."""
        row = _row_of(DECISIONS, decision)
        table = t.risk_decisions
        prior = await self._claim(self._record_decision, row,
                                  select(table).where(table.c.id == decision.id),
                                  f"decision {decision.id}")
        return decision if prior is None else DECISIONS.from_row(prior)

    async def claim_order(self, order: Order) -> Order:
        """Put ``order`` on record unless an order with its client id already is, and return
        the one on record: an intent never gets a second venue order, whatever restarted or
        was redelivered in between."""
        row = _row_of(ORDERS, order)
        c = t.orders.c
        existing = select(t.orders).where(c.client_order_id == row["client_order_id"])
        prior = await self._claim(self._claim_order, row, existing,
                                  f"order {order.client_order_id}")
        return order if prior is None else ORDERS.from_row(prior)

    async def _all(self, stmt: Select[Any]) -> list[Mapping[str, Any]]:
        async def work(conn: AsyncConnection) -> list[Mapping[str, Any]]:
            return list((await conn.execute(stmt)).mappings().all())

        return await self._transaction(work)

    async def _load(self, mapping: RowMapping[E], stmt: Select[Any]) -> list[E]:
        return [mapping.from_row(r) for r in await self._all(stmt)]

    async def open_orders(self) -> list[Order]:
        c = t.orders.c
        stmt = select(t.orders).where(c.status.in_(_OPEN_STATUSES)).order_by(c.created_ts, c.id)
        return await self._load(ORDERS, stmt)

    async def order_by_client_id(self, client_order_id: str) -> Order | None:
        stmt = select(t.orders).where(t.orders.c.client_order_id == client_order_id)
        found = await self._load(ORDERS, stmt)
        return found[0] if found else None

    async def positions(self) -> list[PositionSnapshot]:
        stmt = select(t.positions).where(t.positions.c.qty != 0).order_by(t.positions.c.symbol)
        return await self._load(POSITIONS, stmt)

    async def checkpoint(self, node: str) -> Checkpoint | None:
        found = await self._load(
            CHECKPOINTS, select(t.checkpoints).where(t.checkpoints.c.node == node))
        return found[0] if found else None

    async def trades(self, limit: int = 100, symbol: str | None = None) -> list[ClosedTrade]:
        """The ``limit`` most recently closed trades, oldest first."""
        c = t.closed_trades.c
        stmt = select(t.closed_trades).order_by(c.closed_ts.desc(), c.id.desc()).limit(limit)
        if symbol is not None:
            stmt = stmt.where(c.symbol == symbol)
        return list(reversed(await self._load(TRADES, stmt)))

    async def fills(self, order_id: str | None = None) -> list[Fill]:
        c = t.fills.c
        stmt = select(t.fills).order_by(c.ts, c.id)
        if order_id is not None:
            stmt = stmt.where(c.order_id == order_id)
        return await self._load(FILLS, stmt)

    async def orders(self, trace_id: str | None = None) -> list[Order]:
        c = t.orders.c
        stmt = select(t.orders).order_by(c.created_ts, c.id)
        if trace_id is not None:
            stmt = stmt.where(c.trace_id == trace_id)
        return await self._load(ORDERS, stmt)

    async def signals(self, trace_id: str | None = None) -> list[Signal]:
        c = t.signals.c
        stmt = select(t.signals).order_by(c.ts, c.id)
        if trace_id is not None:
            stmt = stmt.where(c.trace_id == trace_id)
        return await self._load(SIGNALS, stmt)

    async def decisions(self, trace_id: str | None = None) -> list[RiskDecision]:
        c = t.risk_decisions.c
        stmt = select(t.risk_decisions).order_by(c.ts, c.id)
        if trace_id is not None:
            stmt = stmt.where(c.trace_id == trace_id)
        return await self._load(DECISIONS, stmt)

    async def audit(self, kind: str | None = None) -> list[AuditEvent]:
        # Insertion order, never ts: audit events mix market time and wall time.
        c = t.audit_events.c
        stmt = select(t.audit_events).order_by(c.seq)
        if kind is not None:
            stmt = stmt.where(c.kind == kind)
        return await self._load(AUDIT, stmt)

    async def trading_state(self) -> AuditEvent | None:
        c = t.audit_events.c
        stmt = (
            select(t.audit_events)
            .where(c.kind == TRADING_STATE)
            .order_by(c.seq.desc())
            .limit(1)
        )
        found = await self._load(AUDIT, stmt)
        return found[0] if found else None

    async def equity_curve(self) -> list[EquityPoint]:
        stmt = select(t.equity_snapshots).order_by(t.equity_snapshots.c.ts)
        return await self._load(EQUITY, stmt)

    async def cursor(self, name: str) -> Cursor | None:
        found = await self._load(CURSORS, select(t.cursors).where(t.cursors.c.name == name))
        return found[0] if found else None

    async def cursors(self, prefix: str = "") -> dict[str, Cursor]:
        c = t.cursors.c
        stmt = select(t.cursors).order_by(c.name)
        if prefix:
            stmt = stmt.where(c.name.startswith(prefix, autoescape=True))
        return {cur.name: cur for cur in await self._load(CURSORS, stmt)}

    async def venue_trades(self, symbol: str | None = None) -> list[VenueTrade]:
        c = t.venue_trades.c
        stmt = select(t.venue_trades).order_by(c.ts, c.trade_id, c.symbol)
        if symbol is not None:
            stmt = stmt.where(c.symbol == symbol)
        return await self._load(VENUE_TRADES, stmt)

    async def recent_trade_keys(self, limit: int = 10_000) -> list[tuple[str, str]]:
        c = t.venue_trades.c
        stmt = (
            select(c.symbol, c.trade_id)
            .order_by(c.ts.desc(), c.trade_id.desc(), c.symbol.desc())
            .limit(limit)
        )
        return [(r["symbol"], r["trade_id"]) for r in reversed(await self._all(stmt))]

    async def funding_payments(self, symbol: str | None = None) -> list[FundingPayment]:
        c = t.funding_payments.c
        stmt = select(t.funding_payments).order_by(c.ts, c.id)
        if symbol is not None:
            stmt = stmt.where(c.symbol == symbol)
        return await self._load(FUNDING, stmt)

    async def funding_ids(self, limit: int = 10_000) -> list[str]:
        c = t.funding_payments.c
        stmt = select(c.id).order_by(c.ts.desc(), c.id.desc()).limit(limit)
        return [r["id"] for r in reversed(await self._all(stmt))]

    async def outbox_pending(self, limit: int = 500,
                             source: str | None = None) -> list[tuple[int, OutboundMessage]]:
        stmt = select(t.outbox).order_by(t.outbox.c.seq).limit(limit)
        if source is not None:
            stmt = stmt.where(t.outbox.c.source == source)
        return [(int(r["seq"]), OUTBOX.from_row(r)) for r in await self._all(stmt)]

    async def outbox_done(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        stmt = delete(t.outbox).where(t.outbox.c.seq.in_([int(s) for s in seqs]))

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(stmt)

        try:
            await self._transaction(work)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"clearing {len(seqs)} outbox messages failed: "
                             f"{_cause(exc)}") from exc

    async def bars(self, role: str | None = None) -> list[SeenBar]:
        c = t.bars.c
        stmt = select(t.bars).order_by(c.ts, c.symbol, c.timeframe)
        if role is not None:
            stmt = stmt.where(c.role == role)
        return await self._load(BARS, stmt)

    async def counts(self) -> dict[str, int]:
        # One round trip: a scalar subquery per table.
        stmt = select(
            *(
                select(func.count()).select_from(tb).scalar_subquery().label(tb.name)
                for tb in t.TABLES
            )
        )
        rows = await self._all(stmt)
        return {tb.name: int(rows[0][tb.name]) for tb in t.TABLES}
