"""Simulator fidelity: hand-computed scenarios must match exactly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_trader.domain.enums import Liquidity, OrderStatus, OrderType, Side
from quantum_trader.domain.instruments import Instrument
from quantum_trader.domain.models import Bar
from quantum_trader.domain.venue import (
    OrderOrigin,
    OrderRequest,
    OrderUpdate,
    VenueEvent,
    VenueTrade,
)
from quantum_trader.exchange.simulated import SimExchangeSettings, SimulatedExchange

H = 3_600_000
T0 = 1_700_006_400_000 - 1_700_006_400_000 % (8 * H)  # a funding boundary (00/08/16 UTC)
INST = Instrument("TESTUSDT", tick_size=0.01, step_size=1.0, min_qty=1.0, min_notional=1.0,
                  max_leverage=50, maintenance_margin_rate=0.005)


def ex(**kw: float) -> SimulatedExchange:
    base = {"initial_balance": 100_000.0, "maker_fee": 0.0002, "taker_fee": 0.0005,
            "slippage_bps": 1.0, "impact": 0.1, "max_volume_share": 0.1,
            "funding_rate": 0.0001, "liquidation_fee": 0.0125, "default_leverage": 5.0}
    base.update(kw)
    x = SimulatedExchange(SimExchangeSettings(**base), lambda _s: INST)  # type: ignore[arg-type]
    x.on_bar(Bar("TESTUSDT", "1h", T0, 1.0, 1.0, 1.0, 1.0, 1.0))  # the market opens: a price
    return x


def bar(i: int, o: float, h: float, lo: float, c: float, v: float = 1_000_000.0) -> Bar:
    return Bar("TESTUSDT", "1h", T0 + 1 * H + i * H, o, h, lo, c, v)


def req(cid: str, side: Side, qty: float, kind: OrderType = OrderType.MARKET,
        price: float | None = None, stop: float | None = None,
        reduce_only: bool = False) -> OrderRequest:
    return OrderRequest(cid, "TESTUSDT", side, kind, qty, reduce_only, price, stop)


def trades(events: list[VenueEvent]) -> list[VenueTrade]:
    return [e for e in events if isinstance(e, VenueTrade)]


def updates(events: list[VenueEvent]) -> dict[str, OrderUpdate]:
    """The last update of each order, by client id."""
    return {e.client_order_id: e for e in events if isinstance(e, OrderUpdate)}


def one_fill(events: list[VenueEvent]) -> tuple[VenueTrade, OrderUpdate]:
    """Exactly one execution, reported as Binance does: the trade, then the order's update."""
    trade, update = events
    assert isinstance(trade, VenueTrade)
    assert isinstance(update, OrderUpdate)
    assert (update.client_order_id, update.venue_order_id) == (trade.client_order_id,
                                                               trade.venue_order_id)
    return trade, update


def test_market_order_fills_at_next_open_with_slippage_and_taker_fee() -> None:
    x = ex()
    signal_bar = bar(0, 100, 101, 99, 100.5)
    x.on_bar(signal_bar)
    assert x.submit(req("a", Side.BUY, 100), signal_bar.close_ts).status is OrderStatus.ACCEPTED
    fill, update = one_fill(x.on_bar(bar(1, 102, 103, 101, 102)))
    slip = 1e-4 + 0.1 * 100 / 1_000_000
    assert fill.price == pytest.approx(102 * (1 + slip), abs=1e-12)  # the open, not 100.5
    assert fill.quantity == 100
    assert fill.fee == pytest.approx(100 * 102 * (1 + slip) * 0.0005, abs=1e-12)
    assert fill.liquidity is Liquidity.TAKER
    assert update.status is OrderStatus.FILLED
    assert (update.filled_qty, update.avg_price) == (100, fill.price)
    assert x.position("TESTUSDT").qty == 100
    assert x.wallet == pytest.approx(100_000 - fill.fee, abs=1e-9)


def test_sell_slippage_is_against_the_trader() -> None:
    x = ex(impact=0.0)
    x.submit(req("a", Side.SELL, 10), T0)
    fill, _ = one_fill(x.on_bar(bar(1, 50, 51, 49, 50)))
    assert fill.price == pytest.approx(50 * (1 - 1e-4), abs=1e-12)


