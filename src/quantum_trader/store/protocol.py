"""The ``TradeStore`` port: the SQL store is the source of truth for everything that happened.

A node journals what a step did (orders, venue trades and their fills, funding, positions,
audit events, the cursors of what it read, the bus messages it caused) and commits it with one
``write``: one transaction, so after a crash either all of a step's effects are on record or
none are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeAlias

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

#: Everything a node writes. One ``write`` call is one transaction.
StoreEvent: TypeAlias = (
    Signal | RiskDecision | Order | Fill | PositionSnapshot | EquityPoint | ClosedTrade
    | AuditEvent | Checkpoint | VenueTrade | FundingPayment | Cursor | OutboundMessage
    | SeenBar
)


class TradeStore(Protocol):
    async def open(self) -> None:
        """Connect and check that the schema is at the latest migration."""

    async def close(self) -> None: ...

    async def write(self, events: Sequence[StoreEvent]) -> None:
        """Persist ``events`` atomically: all of them or, on any error, none. Idempotent:
        facts are insert-or-ignore, the first write wins (signals, decisions, fills, closed
        trades, audit events, venue trades by (symbol, trade id), funding payments by id,
        outbox messages by message id, bars seen by (symbol, timeframe, ts)); state is
        upserted, the last write wins (orders, positions, equity points, checkpoints,
        cursors), also within one batch."""

    async def record_decision(self, decision: RiskDecision) -> RiskDecision:
        """Record ``decision`` unless one with its id is on record; return the one on
        record (so a redelivered signal gets the same answer again)."""

    async def claim_order(self, order: Order) -> Order:
        """Record ``order`` unless an order with its client order id is on record; return
        the one on record (the existing one if there was one). Client ids derive from intent
        ids, so an intent claims exactly one order: a restart or a redelivery finds it and
        never sends a second one. One round trip for the usual case of a new order."""

    async def order_by_client_id(self, client_order_id: str) -> Order | None: ...

    async def open_orders(self) -> list[Order]: ...

    async def positions(self) -> list[PositionSnapshot]:
        """Latest snapshot of every position that is not flat."""

    async def checkpoint(self, node: str) -> Checkpoint | None: ...

    async def cursor(self, name: str) -> Cursor | None:
        """How far the reader ``name`` has got (e.g. ``trades:XRPUSDT``), or None."""

    async def cursors(self, prefix: str = "") -> dict[str, Cursor]:
        """Every cursor whose name starts with ``prefix``, by name."""

    async def trades(self, limit: int = 100, symbol: str | None = None) -> list[ClosedTrade]:
        """The ``limit`` most recently closed round trips, oldest first."""

    async def fills(self, order_id: str | None = None) -> list[Fill]: ...

    async def venue_trades(self, symbol: str | None = None) -> list[VenueTrade]:
        """Venue trades booked, oldest first (by ts, then trade id)."""

    async def recent_trade_keys(self, limit: int = 10_000) -> list[tuple[str, str]]:
        """The (symbol, trade id) of the ``limit`` newest venue trades, oldest first: what a
        restarted engine must never book again."""

    async def funding_payments(self, symbol: str | None = None) -> list[FundingPayment]:
        """Funding payments booked, oldest first. A payment the venue gave no id is on
        record (and reads back) with the id ``"<symbol>:<ts>"``."""

    async def funding_ids(self, limit: int = 10_000) -> list[str]:
        """The ids of the ``limit`` newest funding payments, oldest first."""

    async def orders(self, trace_id: str | None = None) -> list[Order]: ...

    async def signals(self, trace_id: str | None = None) -> list[Signal]: ...

    async def decisions(self, trace_id: str | None = None) -> list[RiskDecision]: ...

    async def audit(self, kind: str | None = None) -> list[AuditEvent]:
        """Audit events in the order they were written (never sorted by ts: events stamped
        with market time and with wall time are mixed)."""

    async def trading_state(self) -> AuditEvent | None:
        """The last ``trading_state`` audit event written (by insertion order, not ts), or
        None: the state to resume with, so a HALT survives a restart whatever its ts."""

    async def outbox_pending(self, limit: int = 500,
                             source: str | None = None) -> list[tuple[int, OutboundMessage]]:
        """Up to ``limit`` messages committed but not yet published, as (seq, message),
        oldest (lowest seq) first; only ``source``'s when given (each service publishes the
        messages it committed)."""

    async def outbox_done(self, seqs: Sequence[int]) -> None:
        """The bus has these messages: delete them from the outbox."""

    async def equity_curve(self) -> list[EquityPoint]: ...

    async def bars(self, role: str | None = None) -> list[SeenBar]:
        """The bars a node saw (``role`` ``"trade"`` or ``"warmup"``; all when None), by
        open time then symbol: what ``parity`` replays."""

    async def counts(self) -> dict[str, int]:
        """Row count per table (for status screens, backups and restore drills)."""
