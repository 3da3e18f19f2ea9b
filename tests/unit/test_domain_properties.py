"""Property tests of the domain's invariants (hypothesis): order transitions, rounding on any
step or tick, sizing caps, and the engine's exactly-once booking."""

from __future__ import annotations

import math
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_trader.domain.enums import (
    Direction,
    IntentPurpose,
    Liquidity,
    OrderStatus,
    OrderType,
    Side,
)
from quantum_trader.domain.execution import ExecutionEngine
from quantum_trader.domain.instruments import Instrument
from quantum_trader.domain.models import OrderIntent, Signal
from quantum_trader.domain.orders import TRANSITIONS, IllegalTransition, Order
from quantum_trader.domain.portfolio import Portfolio
from quantum_trader.domain.risk.engine import RiskEngine
from quantum_trader.domain.risk.limits import RiskLimits
from quantum_trader.domain.venue import OrderUpdate, VenueTrade

STEPS = st.sampled_from([0.001, 0.01, 0.1, 1.0, 5.0, 0.25, 0.5, 0.003, 0.0001, 0.00001, 2.5])
VALUES = st.floats(min_value=1e-6, max_value=1e7, allow_nan=False, allow_infinity=False)


def _order(qty: float = 10.0) -> Order:
    return Order("o", "o", "i", "X", Side.BUY, OrderType.MARKET, qty, IntentPurpose.ENTRY, 0,
                 "t")


@given(st.lists(st.sampled_from(list(OrderStatus)), max_size=12))
def test_any_sequence_of_moves_stays_inside_the_table(moves: list[OrderStatus]) -> None:
    order = _order()
    for target in moves:
        before = order.status
        try:
            order.transition(target, 1)
        except IllegalTransition:
            assert target not in TRANSITIONS[before]
            assert order.status is before  # refused moves change nothing
        else:
            assert target in TRANSITIONS[before]
    # once terminal, always terminal
    if order.status.is_terminal:
        for target in OrderStatus:
            try:
                order.transition(target, 2)
            except IllegalTransition:
                continue
            raise AssertionError("a terminal order moved")


@given(VALUES, STEPS)
def test_quantity_rounding_never_increases_size_and_is_on_the_step(qty: float,
                                                                   step: float) -> None:
    inst = Instrument("X", step_size=step, tick_size=step)
    q = inst.round_qty_down(qty)
    # never above: at most float noise (a few ulps) over, never a step
    assert q <= qty * (1 + 1e-12) + step * 1e-9
    assert q > qty - step * (1 + 1e-9)
    # exactly a decimal multiple of the step: what the venue (and ccxt) expect to read
    d = Decimal(repr(q)) / Decimal(repr(step))
    assert d == d.to_integral_value()


@given(VALUES, STEPS, st.floats(min_value=1e-6, max_value=1e7))
def test_price_rounded_toward_an_anchor_never_moves_away_from_it(price: float, tick: float,
                                                                 anchor: float) -> None:
    inst = Instrument("X", tick_size=tick, step_size=tick)
    p = inst.round_price_toward(price, anchor)
    d = Decimal(repr(p)) / Decimal(repr(tick))
    assert d == d.to_integral_value()
    assert abs(p - price) < tick * (1 + 1e-9)
    # float noise (a value a few dozen ulps off the grid is on it) is not a step away
    noise = tick * 1e-9 + abs(price) * 1e-13
    if anchor > price:  # e.g. a long's stop below the entry: rounded up, never further away
        assert p >= price - noise
    elif anchor < price:
        assert p <= price + noise


LIMITS = st.builds(
    RiskLimits,
    min_confidence=st.just(0.0),
    risk_per_trade=st.floats(0.001, 0.1),
    default_stop_distance=st.floats(0.001, 0.2),
    max_position_notional=st.floats(10.0, 1e6),
    max_gross_exposure=st.floats(10.0, 1e6),
    max_leverage=st.floats(0.5, 20.0),
    max_open_positions=st.integers(1, 5),
    daily_loss_limit=st.just(1.0),
    max_drawdown=st.just(1.0),
    max_orders_per_minute=st.just(10_000),
    max_price_deviation=st.just(1.0),
)