def test_resting_limit_fills_at_its_price_as_maker() -> None:
    x = ex()
    x.submit(req("l", Side.BUY, 10, OrderType.LIMIT, price=95.0), T0)
    assert x.on_bar(bar(1, 100, 101, 96, 97)) == []  # not touched
    fill, update = one_fill(x.on_bar(bar(2, 97, 98, 94, 96)))
    assert (fill.price, fill.liquidity) == (95.0, Liquidity.MAKER)
    assert update.status is OrderStatus.FILLED
    assert fill.fee == pytest.approx(10 * 95 * 0.0002, abs=1e-12)


def test_marketable_limit_on_arrival_is_taker_at_the_open() -> None:
    x = ex(slippage_bps=0.0, impact=0.0)
    x.submit(req("l", Side.BUY, 10, OrderType.LIMIT, price=105.0), T0)
    fill, _ = one_fill(x.on_bar(bar(1, 100, 101, 99, 100)))
    assert (fill.price, fill.liquidity) == (100.0, Liquidity.TAKER)


def test_funding_every_8_hours_on_the_position_held() -> None:
    x = ex(slippage_bps=0.0, impact=0.0, taker_fee=0.0)
    x.submit(req("a", Side.BUY, 1000), T0)
    for i in range(8):  # bars at T0+1h .. T0+8h; T0+8h is the next funding time
        x.on_bar(bar(i, 1.0 if i == 0 else 1.2, 1.25, 0.99, 1.2))
    assert len(x.funding_payments) == 1
    pay = x.funding_payments[0]
    assert pay.ts == T0 + 8 * H
    assert pay.amount == pytest.approx(1000 * 1.2 * 0.0001, abs=1e-12)
    assert x.position("TESTUSDT").funding == pytest.approx(0.12, abs=1e-12)
    assert x.wallet == pytest.approx(100_000 - 0.12, abs=1e-9)


def test_short_receives_positive_funding() -> None:
    x = ex(slippage_bps=0.0, impact=0.0, taker_fee=0.0)
    x.submit(req("a", Side.SELL, 1000), T0)
    for i in range(8):
        x.on_bar(bar(i, 1.0, 1.1, 0.9, 1.0))
    assert x.funding_payments[0].amount == pytest.approx(-0.1, abs=1e-12)


def test_partial_fills_capped_at_share_of_bar_volume() -> None:
    x = ex(slippage_bps=0.0, impact=0.0)
    x.submit(req("big", Side.BUY, 250), T0)
    events = [x.on_bar(bar(i, 10, 10.5, 9.5, 10, v=1000.0)) for i in range(4)]
    assert [[f.quantity for f in trades(es)] for es in events] == [[100.0], [100.0], [50.0], []]
    assert [(updates(es)["big"].status, updates(es)["big"].filled_qty) for es in events[:3]] == [
        (OrderStatus.PARTIALLY_FILLED, 100.0), (OrderStatus.PARTIALLY_FILLED, 200.0),
        (OrderStatus.FILLED, 250.0)]
    assert events[3] == []


def test_stop_and_target_in_one_bar_the_stop_comes_first() -> None:
    x = ex(slippage_bps=0.0, impact=0.0)
    x.submit(req("e", Side.BUY, 10), T0)
    x.on_bar(bar(0, 100, 100.5, 99.5, 100))
    x.submit(req("sl", Side.SELL, 10, OrderType.STOP_MARKET, stop=98.0, reduce_only=True), T0)
    x.submit(req("tp", Side.SELL, 10, OrderType.LIMIT, price=104.0, reduce_only=True), T0)
    events = x.on_bar(bar(1, 100, 105, 97, 101))  # touches both
    by_id = updates(events)
    assert by_id["sl"].status is OrderStatus.FILLED
    assert by_id["sl"].avg_price == 98.0
    assert [(t.client_order_id, t.price) for t in trades(events)] == [("sl", 98.0)]
    assert by_id["tp"].status is OrderStatus.CANCELED
    assert not x.position("TESTUSDT").is_open


