"""The ``TradeStore`` port: the SQL store is the source of truth for everything that happened."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeAlias

from quantum_trader.domain.models import Fill, RiskDecision, Signal
from quantum_trader.domain.orders import Order
from quantum_trader.domain.portfolio import EquityPoint
from quantum_trader.domain.records import (
    AuditEvent,
    Checkpoint,
    ClosedTrade,
    PositionSnapshot,
)

#: Everything a node writes. One ``write`` call is one transaction.
StoreEvent: TypeAlias = (
    Signal | RiskDecision | Order | Fill | PositionSnapshot | EquityPoint | ClosedTrade
    | AuditEvent | Checkpoint
)


class TradeStore(Protocol):
    async def open(self) -> None:
        """Connect and check that the schema is at the latest migration."""

    async def close(self) -> None: ...

    async def write(self, events: Sequence[StoreEvent]) -> None:
        """Persist ``events`` atomically. Idempotent: writing the same event twice is harmless
        (signals, decisions, fills and trades are keyed by id; orders, positions and
        checkpoints are upserts)."""

    async def record_decision(self, decision: RiskDecision) -> RiskDecision:
        """Record ``decision`` unless one with its id is on record; return the one on
        record (so a redelivered signal gets the same answer again)."""

    async def open_orders(self) -> list[Order]: ...

    async def positions(self) -> list[PositionSnapshot]:
        """Latest snapshot of every position that is not flat."""

    async def checkpoint(self, node: str) -> Checkpoint | None: ...

    async def trades(self, limit: int = 100, symbol: str | None = None) -> list[ClosedTrade]: ...

    async def fills(self, order_id: str | None = None) -> list[Fill]: ...

    async def orders(self, trace_id: str | None = None) -> list[Order]: ...

    async def signals(self, trace_id: str | None = None) -> list[Signal]: ...

    async def decisions(self, trace_id: str | None = None) -> list[RiskDecision]: ...

    async def audit(self, kind: str | None = None) -> list[AuditEvent]: ...

    async def equity_curve(self) -> list[EquityPoint]: ...

    async def counts(self) -> dict[str, int]:
        """Row count per table (for status screens, backups and restore drills)."""
