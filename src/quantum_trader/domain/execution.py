"""``ExecutionEngine``: our books of orders, positions and the wallet, and the one place that
decides what an order is and what a venue trade does to the books.

Every mode runs it: the backtest and embedded paper node (``runtime/node.py``, a synchronous
driver over the simulated exchange) and the execution service (``services/execution.py``, an
async driver over the simulated exchange or a real venue through ccxt). It is pure: no I/O, no
clock; whoever drives it passes the time in and carries its orders to the venue.

The model, stated once:

* An intent gets exactly one order, whose client order id is derived from the intent id
  (``create``). The order is journaled before it is sent (``sent`` moves it NEW → SUBMITTED and
  stamps the send time), so a crash after sending leaves a record that says "may be on the
  venue": such an order is never sent again without first asking the venue about it.
* ``on_update`` takes the venue's view of an order (status, cumulative fill) forwards through
  the state table; it never books a fill.
* ``on_trade`` books one venue trade, once: keyed by (symbol, trade id), journaled with its
  effects (order, fill, position, wallet, the closed round trip) so a store write of the
  journal is one transaction. A trade for an order we do not know is booked on an adopted
  EXTERNAL order (or LIQUIDATION / ADL / SETTLEMENT, by its client id), never dropped.
* The venue is the truth for the account: ``adopt_account`` moves our wallet and positions to
  the venue's when they differ after every trade is booked, with an audit event saying by how
  much.
* Protection: every open position must have a working reduce-only stop; ``unprotected()``
  names the positions that do not, so entries can be refused while one exists.
* Position flips: an entry opposite to the position held is sent only once a reduce-only exit
  covering that position is on the venue (``hold_reason``), so the exit fills first on every
  venue, as it does in backtests.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from quantum_trader.domain.enums import IntentPurpose, OrderStatus, OrderType, Side
from quantum_trader.domain.instruments import Instrument, instrument_for
from quantum_trader.domain.models import Fill, FundingPayment, OrderIntent
from quantum_trader.domain.orders import Order, client_order_id_for
from quantum_trader.domain.portfolio import Portfolio
from quantum_trader.domain.position import Position
from quantum_trader.domain.records import AuditEvent, ClosedTrade
from quantum_trader.domain.venue import (
    OrderOrigin,
    OrderRequest,
    OrderUpdate,
    VenueAccount,
    VenueTrade,
)

EXIT_REASONS = {"sl": "stop_loss", "tp": "take_profit", "trail": "trailing_stop",
                "time": "time_exit", "signal": "signal_exit", "liq": "liquidation",
                "guard": "stop_loss", "kill": "kill_switch", "external": "external",
                "adl": "adl", "settlement": "settlement"}
STOP_OUTS = frozenset({"stop_loss", "liquidation"})
PROTECTIVE_TAGS = frozenset({"sl", "trail", "guard"})
_ORIGIN_TAG = {OrderOrigin.EXTERNAL: "external", OrderOrigin.LIQUIDATION: "liq",
               OrderOrigin.ADL: "adl", OrderOrigin.SETTLEMENT: "settlement"}


class Journal(Protocol):
    """Where the engine writes what happened; the caller commits it (one store transaction)."""

    def record(self, event: Any) -> None: ...


class NullJournal:
    """Backtests keep nothing but what the result needs."""

    def record(self, event: Any) -> None:
        return None


class ListJournal:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def record(self, event: Any) -> None:
        self.events.append(event)

    def drain(self) -> list[Any]:
        out, self.events = self.events, []
        return out


class _BoundedKeys:
    """The most recent ``maxsize`` keys: enough to catch a trade read twice by overlapping
    polls; the store's primary key and the persisted poll cursor cover everything older."""

    __slots__ = ("_keys", "maxsize")

    def __init__(self, maxsize: int = 200_000) -> None:
        self._keys: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.maxsize = maxsize

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, key: tuple[str, str]) -> None:
        self._keys[key] = None
        if len(self._keys) > self.maxsize:
            self._keys.popitem(last=False)


