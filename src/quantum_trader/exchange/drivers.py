"""Venue drivers: how the execution service's engine reaches a venue, asynchronously.

The execution engine (``domain/execution.py``) decides; a driver carries its orders to a venue
and brings back what the venue did, as ``OrderUpdate``s, ``VenueTrade``s and funding payments.
There are two, with one contract:

* ``SimulatedVenue``: the in-process simulated exchange (distributed replay of history). Bars
  are fed to it by the service (``on_bar``); it answers at once and never fails.
* ``LiveVenue``: a real venue through ccxt (Binance, or our Binance-compatible simulator),
  with the reliable placer in front. The venue moves on its own clock: ``poll`` reads the trades
  and funding since the persisted cursors (trade id per symbol, funding time), so every venue
  trade is read, in order, and booked once.

The backtest node is the synchronous driver of the same engine (``runtime/node.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from quantum_trader.domain.enums import OrderStatus
from quantum_trader.domain.models import Bar, FundingPayment
from quantum_trader.domain.position import Position
from quantum_trader.domain.records import Cursor
from quantum_trader.domain.venue import (
    OrderRequest,
    OrderUpdate,
    VenueAccount,
    VenueEvent,
    VenueTrade,
)
from quantum_trader.exchange.errors import ExchangeError, OrderNotFound, OrderRefused

if TYPE_CHECKING:
    from quantum_trader.exchange.ccxt_binance import MarkInfo
from quantum_trader.exchange.reliable import CircuitBreaker, ReliablePlacer, call_with_retries
from quantum_trader.exchange.simulated import OrderRejected, SimulatedExchange

#: What a driver reports, in the order it happened.
DriverEvent = OrderUpdate | VenueTrade | FundingPayment
BeforeSend = Callable[[OrderRequest, int], Awaitable[None]]

FUNDING_CURSOR = "funding"


def trade_cursor(symbol: str) -> str:
    return f"trades:{symbol}"


@dataclass(slots=True)
class VenueSnapshot:
    """One reading of the venue: the orders working there and the account."""

    open_orders: list[OrderUpdate]
    account: VenueAccount


@dataclass(slots=True)
class StartReport:
    """What a driver found when it connected: settings it had to keep (DEGRADED, not fatal)
    and whether the venue's trade history was skipped (a first start)."""

    kept: dict[str, str] = field(default_factory=dict)
    leverage: dict[str, float] = field(default_factory=dict)
    first_start: bool = False


class VenueDriver(Protocol):
    name: str
    #: True when the venue runs on its own clock (trades are polled, placements can fail).
    remote: bool
    breaker: CircuitBreaker
    recv_window_ms: int

    async def start(self, cursors: dict[str, Cursor]) -> StartReport: ...

    async def close(self) -> None: ...

    async def on_bar(self, bar: Bar) -> list[DriverEvent]:
        """A closed bar: what the venue did in it (the simulated one matches it now)."""

    async def poll(self, funding: bool = False) -> list[DriverEvent]:
        """Trades (and with ``funding`` the funding income) since the cursors, oldest
        first."""

    def cursor_records(self, ts: int) -> list[Cursor]:
        """The cursors as they stand after the last poll, to commit with what was read."""

    def advance(self, event: DriverEvent) -> None:
        """``event`` is booked: move the cursor past it (called in booking order)."""

    async def place(self, request: OrderRequest, before_send: BeforeSend,
                    sent_before_ms: int = 0) -> OrderUpdate: ...

    async def cancel(self, symbol: str, client_order_id: str) -> OrderUpdate | None:
        """Cancel; None if the venue has no such open order (already done)."""

    async def query(self, symbol: str, client_order_id: str) -> OrderUpdate | None: ...

    async def snapshot(self) -> VenueSnapshot: ...

    async def market_time(self, symbol: str) -> int:
        """The venue's clock now (market time: wall time on a live venue)."""

    def conclusive(self, sent_wall_ms: int) -> bool:
        """True once an attempt sent then can no longer be accepted by the venue."""

    def remember_algo(self, client_order_ids: Iterable[str]) -> None: ...


