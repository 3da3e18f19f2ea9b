"""Each risk rule rejects what it should and passes what it should; sizing is fixed-fractional
and capped; exits bypass entry limits but must be reduce-only."""

from __future__ import annotations

from dataclasses import replace

import pytest

from quantum_trader.domain.enums import Direction, IntentPurpose, OrderType, Side, TradingState
from quantum_trader.domain.instruments import Instrument
from quantum_trader.domain.models import OrderIntent, Signal
from quantum_trader.domain.portfolio import Portfolio
from quantum_trader.domain.position import Position
from quantum_trader.domain.risk.engine import RiskEngine
from quantum_trader.domain.risk.limits import RiskLimits
from quantum_trader.domain.risk.rules import RejectReason

NOW = 1_700_000_000_000
INST = Instrument("XRPUSDT", tick_size=0.0001, step_size=0.1, min_qty=0.1, min_notional=5.0)


def engine(limits: RiskLimits | None = None, equity: float = 10_000.0,
           positions: dict[str, Position] | None = None) -> RiskEngine:
    eng = RiskEngine(limits or RiskLimits(), lambda _s: INST)
    pf = Portfolio(equity)
    for sym, pos in (positions or {}).items():
        pf.positions[sym] = pos
    pf._refresh_unrealized()
    eng.sync(pf)
    eng.on_price("XRPUSDT", 0.5)
    return eng


def signal(direction: Direction = Direction.LONG, confidence: float = 0.8,
           price: float = 0.5, ts: int = NOW, ttl: int = 60_000,
           stop: float | None = 0.02, symbol: str = "XRPUSDT") -> Signal:
    return Signal(f"s-{ts}-{direction}", symbol, direction, confidence, ts, ts + ttl, price,
                  "test", f"trace-{ts}", "30m", stop)


def exit_intent(side: Side = Side.SELL, qty: float = 100.0, reduce_only: bool = True,
                ts: int = NOW) -> OrderIntent:
    return OrderIntent("x1", "XRPUSDT", side, qty, OrderType.MARKET, IntentPurpose.EXIT, ts,
                       ts + 60_000, "trace-x", reduce_only=reduce_only, reason="stop_loss",
                       reference_price=0.5)


def long_pos(qty: float = 1000.0, price: float = 0.5) -> Position:
    return Position("XRPUSDT", qty, price, last_price=price)


def test_approves_and_sizes_fixed_fractional() -> None:
    d = engine(RiskLimits(max_position_notional=1e9, max_gross_exposure=1e9,
                          max_leverage=100)).evaluate_signal(signal(), NOW)
    assert d.approved, d.detail
    assert d.intent is not None
    # 1% of 10,000 at a 2% stop is 5,000 notional -> 10,000 XRP at 0.5
    assert d.intent.quantity == pytest.approx(10_000.0)
    assert d.intent.side is Side.BUY
    assert d.intent.stop_loss == pytest.approx(0.49)
    assert d.intent.take_profit == pytest.approx(0.52)
    assert d.intent.trace_id == "trace-" + str(NOW)


@pytest.mark.parametrize(("limits", "reason"), [
    (RiskLimits(max_position_notional=1_000), RejectReason.MAX_POSITION_NOTIONAL),
    (RiskLimits(max_gross_exposure=2_000), RejectReason.MAX_GROSS_EXPOSURE),
    (RiskLimits(max_leverage=0.3), RejectReason.MAX_LEVERAGE),
])
def test_caps_shrink_the_size_to_the_binding_limit(limits: RiskLimits,
                                                   reason: RejectReason) -> None:
    d = engine(replace(limits, max_position_notional=min(limits.max_position_notional, 1e9)
                       )).evaluate_signal(signal(), NOW)
    assert d.approved
    assert d.intent is not None
    cap = {RejectReason.MAX_POSITION_NOTIONAL: 1_000, RejectReason.MAX_GROSS_EXPOSURE: 2_000,
           RejectReason.MAX_LEVERAGE: 3_000}[reason]
    assert d.intent.quantity * 0.5 == pytest.approx(cap, rel=1e-4)


