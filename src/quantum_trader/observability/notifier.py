"""The operator's notifier: trade opened and closed, trading state changes, the kill switch and
a daily summary, sent to Telegram.

Trading must never wait for Telegram. Every ``notify``-style call renders the text and puts it
in a bounded in-memory queue, O(1), no I/O, no await; a background task sends. When the queue
is full the oldest routine message is dropped (and counted), so a Telegram outage costs old
trade chatter, never a kill-switch or halt message while routine ones are still queued.
The sender respects Telegram's limits (about 1 message/s per chat, 20/min in a group), merges a
backlog into fewer messages, and retries transient failures (network, 429 with its
``retry_after``, 5xx) with tenacity; a routine message that still fails is logged and counted,
an urgent one (kill switch, halt) is kept and tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from html import escape
from typing import Any, Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from quantum_trader.observability.logging import get_logger
from quantum_trader.observability.telegram import MAX_MESSAGE_CHARS, TelegramError

# --- what gets said (pure functions: unit-tested text) ------------------------------------------


@dataclass(frozen=True, slots=True)
class TradeOpened:
    symbol: str
    side: str  # "LONG" / "SHORT" (or BUY / SELL)
    quantity: float
    price: float
    stop: float | None = None
    target: float | None = None
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class TradeClosed:
    symbol: str
    side: str
    quantity: float
    entry_price: float
    exit_price: float
    pnl: float  # net of fees and funding, in the account currency
    reason: str = ""  # stop_loss, take_profit, trailing_stop, time_exit, signal, ...
    trace_id: str = ""

    @property
    def return_pct(self) -> float:
        notional = abs(self.quantity) * self.entry_price
        return 100.0 * self.pnl / notional if notional else 0.0


@dataclass(frozen=True, slots=True)
class DailySummary:
    day: date
    trades: int
    wins: int
    pnl: float
    equity: float
    drawdown: float  # 0-1 from the equity peak
    open_positions: int
    state: str = "ACTIVE"

    @property
    def win_rate(self) -> float:
        return self.wins / self.trades if self.trades else 0.0


def _num(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def _price(x: float) -> str:
    # Crypto prices span 0.0001 (small caps) to 100,000 (BTC): keep 5 significant digits.
    return f"{x:,.2f}" if abs(x) >= 100 else f"{x:.5g}"


def _signed(x: float) -> str:
    return f"{'+' if x >= 0 else '-'}{abs(x):,.2f}"


def render_trade_opened(t: TradeOpened) -> str:
    lines = [f"📈 <b>Opened {escape(t.side)} {escape(t.symbol)}</b>",
             f"qty {t.quantity:g} @ {_price(t.price)}"]
    risk = []
    if t.stop is not None:
        risk.append(f"stop {_price(t.stop)}")
    if t.target is not None:
        risk.append(f"target {_price(t.target)}")
    if risk:
        lines.append(" · ".join(risk))
    if t.trace_id:
        lines.append(f"trace {escape(t.trace_id[:12])}")
    return "\n".join(lines)


def render_trade_closed(t: TradeClosed) -> str:
    icon = "✅" if t.pnl >= 0 else "🔻"
    lines = [f"{icon} <b>Closed {escape(t.side)} {escape(t.symbol)}</b>"
             + (f" ({escape(t.reason)})" if t.reason else ""),
             f"qty {t.quantity:g}: {_price(t.entry_price)} → {_price(t.exit_price)}",
             f"PnL <b>{_signed(t.pnl)}</b> ({t.return_pct:+.2f}%)"]
    if t.trace_id:
        lines.append(f"trace {escape(t.trace_id[:12])}")
    return "\n".join(lines)


_STATE_ICON = {"ACTIVE": "🟢", "REDUCING": "🟡", "HALTED": "🛑"}


def render_state_change(old: str, new: str, reason: str = "") -> str:
    text = f"{_STATE_ICON.get(new, 'ℹ️')} <b>Trading {escape(old)} → {escape(new)}</b>"
    return text + (f"\n{escape(reason)}" if reason else "")


def render_kill_switch(by: str, reason: str = "", cancelled_orders: int | None = None,
                       closed_positions: int | None = None) -> str:
    lines = [f"🚨 <b>KILL SWITCH</b> by {escape(by)}", "Trading HALTED: no new entries."]
    if reason:
        lines.append(escape(reason))
    done = []
    if cancelled_orders is not None:
        done.append(f"{cancelled_orders} order(s) cancelled")
    if closed_positions is not None:
        done.append(f"{closed_positions} position(s) closed")
    if done:
        lines.append(", ".join(done))
    return "\n".join(lines)


def render_daily_summary(s: DailySummary) -> str:
    return "\n".join([
        f"📊 <b>Daily summary {s.day.isoformat()}</b>",
        f"trades {s.trades} · win rate {s.win_rate:.0%}",
        f"PnL <b>{_signed(s.pnl)}</b>",
        f"equity {_num(s.equity)} · drawdown {s.drawdown:.1%}",
        f"open positions {s.open_positions} · state {escape(s.state)}",
    ])


# --- the port and its Telegram adapter ---------------------------------------------------------


class Notifier(Protocol):
    """The port (DESIGN.md section 2). Every method returns at once and never raises."""

    def trade_opened(self, trade: TradeOpened) -> None: ...
    def trade_closed(self, trade: TradeClosed) -> None: ...
    def trading_state_changed(self, old: str, new: str, reason: str = "") -> None: ...
    def kill_switch(self, by: str, reason: str = "", cancelled_orders: int | None = None,
                    closed_positions: int | None = None) -> None: ...
    def daily_summary(self, summary: DailySummary) -> None: ...


class Sender(Protocol):
    """What the notifier needs from a Telegram client (``TelegramClient`` is one)."""

    def send_message(self, chat_id: int | str, text: str,
                     parse_mode: str | None = "HTML") -> Awaitable[object]: ...


@dataclass(slots=True)
class _Item:
    text: str
    urgent: bool
    queued_at: float


@dataclass
class NotifierStats:
    queued: int = 0
    sent: int = 0  # Telegram messages delivered (one may carry several merged notifications)
    failed: int = 0  # routine notifications given up on after every retry
    dropped: int = 0  # notifications pushed out of a full queue
    retries: int = 0


@dataclass
class NotifierSettings:
    max_queue: int = 200
    per_chat_interval_s: float = 1.0  # Telegram: about one message a second per chat
    per_minute: int = 20  # Telegram: 20 messages a minute in a group
    max_attempts: int = 4
    retry_wait_max_s: float = 30.0
    merge_chars: int = 3500  # merge a backlog into messages up to this size


class TelegramNotifier:
    """``Notifier`` on Telegram. Call ``start()`` inside the event loop, ``stop()`` at the end.

    ``on_outcome`` is called with "queued", "sent", "failed", "dropped" (for a metric).
    """

    def __init__(self, client: Sender, chat_ids: Iterable[int | str],
                 settings: NotifierSettings | None = None, *,
                 on_outcome: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.client = client
        self.chat_ids: tuple[int | str, ...] = tuple(chat_ids)
        self.settings = settings or NotifierSettings()
        self.stats = NotifierStats()
        self._on_outcome = on_outcome
        self._clock = clock
        self._sleep = sleep
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._dropping = False
        self._idle = asyncio.Event()  # nothing queued and nothing being sent
        self._idle.set()
        self._sent_at: deque[float] = deque()  # send times within the last minute
        self.log = get_logger("quantum_trader.notifier")

    # --- the Notifier port (never blocks, never raises) ---------------------------------------
    def trade_opened(self, trade: TradeOpened) -> None:
        self._say(render_trade_opened, trade)

    def trade_closed(self, trade: TradeClosed) -> None:
        self._say(render_trade_closed, trade)

    def trading_state_changed(self, old: str, new: str, reason: str = "") -> None:
        self._say(render_state_change, old, new, reason, urgent=new != "ACTIVE")

    def kill_switch(self, by: str, reason: str = "", cancelled_orders: int | None = None,
                    closed_positions: int | None = None) -> None:
        self._say(render_kill_switch, by, reason, cancelled_orders, closed_positions,
                  urgent=True)

    def daily_summary(self, summary: DailySummary) -> None:
        self._say(render_daily_summary, summary)

    def _say(self, render: Callable[..., str], *args: Any, urgent: bool = False) -> None:
        # A malformed event (a None price) must cost a message, never the caller's trade.
        try:
            text = render(*args)
        except Exception as exc:
            self.log.error("notification_render_failed", renderer=render.__name__,
                           error=f"{type(exc).__name__}: {exc}")
            return
        self.notify(text, urgent=urgent)

    def notify(self, text: str, urgent: bool = False) -> None:
        """Queue ``text`` (HTML). Returns at once; a full queue drops its oldest routine item."""
        if self._closing or not self.chat_ids:
            return
        if len(self._queue) >= self.settings.max_queue:
            self._drop_one()
        self._queue.append(_Item(text, urgent, self._clock()))
        self._count("queued")
        self._idle.clear()
        self._wakeup.set()

    def _drop_one(self) -> None:
        victim = next((i for i in self._queue if not i.urgent), None)
        if victim is None:
            victim = self._queue[0]
        self._queue.remove(victim)
        self._count("dropped")
        if not self._dropping:  # once per outage, not once per message
            self._dropping = True
            self.log.warning("notification_queue_full", max_queue=self.settings.max_queue,
                             policy="dropping the oldest routine notifications")

    def _count(self, outcome: str) -> None:
        setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
        if self._on_outcome is not None:
            with contextlib.suppress(Exception):
                self._on_outcome(outcome)

    @property
    def pending(self) -> int:
        return len(self._queue)

    # --- the background sender -----------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                               name="telegram-notifier")

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Send what is queued for up to ``drain_timeout_s``, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), drain_timeout_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the queue is empty (tests, shutdown); False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take_batch()
            await self._rate_limit()
            await self._deliver(batch)

    def _take_batch(self) -> list[_Item]:
        """The oldest item plus as many following ones as fit in one message (a backlog after
        an outage goes out in a few messages, not hundreds)."""
        batch = [self._queue.popleft()]
        size = len(batch[0].text)
        while self._queue and size + 2 + len(self._queue[0].text) <= self.settings.merge_chars:
            item = self._queue.popleft()
            size += 2 + len(item.text)
            batch.append(item)
        return batch

    async def _rate_limit(self) -> None:
        s = self.settings
        now = self._clock()
        while self._sent_at and now - self._sent_at[0] >= 60.0:
            self._sent_at.popleft()
        wait = 0.0
        if self._sent_at:
            wait = max(wait, self._sent_at[-1] + s.per_chat_interval_s - now)
        if len(self._sent_at) >= s.per_minute:
            wait = max(wait, self._sent_at[0] + 60.0 - now)
        if wait > 0:
            await self._sleep(wait)
        self._sent_at.append(self._clock())

    async def _deliver(self, batch: Sequence[_Item]) -> None:
        text = "\n\n".join(i.text for i in batch)[:MAX_MESSAGE_CHARS]
        delivered = False
        for chat_id in self.chat_ids:
            try:
                await self._send_with_retry(chat_id, text)
            except Exception as exc:
                self.log.warning("notification_failed", chat_id=chat_id, notifications=len(batch),
                                 error=f"{type(exc).__name__}: {exc}")
            else:
                delivered = True
                self._count("sent")
                self._dropping = False
        if delivered:
            return
        # Nobody got it. Routine news is given up on; a kill switch or a halt goes back to the
        # front of the queue (pushing out routine news if it is full) and is tried again until
        # Telegram answers.
        for item in reversed(batch):
            if item.urgent:
                if len(self._queue) >= self.settings.max_queue:
                    self._drop_one()
                self._queue.appendleft(item)
            else:
                self._count("failed")

    async def _send_with_retry(self, chat_id: int | str, text: str) -> None:
        s = self.settings
        backoff = wait_exponential(multiplier=0.5, max=s.retry_wait_max_s)

        def wait(state: RetryCallState) -> float:
            # Telegram's 429 says how long to wait; otherwise back off exponentially.
            exc = state.outcome.exception() if state.outcome is not None else None
            if isinstance(exc, TelegramError) and exc.retry_after is not None:
                return min(exc.retry_after, s.retry_wait_max_s)
            return float(backoff(state))

        def before_sleep(state: RetryCallState) -> None:
            self.stats.retries += 1

        retrying = AsyncRetrying(
            stop=stop_after_attempt(s.max_attempts),
            wait=wait,
            retry=retry_if_exception(lambda e: isinstance(e, TelegramError) and e.retryable),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self.client.send_message(chat_id, text)


class NullNotifier:
    """A ``Notifier`` that says nothing (no Telegram configured, backtests)."""

    def trade_opened(self, trade: TradeOpened) -> None:
        pass

    def trade_closed(self, trade: TradeClosed) -> None:
        pass

    def trading_state_changed(self, old: str, new: str, reason: str = "") -> None:
        pass

    def kill_switch(self, by: str, reason: str = "", cancelled_orders: int | None = None,
                    closed_positions: int | None = None) -> None:
        pass

    def daily_summary(self, summary: DailySummary) -> None:
        pass


__all__ = [
    "DailySummary",
    "Notifier",
    "NotifierSettings",
    "NotifierStats",
    "NullNotifier",
    "Sender",
    "TelegramNotifier",
    "TradeClosed",
    "TradeOpened",
    "render_daily_summary",
    "render_kill_switch",
    "render_state_change",
    "render_trade_closed",
    "render_trade_opened",
]
