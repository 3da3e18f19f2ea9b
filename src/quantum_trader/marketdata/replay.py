"""Replay stored bars as a time-ordered stream of domain ``Bar`` objects.

Bars of several symbols are merged by close time (the moment each bar becomes known), then by
symbol, so a backtest sees them in the order a live feed would have delivered them. The merge is
one numpy ``lexsort``; iteration builds ``Bar`` objects from ``.tolist()`` columns chunk by chunk,
which keeps memory flat and runs at a few million bars per second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import types
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from quantum_trader.domain.models import Bar, timeframe_ms
from quantum_trader.marketdata.series import BarSeries

_BAR_FIELDS = ("symbol", "timeframe", "ts", "open", "high", "low", "close", "volume")
_CHUNK = 65_536


def _can_build_bars_directly() -> bool:
    """The fast path fills ``Bar`` slots without calling the frozen dataclass ``__init__`` (which
    is half the cost of a bar). It is only valid while ``Bar`` is a plain slotted record with
    exactly these fields and no ``__post_init__``; otherwise the feed falls back to ``Bar(...)``."""
    if tuple(f.name for f in dataclasses.fields(Bar)) != _BAR_FIELDS:
        return False
    if hasattr(Bar, "__post_init__"):
        return False
    return all(isinstance(vars(Bar).get(n), types.MemberDescriptorType) for n in _BAR_FIELDS)


_FAST_BARS = _can_build_bars_directly()


class ReplayFeed(Iterator[Bar]):
    """Bars of ``series_list`` in time order, skipping those at or before ``start_after[symbol]``
    (open times, as kept in a checkpoint) so a resumed run continues where it stopped.

    It is an iterator (one pass); ``len()`` is the number of bars the whole pass yields.
    """

    def __init__(self, series_list: Sequence[BarSeries],
                 start_after: dict[str, int] | None = None) -> None:
        keys = [(s.symbol, s.timeframe) for s in series_list]
        if len(set(keys)) != len(keys):
            raise ValueError(f"the same symbol and timeframe appear twice in {keys}")
        resume = start_after or {}
        parts = [s.after(resume[s.symbol]) if s.symbol in resume else s for s in series_list]
        # Ties on close time go by symbol name (then timeframe), independent of argument order.
        rank_of = {k: r for r, k in enumerate(sorted(keys))}
        self._symbols = np.array([k[0] for k in keys], dtype=object)
        self._timeframes = np.array([k[1] for k in keys], dtype=object)
        lengths = [len(p) for p in parts]
        self._source = np.repeat(np.arange(len(parts), dtype=np.int64), lengths)
        if parts:
            self._ts = np.concatenate([p.ts for p in parts]).astype(np.int64, copy=False)
            cols = [np.concatenate([getattr(p, c) for p in parts]).astype(np.float64, copy=False)
                    for c in ("open", "high", "low", "close", "volume")]
            close_ts = self._ts + np.repeat(
                np.array([timeframe_ms(p.timeframe) for p in parts], dtype=np.int64), lengths)
            rank = np.repeat(np.array([rank_of[k] for k in keys], dtype=np.int64), lengths)
            self._order = np.lexsort((rank, close_ts))
        else:
            self._ts = np.empty(0, dtype=np.int64)
            cols = [np.empty(0, dtype=np.float64) for _ in range(5)]
            self._order = np.empty(0, dtype=np.int64)
        self._open, self._high, self._low, self._close, self._volume = cols
        self._len = len(self._order)
        self._it: Iterator[Bar] = self._bars()

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Bar]:
        # Hand out the generator itself so a ``for`` loop runs at generator speed.
        return self._it

    def __next__(self) -> Bar:
        return next(self._it)

    def _bars(self) -> Iterator[Bar]:
        if not _FAST_BARS:
            for columns in self._chunks():
                yield from map(Bar, *columns)
            return
        # One flat loop (no nested generator) is what keeps this above 1M bars/s.
        new = object.__new__
        s_sym, s_tf, s_ts, s_o, s_h, s_l, s_c, s_v = (vars(Bar)[n].__set__ for n in _BAR_FIELDS)
        for columns in self._chunks():
            for sym, tf, t, o, h, lo, c, v in zip(*columns, strict=True):
                bar = new(Bar)
                s_sym(bar, sym)
                s_tf(bar, tf)
                s_ts(bar, t)
                s_o(bar, o)
                s_h(bar, h)
                s_l(bar, lo)
                s_c(bar, c)
                s_v(bar, v)
                yield bar

    def _chunks(self) -> Iterator[tuple[list[Any], ...]]:
        for start in range(0, self._len, _CHUNK):
            idx = self._order[start:start + _CHUNK]
            src = self._source[idx]
            yield (self._symbols[src].tolist(), self._timeframes[src].tolist(),
                   self._ts[idx].tolist(), self._open[idx].tolist(), self._high[idx].tolist(),
                   self._low[idx].tolist(), self._close[idx].tolist(), self._volume[idx].tolist())


async def aiter_bars(feed: Iterable[Bar], bars_per_second: float | None = None,
                     ) -> AsyncIterator[Bar]:
    """``feed`` as an async iterator. With ``bars_per_second`` bar ``i`` is released at
    ``start + i / bars_per_second`` on the event loop's clock (a consumer that fell behind gets
    the late bars without pause until it is back on schedule); without it bars come as fast as
    the consumer takes them, still yielding to the loop now and then."""
    if bars_per_second is not None and not bars_per_second > 0:
        raise ValueError(f"bars_per_second must be positive, got {bars_per_second}")
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i, bar in enumerate(feed):
        if bars_per_second is not None:
            delay = started + i / bars_per_second - loop.time()
            # Timers are coarse: sleep only for whole milliseconds and let faster rates batch.
            if delay > 0.001:
                await asyncio.sleep(delay)
            elif i % 1024 == 0:
                await asyncio.sleep(0)
        elif i % 1024 == 0:
            await asyncio.sleep(0)  # never starve other tasks on the loop
        yield bar
