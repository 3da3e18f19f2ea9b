"""A strategy's own target (``target_distance``): the position's take-profit is set there,
anchored to the fill price, instead of ``exits.take_profit_rr`` times the stop distance."""

from __future__ import annotations

import pytest

from quantum_trader.config import Settings
from quantum_trader.domain.models import Bar
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.runtime.backtest import run_backtest
from quantum_trader.strategies import Signal, Strategy
from quantum_trader.strategies.adapter import StrategyError, StrategySource


class EveryHundred(Strategy):
    """Long every 100th bar, with a tight target and a wide stop."""

    def setup(self) -> None:
        self.n = 0

    def on_bar(self, bar: Bar) -> Signal | None:
        self.n += 1
        return Signal.long(0.9, 0.05, 0.004) if self.n % 100 == 0 else None


class FlatWithTarget(Strategy):
    def on_bar(self, bar: Bar) -> Signal | None:
        return Signal("flat", 1.0, None, 0.01)


def test_the_target_is_where_the_strategy_put_it() -> None:
    bars = load_sample("XRP").slice(0, 3000)
    res = run_backtest([bars], Settings(), StrategySource(EveryHundred, {}, 60_000))
    hits = [t for t in res.trades if t.exit_reason == "take_profit"]
    assert hits, "a 0.4% target is reached before a 5% stop"
    # A sell limit at the target: filled there, or better when a bar opens through it.
    assert all(t.exit_price >= t.entry_price * 1.004 - 1e-4 for t in hits)
    at_target = [t for t in hits if t.exit_price == pytest.approx(t.entry_price * 1.004,
                                                                   abs=1e-4)]
    assert len(at_target) * 2 > len(hits)
    ratio = run_backtest([bars], Settings(), None)  # the baseline: rr x stop distance
    assert all(abs(t.exit_price / t.entry_price - 1.004) > 1e-3
               for t in ratio.trades if t.exit_reason == "take_profit")
    off = Settings.model_validate({"exits": {"take_profit_rr": 0}})
    still = run_backtest([bars], off, StrategySource(EveryHundred, {}, 60_000))
    assert [t.exit_reason for t in still.trades] == [t.exit_reason for t in res.trades]


def test_a_flat_signal_with_a_target_is_refused() -> None:
    bars = load_sample("XRP").slice(0, 10)
    with pytest.raises(StrategyError, match="target_distance on a flat signal"):
        run_backtest([bars], Settings(), StrategySource(FlatWithTarget, {}, 60_000))
