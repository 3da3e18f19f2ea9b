"""Records the system keeps about what happened: closed trades, audit events, checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantum_trader.domain.enums import Side
from quantum_trader.domain.models import Bar
from quantum_trader.domain.position import Position


@dataclass(slots=True, frozen=True)
class ClosedTrade:
    """One round trip: a position from open to flat."""

    id: str
    symbol: str
    side: Side  # side of the entry
    quantity: float  # largest absolute size held
    entry_price: float
    exit_price: float
    opened_ts: int
    closed_ts: int
    realized_pnl: float  # gross
    fees: float
    funding: float
    exit_reason: str
    trace_id: str

    @property
    def net_pnl(self) -> float:
        return self.realized_pnl - self.fees - self.funding


@dataclass(slots=True, frozen=True)
class PositionSnapshot:
    symbol: str
    qty: float
    avg_entry: float
    realized_pnl: float
    fees: float
    funding: float
    opened_ts: int
    last_price: float
    leverage: float
    ts: int
    trace_id: str = ""
    stop_loss: float | None = None
    take_profit: float | None = None

    def to_position(self) -> Position:
        """A live ``Position`` with the snapshot's books (restarts and replicated views)."""
        return Position(self.symbol, self.qty, self.avg_entry, self.realized_pnl, self.fees,
                        self.funding, self.opened_ts, self.last_price, self.leverage)


@dataclass(slots=True, frozen=True)
class AuditEvent:
    kind: str  # e.g. "trading_state", "kill_switch", "run_started"
    ts: int
    detail: dict[str, Any] = field(default_factory=dict)
    trace_id: str = ""


@dataclass(slots=True, frozen=True)
class Checkpoint:
    """Where a node stopped, so a restart resumes instead of starting over."""

    node: str
    last_bar_ts: dict[str, int]  # symbol -> open time of the last bar fully processed
    wallet: float
    peak_equity: float
    max_drawdown: float
    day_start_ts: int
    day_start_equity: float
    trading_state: int
    fees_paid: float
    funding_paid: float
    ts: int
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def progress(cls, node: str, last_bar_ts: dict[str, int], ts: int) -> Checkpoint:
        """A checkpoint that only records how far a service has read the bar stream."""
        return cls(node, dict(last_bar_ts), 0.0, 0.0, 0.0, 0, 0.0, 0, 0.0, 0.0, ts)


@dataclass(slots=True, frozen=True)
class AccountSnapshot:
    """The account as execution sees it after a change; risk-safety and the exit brain keep
    their view of the world from these."""

    ts: int
    wallet: float
    equity: float
    peak_equity: float
    day_start_equity: float
    positions: tuple[PositionSnapshot, ...]
    trace_id: str = ""
    stop_outs: dict[str, int] = field(default_factory=dict)  # symbol -> last stop-out time
    # Positions with no working stop on the venue: risk refuses entries while there are any.
    unprotected: tuple[str, ...] = ()
    # Entries sent but not filled at all yet: symbol -> signed notional (buy > 0).
    pending: dict[str, float] = field(default_factory=dict)
    # The newest intents execution has handled (an order exists for each, in any state):
    # risk stops counting its approvals of them as pending once they appear here.
    recent_intents: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True)
class Cursor:
    """How far a reader has got through a venue's stream of records (e.g. ``trades:XRPUSDT``
    -> the last trade id booked). Written in the same transaction as what it read, so a
    restart resumes exactly after the last record whose effects are committed."""

    name: str
    value: str
    ts: int = 0


@dataclass(slots=True, frozen=True)
class OutboundMessage:
    """A bus message caused by a store commit, written in that commit (the outbox) and
    published from there until the bus has it: nothing committed is ever left unsaid."""

    topic: str
    id: str  # the message id: consumers are idempotent on it, so a re-publish is harmless
    type: str
    payload: dict[str, Any]
    ts: int
    trace_id: str = ""
    source: str = ""  # the service that committed it: each publishes its own messages


@dataclass(slots=True, frozen=True)
class SeenBar:
    """A bar as a node saw it, kept so ``parity`` can replay exactly what the node saw.

    ``role`` is ``"trade"`` (the node traded on it) or ``"warmup"`` (only the signal source
    saw it, before trading: its indicators). ``received_ms`` and ``decided_ms`` are wall-clock
    times: when the bar reached the node's process, and when the node had acted on it
    (signal, risk decision, orders). ``late`` is why entries were refused on it (the feed was
    stale, or the venue had a newer bar when it arrived), empty when it was traded normally:
    it is part of what the node saw, and the replay refuses the same entries."""

    symbol: str
    timeframe: str
    ts: int  # open time, epoch ms
    open: float
    high: float
    low: float
    close: float
    volume: float
    role: str = "trade"
    received_ms: int = 0
    decided_ms: int = 0
    late: str = ""

    @classmethod
    def of(cls, bar: Bar, role: str = "trade", received_ms: int = 0, decided_ms: int = 0,
           late: str = "") -> SeenBar:
        return cls(bar.symbol, bar.timeframe, bar.ts, bar.open, bar.high, bar.low, bar.close,
                   bar.volume, role, received_ms, decided_ms, late)

    def bar(self) -> Bar:
        return Bar(self.symbol, self.timeframe, self.ts, self.open, self.high, self.low,
                   self.close, self.volume)