class SimulatedVenue:
    """The in-process simulated exchange behind the async driver contract."""

    name = "simulated"
    remote = False
    recv_window_ms = 0

    def __init__(self, exchange: SimulatedExchange) -> None:
        self.exchange = exchange
        self.breaker = CircuitBreaker()
        self.now = 0  # market time: the close of the last bar fed
        self._funding_seen = 0

    async def start(self, cursors: dict[str, Cursor]) -> StartReport:
        return StartReport()

    async def close(self) -> None:
        return None

    def restore(self, wallet: float, positions: list[Position],
                last_prices: dict[str, float], ids: dict[str, int] | None) -> None:
        """The process restarted: the simulated venue lost its state; give it ours back
        (its id sequences too: a trade id is never handed out twice)."""
        self.exchange.restore(wallet, positions, last_prices, ids)

    async def on_bar(self, bar: Bar) -> list[DriverEvent]:
        events: list[DriverEvent] = list(self.exchange.on_bar(bar))
        self.now = max(self.now, bar.close_ts)
        payments = self.exchange.funding_payments
        if len(payments) != self._funding_seen:
            events.extend(payments[self._funding_seen:])
            self._funding_seen = len(payments)
        return events

    async def poll(self, funding: bool = False) -> list[DriverEvent]:
        return []

    def cursor_records(self, ts: int) -> list[Cursor]:
        return []

    def advance(self, event: DriverEvent) -> None:
        return None

    async def place(self, request: OrderRequest, before_send: BeforeSend,
                    sent_before_ms: int = 0) -> OrderUpdate:
        if sent_before_ms:
            found = self.exchange.query(request.client_order_id)
            if found is not None and found.status is not OrderStatus.REJECTED:
                return found
        await before_send(request, self.now)
        try:
            return self.exchange.submit(request, self.now)
        except OrderRejected as exc:  # a duplicate id: it is working there already
            found = self.exchange.query(request.client_order_id)
            if found is None:
                raise OrderRefused(exc.message) from None
            return found

    async def cancel(self, symbol: str, client_order_id: str) -> OrderUpdate | None:
        try:
            return self.exchange.cancel(client_order_id, self.now, "canceled")
        except OrderRejected:
            return None

    async def query(self, symbol: str, client_order_id: str) -> OrderUpdate | None:
        return self.exchange.query(client_order_id)

    async def snapshot(self) -> VenueSnapshot:
        x = self.exchange
        return VenueSnapshot(x.open_orders(), VenueAccount(self.now, x.wallet,
                                                           tuple(x.positions())))

    async def market_time(self, symbol: str) -> int:
        return self.now

    def conclusive(self, sent_wall_ms: int) -> bool:
        return True

    def remember_algo(self, client_order_ids: Iterable[str]) -> None:
        return None


