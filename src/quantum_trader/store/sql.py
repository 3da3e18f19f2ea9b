"""``SqlTradeStore``: the ``TradeStore`` port on SQLAlchemy async, for SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Executable, Select

from quantum_trader.domain.enums import (
    Direction,
    IntentPurpose,
    Liquidity,
    OrderStatus,
    OrderType,
    Side,
)
from quantum_trader.domain.models import Fill, OrderIntent, RiskDecision, Signal
from quantum_trader.domain.orders import Order
from quantum_trader.domain.portfolio import EquityPoint
from quantum_trader.domain.records import (
    AuditEvent,
    Checkpoint,
    ClosedTrade,
    PositionSnapshot,
)
from quantum_trader.store import schema as t
from quantum_trader.store.engine import make_engine
from quantum_trader.store.errors import SchemaOutOfDate, StoreError
from quantum_trader.store.migrate import (
    engine_revision,
    head_revision,
    known_revisions,
    upgrade_engine,
)
from quantum_trader.store.protocol import StoreEvent
from quantum_trader.store.urls import async_url, redact

Row = dict[str, Any]
_OPEN_STATUSES = [s.value for s in OrderStatus if s.is_open]
_INTENT_FIELDS = frozenset(f.name for f in fields(OrderIntent))


# --- domain -> row -------------------------------------------------------------------------
# Explicit int()/float() casts: asyncpg is strict about parameter types, and numpy scalars
# (np.int64 is not an int) must not reach the driver.


def _signal_row(s: Signal) -> Row:
    return {
        "id": s.id,
        "symbol": s.symbol,
        "direction": s.direction.value,
        "confidence": float(s.confidence),
        "ts": int(s.ts),
        "expires_at": int(s.expires_at),
        "price": float(s.price),
        "source": s.source,
        "trace_id": s.trace_id,
        "timeframe": s.timeframe,
        "stop_distance": _opt_float(s.stop_distance),
    }


def _intent_json(i: OrderIntent) -> Row:
    return {
        "id": i.id,
        "symbol": i.symbol,
        "side": i.side.value,
        "quantity": float(i.quantity),
        "order_type": i.order_type.value,
        "purpose": i.purpose.value,
        "ts": int(i.ts),
        "expires_at": int(i.expires_at),
        "trace_id": i.trace_id,
        "reduce_only": bool(i.reduce_only),
        "price": _opt_float(i.price),
        "stop_price": _opt_float(i.stop_price),
        "signal_id": i.signal_id,
        "reason": i.reason,
        "reference_price": float(i.reference_price),
        "stop_loss": _opt_float(i.stop_loss),
        "take_profit": _opt_float(i.take_profit),
        "tag": i.tag,
    }


def _decision_row(d: RiskDecision) -> Row:
    return {
        "id": d.id,
        "subject_id": d.subject_id,
        "approved": bool(d.approved),
        "reason": d.reason,
        "detail": d.detail,
        "ts": int(d.ts),
        "trace_id": d.trace_id,
        "intent": None if d.intent is None else _intent_json(d.intent),
        "checks": list(d.checks),
    }


def _order_row(o: Order) -> Row:
    return {
        "id": o.id,
        "client_order_id": o.client_order_id,
        "intent_id": o.intent_id,
        "symbol": o.symbol,
        "side": o.side.value,
        "order_type": o.order_type.value,
        "quantity": float(o.quantity),
        "purpose": o.purpose.value,
        "created_ts": int(o.created_ts),
        "trace_id": o.trace_id,
        "reduce_only": bool(o.reduce_only),
        "price": _opt_float(o.price),
        "stop_price": _opt_float(o.stop_price),
        "status": o.status.value,
        "filled_qty": float(o.filled_qty),
        "avg_fill_price": float(o.avg_fill_price),
        "fees": float(o.fees),
        "updated_ts": int(o.updated_ts),
        "exchange_order_id": o.exchange_order_id,
        "reason": o.reason,
        "tag": o.tag,
        "history": [[status.value, int(ts)] for status, ts in o.history],
    }


def _fill_row(f: Fill) -> Row:
    return {
        "id": f.id,
        "order_id": f.order_id,
        "client_order_id": f.client_order_id,
        "symbol": f.symbol,
        "side": f.side.value,
        "quantity": float(f.quantity),
        "price": float(f.price),
        "fee": float(f.fee),
        "liquidity": f.liquidity.value,
        "ts": int(f.ts),
        "trace_id": f.trace_id,
        "realized_pnl": float(f.realized_pnl),
        "is_liquidation": bool(f.is_liquidation),
    }


def _position_row(p: PositionSnapshot) -> Row:
    return {
        "symbol": p.symbol,
        "qty": float(p.qty),
        "avg_entry": float(p.avg_entry),
        "realized_pnl": float(p.realized_pnl),
        "fees": float(p.fees),
        "funding": float(p.funding),
        "opened_ts": int(p.opened_ts),
        "last_price": float(p.last_price),
        "leverage": float(p.leverage),
        "ts": int(p.ts),
        "trace_id": p.trace_id,
        "stop_loss": _opt_float(p.stop_loss),
        "take_profit": _opt_float(p.take_profit),
    }


def _equity_row(e: EquityPoint) -> Row:
    return {
        "ts": int(e.ts),
        "equity": float(e.equity),
        "wallet": float(e.wallet),
        "unrealized": float(e.unrealized),
        "drawdown": float(e.drawdown),
        "gross_exposure": float(e.gross_exposure),
    }


def _trade_row(c: ClosedTrade) -> Row:
    return {
        "id": c.id,
        "symbol": c.symbol,
        "side": c.side.value,
        "quantity": float(c.quantity),
        "entry_price": float(c.entry_price),
        "exit_price": float(c.exit_price),
        "opened_ts": int(c.opened_ts),
        "closed_ts": int(c.closed_ts),
        "realized_pnl": float(c.realized_pnl),
        "fees": float(c.fees),
        "funding": float(c.funding),
        "exit_reason": c.exit_reason,
        "trace_id": c.trace_id,
    }


def audit_key(a: AuditEvent) -> str:
    """Content hash of an audit event: its identity, since the domain gives it no id."""
    canonical = json.dumps(
        [a.kind, int(a.ts), a.detail, a.trace_id], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _audit_row(a: AuditEvent) -> Row:
    return {
        "key": audit_key(a),
        "kind": a.kind,
        "ts": int(a.ts),
        "detail": dict(a.detail),
        "trace_id": a.trace_id,
    }


def _checkpoint_row(c: Checkpoint) -> Row:
    return {
        "node": c.node,
        "last_bar_ts": {str(k): int(v) for k, v in c.last_bar_ts.items()},
        "wallet": float(c.wallet),
        "peak_equity": float(c.peak_equity),
        "max_drawdown": float(c.max_drawdown),
        "day_start_ts": int(c.day_start_ts),
        "day_start_equity": float(c.day_start_equity),
        "trading_state": int(c.trading_state),
        "fees_paid": float(c.fees_paid),
        "funding_paid": float(c.funding_paid),
        "ts": int(c.ts),
        "extra": dict(c.extra),
    }


def _cause(exc: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's echo of the SQL and every parameter."""
    orig = getattr(exc, "orig", None)
    return f"{type(orig).__name__}: {orig}" if orig is not None else str(exc)


