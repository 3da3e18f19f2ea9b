"""``SimulatedExchange``: a USDⓈ-M perpetual matching core driven by bars.

The same core runs behind backtests, embedded paper trading and the Binance-compatible venue
simulator (``venue_sim``). Its model of a bar, stated once:

* An order submitted while bar *k* is known is first matched on bar *k+1*: market orders fill
  at that bar's open (never at the close of the bar that produced the signal).
* At the open, reduce-only orders are matched before other orders.
* Inside a bar, price is assumed to travel open → adverse extreme → favourable extreme → close,
  where "adverse" is judged against the position held at the open (down for longs and for no
  position, up for shorts). Stops, limits and liquidation trigger in the order this path
  crosses them, so when one bar touches both a stop and a target, the stop fills first.
* Market and stop fills pay taker fees and slippage: ``slippage_bps`` plus an impact term
  ``impact * (fill_qty / bar_volume)``, both as fractions of price, always against the trader.
  A resting limit order fills at its price as maker; one that is marketable on arrival fills
  at the open as taker.
* Each bar can fill at most ``max_volume_share`` of its volume per symbol; the rest of an order
  stays working and fills on later bars (partial fills).
* Funding is settled at every ``funding_interval_ms`` boundary (00:00, 08:00, 16:00 UTC) on the
  position held at that moment, at the bar's open as mark price: longs pay a positive rate.
* Positions are isolated-margin at the symbol's leverage, liquidated at Binance's isolated
  liquidation price (``Position.liquidation_price``): closed at that price by a venue order named
  ``autoclose-<time>`` in ``liquidation_trades`` trades, charged ``liquidation_fee`` of its
  notional.

What it reports, as Binance does: an ``OrderUpdate`` for every change of an order (accepted,
rejected with the venue's code, canceled, partly filled, filled) and a ``VenueTrade`` for every
execution, the trade before the update it causes. Where Binance's behaviour can hurt a client,
the core behaves the same:

* client order ids are unique among *open* orders only: once an order is done, its id is free
  again (a client that re-sends after a fill places a second order);
* a stop that would trigger at once (a sell stop at or above the last price, a buy stop at or
  below) is rejected with -2021;
* once a stop has triggered, what it could not fill is worked as a market order (at the next
  bar's open), not left waiting for its level again;
* an order that arrives inside a bar (``ts`` past the bar's open: the venue's clock runs between
  bars) is matched from its arrival point on the bar's path, never from the bar's open.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from quantum_trader.domain.enums import Liquidity, OrderStatus, OrderType, Side
from quantum_trader.domain.instruments import FilterViolation, Instrument, instrument_for
from quantum_trader.domain.models import TIMEFRAME_MS, Bar, FundingPayment
from quantum_trader.domain.position import Position
from quantum_trader.domain.venue import (
    WOULD_TRIGGER_IMMEDIATELY,
    OrderRequest,
    OrderUpdate,
    VenueEvent,
    VenuePosition,
    VenueTrade,
)

_EPS = 1e-12


@dataclass(slots=True, frozen=True)
class SimExchangeSettings:
    initial_balance: float = 10_000.0
    maker_fee: float = 0.0002
    taker_fee: float = 0.0005
    slippage_bps: float = 1.0
    impact: float = 0.1
    max_volume_share: float = 0.10
    funding_rate: float = 0.0001
    funding_interval_ms: int = 8 * 3_600_000
    liquidation_fee: float = 0.0125
    default_leverage: float = 3.0
    liquidation_trades: int = 1  # trades a liquidation fills in (Binance: often several)


class OrderRejected(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True, eq=False)  # identity: book lookups must not compare every field
class _BookOrder:
    exchange_order_id: str
    request: OrderRequest
    ts: int
    remaining: float
    filled: float = 0.0
    arrived: bool = False  # has it seen a bar yet (limit orders: taker on arrival)
    triggered: bool = False  # a stop that triggered: the rest is worked as a market order
    cum_quote: float = 0.0


@dataclass(slots=True)
class _Account:
    wallet: float
    positions: dict[str, Position] = field(default_factory=dict)
    leverage: dict[str, float] = field(default_factory=dict)


class SimulatedExchange:
    def __init__(self, settings: SimExchangeSettings | None = None,
                 instruments: Callable[[str], Instrument] = instrument_for,
                 funding_rates: Callable[[str, int], float] | None = None) -> None:
        self.settings = s = settings or SimExchangeSettings()
        self._instrument = instruments
        self._funding_rate = funding_rates or (lambda _sym, _ts: s.funding_rate)
        self.account = _Account(wallet=s.initial_balance)
        self._book: dict[str, list[_BookOrder]] = {}  # symbol -> working orders, in time order
        self._by_client: dict[str, _BookOrder] = {}  # client id -> open order
        self._known: dict[str, OrderUpdate] = {}  # client id -> last state of its last order
        self._next_funding: dict[str, int] = {}
        self._last_price: dict[str, float] = {}
        self._seq = 0
        self._trade_seq = 0
        self.funding_payments: list[FundingPayment] = []
        self.trades: list[VenueTrade] = []  # every execution, oldest first (the venue's record)
        self.keep_trades = False  # the server keeps them; backtests need not
        self._newest_arrival: dict[str, int] = {}  # symbol -> latest submit time

    # --- order entry ------------------------------------------------------------------------
    def submit(self, req: OrderRequest, ts: int,
               price_now: float | None = None) -> OrderUpdate:
        """Accept or reject an order. Nothing fills before the bar it arrived in is matched.
        ``price_now``: the last price at arrival, when the caller's clock is inside a bar."""
        if req.client_order_id in self._by_client:
            raise OrderRejected(-4116, f"duplicate client order id {req.client_order_id}")
        self._seq += 1
        oid = f"sim-{self._seq}"
        try:
            self._validate(req, price_now)
        except OrderRejected as exc:
            update = OrderUpdate(req.client_order_id, oid, req.symbol, req.side,
                                 OrderStatus.REJECTED, ts, quantity=req.quantity,
                                 reason=exc.message, code=exc.code,
                                 order_type=req.order_type, reduce_only=req.reduce_only)
            self._known[req.client_order_id] = update
            return update
        order = _BookOrder(oid, req, ts, req.quantity)
        self._book.setdefault(req.symbol, []).append(order)
        if ts > self._newest_arrival.get(req.symbol, -1):
            self._newest_arrival[req.symbol] = ts
        self._by_client[req.client_order_id] = order
        update = OrderUpdate(req.client_order_id, oid, req.symbol, req.side,
                             OrderStatus.ACCEPTED, ts, quantity=req.quantity,
                             order_type=req.order_type, reduce_only=req.reduce_only)
        self._known[req.client_order_id] = update
        return update

    def cancel(self, client_order_id: str, ts: int, reason: str = "canceled") -> OrderUpdate:
        order = self._by_client.get(client_order_id)
        if order is None:
            raise OrderRejected(-2011, f"unknown order {client_order_id}")
        return self._close_order(order, OrderStatus.CANCELED, ts, reason)

    def query(self, client_order_id: str) -> OrderUpdate | None:
        return self._known.get(client_order_id)

    def open_orders(self, symbol: str | None = None) -> list[OrderUpdate]:
        books = [self._book.get(symbol, [])] if symbol else list(self._book.values())
        return [self._known[o.request.client_order_id] for book in books for o in book]

    def triggered(self, client_order_id: str) -> bool:
        """Whether the open stop ``client_order_id`` has triggered (its rest is worked as a
        market order), even if the bar had no volume left to fill any of it."""
        order = self._by_client.get(client_order_id)
        return order is not None and order.triggered

    def path(self, bar: Bar) -> tuple[float, float, float, float]:
        """The path the core assumes through ``bar`` for the position held now."""
        pos = self.account.positions.get(bar.symbol)
        return bar_path(bar, adverse_down=pos is None or pos.qty >= 0)

    def set_leverage(self, symbol: str, leverage: float) -> None:
        inst = self._instrument(symbol)
        if not 1 <= leverage <= inst.max_leverage:
            raise OrderRejected(-4028, f"leverage {leverage} not in [1, {inst.max_leverage}]")
        if self.account.leverage.get(symbol) == leverage:
            return  # unchanged (a reconnecting client sets it again): nothing to refuse
        pos = self.account.positions.get(symbol)
        if pos is not None and pos.is_open:
            raise OrderRejected(-4161, "cannot change leverage with an open position")
        self.account.leverage[symbol] = leverage

    def leverage(self, symbol: str) -> float:
        return self.account.leverage.get(symbol, self.settings.default_leverage)

    def position(self, symbol: str) -> Position:
        pos = self.account.positions.get(symbol)
        if pos is None:
            pos = self.account.positions[symbol] = Position(symbol)
        return pos

    def positions(self) -> list[VenuePosition]:
        out = []
        for sym, p in self.account.positions.items():
            if p.is_open:
                mmr = self._instrument(sym).maintenance_margin_rate
                out.append(VenuePosition(sym, p.qty, p.avg_entry, p.leverage,
                                         p.liquidation_price(mmr)))
        return out

    @property
    def wallet(self) -> float:
        return self.account.wallet

    def equity(self) -> float:
        return self.account.wallet + sum(p.unrealized_pnl for p in
                                         self.account.positions.values() if p.is_open)

    def restore(self, wallet: float, positions: list[Position],
                last_prices: dict[str, float] | None = None,
                ids: dict[str, int] | None = None) -> None:
        """Start from a known account state (resuming a paper run). ``ids``: the order and
        trade sequences the previous process reached (``ids()``), so the venue's ids go on
        from there: a trade id is a trade's identity for ever, never handed out twice."""
        self.account.wallet = wallet
        self._last_price.update(last_prices or {})
        if ids:
            self._seq = max(self._seq, int(ids.get("order", 0)))
            self._trade_seq = max(self._trade_seq, int(ids.get("trade", 0)))
        for p in positions:
            self.account.positions[p.symbol] = Position(
                p.symbol, p.qty, p.avg_entry, p.realized_pnl, p.fees, p.funding, p.opened_ts,
                p.last_price, p.leverage)

    def ids(self) -> dict[str, int]:
        """The order and trade sequences so far (a restart continues them: ``restore``)."""
        return {"order": self._seq, "trade": self._trade_seq}

    def _validate(self, req: OrderRequest, price_now: float | None = None) -> None:
        inst = self._instrument(req.symbol)
        if req.quantity <= 0:
            raise OrderRejected(-4003, "quantity must be positive")
        if req.order_type is OrderType.LIMIT and (req.price is None or req.price <= 0):
            raise OrderRejected(-4014, "limit order needs a positive price")
        if req.order_type is OrderType.STOP_MARKET and (req.stop_price is None
                                                         or req.stop_price <= 0):
            raise OrderRejected(-4014, "stop order needs a positive stop price")
        last = price_now if price_now is not None else self._last_price.get(req.symbol, 0.0)
        ref = req.price or req.stop_price or last
        if ref <= 0:
            raise OrderRejected(-1013, f"no market price for {req.symbol} yet")
        if not inst.on_step(req.quantity):
            raise OrderRejected(-1111, f"quantity {req.quantity} not a multiple of step "
                                       f"{inst.step_size}")
        if req.order_type is OrderType.STOP_MARKET and last > 0:
            assert req.stop_price is not None
            if (req.side is Side.SELL and last <= req.stop_price) or \
                    (req.side is Side.BUY and last >= req.stop_price):
                raise OrderRejected(WOULD_TRIGGER_IMMEDIATELY, "Order would immediately "
                                    f"trigger (last price {last}, stop {req.stop_price}).")
        pos = self.account.positions.get(req.symbol)
        if req.reduce_only:
            if pos is None or not pos.is_open or (pos.qty > 0) == (req.side is Side.BUY):
                raise OrderRejected(-2022, "reduce-only order would not reduce the position")
            return  # reduce-only orders need no margin and may be below min notional
        try:
            inst.check(req.quantity, ref)
        except FilterViolation as exc:
            raise OrderRejected(-4164, str(exc)) from None
        lev = self.account.leverage.get(req.symbol, self.settings.default_leverage)
        needed = req.quantity * ref / lev + req.quantity * ref * self.settings.taker_fee
        if needed > self._available_margin():
            raise OrderRejected(-2019, f"margin is insufficient: need {needed:.2f}, available "
                                       f"{self._available_margin():.2f}")

    def available_margin(self) -> float:
        """Wallet less the initial margin of open positions and unrealized losses."""
        return self._available_margin()

    def last_prices(self) -> dict[str, float]:
        return dict(self._last_price)

    def last_price(self, symbol: str) -> float | None:
        return self._last_price.get(symbol)

    def _available_margin(self) -> float:
        used = 0.0
        unrealized = 0.0
        for p in self.account.positions.values():
            if p.is_open:
                used += abs(p.qty) * p.avg_entry / p.leverage
                unrealized += p.unrealized_pnl
        return self.account.wallet + min(unrealized, 0.0) - used

    # --- matching -----------------------------------------------------------------------------
    def on_bar(self, bar: Bar) -> list[VenueEvent]:
        """Settle funding, match working orders and check liquidation for one closed bar."""
        sym = bar.symbol
        events: list[VenueEvent] = []
        nf = self._next_funding.get(sym)
        if nf is None:
            iv = self.settings.funding_interval_ms
            nf = self._next_funding[sym] = -(-bar.ts // iv) * iv
        if bar.close_ts > nf:
            self._settle_funding(bar)
        book = self._book.get(sym)
        pos = self.account.positions.get(sym)
        held = pos is not None and pos.qty != 0.0  # closed positions are exactly 0.0
        if (book or held) and not self._quiet(bar, book, pos if held else None):
            if book and self._newest_arrival.get(sym, -1) > bar.ts:
                self._match_arrivals(bar, book, events)
            else:
                self._match(bar, book or [], events)
        self._last_price[sym] = bar.close
        if pos is not None and pos.qty != 0.0:
            pos.last_price = bar.close
        return events

    def _settle_funding(self, bar: Bar) -> None:
        iv = self.settings.funding_interval_ms
        nf = self._next_funding[bar.symbol]
        while nf < bar.close_ts:
            pos = self.account.positions.get(bar.symbol)
            if pos is not None and pos.is_open and nf >= bar.ts:
                rate = self._funding_rate(bar.symbol, nf)
                amount = pos.qty * bar.open * rate
                pos.apply_funding(amount)
                self.account.wallet -= amount
                self.funding_payments.append(
                    FundingPayment(bar.symbol, nf, rate, bar.open, pos.qty, amount,
                                   id=f"{bar.symbol}:{nf}"))
            nf += iv
        self._next_funding[bar.symbol] = nf

    def _quiet(self, bar: Bar, book: list[_BookOrder] | None, pos: Position | None) -> bool:
        """True when nothing can trade on this bar: every working order has arrived, rests
        beyond the bar's range, and so does the liquidation price. Most bars of a backtest
        with a position open are like that; answering it cheaply is what ``_match`` would
        conclude the long way (the same price-path reach test, nothing else)."""
        o, lo, hi = bar.open, bar.low, bar.high
        if o < lo:
            lo = o
        if o > hi:
            hi = o
        for order in book or ():
            req = order.request
            kind = req.order_type
            if not order.arrived or kind is OrderType.MARKET or order.triggered:
                return False
            if kind is OrderType.STOP_MARKET:
                level, rising = req.stop_price, req.side is Side.BUY
            else:
                level, rising = req.price, req.side is Side.SELL
            assert level is not None
            if (hi >= level) if rising else (lo <= level):
                return False
        if pos is not None:
            liq = pos.liquidation_price(self._instrument(pos.symbol).maintenance_margin_rate)
            if (lo <= liq) if pos.qty > 0 else (hi >= liq):
                return False
        return True

    def _match(self, bar: Bar, book: list[_BookOrder], events: list[VenueEvent]) -> None:
        s = self.settings
        capacity = bar.volume * s.max_volume_share
        pos = self.position(bar.symbol)
        adverse_down = pos.qty >= 0
        ext1, ext2 = (bar.low, bar.high) if adverse_down else (bar.high, bar.low)

        # Market orders (and limits marketable on arrival) take the open first; reduce-only
        # ones go before the rest, so "close the long, then go short" never depends on which
        # of the two orders happened to arrive first.
        for order in sorted(book, key=lambda o: not o.request.reduce_only):
            req = order.request
            if req.order_type is OrderType.MARKET or order.triggered:
                capacity = self._fill(order, bar, bar.open, Liquidity.TAKER, capacity, events)
            elif req.order_type is OrderType.LIMIT and not order.arrived:
                assert req.price is not None
                marketable = bar.open <= req.price if req.side is Side.BUY else \
                    bar.open >= req.price
                if marketable:
                    capacity = self._fill(order, bar, bar.open, Liquidity.TAKER, capacity,
                                          events)
            order.arrived = True

        # Then stops, limits and liquidation in the order the assumed price path crosses them.
        events_on_path: list[tuple[int, float, int, _BookOrder | None]] = []
        for i, order in enumerate(book):
            if order.remaining <= _EPS or order.request.order_type is OrderType.MARKET or \
                    order.triggered:
                continue
            level = _trigger_level(order.request)
            where = _path_position(level, bar.open, ext1, ext2, order.request)
            if where is not None:
                events_on_path.append((where[0], where[1], i, order))
        liq = self._liquidation_event(pos, bar, ext1, ext2)
        if liq is not None:
            events_on_path.append((liq[0], liq[1], -1, None))
        events_on_path.sort(key=lambda e: (e[0], e[1], e[2]))
        for _leg, _dist, _i, ev_order in events_on_path:
            if ev_order is None:
                if pos.is_open:
                    self._liquidate(pos, bar, events)
                continue
            if ev_order.remaining <= _EPS:
                continue
            req = ev_order.request
            if req.order_type is OrderType.STOP_MARKET:
                assert req.stop_price is not None
                gap = bar.open > req.stop_price if req.side is Side.BUY else \
                    bar.open < req.stop_price
                price = bar.open if gap else req.stop_price
                ev_order.triggered = True
                capacity = self._fill(ev_order, bar, price, Liquidity.TAKER, capacity, events)
            else:
                assert req.price is not None
                capacity = self._fill(ev_order, bar, req.price, Liquidity.MAKER, capacity,
                                      events)
        # A position opened or grown inside this bar may already be past its liquidation price.
        if pos.is_open:
            late = self._liquidation_event(pos, bar, ext1, ext2)
            if late is not None:
                self._liquidate(pos, bar, events)
        book[:] = [o for o in book if o.remaining > _EPS]

    def _match_arrivals(self, bar: Bar, book: list[_BookOrder],
                        events: list[VenueEvent]) -> None:
        """Match a bar some of whose orders arrived inside it (a venue clock between bars).

        The bar's assumed path (open → adverse extreme → favourable extreme → close, each leg
        a third of the bar) is walked in time: an order takes part only from its arrival on.
        Market orders (and triggered stops' remainders) fill at the path's price when they
        arrive; stops and limits trigger where the rest of the path crosses their level;
        liquidation is checked along the whole walk."""
        s = self.settings
        capacity = bar.volume * s.max_volume_share
        pos = self.position(bar.symbol)
        points = bar_path(bar, adverse_down=pos.qty >= 0)
        _open, ext1, ext2, _close = points
        tf = TIMEFRAME_MS[bar.timeframe]

        arrivals = sorted(book, key=lambda o: (max(0.0, (o.ts - bar.ts) / tf),
                                               not o.request.reduce_only))
        for order in arrivals:
            f = min(max(0.0, (order.ts - bar.ts) / tf), 1.0)
            req = order.request
            here = price_on_path(points, f)
            if req.order_type is OrderType.MARKET or order.triggered:
                capacity = self._fill(order, bar, here, Liquidity.TAKER, capacity, events)
                continue
            if req.order_type is OrderType.LIMIT and not order.arrived:
                assert req.price is not None
                if (here <= req.price) if req.side is Side.BUY else (here >= req.price):
                    capacity = self._fill(order, bar, here, Liquidity.TAKER, capacity, events)
                    order.arrived = True
                    continue
            order.arrived = True
            level = _trigger_level(req)
            rising = (req.order_type is OrderType.STOP_MARKET) == (req.side is Side.BUY)
            if (rising and here >= level) or (not rising and here <= level):
                # Already through its level when it joins the path (a gap, for an order that
                # was resting before this bar): it triggers first thing.
                if req.order_type is OrderType.STOP_MARKET:
                    order.triggered = True
                    capacity = self._fill(order, bar, here, Liquidity.TAKER, capacity, events)
                else:
                    capacity = self._fill(order, bar, level, Liquidity.MAKER, capacity, events)
                continue
            path = [here, *points[min(int(f * 3), 2) + 1:]]
            for a, b in itertools.pairwise(path):
                lo, hi = min(a, b), max(a, b)
                if not lo <= level <= hi:
                    continue
                if (rising and b < a) or (not rising and b > a):
                    continue  # this leg moves away from the level
                if req.order_type is OrderType.STOP_MARKET:
                    order.triggered = True
                    capacity = self._fill(order, bar, level, Liquidity.TAKER, capacity, events)
                else:
                    capacity = self._fill(order, bar, level, Liquidity.MAKER, capacity, events)
                break
        if pos.is_open:
            late = self._liquidation_event(pos, bar, ext1, ext2)
            if late is not None:
                self._liquidate(pos, bar, events)
        book[:] = [o for o in book if o.remaining > _EPS]

    def _fill(self, order: _BookOrder, bar: Bar, base_price: float, liquidity: Liquidity,
              capacity: float, events: list[VenueEvent]) -> float:
        req = order.request
        pos = self.position(req.symbol)
        want = order.remaining
        if req.reduce_only:
            reducible = abs(pos.qty) if pos.is_open and (pos.qty > 0) != (req.side is Side.BUY) \
                else 0.0
            if reducible <= _EPS:
                events.append(self._close_order(order, OrderStatus.CANCELED, bar.ts,
                                                "reduce-only: position already closed"))
                return capacity
            want = min(want, reducible)
        inst = self._instrument(req.symbol)
        qty = min(want, capacity)
        if qty < want:
            qty = inst.round_qty_down(qty)
        if qty <= _EPS:
            return capacity  # no volume left in this bar; try again on the next
        sign = req.side.sign
        price = base_price
        if liquidity is Liquidity.TAKER:
            slip = self.settings.slippage_bps / 10_000.0
            if bar.volume > 0:
                slip += self.settings.impact * qty / bar.volume
            price = base_price * (1.0 + sign * slip)
        fee_rate = self.settings.taker_fee if liquidity is Liquidity.TAKER else \
            self.settings.maker_fee
        fee = qty * price * fee_rate
        was_open = pos.is_open
        realized = pos.apply_fill(sign * qty, price, fee, bar.ts)
        if not was_open and pos.is_open:
            pos.leverage = self.account.leverage.get(req.symbol, self.settings.default_leverage)
        self.account.wallet += realized - fee
        order.remaining -= qty
        order.filled += qty
        order.cum_quote += qty * price
        if req.reduce_only and order.remaining > _EPS and not pos.is_open:
            order.remaining = 0.0  # nothing left to reduce; the rest lapses
        status = OrderStatus.FILLED if order.remaining <= _EPS else OrderStatus.PARTIALLY_FILLED
        self._trade_seq += 1
        trade = VenueTrade(req.symbol, str(self._trade_seq), order.exchange_order_id,
                           req.client_order_id, req.side, qty, price, fee, liquidity, bar.ts)
        if self.keep_trades:
            self.trades.append(trade)
        update = OrderUpdate(req.client_order_id, order.exchange_order_id, req.symbol,
                             req.side, status, bar.ts, order.filled,
                             order.cum_quote / order.filled, req.quantity,
                             order_type=req.order_type, reduce_only=req.reduce_only)
        self._known[req.client_order_id] = update
        events.append(trade)
        events.append(update)
        if status is OrderStatus.FILLED:
            self._by_client.pop(req.client_order_id, None)
        return capacity - qty

    def _liquidation_event(self, pos: Position, bar: Bar, ext1: float,
                           ext2: float) -> tuple[int, float] | None:
        if not pos.is_open:
            return None
        liq = pos.liquidation_price(self._instrument(pos.symbol).maintenance_margin_rate)
        if pos.qty > 0 and min(bar.open, bar.low) <= liq:
            return _leg_of(liq, bar.open, ext1, ext2, falling=True)
        if pos.qty < 0 and max(bar.open, bar.high) >= liq:
            return _leg_of(liq, bar.open, ext1, ext2, falling=False)
        return None

    def _liquidate(self, pos: Position, bar: Bar, events: list[VenueEvent]) -> None:
        mmr = self._instrument(pos.symbol).maintenance_margin_rate
        liq = pos.liquidation_price(mmr)
        # If the bar opened beyond the liquidation price, the close-out happens at the open.
        price = min(liq, bar.open) if pos.qty > 0 else max(liq, bar.open)
        qty = abs(pos.qty)
        side = Side.SELL if pos.qty > 0 else Side.BUY
        self._seq += 1
        cid = f"autoclose-{bar.ts}-{self._seq}"
        oid = f"sim-{self._seq}"
        self._venue_close(pos, side, qty, price, bar.ts, cid, oid,
                          self.settings.liquidation_fee, max(1, self.settings.liquidation_trades),
                          events)
        # Protective orders of the liquidated position have nothing left to protect.
        for order in list(self._book.get(pos.symbol, [])):
            if order.request.reduce_only and order.remaining > _EPS:
                events.append(self._close_order(order, OrderStatus.CANCELED, bar.ts,
                                                "reduce-only: position liquidated"))

    def auto_deleverage(self, symbol: str, fraction: float, price: float,
                        ts: int) -> list[VenueEvent]:
        """The venue closes ``fraction`` of the position at ``price`` against a bankrupt
        counterparty (ADL): an order of its own, ``adl_autoclose-...``, no fee."""
        pos = self.account.positions.get(symbol)
        if pos is None or not pos.is_open:
            return []
        inst = self._instrument(symbol)
        qty = min(abs(pos.qty), max(inst.step_size, inst.round_qty_down(abs(pos.qty)
                                                                        * fraction)))
        side = Side.SELL if pos.qty > 0 else Side.BUY
        self._seq += 1
        events: list[VenueEvent] = []
        self._venue_close(pos, side, qty, price, ts, f"adl_autoclose-{ts}-{self._seq}",
                          f"sim-{self._seq}", 0.0, 1, events)
        if not pos.is_open:
            for order in list(self._book.get(symbol, [])):
                if order.request.reduce_only and order.remaining > _EPS:
                    events.append(self._close_order(order, OrderStatus.CANCELED, ts,
                                                    "reduce-only: position closed by ADL"))
        return events

    def _venue_close(self, pos: Position, side: Side, qty: float, price: float, ts: int,
                     cid: str, oid: str, fee_rate: float, parts: int,
                     events: list[VenueEvent]) -> None:
        inst = self._instrument(pos.symbol)
        chunk = inst.round_qty_down(qty / parts) if parts > 1 else qty
        done = 0.0
        for k in range(parts):
            part = inst.round_qty_down(qty - done) if k == parts - 1 or chunk <= 0 \
                else chunk
            if part <= _EPS:
                break
            fee = part * price * fee_rate
            realized = pos.apply_fill(side.sign * part, price, fee, ts)
            self.account.wallet += realized - fee
            done += part
            self._trade_seq += 1
            trade = VenueTrade(pos.symbol, str(self._trade_seq), oid, cid, side, part, price,
                               fee, Liquidity.TAKER, ts)
            if self.keep_trades:
                self.trades.append(trade)
            events.append(trade)
            if done >= qty - _EPS:
                break
        update = OrderUpdate(cid, oid, pos.symbol, side, OrderStatus.FILLED, ts, done, price,
                             done, "liquidation" if cid.startswith("autoclose") else "adl",
                             order_type=OrderType.MARKET, reduce_only=True)
        self._known[cid] = update
        events.append(update)

    def _close_order(self, order: _BookOrder, status: OrderStatus, ts: int,
                     reason: str) -> OrderUpdate:
        req = order.request
        order.remaining = 0.0
        self._by_client.pop(req.client_order_id, None)
        book = self._book.get(req.symbol)
        if book is not None and order in book:
            book.remove(order)
        update = OrderUpdate(req.client_order_id, order.exchange_order_id, req.symbol,
                             req.side, status, ts, order.filled,
                             order.cum_quote / order.filled if order.filled else 0.0,
                             req.quantity, reason, order_type=req.order_type,
                             reduce_only=req.reduce_only)
        self._known[req.client_order_id] = update
        return update


def bar_path(bar: Bar, adverse_down: bool) -> tuple[float, float, float, float]:
    """A bar's assumed path: open, adverse extreme, favourable extreme, close (adverse is down
    for a long or no position, up for a short)."""
    if adverse_down:
        return (bar.open, bar.low, bar.high, bar.close)
    return (bar.open, bar.high, bar.low, bar.close)


def price_on_path(points: tuple[float, float, float, float], fraction: float) -> float:
    """The price ``fraction`` (0: open, 1: close) of the way through a bar whose path is
    ``points``; each leg takes a third of the bar."""
    leg = min(int(fraction * 3), 2)
    t = fraction * 3 - leg
    return points[leg] + (points[leg + 1] - points[leg]) * t


def _trigger_level(req: OrderRequest) -> float:
    level = req.stop_price if req.order_type is OrderType.STOP_MARKET else req.price
    assert level is not None
    return level


def _path_position(level: float, open_: float, ext1: float, ext2: float,
                   req: OrderRequest) -> tuple[int, float] | None:
    """Where on the open → ext1 → ext2 path an order triggers: (leg, distance) or None.

    Buy stops and sell limits trigger on rising prices; sell stops and buy limits on falling.
    """
    rising = (req.order_type is OrderType.STOP_MARKET) == (req.side is Side.BUY)
    # Already through the level at the open: it triggers first thing (gap).
    if (rising and open_ >= level) or (not rising and open_ <= level):
        return (0, 0.0)
    return _leg_of(level, open_, ext1, ext2, falling=not rising)


def _leg_of(level: float, open_: float, ext1: float, ext2: float,
            falling: bool) -> tuple[int, float] | None:
    if falling:
        if ext1 <= level <= open_:
            return (1, open_ - level)
        if ext2 <= level <= ext1:
            return (2, ext1 - level)
        if level >= open_:
            return (0, 0.0)
        return None
    if open_ <= level <= ext1:
        return (1, level - open_)
    if ext1 <= level <= ext2:
        return (2, level - ext1)
    if level <= open_:
        return (0, 0.0)
    return None
