"""A position of one trace that closes and opens again gets a new protective stop.

Found in a five-symbol backtest: an entry filled in two parts; the stop for the first part was
refused (-2021) and the part closed at market; the rest of the entry then filled and opened
the position again. The new guard numbered its intents from 1 again, so its stop got the
refused stop's intent id, the engine (one order per intent, whatever became of it) returned
the dead order, and the position ran with no stop at all."""

from __future__ import annotations

from quantum_trader.config import Settings
from quantum_trader.domain.enums import IntentPurpose, OrderType, Side
from quantum_trader.domain.exits import ExitBrain, ExitSettings
from quantum_trader.domain.models import OrderIntent
from quantum_trader.domain.position import Position
from quantum_trader.marketdata.sample import SAMPLE_ASSETS, load_sample
from quantum_trader.runtime.backtest import run_backtest

SYM = "LTCUSDT"
T0 = 1_507_321_800_000
TRACE = "LTCUSDT-trace"


def test_a_reopened_position_of_one_trace_gets_stop_intents_it_never_had() -> None:
    brain = ExitBrain(ExitSettings(take_profit_rr=2.0))
    entry = OrderIntent("e1", SYM, Side.SELL, 96.0, OrderType.MARKET, IntentPurpose.ENTRY, T0,
                        T0 + 60_000, TRACE, reference_price=51.0, stop_loss=52.0)
    first = brain.on_entry_fill(entry, Position(SYM, -47.0, 51.0, opened_ts=T0), T0, TRACE)
    brain.on_position_closed(SYM)  # the first part, closed at market
    again = brain.on_entry_fill(entry, Position(SYM, -49.0, 51.2, opened_ts=T0 + 1), T0 + 1,
                                TRACE)
    first_ids = {i.id for i in first.intents}
    stops = [i for i in again.intents if i.order_type is OrderType.STOP_MARKET]
    assert len(stops) == 1
    assert stops[0].quantity == 49.0
    assert not first_ids & {i.id for i in again.intents}


def test_no_position_of_a_five_symbol_backtest_goes_unprotected() -> None:
    series = [load_sample(a).slice(0, 4000) for a in SAMPLE_ASSETS]
    r = run_backtest(series, Settings.model_validate(
        {"risk": {"max_drawdown": 0.9, "daily_loss_limit": 0.5, "max_open_positions": 2}}))
    assert len(r.trades) > 20
    assert r.rejections.get("UNPROTECTED_POSITION", 0) == 0, r.rejections