def test_short_position_the_adverse_path_is_up() -> None:
    x = ex(slippage_bps=0.0, impact=0.0)
    x.submit(req("e", Side.SELL, 10), T0)
    x.on_bar(bar(0, 100, 100.5, 99.5, 100))
    x.submit(req("sl", Side.BUY, 10, OrderType.STOP_MARKET, stop=102.0, reduce_only=True), T0)
    x.submit(req("tp", Side.BUY, 10, OrderType.LIMIT, price=96.0, reduce_only=True), T0)
    events = x.on_bar(bar(1, 100, 103, 95, 99))
    by_id = updates(events)
    assert by_id["sl"].avg_price == 102.0
    assert [(t.client_order_id, t.price) for t in trades(events)] == [("sl", 102.0)]
    assert by_id["tp"].status is OrderStatus.CANCELED


def test_stop_gapped_through_fills_at_the_open() -> None:
    x = ex(slippage_bps=0.0, impact=0.0)
    x.submit(req("e", Side.BUY, 10), T0)
    x.on_bar(bar(0, 100, 100, 100, 100))
    x.submit(req("sl", Side.SELL, 10, OrderType.STOP_MARKET, stop=98.0, reduce_only=True), T0)
    fill, update = one_fill(x.on_bar(bar(1, 90, 91, 89, 90)))
    assert (fill.client_order_id, fill.price) == ("sl", 90.0)
    assert update.status is OrderStatus.FILLED


def test_liquidation_at_the_liquidation_price_with_fee() -> None:
    x = ex(slippage_bps=0.0, impact=0.0, taker_fee=0.0, funding_rate=0.0, default_leverage=10.0)
    x.submit(req("e", Side.BUY, 100), T0)
    x.on_bar(bar(0, 100, 100, 100, 100))
    pos = x.position("TESTUSDT")
    assert pos.leverage == 10.0
    liq = 100 * (1 - 1 / 10) / (1 - 0.005)  # Binance's isolated formula: 90.4522...
    assert x.positions()[0].liquidation_price == pytest.approx(liq)
    wallet_before = x.wallet
    r, update = one_fill(x.on_bar(bar(1, 99, 99.5, 90.0, 91)))
    assert r.origin is OrderOrigin.LIQUIDATION
    assert r.client_order_id.startswith("autoclose-")
    assert (r.side, r.quantity) == (Side.SELL, 100)
    assert r.price == pytest.approx(liq)
    assert r.fee == pytest.approx(100 * liq * 0.0125)
    assert (update.status, update.filled_qty) == (OrderStatus.FILLED, 100)
    assert not pos.is_open
    assert x.wallet == pytest.approx(wallet_before + 100 * (liq - 100) - 100 * liq * 0.0125)


def test_rejections_with_binance_codes() -> None:
    x = ex()
    x.on_bar(bar(0, 100, 100, 100, 100))
    r = x.submit(req("ro", Side.SELL, 1, reduce_only=True), T0)
    assert r.status is OrderStatus.REJECTED
    assert "reduce-only" in r.reason
    r = x.submit(req("step", Side.BUY, 1.5), T0)
    assert r.status is OrderStatus.REJECTED
    assert "step" in r.reason
    r = x.submit(req("margin", Side.BUY, 100_000), T0)
    assert r.status is OrderStatus.REJECTED
    assert "margin" in r.reason


def test_cancel_and_query() -> None:
    x = ex()
    x.submit(req("l", Side.BUY, 10, OrderType.LIMIT, price=50.0), T0)
    assert [o.client_order_id for o in x.open_orders()] == ["l"]
    assert x.cancel("l", T0).status is OrderStatus.CANCELED
    assert x.open_orders() == []
    q = x.query("l")
    assert q is not None
    assert q.status is OrderStatus.CANCELED
    assert x.query("nope") is None


# --- the quiet-bar shortcut --------------------------------------------------------------------
# ``on_bar`` skips matching when ``_quiet`` says nothing can trade. That must be exactly what
# full matching concludes: on random books, positions (long, short, highly levered so the
# liquidation price is near) and bars, whenever the shortcut says quiet, the full match finds
# nothing to do; and the shortcut must not be so timid that it never fires.

_price = st.floats(80.0, 120.0, allow_nan=False).map(lambda p: round(p, 2))


