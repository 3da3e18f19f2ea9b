"""Account-level accounting: wallet, positions, equity, drawdown and the daily PnL window."""

from __future__ import annotations

from dataclasses import dataclass, field

from quantum_trader.domain.models import Fill, FundingPayment
from quantum_trader.domain.position import Position

DAY_MS = 86_400_000


@dataclass(slots=True)
class EquityPoint:
    ts: int
    equity: float
    wallet: float
    unrealized: float
    drawdown: float
    gross_exposure: float


@dataclass(slots=True)
class Portfolio:
    """Our own books. The exchange keeps its own; reconciliation compares the two."""

    initial_balance: float
    wallet: float = 0.0  # deposits + realized PnL - fees - funding
    positions: dict[str, Position] = field(default_factory=dict)
    peak_equity: float = 0.0
    max_drawdown: float = 0.0
    day_start_ts: int = -1
    day_start_equity: float = 0.0
    fees_paid: float = 0.0
    funding_paid: float = 0.0
    _unrealized: float = 0.0

    def __post_init__(self) -> None:
        if self.wallet == 0.0:
            self.wallet = self.initial_balance
        if self.peak_equity == 0.0:
            self.peak_equity = self.initial_balance
        if self.day_start_equity == 0.0:
            self.day_start_equity = self.initial_balance

    def position(self, symbol: str) -> Position:
        pos = self.positions.get(symbol)
        if pos is None:
            pos = self.positions[symbol] = Position(symbol)
        return pos

    def apply_fill(self, fill: Fill, leverage: float = 1.0) -> float:
        return self.apply_trade(fill.symbol, fill.side.sign * fill.quantity, fill.price,
                                fill.fee, fill.ts, leverage)

    def apply_trade(self, symbol: str, signed_qty: float, price: float, fee: float, ts: int,
                    leverage: float = 1.0) -> float:
        """Book one execution (buy > 0); returns the PnL it realized."""
        pos = self.position(symbol)
        was_open = pos.is_open
        realized = pos.apply_fill(signed_qty, price, fee, ts)
        if not was_open:
            pos.leverage = leverage
        self.wallet += realized - fee
        self.fees_paid += fee
        self._refresh_unrealized()
        return realized

    def replace_positions(self, positions: list[Position]) -> None:
        """Take over positions held elsewhere (a restart, or a replica of execution's books)."""
        self.positions = {p.symbol: p for p in positions}
        self._refresh_unrealized()

    def apply_funding(self, payment: FundingPayment) -> None:
        self.position(payment.symbol).apply_funding(payment.amount)
        self.wallet -= payment.amount
        self.funding_paid += payment.amount

    def mark(self, symbol: str, price: float, ts: int) -> None:
        """Mark ``symbol`` to ``price``; rolls the daily window and the drawdown."""
        pos = self.positions.get(symbol)
        if pos is not None and pos.is_open:
            pos.last_price = price
            self._refresh_unrealized()
        self._roll(ts)

    def _refresh_unrealized(self) -> None:
        # Runs on every bar with a position open: a plain loop, the same sum as
        # ``sum(p.unrealized_pnl for p in open positions)`` without a generator per bar.
        total = 0.0
        for p in self.positions.values():
            if p.is_open:
                total += p.qty * (p.last_price - p.avg_entry)
        self._unrealized = total

    def _roll(self, ts: int) -> None:
        equity = self.wallet + self._unrealized
        if equity > self.peak_equity:
            self.peak_equity = equity
        dd = 1.0 - equity / self.peak_equity if self.peak_equity > 0 else 0.0
        if dd > self.max_drawdown:
            self.max_drawdown = dd
        day = ts // DAY_MS
        if day != self.day_start_ts:
            self.day_start_ts = day
            self.day_start_equity = equity

    @property
    def unrealized(self) -> float:
        return self._unrealized

    @property
    def equity(self) -> float:
        return self.wallet + self._unrealized

    @property
    def drawdown(self) -> float:
        return 1.0 - self.equity / self.peak_equity if self.peak_equity > 0 else 0.0

    @property
    def daily_pnl(self) -> float:
        return self.equity - self.day_start_equity

    @property
    def gross_exposure(self) -> float:
        return sum(p.notional for p in self.positions.values() if p.is_open)

    @property
    def open_positions(self) -> list[Position]:
        return [p for p in self.positions.values() if p.is_open]

    def snapshot(self, ts: int) -> EquityPoint:
        return EquityPoint(ts, self.equity, self.wallet, self._unrealized, self.drawdown,
                           self.gross_exposure)