class _OpenTrade:
    """A round trip in progress: what its closing needs to report it."""

    __slots__ = (
        "entry_price",
        "entry_side",
        "fees0",
        "funding0",
        "max_qty",
        "opened_ts",
        "realized0",
        "trace_id",
    )

    def __init__(self, pos: Position, side: Side, trace_id: str, fee: float) -> None:
        self.entry_side = side
        self.max_qty = abs(pos.qty)
        self.opened_ts = pos.opened_ts
        self.realized0 = pos.realized_pnl
        self.fees0 = pos.fees - fee  # the opening fill's fee belongs to this trade
        self.funding0 = pos.funding
        self.trace_id = trace_id
        self.entry_price = pos.avg_entry


@dataclass(slots=True, frozen=True)
class Booking:
    """What booking one venue trade did."""

    order: Order
    fill: Fill
    position: Position
    was_open: bool
    opened: bool  # opened a position or flipped it to the other side
    closed: ClosedTrade | None  # the round trip this trade closed, if any
    exit_reason: str  # for closing trades: why (stop_loss, take_profit, liquidation, ...)
    overfilled: bool = False


class ExecutionEngine:
    def __init__(self, portfolio: Portfolio, journal: Journal | None = None,
                 leverage: float = 3.0,
                 instruments: Callable[[str], Instrument] = instrument_for) -> None:
        self.portfolio = portfolio
        self.journal: Journal = journal or NullJournal()
        # A backtest keeps no journal: skip building what nobody records.
        self._journaling = not isinstance(self.journal, NullJournal)
        self.leverage = leverage
        self._instrument = instruments
        self._orders: dict[str, Order] = {}  # client id -> every order this process knows
        self._live: dict[str, Order] = {}  # client id -> orders still to watch
        self._by_venue_id: dict[str, Order] = {}
        self._booked = _BoundedKeys()
        self._funding_booked: set[str] = set()
        self._open_trades: dict[str, _OpenTrade] = {}
        self.trades: list[ClosedTrade] = []
        self.entries: dict[str, OrderIntent] = {}  # client id -> entry intent (stops, levels)
        self.anomalies: list[AuditEvent] = []  # booked, but worth a human's look

    # --- orders we know ------------------------------------------------------------------------
    def order(self, client_order_id: str) -> Order | None:
        return self._orders.get(client_order_id)

    def by_venue_id(self, venue_order_id: str) -> Order | None:
        return self._by_venue_id.get(venue_order_id)

    @property
    def orders(self) -> dict[str, Order]:
        """Every order known, by client id (read-only use)."""
        return self._orders

    @property
    def has_live_orders(self) -> bool:
        return bool(self._live)

    def live_orders(self, symbol: str | None = None) -> list[Order]:
        """Orders working on the venue, in flight, or waiting for their trades."""
        return [o for o in self._live.values() if symbol is None or o.symbol == symbol]

    def working_orders(self, symbol: str | None = None) -> list[Order]:
        """Orders whose status is open (NEW, SUBMITTED, ACCEPTED, PARTIALLY_FILLED)."""
        return [o for o in self._live.values()
                if o.status.is_open and (symbol is None or o.symbol == symbol)]

    def pending_entries(self, prices: dict[str, float]) -> dict[str, float]:
        """Entries sent (or about to be) that have not filled at all yet, as signed notional
        per symbol (buy > 0): risk counts them as if they had filled. A partly filled entry
        is in the position already."""
        out: dict[str, float] = {}
        if not self._live:
            return out
        for o in self._live.values():
            if o.purpose is IntentPurpose.ENTRY and o.status.is_open and o.filled_qty == 0:
                px = o.price or prices.get(o.symbol, 0.0)
                out[o.symbol] = out.get(o.symbol, 0.0) + o.side.sign * o.quantity * px
        return out

    def adopt(self, orders: Iterable[Order]) -> None:
        """Take over orders the store remembers (a restart, or found when claiming one)."""
        for o in orders:
            self._orders[o.client_order_id] = o
            if o.exchange_order_id:
                self._by_venue_id[o.exchange_order_id] = o
            if o.is_live:
                self._live[o.client_order_id] = o
            else:
                self._live.pop(o.client_order_id, None)

    def remember_entry(self, intent: OrderIntent) -> None:
        """An entry's intent: its stop and target travel with the fill to the exit logic."""
        if intent.purpose is IntentPurpose.ENTRY:
            self.entries[client_order_id_for(intent.id)] = intent

    def entry_for(self, client_order_id: str) -> OrderIntent | None:
        return self.entries.get(client_order_id)

    # --- intents -> orders ---------------------------------------------------------------------
    def create(self, intent: OrderIntent, ts: int) -> Order:
        """The one order of ``intent`` (NEW, not yet sent). Idempotent: the second call
        returns the first order, whatever its status."""
        cid = client_order_id_for(intent.id)
        existing = self._orders.get(cid)
        if existing is not None:
            return existing
        order = Order(
            id=cid, client_order_id=cid, intent_id=intent.id, symbol=intent.symbol,
            side=intent.side, order_type=intent.order_type, quantity=intent.quantity,
            purpose=intent.purpose, created_ts=ts, trace_id=intent.trace_id,
            reduce_only=intent.reduce_only, price=intent.price, stop_price=intent.stop_price,
            updated_ts=ts, reason=intent.reason, tag=intent.tag,
            expires_at=intent.expires_at)
        self._orders[cid] = order
        self._live[cid] = order
        if intent.purpose is IntentPurpose.ENTRY:
            self.entries[cid] = intent
        return order

    def request_for(self, order: Order) -> OrderRequest:
        """What goes to the venue: quantity and prices on the instrument's grid (float noise
        such as 15550.099999999999 would otherwise cost a whole step at the venue)."""
        inst = self._instrument(order.symbol)
        qty = inst.round_qty_down(order.remaining if order.filled_qty else order.quantity)
        # Prices come rounded from where they are decided (risk, the exit brain); one off the
        # tick grid is refused before sending by the adapter, never silently moved.
        return OrderRequest(order.client_order_id, order.symbol, order.side, order.order_type,
                            qty, order.reduce_only, order.price, order.stop_price)

    def sent(self, order: Order, ts: int, wall_ms: int) -> None:
        """About to send (or sent): NEW → SUBMITTED, journaled. ``wall_ms`` is when, on the
        clock the venue's recvWindow is judged by."""
        if order.status is OrderStatus.NEW:
            order.transition(OrderStatus.SUBMITTED, ts)
        order.sent_ts = wall_ms
        self.journal.record(order)

    def refuse(self, order: Order, ts: int, reason: str,
               status: OrderStatus = OrderStatus.REJECTED) -> None:
        """An order that will never reach the venue (refused before sending, expired, or
        established as lost in flight)."""
        if order.status.is_terminal:
            return
        order.transition(status, ts, reason)
        self._settle(order)
        self.journal.record(order)

    def hold_reason(self, order: Order) -> str | None:
        """Why ``order`` must not be sent yet, or None. An entry against the position held
        waits until a reduce-only exit covering that position is on the venue: venues match
        in arrival order, so the exit then fills first (as the simulated exchange does in a
        backtest), and the entry opens the new position instead of netting the old one."""
        if order.purpose is not IntentPurpose.ENTRY or order.reduce_only:
            return None
        pos = self.portfolio.positions.get(order.symbol)
        if pos is None or not pos.is_open or (pos.qty > 0) == (order.side is Side.BUY):
            return None
        covered = 0.0
        for o in self._live.values():
            if o.symbol == order.symbol and o.reduce_only and o.side is order.side and \
                    o.order_type is OrderType.MARKET and o.status in (
                        OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED,
                        OrderStatus.FILLED):
                covered += o.remaining
        if covered + 1e-12 >= abs(pos.qty):
            return None
        return f"waiting for the exit of the {'long' if pos.qty > 0 else 'short'} position"

    # --- venue -> books ------------------------------------------------------------------------
    def on_update(self, update: OrderUpdate) -> Order:
        """Apply the venue's view of an order; an order we never placed is adopted."""
        order = self._orders.get(update.client_order_id)
        if order is None:
            order = self._adopt_foreign(update.client_order_id, update.venue_order_id,
                                        update.symbol, update.side, update.quantity,
                                        update.ts, update.origin,
                                        update.order_type or OrderType.MARKET,
                                        update.reduce_only)
        changed = order.apply_update(update)
        vid = update.venue_order_id
        if vid and vid not in self._by_venue_id:
            self._by_venue_id[vid] = order
        if changed or update.filled_qty:
            if order.is_live:
                self._live[order.client_order_id] = order
            else:
                self._live.pop(order.client_order_id, None)
            if self._journaling:
                self.journal.record(order)
        return order

    def is_booked(self, trade: VenueTrade) -> bool:
        return trade.key in self._booked

    def mark_booked(self, keys: Iterable[tuple[str, str]]) -> None:
        """Trades the store already holds (a restart): never book them again."""
        for k in keys:
            self._booked.add(k)

    def on_trade(self, trade: VenueTrade) -> Booking | None:
        """Book one venue trade; None if it was booked before."""
        key = trade.key
        if key in self._booked:
            return None
        order = self._orders.get(trade.client_order_id) if trade.client_order_id else None
        if order is None and trade.venue_order_id:
            order = self._by_venue_id.get(trade.venue_order_id)
        if order is None:
            order = self._adopt_foreign(trade.client_order_id or f"venue-{trade.venue_order_id}",
                                        trade.venue_order_id, trade.symbol, trade.side, 0.0,
                                        trade.ts, trade.origin, OrderType.MARKET, True)
        within = order.book_trade(trade.quantity, trade.price, trade.fee, trade.ts)
        self._booked.add(key)
        if not within and order.origin is OrderOrigin.OURS:
            self._anomaly("overfill", trade.ts, order.trace_id, symbol=trade.symbol,
                          trade_id=trade.trade_id, client_order_id=order.client_order_id,
                          quantity=trade.quantity)
        if order.status.is_terminal and order.status is not OrderStatus.FILLED and \
                order.origin is OrderOrigin.OURS:
            self._anomaly("trade_after_close", trade.ts, order.trace_id, symbol=trade.symbol,
                          trade_id=trade.trade_id, client_order_id=order.client_order_id,
                          status=order.status.value)
        booking = self._book(order, trade, not within)
        self._settle(order)
        if self._journaling:
            self.journal.record(order)
            self.journal.record(trade)
        return booking

    def _book(self, order: Order, trade: VenueTrade, overfilled: bool) -> Booking:
        pf = self.portfolio
        sym = trade.symbol
        pos = pf.position(sym)
        was_open = pos.is_open
        before_sign = pos.side_sign
        realized = pf.apply_trade(sym, trade.side.sign * trade.quantity, trade.price,
                                  trade.fee, trade.ts, self.leverage)
        fill = Fill(f"{order.client_order_id}:{trade.trade_id}", order.id,
                    order.client_order_id, sym, trade.side, trade.quantity, trade.price,
                    trade.fee, trade.liquidity, trade.ts, order.trace_id, realized,
                    order.origin is OrderOrigin.LIQUIDATION)
        if self._journaling:
            self.journal.record(fill)
        opened = pos.is_open and (not was_open or pos.side_sign != before_sign)
        if opened:
            self._open_trades[sym] = _OpenTrade(pos, fill.side, order.trace_id, fill.fee)
        open_trade = self._open_trades.get(sym)
        if open_trade is not None and pos.is_open:
            open_trade.max_qty = max(open_trade.max_qty, abs(pos.qty))
        reason = EXIT_REASONS.get(order.tag, order.reason or "exit")
        closed = None
        if was_open and not pos.is_open:
            closed = self._close_trade(sym, pos, fill, reason)
        return Booking(order, fill, pos, was_open, opened, closed, reason, overfilled)

    def _close_trade(self, sym: str, pos: Position, fill: Fill,
                     reason: str) -> ClosedTrade | None:
        trade = self._open_trades.pop(sym, None)
        if trade is None:
            return None
        closed = ClosedTrade(
            id=f"{trade.trace_id}:{fill.ts}", symbol=sym, side=trade.entry_side,
            quantity=trade.max_qty, entry_price=trade.entry_price, exit_price=fill.price,
            opened_ts=trade.opened_ts, closed_ts=fill.ts,
            realized_pnl=pos.realized_pnl - trade.realized0, fees=pos.fees - trade.fees0,
            funding=pos.funding - trade.funding0, exit_reason=reason,
            trace_id=trade.trace_id)
        self.trades.append(closed)
        self.journal.record(closed)
        return closed

    def on_funding(self, payment: FundingPayment) -> bool:
        """Book a funding payment once (by its id when the venue gives one)."""
        if payment.id:
            if payment.id in self._funding_booked:
                return False
            self._funding_booked.add(payment.id)
        self.portfolio.apply_funding(payment)
        self.journal.record(payment)
        return True

    def mark_funding_booked(self, ids: Iterable[str]) -> None:
        self._funding_booked.update(ids)

    def _adopt_foreign(self, cid: str, venue_order_id: str, symbol: str, side: Side,
                       quantity: float, ts: int, origin: OrderOrigin | None,
                       order_type: OrderType, reduce_only: bool) -> Order:
        """An order the venue has and we never placed: booked from now on, audited."""
        origin = origin or OrderOrigin.EXTERNAL
        tag = _ORIGIN_TAG.get(origin, "external")
        order = Order(
            id=cid, client_order_id=cid, intent_id="", symbol=symbol, side=side,
            order_type=order_type, quantity=quantity, purpose=IntentPurpose.EXIT,
            created_ts=ts, trace_id=f"{tag}:{cid}", reduce_only=reduce_only,
            status=OrderStatus.SUBMITTED, updated_ts=ts,
            exchange_order_id=venue_order_id or None,
            reason=f"{origin.value}: not placed by us", tag=tag, origin=origin)
        self._orders[cid] = order
        self._live[cid] = order
        if venue_order_id:
            self._by_venue_id[venue_order_id] = order
        self._anomaly("order_adopted", ts, order.trace_id, symbol=symbol,
                      client_order_id=cid, origin=origin.value, venue_order_id=venue_order_id)
        return order

    def _settle(self, order: Order) -> None:
        if order.is_live:
            self._live[order.client_order_id] = order
        else:
            self._live.pop(order.client_order_id, None)

    def _anomaly(self, kind: str, ts: int, trace_id: str, **detail: object) -> None:
        audit = AuditEvent(kind, ts, dict(detail), trace_id)
        self.anomalies.append(audit)
        if len(self.anomalies) > 1000:
            del self.anomalies[:500]
        self.journal.record(audit)

    # --- the venue is the truth ----------------------------------------------------------------
    def adopt_account(self, account: VenueAccount, ts: int, qty_tolerance: float = 1e-9,
                      wallet_tolerance: float = 1e-6) -> list[AuditEvent]:
        """Move our wallet and positions to the venue's where they differ. Call only with
        every trade and funding payment up to the snapshot booked (else a trade in flight
        looks like a difference). Returns the audit events (also journaled)."""
        out: list[AuditEvent] = []
        pf = self.portfolio
        venue = {p.symbol: p for p in account.positions}
        for sym in sorted(set(venue) | {s for s, p in pf.positions.items() if p.is_open}):
            mine = pf.positions.get(sym)
            ours_qty = mine.qty if mine is not None and mine.is_open else 0.0
            theirs = venue.get(sym)
            theirs_qty = theirs.qty if theirs is not None else 0.0
            if abs(ours_qty - theirs_qty) <= qty_tolerance:
                continue
            pos = pf.position(sym)
            before = (pos.qty, pos.avg_entry)
            pos.qty = theirs_qty
            pos.avg_entry = theirs.avg_entry if theirs is not None else 0.0
            if theirs is not None:
                pos.leverage = theirs.leverage
                if not before[0]:
                    pos.opened_ts = ts
            if not pos.is_open:
                pos.qty, pos.avg_entry = 0.0, 0.0
                self._open_trades.pop(sym, None)
            audit = AuditEvent("position_adopted", ts, {
                "symbol": sym, "ours": before[0], "venue": theirs_qty,
                "our_entry": before[1], "venue_entry": pos.avg_entry})
            out.append(audit)
        pf.replace_positions(list(pf.positions.values()))
        if abs(pf.wallet - account.wallet) > wallet_tolerance:
            out.append(AuditEvent("wallet_adopted", ts, {
                "ours": pf.wallet, "venue": account.wallet,
                "difference": account.wallet - pf.wallet}))
            pf.wallet = account.wallet
        for audit in out:
            self.journal.record(audit)
        return out

    # --- protection ----------------------------------------------------------------------------
    def protective_stop(self, symbol: str) -> Order | None:
        """The working reduce-only stop that closes the position in ``symbol``, if any."""
        pos = self.portfolio.positions.get(symbol)
        if pos is None or not pos.is_open:
            return None
        closing = Side.SELL if pos.qty > 0 else Side.BUY
        for o in self._live.values():
            if o.symbol == symbol and o.order_type is OrderType.STOP_MARKET and \
                    o.reduce_only and o.side is closing and o.status.is_open and \
                    o.status is not OrderStatus.NEW and \
                    o.remaining + 1e-9 >= abs(pos.qty) * (1 - 1e-9):
                return o
        return None

    def closing(self, symbol: str) -> bool:
        """A reduce-only market order covering the whole position is on the venue: the
        position is being closed now, it needs no stop any more."""
        pos = self.portfolio.positions.get(symbol)
        if pos is None or not pos.is_open:
            return False
        closing = Side.SELL if pos.qty > 0 else Side.BUY
        covered = sum(o.remaining for o in self._live.values()
                      if o.symbol == symbol and o.reduce_only and o.side is closing
                      and o.order_type is OrderType.MARKET and o.status.is_open
                      and o.status is not OrderStatus.NEW)
        return covered + 1e-9 >= abs(pos.qty) * (1 - 1e-9)

    def unprotected(self) -> list[str]:
        """Open positions with neither a working protective stop on the venue nor a market
        order closing them."""
        held = [s for s, p in self.portfolio.positions.items() if p.is_open]
        if not held:
            return []
        return sorted(s for s in held
                      if self.protective_stop(s) is None and not self.closing(s))

    # --- restart ---------------------------------------------------------------------------
    def open_trades_state(self) -> dict[str, dict[str, object]]:
        """What a restart needs to finish the round trips that are open now."""
        return {sym: {k: getattr(t, k) for k in _OpenTrade.__slots__}
                | {"entry_side": t.entry_side.value} for sym, t in self._open_trades.items()}

    def restore_open_trades(self, state: dict[str, dict[str, Any]]) -> None:
        for sym, values in state.items():
            t = _OpenTrade.__new__(_OpenTrade)
            for k in _OpenTrade.__slots__:
                setattr(t, k, values[k])
            t.entry_side = Side(values["entry_side"])
            self._open_trades[sym] = t


__all__ = ["EXIT_REASONS", "PROTECTIVE_TAGS", "STOP_OUTS", "Booking", "ExecutionEngine",
           "Journal", "ListJournal", "NullJournal"]