@pytest.mark.parametrize("reason", [RejectReason.MAX_POSITION_NOTIONAL,
                                    RejectReason.MAX_GROSS_EXPOSURE,
                                    RejectReason.MAX_LEVERAGE])
def test_caps_reject_when_no_headroom_is_left(reason: RejectReason) -> None:
    limits = {
        RejectReason.MAX_POSITION_NOTIONAL: RiskLimits(max_position_notional=499),
        RejectReason.MAX_GROSS_EXPOSURE: RiskLimits(max_gross_exposure=500, max_open_positions=5),
        RejectReason.MAX_LEVERAGE: RiskLimits(max_leverage=0.05, max_open_positions=5),
    }[reason]
    other = Position("BTCUSDT", 0.05, 10_000.0, last_price=10_000.0)  # 500 notional elsewhere
    eng = engine(limits, positions={"BTCUSDT": other})
    if reason is RejectReason.MAX_POSITION_NOTIONAL:
        eng = engine(limits, positions={"XRPUSDT": Position("XRPUSDT", -998.0, 0.5,
                                                           last_price=0.5)})
        d = eng.evaluate_signal(signal(Direction.SHORT), NOW)
        assert not d.approved
        assert d.reason == RejectReason.ALREADY_POSITIONED
        d = engine(RiskLimits(max_position_notional=4.0)).evaluate_signal(signal(), NOW)
    else:
        d = eng.evaluate_signal(signal(), NOW)
    assert not d.approved
    assert d.reason == reason.value


def test_trading_state_blocks_entries() -> None:
    for state, reason in ((TradingState.HALTED, RejectReason.TRADING_HALTED),
                          (TradingState.REDUCING, RejectReason.TRADING_REDUCING)):
        eng = engine()
        eng.set_trading_state(state, "test", NOW)
        d = eng.evaluate_signal(signal(), NOW)
        assert not d.approved
        assert d.reason == reason.value


def test_halted_still_allows_reduce_only_exits() -> None:
    eng = engine(positions={"XRPUSDT": long_pos()})
    eng.set_trading_state(TradingState.HALTED, "test", NOW)
    d = eng.evaluate_exit(exit_intent(), NOW)
    assert d.approved, d.detail
    assert d.intent is not None
    assert d.intent.reduce_only


def test_expired_signal_rejected_fresh_one_passes() -> None:
    eng = engine()
    assert eng.evaluate_signal(signal(ttl=1000), NOW + 1000).approved
    d = engine().evaluate_signal(signal(ttl=1000), NOW + 1001)
    assert d.reason == RejectReason.SIGNAL_EXPIRED.value


def test_min_confidence() -> None:
    assert engine().evaluate_signal(signal(confidence=0.55), NOW).approved
    d = engine().evaluate_signal(signal(confidence=0.549), NOW)
    assert d.reason == RejectReason.LOW_CONFIDENCE.value


def test_max_open_positions() -> None:
    others = {s: Position(s, 1.0, 100.0, last_price=100.0) for s in ("A", "B", "C")}
    d = engine(RiskLimits(max_open_positions=3), positions=others).evaluate_signal(signal(), NOW)
    assert d.reason == RejectReason.MAX_OPEN_POSITIONS.value
    d = engine(RiskLimits(max_open_positions=4), positions=others).evaluate_signal(signal(), NOW)
    assert d.approved


def test_daily_loss_limit() -> None:
    eng = engine()
    eng.ctx.day_start_equity = 10_000.0
    eng.ctx.equity = 9_501.0
    assert eng.evaluate_signal(signal(), NOW).approved
    eng.ctx.equity = 9_500.0
    assert eng.evaluate_signal(signal(ts=NOW + 1), NOW + 1).reason == \
        RejectReason.DAILY_LOSS_LIMIT.value


def test_max_drawdown_rejects_and_breaker_halts() -> None:
    eng = engine()
    eng.ctx.peak_equity = 12_500.0
    eng.ctx.equity = 10_001.0
    assert eng.evaluate_signal(signal(), NOW).approved
    assert eng.check_breakers(NOW) is None
    eng.ctx.equity = 9_999.0  # 20% below the peak
    audit = eng.check_breakers(NOW)
    assert audit is not None
    assert audit.detail["to"] == "HALTED"
    assert eng.trading_state is TradingState.HALTED
    assert eng.evaluate_signal(signal(ts=NOW + 1), NOW + 1).reason == \
        RejectReason.TRADING_HALTED.value
    assert eng.check_breakers(NOW + 2) is None  # only an operator moves it back
    plain = engine()
    plain.ctx.peak_equity, plain.ctx.equity = 12_500.0, 9_999.0
    assert plain.evaluate_signal(signal(), NOW).reason == RejectReason.MAX_DRAWDOWN.value


