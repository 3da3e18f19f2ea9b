"""``SimulatedExchange``: a USDⓈ-M perpetual matching core driven by bars.

The same core runs behind backtests, embedded paper trading and (later) the Binance-compatible
simulator server. Its model of a bar, stated once:

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
* Positions are isolated-margin at the symbol's leverage. A position whose liquidation price is
  crossed is closed at that price and charged ``liquidation_fee`` of its notional.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from quantum_trader.domain.enums import Liquidity, OrderStatus, OrderType, Side
from quantum_trader.domain.instruments import FilterViolation, Instrument, instrument_for
from quantum_trader.domain.models import Bar, FundingPayment
from quantum_trader.domain.position import Position
from quantum_trader.exchange.protocol import ExchangePosition, ExecutionReport, OrderRequest

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
        self._by_client: dict[str, _BookOrder] = {}
        self._known: dict[str, ExecutionReport] = {}  # client id -> last report (for queries)
        self._next_funding: dict[str, int] = {}
        self._last_price: dict[str, float] = {}
        self._seq = 0
        self._trade_seq = 0
        self.funding_payments: list[FundingPayment] = []
        self.reject_codes: dict[str, int] = {}  # client id -> Binance error code of a rejection

    # --- order entry ------------------------------------------------------------------------
    def submit(self, req: OrderRequest, ts: int) -> ExecutionReport:
        """Accept or reject an order. Nothing fills before the next bar."""
        if req.client_order_id in self._known:
            raise OrderRejected(-4116, f"duplicate client order id {req.client_order_id}")
        try:
            self._validate(req)
        except OrderRejected as exc:
            self._seq += 1
            self.reject_codes[req.client_order_id] = exc.code
            report = ExecutionReport(req.client_order_id, f"sim-{self._seq}", req.symbol,
                                     OrderStatus.REJECTED, ts, req.side, reason=exc.message)
            self._known[req.client_order_id] = report
            return report
        self._seq += 1
        order = _BookOrder(f"sim-{self._seq}", req, ts, req.quantity)
        self._book.setdefault(req.symbol, []).append(order)
        self._by_client[req.client_order_id] = order
        report = ExecutionReport(req.client_order_id, order.exchange_order_id, req.symbol,
                                 OrderStatus.ACCEPTED, ts, req.side)
        self._known[req.client_order_id] = report
        return report

    def cancel(self, client_order_id: str, ts: int, reason: str = "canceled") -> ExecutionReport:
        order = self._by_client.get(client_order_id)
        if order is None:
            raise OrderRejected(-2011, f"unknown order {client_order_id}")
        return self._close_order(order, OrderStatus.CANCELED, ts, reason)

    def query(self, client_order_id: str) -> ExecutionReport | None:
        return self._known.get(client_order_id)

    def open_orders(self, symbol: str | None = None) -> list[ExecutionReport]:
        books = [self._book.get(symbol, [])] if symbol else list(self._book.values())
        return [self._known[o.request.client_order_id] for book in books for o in book]

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

    def position(self, symbol: str) -> Position:
        pos = self.account.positions.get(symbol)
        if pos is None:
            pos = self.account.positions[symbol] = Position(symbol)
        return pos

    def positions(self) -> list[ExchangePosition]:
        out = []
        for sym, p in self.account.positions.items():
            if p.is_open:
                mmr = self._instrument(sym).maintenance_margin_rate
                out.append(ExchangePosition(sym, p.qty, p.avg_entry, p.leverage,
                                            p.liquidation_price(mmr)))
        return out

    @property
    def wallet(self) -> float:
        return self.account.wallet

    def equity(self) -> float:
        return self.account.wallet + sum(p.unrealized_pnl for p in
                                         self.account.positions.values() if p.is_open)

    def restore(self, wallet: float, positions: list[Position],
                last_prices: dict[str, float] | None = None) -> None:
        """Start from a known account state (resuming a paper run)."""
        self.account.wallet = wallet
        self._last_price.update(last_prices or {})
        for p in positions:
            self.account.positions[p.symbol] = Position(
                p.symbol, p.qty, p.avg_entry, p.realized_pnl, p.fees, p.funding, p.opened_ts,
                p.last_price, p.leverage)

    def _validate(self, req: OrderRequest) -> None:
        inst = self._instrument(req.symbol)
        if req.quantity <= 0:
            raise OrderRejected(-4003, "quantity must be positive")
        if req.order_type is OrderType.LIMIT and (req.price is None or req.price <= 0):
            raise OrderRejected(-4014, "limit order needs a positive price")
        if req.order_type is OrderType.STOP_MARKET and (req.stop_price is None
                                                         or req.stop_price <= 0):
            raise OrderRejected(-4014, "stop order needs a positive stop price")
        ref = req.price or req.stop_price or self._last_price.get(req.symbol, 0.0)
        if ref <= 0:
            raise OrderRejected(-1013, f"no market price for {req.symbol} yet")
        if not inst.on_step(req.quantity):
            raise OrderRejected(-1111, f"quantity {req.quantity} not a multiple of step "
                                       f"{inst.step_size}")
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
    def on_bar(self, bar: Bar) -> list[ExecutionReport]:
        """Settle funding, match working orders and check liquidation for one closed bar."""
        sym = bar.symbol
        reports: list[ExecutionReport] = []
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
            self._match(bar, book or [], reports)
        self._last_price[sym] = bar.close
        if pos is not None and pos.qty != 0.0:
            pos.last_price = bar.close
        return reports

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
                    FundingPayment(bar.symbol, nf, rate, bar.open, pos.qty, amount))
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
            if not order.arrived or kind is OrderType.MARKET:
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

    def _match(self, bar: Bar, book: list[_BookOrder], reports: list[ExecutionReport]) -> None:
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
            if req.order_type is OrderType.MARKET:
                capacity = self._fill(order, bar, bar.open, Liquidity.TAKER, capacity, reports)
            elif req.order_type is OrderType.LIMIT and not order.arrived:
                assert req.price is not None
                marketable = bar.open <= req.price if req.side is Side.BUY else \
                    bar.open >= req.price
                if marketable:
                    capacity = self._fill(order, bar, bar.open, Liquidity.TAKER, capacity,
                                          reports)
            order.arrived = True

        # Then stops, limits and liquidation in the order the assumed price path crosses them.
        events: list[tuple[int, float, int, _BookOrder | None]] = []
        for i, order in enumerate(book):
            if order.remaining <= _EPS or order.request.order_type is OrderType.MARKET:
                continue
            level = _trigger_level(order.request)
            where = _path_position(level, bar.open, ext1, ext2, order.request)
            if where is not None:
                events.append((where[0], where[1], i, order))
        liq = self._liquidation_event(pos, bar, ext1, ext2)
        if liq is not None:
            events.append((liq[0], liq[1], -1, None))
        events.sort(key=lambda e: (e[0], e[1], e[2]))
        for _leg, _dist, _i, ev_order in events:
            if ev_order is None:
                if pos.is_open:
                    self._liquidate(pos, bar, reports)
                continue
            if ev_order.remaining <= _EPS:
                continue
            req = ev_order.request
            if req.order_type is OrderType.STOP_MARKET:
                assert req.stop_price is not None
                gap = bar.open > req.stop_price if req.side is Side.BUY else \
                    bar.open < req.stop_price
                price = bar.open if gap else req.stop_price
                capacity = self._fill(ev_order, bar, price, Liquidity.TAKER, capacity, reports)
            else:
                assert req.price is not None
                capacity = self._fill(ev_order, bar, req.price, Liquidity.MAKER, capacity,
                                      reports)
        # A position opened or grown inside this bar may already be past its liquidation price.
        if pos.is_open:
            late = self._liquidation_event(pos, bar, ext1, ext2)
            if late is not None:
                self._liquidate(pos, bar, reports)
        book[:] = [o for o in book if o.remaining > _EPS]

    def _fill(self, order: _BookOrder, bar: Bar, base_price: float, liquidity: Liquidity,
              capacity: float, reports: list[ExecutionReport]) -> float:
        req = order.request
        pos = self.position(req.symbol)
        want = order.remaining
        if req.reduce_only:
            reducible = abs(pos.qty) if pos.is_open and (pos.qty > 0) != (req.side is Side.BUY) \
                else 0.0
            if reducible <= _EPS:
                self._close_order(order, OrderStatus.CANCELED, bar.ts,
                                  "reduce-only: position already closed")
                reports.append(self._known[req.client_order_id])
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
        if req.reduce_only and order.remaining > _EPS and not pos.is_open:
            order.remaining = 0.0  # nothing left to reduce; the rest lapses
        status = OrderStatus.FILLED if order.remaining <= _EPS else OrderStatus.PARTIALLY_FILLED
        self._trade_seq += 1
        report = ExecutionReport(req.client_order_id, order.exchange_order_id, req.symbol,
                                 status, bar.ts, req.side, qty, price, fee, liquidity,
                                 f"t{self._trade_seq}")
        self._known[req.client_order_id] = report
        reports.append(report)
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

    def _liquidate(self, pos: Position, bar: Bar, reports: list[ExecutionReport]) -> None:
        mmr = self._instrument(pos.symbol).maintenance_margin_rate
        liq = pos.liquidation_price(mmr)
        # If the bar opened beyond the liquidation price, the close-out happens at the open.
        price = min(liq, bar.open) if pos.qty > 0 else max(liq, bar.open)
        qty = abs(pos.qty)
        side = Side.SELL if pos.qty > 0 else Side.BUY
        fee = qty * price * self.settings.liquidation_fee
        realized = pos.apply_fill(side.sign * qty, price, fee, bar.ts)
        self.account.wallet += realized - fee
        self._seq += 1
        self._trade_seq += 1
        cid = f"autoclose-{self._seq}"
        report = ExecutionReport(cid, f"sim-{self._seq}", pos.symbol, OrderStatus.FILLED,
                                 bar.ts, side, qty, price, fee, Liquidity.TAKER,
                                 f"t{self._trade_seq}", "liquidation", is_liquidation=True)
        self._known[cid] = report
        reports.append(report)
        # Protective orders of the liquidated position have nothing left to protect.
        for order in list(self._book.get(pos.symbol, [])):
            if order.request.reduce_only and order.remaining > _EPS:
                self._close_order(order, OrderStatus.CANCELED, bar.ts,
                                  "reduce-only: position liquidated")
                reports.append(self._known[order.request.client_order_id])

    def _close_order(self, order: _BookOrder, status: OrderStatus, ts: int,
                     reason: str) -> ExecutionReport:
        req = order.request
        order.remaining = 0.0
        self._by_client.pop(req.client_order_id, None)
        book = self._book.get(req.symbol)
        if book is not None and order in book:
            book.remove(order)
        report = ExecutionReport(req.client_order_id, order.exchange_order_id, req.symbol,
                                 status, ts, req.side, reason=reason)
        self._known[req.client_order_id] = report
        return report


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