def _opt_float(x: float | None) -> float | None:
    return None if x is None else float(x)


# --- row -> domain -------------------------------------------------------------------------


def _signal(r: Mapping[str, Any]) -> Signal:
    return Signal(
        id=r["id"],
        symbol=r["symbol"],
        direction=Direction(r["direction"]),
        confidence=r["confidence"],
        ts=r["ts"],
        expires_at=r["expires_at"],
        price=r["price"],
        source=r["source"],
        trace_id=r["trace_id"],
        timeframe=r["timeframe"],
        stop_distance=r["stop_distance"],
    )


def _intent(d: Mapping[str, Any]) -> OrderIntent:
    # Unknown keys are dropped and missing ones take their defaults, so intents written by an
    # older or newer release still load.
    kwargs = {k: v for k, v in d.items() if k in _INTENT_FIELDS}
    kwargs["side"] = Side(d["side"])
    kwargs["order_type"] = OrderType(d["order_type"])
    kwargs["purpose"] = IntentPurpose(d["purpose"])
    return OrderIntent(**kwargs)


def _decision(r: Mapping[str, Any]) -> RiskDecision:
    intent = r["intent"]
    return RiskDecision(
        id=r["id"],
        subject_id=r["subject_id"],
        approved=r["approved"],
        reason=r["reason"],
        detail=r["detail"],
        ts=r["ts"],
        trace_id=r["trace_id"],
        intent=None if intent is None else _intent(intent),
        checks=tuple(r["checks"]),
    )


