"""Positions in a linear (USDⓈ-margined) perpetual: signed quantity, average entry, PnL."""

from __future__ import annotations

from dataclasses import dataclass

_EPS = 1e-12
_REL_NOISE = 1e-12  # of the quantities involved: far below any exchange's step size


@dataclass(slots=True)
class Position:
    symbol: str
    qty: float = 0.0  # signed: positive long, negative short
    avg_entry: float = 0.0
    realized_pnl: float = 0.0  # gross of fees and funding
    fees: float = 0.0
    funding: float = 0.0  # paid (positive) or received (negative)
    opened_ts: int = 0
    last_price: float = 0.0
    leverage: float = 1.0

    @property
    def is_open(self) -> bool:
        q = self.qty
        return q > _EPS or q < -_EPS

    @property
    def side_sign(self) -> int:
        return 1 if self.qty > _EPS else -1 if self.qty < -_EPS else 0

    @property
    def notional(self) -> float:
        return abs(self.qty) * self.last_price

    @property
    def unrealized_pnl(self) -> float:
        return self.qty * (self.last_price - self.avg_entry) if self.is_open else 0.0

    @property
    def net_pnl(self) -> float:
        return self.realized_pnl + self.unrealized_pnl - self.fees - self.funding

    def apply_fill(self, signed_qty: float, price: float, fee: float, ts: int) -> float:
        """Apply a fill of ``signed_qty`` (buy > 0) and return the PnL it realizes.

        Reducing fills realize PnL against the average entry; a fill that crosses zero closes
        the old position and opens the remainder at the fill price.
        """
        self.fees += fee
        self.last_price = price
        realized = 0.0
        if not self.is_open or (self.qty > 0) == (signed_qty > 0):
            new_qty = self.qty + signed_qty
            if not self.is_open:
                self.opened_ts = ts
                self.avg_entry = price
            else:
                self.avg_entry = (self.avg_entry * self.qty + price * signed_qty) / new_qty
            self.qty = new_qty
        else:
            closing = min(abs(signed_qty), abs(self.qty))
            direction = 1.0 if self.qty > 0 else -1.0
            realized = closing * (price - self.avg_entry) * direction
            self.realized_pnl += realized
            # Float noise of the size's own magnitude (15550.1 built from partial fills and
            # closed by one fill can leave -3.6e-12) is zero, or a flat symbol would read as
            # open and want a stop.
            noise = max(_EPS, _REL_NOISE * max(abs(self.qty), abs(signed_qty)))
            remainder = abs(signed_qty) - closing
            self.qty += signed_qty
            if abs(self.qty) <= noise or remainder <= noise:
                if abs(self.qty) <= noise:
                    self.qty = 0.0
                    self.avg_entry = 0.0
            else:  # crossed through zero: the rest opens a new position at this price
                self.avg_entry = price
                self.opened_ts = ts
        return realized

    def apply_funding(self, amount: float) -> None:
        self.funding += amount

    def liquidation_price(self, maintenance_margin_rate: float) -> float:
        """Binance's isolated-margin liquidation price at the current leverage (0 when flat),
        for a position whose isolated wallet is its initial margin ``|qty| * entry / lev``:

        long: entry * (1 - 1/lev) / (1 - mmr); short: entry * (1 + 1/lev) / (1 + mmr)
        (the price at which margin + unrealized PnL equals the maintenance margin).
        """
        if not self.is_open:
            return 0.0
        inv = 1.0 / self.leverage
        if self.qty > 0:
            return self.avg_entry * (1.0 - inv) / (1.0 - maintenance_margin_rate)
        return self.avg_entry * (1.0 + inv) / (1.0 + maintenance_margin_rate)
