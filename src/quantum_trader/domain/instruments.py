"""Instrument specifications: the exchange's filters, applied before anything is sent."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass


class FilterViolation(ValueError):
    pass


@dataclass(slots=True, frozen=True)
class Instrument:
    symbol: str
    tick_size: float = 0.0001
    step_size: float = 0.1
    min_qty: float = 0.1
    min_notional: float = 5.0
    max_leverage: float = 20.0
    maintenance_margin_rate: float = 0.005

    def round_qty_down(self, qty: float) -> float:
        """Largest multiple of the step size not above ``qty`` (sizing never rounds up)."""
        steps = math.floor(qty / self.step_size + 1e-9)
        return round(steps * self.step_size, _decimals(self.step_size))

    def round_price(self, price: float) -> float:
        ticks = round(price / self.tick_size)
        return round(ticks * self.tick_size, _decimals(self.tick_size))

    def on_step(self, qty: float) -> bool:
        steps = qty / self.step_size
        return abs(steps - round(steps)) < 1e-6

    def check(self, qty: float, price: float) -> None:
        """Raise ``FilterViolation`` with the rule that fails, as Binance would."""
        if qty < self.min_qty:
            raise FilterViolation(f"{self.symbol}: quantity {qty} below minimum {self.min_qty}")
        if not self.on_step(qty):
            raise FilterViolation(f"{self.symbol}: quantity {qty} not a multiple of step "
                                  f"{self.step_size}")
        if qty * price < self.min_notional:
            raise FilterViolation(f"{self.symbol}: notional {qty * price:.4f} below minimum "
                                  f"{self.min_notional}")


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-12)) if step < 1 else 0


#: Defaults close to Binance USDⓈ-M filters for the symbols we ship data for.
DEFAULT_INSTRUMENTS: dict[str, Instrument] = {
    "BTCUSDT": Instrument("BTCUSDT", tick_size=0.1, step_size=0.001, min_qty=0.001,
                          min_notional=100.0, max_leverage=125.0, maintenance_margin_rate=0.004),
    "ETHUSDT": Instrument("ETHUSDT", tick_size=0.01, step_size=0.001, min_qty=0.001,
                          min_notional=20.0, max_leverage=100.0, maintenance_margin_rate=0.005),
    "XRPUSDT": Instrument("XRPUSDT", tick_size=0.0001, step_size=0.1, min_qty=0.1,
                          min_notional=5.0, max_leverage=75.0, maintenance_margin_rate=0.005),
    "EOSUSDT": Instrument("EOSUSDT", tick_size=0.001, step_size=0.1, min_qty=0.1,
                          min_notional=5.0, max_leverage=50.0, maintenance_margin_rate=0.01),
    "LTCUSDT": Instrument("LTCUSDT", tick_size=0.01, step_size=0.001, min_qty=0.001,
                          min_notional=20.0, max_leverage=75.0, maintenance_margin_rate=0.005),
}


@functools.lru_cache(maxsize=4096)
def instrument_for(symbol: str) -> Instrument:
    """Known filters for ``symbol``, or conservative generic ones."""
    return DEFAULT_INSTRUMENTS.get(symbol) or Instrument(symbol)