class LiveAdapter(Protocol):
    """What ``LiveVenue`` needs from a ccxt adapter (``CcxtBinanceExchange``)."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def submit(self, request: OrderRequest) -> OrderUpdate: ...

    async def cancel(self, symbol: str, client_order_id: str) -> OrderUpdate: ...

    async def query(self, symbol: str, client_order_id: str) -> OrderUpdate | None: ...

    async def open_orders(self, symbol: str | None = None) -> list[OrderUpdate]: ...

    async def trades(self, symbol: str, from_id: int | None = None,
                     limit: int = 1000) -> list[VenueTrade]: ...

    async def latest_trade_id(self, symbol: str) -> int | None: ...

    async def funding(self, since_ts: int, limit: int = 1000) -> list[FundingPayment]: ...

    async def latest_funding_time(self) -> int | None: ...

    async def account(self) -> VenueAccount: ...

    async def resync_time(self) -> None: ...

    def update_mark(self, symbol: str, price: float) -> None: ...

    async def mark_info(self, symbol: str) -> MarkInfo: ...

    def remember_algo(self, client_order_ids: Iterable[str]) -> None: ...


class LiveVenue:
    """A venue on its own clock, through ccxt and the reliable placer."""

    name = "live"
    remote = True

    def __init__(self, adapter: LiveAdapter, symbols: Iterable[str],
                 breaker: CircuitBreaker | None = None, recv_window_ms: int = 5_000,
                 wall_ms: Callable[[], int] | None = None) -> None:
        self.adapter = adapter
        self.symbols = list(symbols)
        self.breaker = breaker or CircuitBreaker()
        self.recv_window_ms = recv_window_ms
        kwargs = {"wall_ms": wall_ms} if wall_ms is not None else {}
        self.placer = ReliablePlacer(adapter, self.breaker, recv_window_ms=recv_window_ms,
                                     **kwargs)  # type: ignore[arg-type]
        self._trade_from: dict[str, int] = {}  # symbol -> next trade id to read
        self._funding_from = 0  # funding time to read from
        self._funding_seen: set[str] = set()
        self._next_funding: dict[str, int] = {}  # symbol -> the venue's next funding time
        self.setup_kept: dict[str, str] = {}

    async def start(self, cursors: dict[str, Cursor]) -> StartReport:
        """Connect (retrying through venue faults). Cursors come from the store; a symbol with
        none is a first start: its trade history before now is the venue's, not ours to book
        (the books start from the venue's account instead)."""
        await self.adapter.connect()
        report = StartReport()
        setup = getattr(self.adapter, "setup", None)
        if setup is not None:
            report.kept = dict(setup.kept)
            report.leverage = dict(setup.leverage)
        for sym in self.symbols:
            cur = cursors.get(trade_cursor(sym))
            if cur is not None:
                self._trade_from[sym] = int(cur.value) + 1
                continue
            report.first_start = True
            latest = await call_with_retries(functools.partial(self.adapter.latest_trade_id,
                                                               sym))
            self._trade_from[sym] = (latest + 1) if latest is not None else 0
        for sym in self.symbols:
            await self._learn_next_funding(sym)
        fc = cursors.get(FUNDING_CURSOR)
        if fc is not None:
            self._funding_from = int(fc.value)
        else:  # a first start: funding before now is the account's past, not ours to book
            latest = await call_with_retries(self.adapter.latest_funding_time)
            self._funding_from = latest + 1 if latest is not None else 0
        return report

    async def close(self) -> None:
        await self.adapter.close()

    async def on_bar(self, bar: Bar) -> list[DriverEvent]:
        """A closed bar: the trades made in it, and the funding once a bar closed after the
        symbol's next funding time (as the venue announced it): the bar that contains a funding
        time is the one its payment belongs to (as in a backtest), and income reads are heavy
        (weight 30). Reconciliation reads funding too, so a payment the venue books late is
        never missed."""
        self.adapter.update_mark(bar.symbol, bar.close)
        due = bar.close_ts > self._next_funding.get(bar.symbol, 0)
        events = await self.poll(funding=due)
        if due:
            await self._learn_next_funding(bar.symbol)
        return events

    async def _learn_next_funding(self, symbol: str) -> None:
        try:
            info = await call_with_retries(functools.partial(self.adapter.mark_info, symbol))
        except ExchangeError:
            self._next_funding[symbol] = 0  # unknown: read funding at the next bar
            return
        self._next_funding[symbol] = info.next_funding_ts

    async def poll(self, funding: bool = False) -> list[DriverEvent]:
        """Trades since the cursors (light: one request per symbol); funding income too when
        asked (a heavy request: bars and reconciliation ask for it, the fast poll does not)."""
        out: list[DriverEvent] = []
        for sym in self.symbols:
            start = self._trade_from.get(sym, 0)
            trades = await call_with_retries(functools.partial(self.adapter.trades, sym, start))
            out.extend(t for t in trades if int(t.trade_id) >= start)
        if funding:
            payments = await call_with_retries(lambda: self.adapter.funding(self._funding_from))
            out.extend(p for p in payments
                       if p.id not in self._funding_seen and p.symbol in self.symbols)
        return out

    def advance(self, event: DriverEvent) -> None:
        if isinstance(event, VenueTrade):
            tid = int(event.trade_id)
            if tid + 1 > self._trade_from.get(event.symbol, 0):
                self._trade_from[event.symbol] = tid + 1
        elif isinstance(event, FundingPayment):
            self._funding_seen.add(event.id)
            if len(self._funding_seen) > 10_000:
                self._funding_seen.clear()
                self._funding_seen.add(event.id)
            # Funding rows share timestamps: read from the same ms again, ids dedupe.
            self._funding_from = max(self._funding_from, event.ts)

    def cursor_records(self, ts: int) -> list[Cursor]:
        out = [Cursor(trade_cursor(s), str(self._trade_from[s] - 1), ts)
               for s in self.symbols if s in self._trade_from]
        out.append(Cursor(FUNDING_CURSOR, str(self._funding_from), ts))
        return out

    async def place(self, request: OrderRequest, before_send: BeforeSend,
                    sent_before_ms: int = 0) -> OrderUpdate:
        return await self.placer.place(request, before_send, sent_before_ms)

    async def cancel(self, symbol: str, client_order_id: str) -> OrderUpdate | None:
        try:
            return await call_with_retries(lambda: self.adapter.cancel(symbol,
                                                                       client_order_id))
        except OrderNotFound:
            return await call_with_retries(lambda: self.adapter.query(symbol,
                                                                      client_order_id))
        except ExchangeError as exc:
            if getattr(exc, "code", 0) in (-2011, -2013):
                return await self.query(symbol, client_order_id)
            raise

    async def query(self, symbol: str, client_order_id: str) -> OrderUpdate | None:
        return await call_with_retries(lambda: self.adapter.query(symbol, client_order_id))

    async def snapshot(self) -> VenueSnapshot:
        orders = await call_with_retries(self.adapter.open_orders)
        account = await call_with_retries(self.adapter.account)
        return VenueSnapshot(orders, account)

    async def market_time(self, symbol: str) -> int:
        """The venue's clock, from its mark price (one light request)."""
        info = await call_with_retries(functools.partial(self.adapter.mark_info, symbol))
        return info.ts

    def conclusive(self, sent_wall_ms: int) -> bool:
        return self.placer.conclusive(sent_wall_ms)

    def remember_algo(self, client_order_ids: Iterable[str]) -> None:
        self.adapter.remember_algo(client_order_ids)


__all__ = ["FUNDING_CURSOR", "DriverEvent", "LiveAdapter", "LiveVenue", "SimulatedVenue",
           "StartReport", "VenueDriver", "VenueEvent", "VenueSnapshot", "trade_cursor"]
