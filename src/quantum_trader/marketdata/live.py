"""Live closed klines through the exchange port: polled, gap-filled, never twice, never late.

``LiveKlineFeed`` polls ``bars(symbol, timeframe, since)`` (``CcxtBinanceExchange.bars``: closed
klines only) for every symbol and publishes each new bar exactly once, in open-time order. It
asks for everything after the last bar it published, so after a disconnect the first answer
that gets through carries the missed bars (paginated) and they are published in order before
any newer one: the gap is backfilled by construction. When no new bar arrived for
``stale_after_s`` the feed reports itself stale through ``on_health`` (the node stops entries);
the next new bar reports it fresh again. While ``publish`` runs, ``stale`` and ``backfilling``
say how the bar arrived (late, or with a newer one already closed behind it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from quantum_trader.domain.models import Bar, timeframe_ms

if TYPE_CHECKING:
    from quantum_trader.exchange.ccxt_binance import MarkInfo

log = logging.getLogger(__name__)


class BarSource(Protocol):
    async def bars(self, symbol: str, timeframe: str, since: int | None = None,
                   limit: int = 500) -> list[Bar]: ...


class MarkSource(Protocol):
    async def mark_info(self, symbol: str) -> MarkInfo: ...


HealthCallback = Callable[[bool, str], None]  # (fresh, reason)


@dataclass(slots=True)
class FeedStats:
    published: int = 0
    backfilled: int = 0  # bars published late, after a gap in our polling
    duplicates_dropped: int = 0
    venue_gaps: int = 0  # holes in the venue's own data (published around, counted)
    errors: int = 0
    refused: int = 0  # bars refused at the edge (implausible time), dead-lettered
    stale_episodes: int = 0
    last_error: str = ""
    last_ts: dict[str, int] = field(default_factory=dict)


_POLL_PAGE = 99  # bars asked for by a routine poll: the lightest klines weight


class LiveKlineFeed:
    def __init__(self, source: BarSource, symbols: Sequence[str], timeframe: str,
                 publish: Callable[[Bar], Awaitable[bool | None]], *, poll_s: float = 1.0,
                 stale_after_s: float = 90.0, on_health: HealthCallback | None = None,
                 start_after: dict[str, int] | None = None, warmup_bars: int = 1,
                 page_size: int = 1000, marks: MarkSource | None = None,
                 on_mark: Callable[[MarkInfo], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``start_after``: per symbol, the open time of the last bar already processed (a
        restart resumes after it); otherwise the feed starts with the latest ``warmup_bars``.
        ``marks``/``on_mark``: also follow mark price and funding (published when they change).
        """
        self.source = source
        self.symbols = list(symbols)
        self.timeframe = timeframe
        self.tf_ms = timeframe_ms(timeframe)
        self.publish = publish
        self.poll_s = poll_s
        self.stale_after_s = stale_after_s
        self.on_health = on_health
        self.warmup_bars = warmup_bars
        self.page_size = page_size
        self._clock = clock
        self.stats = FeedStats(last_ts=dict(start_after or {}))
        self._last_new = clock()
        self.stale = False
        # True while ``publish`` is handed a bar the venue already had a newer one after
        # (a gap being backfilled, a restart catching up): such a bar arrived late.
        self.backfilling = False
        self.marks = marks
        self.on_mark = on_mark
        self._last_mark: dict[str, MarkInfo] = {}

    @property
    def fresh(self) -> bool:
        return not self.stale

    async def poll_once(self) -> int:
        """Fetch and publish whatever closed since the last call; returns bars published."""
        published = 0
        for sym in self.symbols:
            try:
                published += await self._poll_symbol(sym)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a feed never dies of one bad answer; it goes stale
                self.stats.errors += 1
                self.stats.last_error = f"{sym}: {type(exc).__name__}: {exc}"[:300]
                log.warning("kline poll failed: %s", self.stats.last_error)
        if self.marks is not None and self.on_mark is not None:
            await self._poll_marks()
        if published:
            self._last_new = self._clock()
            if self.stale:
                self.stale = False
                self._health(True, "bars flowing again")
        elif not self.stale and self._clock() - self._last_new > self.stale_after_s:
            self.stale = True
            self.stats.stale_episodes += 1
            reason = (f"no new {self.timeframe} bar for {self.stale_after_s:.0f}s"
                      + (f" ({self.stats.last_error})" if self.stats.last_error else ""))
            self._health(False, reason)
        return published

    async def _poll_symbol(self, sym: str) -> int:
        last = self.stats.last_ts.get(sym)
        n = 0
        first_page = True
        while True:
            # A routine poll asks for a small page (Binance weighs klines by the limit: under
            # 100 costs 1, 1000 costs 5); only a full page means a gap, fetched in big pages.
            limit = min(self.page_size, _POLL_PAGE) if first_page else self.page_size
            if last is None:
                page = await self.source.bars(sym, self.timeframe, None, self.warmup_bars)
                limit = self.page_size
            else:
                page = await self.source.bars(sym, self.timeframe, last + self.tf_ms, limit)
            fresh = sorted((b for b in page if last is None or b.ts > last), key=lambda b: b.ts)
            self.stats.duplicates_dropped += len(page) - len(fresh)
            more = len(page) >= limit  # a full page: newer bars wait on the next one
            for i, bar in enumerate(fresh):
                if last is not None and bar.ts != last + self.tf_ms:
                    self.stats.venue_gaps += 1
                # Read by ``publish``: the venue had a newer closed bar when this one came.
                self.backfilling = more or i < len(fresh) - 1
                published_ok = await self.publish(bar)
                self.backfilling = False
                if published_ok is False:
                    # Refused at the edge (an implausible time): skipped, and it must not move
                    # the feed on (a bar from the far future would hide every later one).
                    self.stats.refused += 1
                    continue
                # Advance only after the publish: a failed publish is retried, never skipped.
                last = bar.ts
                self.stats.last_ts[sym] = last
                self.stats.published += 1
                n += 1
            if len(fresh) > 1 or not first_page:
                self.stats.backfilled += max(0, len(fresh) - (1 if first_page else 0))
            if len(page) < limit or not fresh:
                return n
            first_page = False

    async def _poll_marks(self) -> None:
        assert self.marks is not None
        assert self.on_mark is not None
        for sym in self.symbols:
            try:
                info = await self.marks.mark_info(sym)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.errors += 1
                self.stats.last_error = f"{sym} mark: {type(exc).__name__}: {exc}"[:300]
                continue
            prev = self._last_mark.get(sym)
            if prev is None or (info.ts, info.mark_price) != (prev.ts, prev.mark_price):
                self._last_mark[sym] = info
                await self.on_mark(info)

    def _health(self, fresh: bool, reason: str) -> None:
        log.log(logging.INFO if fresh else logging.WARNING, "market data %s: %s",
                "fresh" if fresh else "STALE", reason)
        if self.on_health is not None:
            self.on_health(fresh, reason)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Poll every ``poll_s`` until ``stop`` is set (or the task is cancelled)."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            await self.poll_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_s)


__all__ = ["BarSource", "FeedStats", "HealthCallback", "LiveKlineFeed", "MarkSource"]
