"""Instrument specifications: the exchange's filters, applied before anything is sent."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

#: A value this close to a multiple of the step is that multiple: float noise such as
#: 15550.099999999999 for 15550.1 must not cost a whole step (Binance and ccxt truncate).
_NOISE_STEPS = 1e-9  # absolute, in steps
_NOISE_REL = 1e-14  # relative to the number of steps (a few dozen ulps)


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
        """Largest multiple of the step size not above ``qty`` (sizing never rounds up),
        as the float closest to that decimal multiple, for any step (0.001, 0.5, 0.25...)."""
        return _to_grid(qty, self.step_size, ROUND_FLOOR)

    def round_price(self, price: float) -> float:
        """Nearest multiple of the tick size."""
        return _to_grid(price, self.tick_size, ROUND_HALF_EVEN)

    def round_price_toward(self, price: float, anchor: float) -> float:
        """A multiple of the tick size between ``price`` and ``anchor``, as close to ``price``
        as the grid allows: a stop or target rounded toward the entry never adds risk."""
        mode = ROUND_CEILING if anchor > price else ROUND_FLOOR
        return _to_grid(price, self.tick_size, mode)

    def on_step(self, qty: float) -> bool:
        steps = qty / self.step_size
        return abs(steps - round(steps)) < 1e-6

    def on_tick(self, price: float) -> bool:
        ticks = price / self.tick_size
        return abs(ticks - round(ticks)) < 1e-6

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


@functools.lru_cache(maxsize=256)
def _grid(step: float) -> tuple[int, float]:
    """``step`` as ``m / 10**e`` with integer ``m``: repr is the shortest decimal that
    round-trips, so 0.001 is 1/1000 and 0.25 is 25/100, not their binary values."""
    d = Decimal(repr(step)).normalize()
    _sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    m = int("".join(map(str, digits)))
    if exp >= 0:
        return m * 10**exp, 1.0
    return m, float(10 ** -exp)


def _to_grid(value: float, step: float, mode: str) -> float:
    """``value`` on the grid of ``step`` (rounded by ``mode``), as the double nearest to the
    decimal multiple: ``n * m`` is an exact integer and ``10**e`` an exact power of ten, and
    IEEE division is correctly rounded, so the result prints as the venue expects."""
    if step <= 0 or value != value or value in (math.inf, -math.inf):
        return value
    m, scale = _grid(step)
    steps = value * scale / m
    nearest = round(steps)
    if abs(steps - nearest) <= _NOISE_STEPS + _NOISE_REL * abs(nearest):
        n = nearest
    elif mode == ROUND_FLOOR:
        n = math.floor(steps)
    elif mode == ROUND_CEILING:
        n = math.ceil(steps)
    else:
        n = nearest
    return (n * m) / scale
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
