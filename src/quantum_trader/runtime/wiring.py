"""Builds a ``TradingNode`` from settings: one place that knows how the parts fit."""

from __future__ import annotations

from quantum_trader.config import Settings
from quantum_trader.domain.exits import ExitBrain
from quantum_trader.domain.portfolio import Portfolio
from quantum_trader.domain.risk.engine import RiskEngine
from quantum_trader.domain.strategy import EmaCrossStrategy, SignalSource
from quantum_trader.exchange.simulated import SimulatedExchange
from quantum_trader.runtime.node import Journal, TradingNode


def baseline_strategy(settings: Settings) -> EmaCrossStrategy:
    s = settings.strategy
    return EmaCrossStrategy(fast=s.fast, slow=s.slow, atr_period=s.atr_period,
                            atr_mult=s.atr_mult, signal_ttl_ms=s.signal_ttl_ms,
                            allow_short=s.allow_short)


def build_node(settings: Settings, source: SignalSource | None = None,
               journal: Journal | None = None, name: str = "embedded") -> TradingNode:
    limits = settings.risk.limits()
    exits = settings.exits.settings()
    instruments = settings.instrument_lookup()
    risk = RiskEngine(limits, instruments, exit_rr=exits.take_profit_rr or 2.0,
                      intent_ttl_ms=exits.intent_ttl_ms)
    exchange = SimulatedExchange(settings.exchange_settings(), instruments)
    portfolio = Portfolio(settings.initial_balance)
    return TradingNode(source or baseline_strategy(settings), risk,
                       ExitBrain(exits, instruments), exchange, portfolio, journal, name,
                       instruments)