def _order(r: Mapping[str, Any]) -> Order:
    return Order(
        id=r["id"],
        client_order_id=r["client_order_id"],
        intent_id=r["intent_id"],
        symbol=r["symbol"],
        side=Side(r["side"]),
        order_type=OrderType(r["order_type"]),
        quantity=r["quantity"],
        purpose=IntentPurpose(r["purpose"]),
        created_ts=r["created_ts"],
        trace_id=r["trace_id"],
        reduce_only=r["reduce_only"],
        price=r["price"],
        stop_price=r["stop_price"],
        status=OrderStatus(r["status"]),
        filled_qty=r["filled_qty"],
        avg_fill_price=r["avg_fill_price"],
        fees=r["fees"],
        updated_ts=r["updated_ts"],
        exchange_order_id=r["exchange_order_id"],
        reason=r["reason"],
        tag=r["tag"],
        history=[(OrderStatus(s), int(ts)) for s, ts in r["history"]],
    )


def _fill(r: Mapping[str, Any]) -> Fill:
    return Fill(
        id=r["id"],
        order_id=r["order_id"],
        client_order_id=r["client_order_id"],
        symbol=r["symbol"],
        side=Side(r["side"]),
        quantity=r["quantity"],
        price=r["price"],
        fee=r["fee"],
        liquidity=Liquidity(r["liquidity"]),
        ts=r["ts"],
        trace_id=r["trace_id"],
        realized_pnl=r["realized_pnl"],
        is_liquidation=r["is_liquidation"],
    )


def _position(r: Mapping[str, Any]) -> PositionSnapshot:
    return PositionSnapshot(**{c.name: r[c.name] for c in t.positions.c})


def _equity(r: Mapping[str, Any]) -> EquityPoint:
    return EquityPoint(**{c.name: r[c.name] for c in t.equity_snapshots.c})


def _trade(r: Mapping[str, Any]) -> ClosedTrade:
    kwargs = {c.name: r[c.name] for c in t.closed_trades.c}
    kwargs["side"] = Side(r["side"])
    return ClosedTrade(**kwargs)


def _audit(r: Mapping[str, Any]) -> AuditEvent:
    return AuditEvent(kind=r["kind"], ts=r["ts"], detail=r["detail"], trace_id=r["trace_id"])


def _checkpoint(r: Mapping[str, Any]) -> Checkpoint:
    return Checkpoint(**{c.name: r[c.name] for c in t.checkpoints.c})


# --- write dispatch ------------------------------------------------------------------------


R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class _Sink:
    """Where one event type goes: its table, its key, and upsert (last write wins) or
    insert-or-ignore (first write wins: replays of immutable facts change nothing)."""

    table: Table
    key: tuple[str, ...]
    upsert: bool
    to_row: Callable[[Any], Row]


_SINKS: dict[type, _Sink] = {
    Signal: _Sink(t.signals, ("id",), False, _signal_row),
    RiskDecision: _Sink(t.risk_decisions, ("id",), False, _decision_row),
    Order: _Sink(t.orders, ("id",), True, _order_row),
    Fill: _Sink(t.fills, ("id",), False, _fill_row),
    PositionSnapshot: _Sink(t.positions, ("symbol",), True, _position_row),
    EquityPoint: _Sink(t.equity_snapshots, ("ts",), True, _equity_row),
    ClosedTrade: _Sink(t.closed_trades, ("id",), False, _trade_row),
    AuditEvent: _Sink(t.audit_events, ("key",), False, _audit_row),
    Checkpoint: _Sink(t.checkpoints, ("node",), True, _checkpoint_row),
}


def _statement(dialect: str, sink: _Sink) -> Executable:
    stmt: sqlite.Insert | postgresql.Insert
    if dialect == "sqlite":
        stmt = sqlite.insert(sink.table)
    elif dialect == "postgresql":
        stmt = postgresql.insert(sink.table)
    else:  # pragma: no cover - make_engine refuses other databases
        raise StoreError(f"unsupported dialect {dialect}")
    if not sink.upsert:
        return stmt.on_conflict_do_nothing(index_elements=list(sink.key))
    excluded = stmt.excluded
    updates = {
        c.name: excluded[c.name]
        for c in sink.table.c
        if c.name not in sink.key and not c.primary_key
    }
    return stmt.on_conflict_do_update(index_elements=list(sink.key), set_=updates)


