"""The numbers the risk gate enforces (plain data; config.py fills them from the config file)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class RiskLimits:
    min_confidence: float = 0.55
    risk_per_trade: float = 0.01  # fraction of equity lost if the stop is hit
    default_stop_distance: float = 0.02  # used when a signal suggests none
    max_position_notional: float = 5_000.0  # per symbol, quote currency
    max_gross_exposure: float = 10_000.0  # all positions, quote currency
    max_leverage: float = 3.0  # gross exposure / equity
    max_open_positions: int = 3
    daily_loss_limit: float = 0.05  # fraction of the day's starting equity
    max_drawdown: float = 0.20  # from the equity peak; breaching it halts trading
    max_orders_per_minute: int = 30
    cooldown_after_stop_ms: int = 4 * 3_600_000
    max_price_deviation: float = 0.02  # |intent reference price / last price - 1|
    order_leverage: float = 3.0  # leverage set on the exchange for new positions