@st.composite
def _scenario(draw: st.DrawFn) -> tuple[SimulatedExchange, Bar]:
    x = ex(default_leverage=draw(st.sampled_from([1.0, 5.0, 40.0])))
    side = draw(st.sampled_from([Side.BUY, Side.SELL, None]))
    x.on_bar(bar(0, 100, 100, 100, 100))
    if side is not None:
        x.submit(req("entry", side, 10), T0)
        x.on_bar(bar(1, 100, 100, 100, 100))  # fills at 100 (plus slippage)
    for i in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from([OrderType.LIMIT, OrderType.STOP_MARKET]))
        level = draw(_price)
        x.submit(req(f"o{i}", draw(st.sampled_from([Side.BUY, Side.SELL])), 1, kind,
                     price=level if kind is OrderType.LIMIT else None,
                     stop=level if kind is OrderType.STOP_MARKET else None,
                     reduce_only=draw(st.booleans()) and side is not None), T0)
    x.on_bar(bar(2, 100, 100, 100, 100))  # every order arrives (orders through 100 fill here)
    o, a, b, c = (draw(_price) for _ in range(4))
    return x, bar(3, o, max(o, a, b, c), min(o, a, b, c), c)


@settings(max_examples=400, deadline=None)
@given(_scenario())
def test_quiet_bar_shortcut_agrees_with_full_matching(case: tuple[SimulatedExchange, Bar]) -> None:
    x, b = case
    book = x._book.get(b.symbol)
    pos = x.account.positions.get(b.symbol)
    held = pos if pos is not None and pos.qty != 0.0 else None
    if not x._quiet(b, book, held):
        return
    before = (x.wallet, [(o.request.client_order_id, o.remaining) for o in book or []],
              held.qty if held else 0.0)
    reports: list[object] = []
    x._match(b, book or [], reports)  # type: ignore[arg-type]
    assert reports == []
    assert before == (x.wallet, [(o.request.client_order_id, o.remaining) for o in book or []],
                      held.qty if held else 0.0)


def test_quiet_bar_shortcut_fires_only_when_nothing_is_reached() -> None:
    x = ex(default_leverage=40.0)  # liquidation price of a long from 100: ~98
    x.on_bar(bar(0, 100, 100, 100, 100))
    x.submit(req("entry", Side.BUY, 10), T0)
    x.on_bar(bar(1, 100, 100, 100, 100))
    x.submit(req("sl", Side.SELL, 10, OrderType.STOP_MARKET, stop=99.0, reduce_only=True), T0)
    x.submit(req("tp", Side.SELL, 10, OrderType.LIMIT, price=103.0, reduce_only=True), T0)
    book, pos = x._book["TESTUSDT"], x.position("TESTUSDT")
    assert not x._quiet(bar(2, 100, 101, 99.5, 100), book, pos)  # not arrived yet
    x.on_bar(bar(2, 100, 101, 99.5, 100))
    assert x._quiet(bar(3, 100, 102.9, 99.1, 101), book, pos)
    assert not x._quiet(bar(4, 100, 103.0, 99.5, 101), book, pos)  # the target is touched
    assert not x._quiet(bar(5, 100, 101, 99.0, 100), book, pos)  # the stop is touched
    assert not x._quiet(bar(6, 104, 104, 103.5, 104), book, pos)  # opens through the target
    x.cancel("sl", T0)
    assert x._quiet(bar(7, 100, 101, 98.5, 100), book, pos)
    assert not x._quiet(bar(8, 100, 101, 97.0, 100), book, pos)  # the liquidation price


def test_quiet_bar_shortcut_changes_no_result_on_two_years_of_real_xrp(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same backtest (trailing stops on, trading through) with the shortcut and with every
    bar matched the long way: equity curve and trades identical to the last bit."""
    import numpy as np

    from quantum_trader.config import Settings
    from quantum_trader.marketdata.sample import load_sample
    from quantum_trader.runtime.backtest import run_backtest

    settings = Settings.model_validate({"risk": {"max_drawdown": 1.0, "daily_loss_limit": 1.0,
                                                 "min_confidence": 0.5},
                                        "exits": {"trailing_stop": 0.03}})
    series = load_sample("XRP")
    fast = run_backtest([series], settings)
    monkeypatch.setattr(SimulatedExchange, "_quiet", lambda *_: False)
    full = run_backtest([series], settings)
    assert len(fast.trades) > 500  # a trade-heavy run: the shortcut was exercised
    assert np.array_equal(fast.equity, full.equity)
    assert fast.trades == full.trades
    assert fast.orders == full.orders