def _group(events: Iterable[StoreEvent]) -> list[tuple[_Sink, list[Row]]]:
    """Rows per table, one per key. Within a batch the last event for a key wins: that is what
    sequential upserts would give, and PostgreSQL refuses one statement touching a row twice."""
    grouped: dict[Table, tuple[_Sink, dict[tuple[Any, ...], Row]]] = {}
    for event in events:
        sink = _SINKS.get(type(event))
        if sink is None:
            raise StoreError(f"cannot store {type(event).__name__}: not a StoreEvent")
        try:
            row = sink.to_row(event)
        except (TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"bad {type(event).__name__}: {exc}") from exc
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
        self._statements = {s.table: _statement(engine.dialect.name, s) for s in _SINKS.values()}
        # The decisions insert, saying whether it inserted (built once, not per decision).
        self._record_decision = self._statements[t.risk_decisions].returning(  # type: ignore[attr-defined]
            t.risk_decisions.c.id)
        self._engine = engine

    async def _prepare(self, engine: AsyncEngine) -> None:
        try:
            if self._create:
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

    async def record_decision(self, decision: RiskDecision) -> RiskDecision:
        """Put ``decision`` on record unless a decision with its id already is, and return
        the one on record: a redelivered signal gets the answer it got the first time, in
        one round trip for the usual case of a new decision."""
        row = _decision_row(decision)
        table = t.risk_decisions
        insert = self._record_decision
        if insert is None:
            raise StoreError(f"{self!r} is not open: call open() first")

        async def work(conn: AsyncConnection) -> list[Mapping[str, Any]]:
            if (await conn.execute(insert, row)).first() is not None:
                return []
            found: Any = await conn.execute(select(table).where(table.c.id == decision.id))
            return list(found.mappings().all())

        try:
            prior = await self._transaction(work)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"recording decision {decision.id} failed: {_cause(exc)}") from exc
        return _decision(prior[0]) if prior else decision

    async def _all(self, stmt: Select[Any]) -> list[Mapping[str, Any]]:
        async def work(conn: AsyncConnection) -> list[Mapping[str, Any]]:
            return list((await conn.execute(stmt)).mappings().all())

        return await self._transaction(work)

    async def open_orders(self) -> list[Order]:
        stmt = (
            select(t.orders)
            .where(t.orders.c.status.in_(_OPEN_STATUSES))
            .order_by(t.orders.c.created_ts, t.orders.c.id)
        )
        return [_order(r) for r in await self._all(stmt)]

    async def positions(self) -> list[PositionSnapshot]:
        stmt = select(t.positions).where(t.positions.c.qty != 0).order_by(t.positions.c.symbol)
        return [_position(r) for r in await self._all(stmt)]

    async def checkpoint(self, node: str) -> Checkpoint | None:
        rows = await self._all(select(t.checkpoints).where(t.checkpoints.c.node == node))
        return _checkpoint(rows[0]) if rows else None

    async def trades(self, limit: int = 100, symbol: str | None = None) -> list[ClosedTrade]:
        """The ``limit`` most recently closed trades, oldest first."""
        c = t.closed_trades.c
        stmt = select(t.closed_trades).order_by(c.closed_ts.desc(), c.id.desc()).limit(limit)
        if symbol is not None:
            stmt = stmt.where(c.symbol == symbol)
        return [_trade(r) for r in reversed(await self._all(stmt))]

    async def fills(self, order_id: str | None = None) -> list[Fill]:
        c = t.fills.c
        stmt = select(t.fills).order_by(c.ts, c.id)
        if order_id is not None:
            stmt = stmt.where(c.order_id == order_id)
        return [_fill(r) for r in await self._all(stmt)]

    async def orders(self, trace_id: str | None = None) -> list[Order]:
        c = t.orders.c
        stmt = select(t.orders).order_by(c.created_ts, c.id)
        if trace_id is not None:
            stmt = stmt.where(c.trace_id == trace_id)
        return [_order(r) for r in await self._all(stmt)]

    async def signals(self, trace_id: str | None = None) -> list[Signal]:
        c = t.signals.c
        stmt = select(t.signals).order_by(c.ts, c.id)
        if trace_id is not None:
            stmt = stmt.where(c.trace_id == trace_id)
        return [_signal(r) for r in await self._all(stmt)]

    async def decisions(self, trace_id: str | None = None) -> list[RiskDecision]:
        c = t.risk_decisions.c
        stmt = select(t.risk_decisions).order_by(c.ts, c.id)
        if trace_id is not None:
            stmt = stmt.where(c.trace_id == trace_id)
        return [_decision(r) for r in await self._all(stmt)]

    async def audit(self, kind: str | None = None) -> list[AuditEvent]:
        c = t.audit_events.c
        stmt = select(t.audit_events).order_by(c.ts, c.seq)
        if kind is not None:
            stmt = stmt.where(c.kind == kind)
        return [_audit(r) for r in await self._all(stmt)]

    async def equity_curve(self) -> list[EquityPoint]:
        stmt = select(t.equity_snapshots).order_by(t.equity_snapshots.c.ts)
        return [_equity(r) for r in await self._all(stmt)]

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