@settings(max_examples=300, deadline=None)
@given(LIMITS, st.floats(100.0, 1e6), st.floats(0.01, 1e5), STEPS,
       st.floats(0.001, 0.3), st.sampled_from([Direction.LONG, Direction.SHORT]),
       st.floats(0.0, 1e5))
def test_an_approved_entry_never_exceeds_any_cap(limits: RiskLimits, equity: float,
                                                 price: float, step: float, stop: float,
                                                 direction: Direction, pending: float) -> None:
    inst = Instrument("X", tick_size=0.0001, step_size=step, min_qty=step, min_notional=0.0)
    risk = RiskEngine(limits, lambda _s: inst)
    risk.sync(Portfolio(equity))
    risk.ctx.last_prices["X"] = price
    risk.ctx.pending = {"Y": pending}  # an entry elsewhere, not filled yet
    sig = Signal("s", "X", direction, 0.9, 0, 10**12, price, "t", "s", stop_distance=stop)
    d = risk.evaluate_signal(sig, 1)
    if not d.approved:
        return
    assert d.intent is not None
    notional = d.intent.quantity * price
    tol = 1e-6 * max(1.0, notional)
    assert notional <= limits.max_position_notional + tol
    assert notional + pending <= limits.max_gross_exposure + tol
    assert notional + pending <= equity * limits.max_leverage + tol
    assert notional <= equity * limits.risk_per_trade / stop + tol
    steps = Decimal(repr(d.intent.quantity)) / Decimal(repr(step))
    assert steps == steps.to_integral_value()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.floats(0.1, 50.0)), min_size=1,
                max_size=40, unique_by=lambda t: t[0]),
       st.randoms(use_true_random=False))
def test_every_trade_is_booked_exactly_once_whatever_the_replays(
        trades: list[tuple[int, float]], rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    e = ExecutionEngine(Portfolio(1e9))
    o = e.create(OrderIntent("i", "X", Side.BUY, 1e6, OrderType.MARKET, IntentPurpose.ENTRY,
                             0, 10**15, "t"), 0)
    e.sent(o, 0, 1)
    e.on_update(OrderUpdate(o.client_order_id, "v", "X", Side.BUY, OrderStatus.ACCEPTED, 1))
    unique = dict(trades)  # a venue trade never changes: one quantity per id
    stream = [VenueTrade("X", str(tid), "v", o.client_order_id, Side.BUY, qty, 1.0, 0.0,
                         Liquidity.TAKER, 2) for tid, qty in trades]
    stream += rnd.sample(stream, k=min(len(stream), 10))  # redeliveries, overlapping polls
    for t in stream:
        e.on_trade(t)
    assert math.isclose(e.portfolio.positions["X"].qty, sum(unique.values()), rel_tol=1e-9)
    assert math.isclose(o.filled_qty, sum(unique.values()), rel_tol=1e-9)


def test_a_position_closed_by_one_fill_after_partial_entries_is_flat() -> None:
    """Float noise of the quantity's own size is not a position: partial fills of 15550.1
    closed by one fill left -3.6e-12, which read as open (and wanted a stop)."""
    from quantum_trader.domain.position import Position

    pos = Position("XRPUSDT")
    for part in (5000.3, 4999.9, 5549.9):
        pos.apply_fill(part, 0.5, 0.0, 1)
    pos.apply_fill(-15550.1, 0.51, 0.0, 2)
    assert not pos.is_open
    assert pos.qty == 0.0
    short = Position("XRPUSDT")
    for part in (-0.1, -0.2):
        short.apply_fill(part, 1.0, 0.0, 1)
    short.apply_fill(0.3, 1.0, 0.0, 2)
    assert short.qty == 0.0
    flip = Position("XRPUSDT")
    flip.apply_fill(1.0, 1.0, 0.0, 1)
    flip.apply_fill(-3.0, 1.0, 0.0, 2)  # a real flip stays a flip
    assert flip.qty == -2.0
    assert flip.avg_entry == 1.0
