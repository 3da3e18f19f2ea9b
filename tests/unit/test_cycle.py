"""The full cycle in one process: signal → risk → sizing → order → fill → position → exit
signal → close, every step journaled, one trace id following it."""

from __future__ import annotations

from quantum_trader.config import Settings
from quantum_trader.domain.enums import Direction, IntentPurpose, OrderStatus, Side
from quantum_trader.domain.models import Bar, Fill, RiskDecision, Signal
from quantum_trader.domain.orders import Order
from quantum_trader.domain.records import ClosedTrade, PositionSnapshot
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.runtime.node import ListJournal
from quantum_trader.runtime.wiring import build_node
from tests.support.scripted import ScriptedSource


def _bars(n: int = 60) -> list[Bar]:
    return list(load_sample("XRP").slice(1000, 1000 + n))


def test_full_cycle_with_one_trace_id() -> None:
    journal = ListJournal()
    settings = Settings.model_validate({"exits": {"take_profit_rr": 50.0},
                                        "risk": {"max_price_deviation": 0.5}})
    node = build_node(settings, ScriptedSource({5: Direction.LONG, 20: Direction.SHORT},
                                               stop_distance=0.5), journal)
    bars = _bars()
    for bar in bars:
        node.on_bar(bar)
    ev = journal.events
    signals = [e for e in ev if isinstance(e, Signal)]
    assert [s.direction for s in signals] == [Direction.LONG, Direction.SHORT]
    trace = signals[0].trace_id

    decisions = [e for e in ev if isinstance(e, RiskDecision) and e.trace_id == trace]
    entry_decision = next(d for d in decisions if d.subject_id == signals[0].id)
    assert entry_decision.approved
    assert entry_decision.intent is not None
    qty = entry_decision.intent.quantity
    assert qty > 0

    orders = {e.client_order_id: e for e in ev if isinstance(e, Order) and e.trace_id == trace}
    entry = next(o for o in orders.values() if o.purpose is IntentPurpose.ENTRY)
    assert entry.status is OrderStatus.FILLED
    assert [s for s, _ in entry.history] == [OrderStatus.NEW, OrderStatus.SUBMITTED,
                                             OrderStatus.ACCEPTED]
    fills = [e for e in ev if isinstance(e, Fill) and e.trace_id == trace]
    entry_fill = next(f for f in fills if f.order_id == entry.id)
    # Filled at the open of the bar after the signal bar, never at the signal bar's close.
    assert entry_fill.ts == bars[6].ts
    assert entry_fill.price > bars[6].open  # slippage on a buy
    assert entry_fill.side is Side.BUY

    protective = [o for o in orders.values() if o.tag in ("sl", "tp")]
    assert {o.tag for o in protective} == {"sl", "tp"}
    assert all(o.reduce_only for o in protective)

    exit_order = next(o for o in orders.values() if o.tag == "signal")
    assert exit_order.status is OrderStatus.FILLED
    exit_fill = next(f for f in fills if f.order_id == exit_order.id)
    assert exit_fill.ts == bars[21].ts
    assert exit_fill.side is Side.SELL

    # After the close the protective orders were cancelled, not left working.
    final = {o.client_order_id: o for o in ev if isinstance(o, Order)}
    assert all(final[o.client_order_id].status is OrderStatus.CANCELED for o in protective)

    closed = [e for e in ev if isinstance(e, ClosedTrade)]
    assert closed[0].trace_id == trace
    assert closed[0].exit_reason == "signal_exit"
    expected = qty * (exit_fill.price - entry_fill.price)
    assert abs(closed[0].realized_pnl - expected) < 1e-9
    assert abs(closed[0].fees - (entry_fill.fee + exit_fill.fee)) < 1e-12

    snaps = [e for e in ev if isinstance(e, PositionSnapshot) and e.trace_id == trace]
    assert snaps[0].qty == qty
    assert any(s.qty == 0 for s in snaps)
    # The short that follows has its own trace.
    assert node.portfolio.positions["XRPUSDT"].qty < 0
    assert node.trades[0] == closed[0]


def test_halted_blocks_entries_but_protective_exits_still_run() -> None:
    from quantum_trader.domain.enums import TradingState

    journal = ListJournal()
    settings = Settings.model_validate({"exits": {"take_profit_rr": 50.0},
                                        "risk": {"max_price_deviation": 0.5}})
    node = build_node(settings, ScriptedSource({5: Direction.LONG, 8: Direction.FLAT,
                                                12: Direction.LONG}, stop_distance=0.5),
                      journal)
    bars = _bars(20)
    for i, bar in enumerate(bars):
        node.on_bar(bar)
        if i == 6:
            node.set_trading_state(TradingState.HALTED, "operator", bar.close_ts)
    assert len(node.trades) == 1
    assert node.trades[0].exit_reason == "signal_exit"
    rejected = [e for e in journal.events if isinstance(e, RiskDecision) and not e.approved]
    assert [d.reason for d in rejected] == ["TRADING_HALTED"]
    assert not node.portfolio.positions["XRPUSDT"].is_open
