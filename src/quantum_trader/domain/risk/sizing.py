"""Fixed-fractional position sizing: lose ``risk_per_trade`` of equity if the stop is hit."""

from __future__ import annotations

from quantum_trader.domain.instruments import Instrument


def risk_notional(equity: float, risk_per_trade: float, stop_distance: float) -> float:
    """Notional whose loss at a stop ``stop_distance`` (fraction of price) away is
    ``risk_per_trade`` of ``equity``."""
    if equity <= 0 or stop_distance <= 0:
        return 0.0
    return equity * risk_per_trade / stop_distance


def size_quantity(notional: float, price: float, instrument: Instrument) -> float:
    """Quantity for ``notional`` at ``price``, rounded down to the step size."""
    if notional <= 0 or price <= 0:
        return 0.0
    return instrument.round_qty_down(notional / price)