def test_order_rate_limit_slides() -> None:
    eng = engine(RiskLimits(max_orders_per_minute=2, max_position_notional=1e9,
                            max_gross_exposure=1e9, max_leverage=1e3, max_open_positions=10))
    for i in range(2):
        eng.record_order(NOW + i)
    d = eng.evaluate_signal(signal(ts=NOW + 10), NOW + 10)
    assert d.reason == RejectReason.ORDER_RATE_LIMIT.value
    assert eng.evaluate_signal(signal(ts=NOW + 60_001), NOW + 60_001).approved


def test_cooldown_after_stop_out() -> None:
    eng = engine(RiskLimits(cooldown_after_stop_ms=3_600_000))
    eng.record_stop_out("XRPUSDT", NOW)
    assert eng.evaluate_signal(signal(ts=NOW + 10), NOW + 10).reason == \
        RejectReason.COOLDOWN.value
    assert eng.evaluate_signal(signal(ts=NOW + 3_600_000), NOW + 3_600_000).approved


def test_price_sanity() -> None:
    assert engine().evaluate_signal(signal(price=0.509), NOW).approved
    assert engine().evaluate_signal(signal(price=0.52), NOW).reason == \
        RejectReason.PRICE_SANITY.value
    eng = engine()
    eng.ctx.last_prices.clear()
    assert eng.evaluate_signal(signal(), NOW).reason == RejectReason.NO_MARKET_PRICE.value


def test_exchange_min_notional_and_step_size() -> None:
    tiny = engine(RiskLimits(risk_per_trade=0.0001, default_stop_distance=0.5), equity=100.0)
    d = tiny.evaluate_signal(signal(stop=0.5), NOW)
    assert d.reason == RejectReason.MIN_NOTIONAL.value
    d = engine(RiskLimits(max_position_notional=1e9, max_gross_exposure=1e9, max_leverage=1e3)
               ).evaluate_signal(signal(stop=0.0333), NOW)
    assert d.intent is not None
    assert INST.on_step(d.intent.quantity)  # rounded down to the 0.1 step


def test_flat_signal_is_not_an_entry() -> None:
    assert engine().evaluate_signal(signal(Direction.FLAT), NOW).reason == \
        RejectReason.INVALID_REQUEST.value


def test_exits_must_be_reduce_only_and_reduce_something() -> None:
    eng = engine(positions={"XRPUSDT": long_pos(1000.0)})
    assert eng.evaluate_exit(exit_intent(reduce_only=False), NOW).reason == \
        RejectReason.NOT_REDUCE_ONLY.value
    assert eng.evaluate_exit(exit_intent(Side.BUY), NOW).reason == RejectReason.NO_POSITION.value
    assert engine().evaluate_exit(exit_intent(), NOW).reason == RejectReason.NO_POSITION.value
    clipped = eng.evaluate_exit(exit_intent(qty=5000.0), NOW)
    assert clipped.approved
    assert clipped.intent is not None
    assert clipped.intent.quantity == 1000.0


def test_exits_bypass_entry_limits() -> None:
    limits = RiskLimits(max_orders_per_minute=1, max_leverage=0.01, max_drawdown=0.01)
    eng = engine(limits, positions={"XRPUSDT": long_pos()})
    eng.record_order(NOW)
    eng.record_stop_out("XRPUSDT", NOW)
    eng.ctx.peak_equity = 20_000.0
    eng.set_trading_state(TradingState.REDUCING, "test", NOW)
    assert eng.evaluate_exit(exit_intent(), NOW).approved
    assert engine(positions={"XRPUSDT": long_pos()}).evaluate_exit(
        exit_intent(ts=NOW - 120_000), NOW).reason == RejectReason.SIGNAL_EXPIRED.value
