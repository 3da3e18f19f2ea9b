"""Download historical klines through the exchange port into a parquet file the backtester
reads (``marketdata.files.load_file``), page by page, resuming from the file's last bar."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantum_trader.domain.instruments import Instrument
from quantum_trader.domain.models import Bar, timeframe_ms
from quantum_trader.marketdata.files import load_file, write_parquet
from quantum_trader.marketdata.live import BarSource
from quantum_trader.marketdata.series import BarSeries, FloatArray

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class DownloadResult:
    path: Path
    bars_total: int
    bars_new: int
    first_ts: int | None
    last_ts: int | None
    resumed_from: int | None  # open time of the file's last bar before this run


async def download_klines(source: BarSource, symbol: str, timeframe: str, since_ms: int,
                          out: Path, until_ms: int | None = None, page_size: int = 1000,
                          checkpoint_pages: int = 50,
                          progress: Callable[[int, int], None] | None = None,
                          instrument: Instrument | None = None) -> DownloadResult:
    """Bars with ``since_ms <= ts < until_ms`` appended to ``out`` (created if missing).

    An existing file is resumed from its last bar; the file is rewritten atomically every
    ``checkpoint_pages`` pages, so an interrupted download loses at most that much work.
    ``progress(bars_new, last_ts)`` is called after each page. ``instrument``: the venue's
    filters for the symbol, stored in the file (backtests of it then use them).
    """
    from quantum_trader.exchange.reliable import call_with_retries

    tf = timeframe_ms(timeframe)
    existing = await asyncio.to_thread(_load_existing, out, symbol, timeframe)
    resumed_from: int | None = None
    if existing is not None and len(existing):
        resumed_from = int(existing.ts[-1])
        since_ms = max(since_ms, resumed_from + tf)
    cursor = since_ms
    new: list[Bar] = []
    pages = 0
    while until_ms is None or cursor < until_ms:
        start = cursor

        async def fetch(start: int = start) -> list[Bar]:
            return await source.bars(symbol, timeframe, start, page_size)

        page = await call_with_retries(fetch, attempts=10)
        page = [b for b in page if b.ts >= cursor and (until_ms is None or b.ts < until_ms)]
        if not page:
            break
        new.extend(page)
        cursor = page[-1].ts + tf
        pages += 1
        if progress is not None:
            progress(len(new), page[-1].ts)
        if pages % checkpoint_pages == 0:
            existing = await asyncio.to_thread(_write, existing, new, symbol, timeframe, out,
                                             instrument)
            new = []
    if new or existing is None:
        merged = await asyncio.to_thread(_write, existing, new, symbol, timeframe, out,
                                             instrument)
    else:
        merged = existing
    total = len(merged)
    added = total - (0 if resumed_from is None else
                     int(np.searchsorted(merged.ts, resumed_from, side="right")))
    return DownloadResult(out, total, added, int(merged.ts[0]) if total else None,
                          int(merged.ts[-1]) if total else None, resumed_from)


def _load_existing(out: Path, symbol: str, timeframe: str) -> BarSeries | None:
    return load_file(out, symbol, timeframe) if out.exists() else None


def _write(existing: BarSeries | None, new: list[Bar], symbol: str, timeframe: str,
           out: Path, instrument: Instrument | None = None) -> BarSeries:
    cols = {
        "ts": np.array([b.ts for b in new], dtype=np.int64),
        "open": np.array([b.open for b in new], dtype=np.float64),
        "high": np.array([b.high for b in new], dtype=np.float64),
        "low": np.array([b.low for b in new], dtype=np.float64),
        "close": np.array([b.close for b in new], dtype=np.float64),
        "volume": np.array([b.volume for b in new], dtype=np.float64),
    }
    if existing is not None:
        cols = {k: np.concatenate([np.asarray(getattr(existing, k)), v])
                for k, v in cols.items()}
    # one bar per open time, in order (a resumed page may overlap the file's tail)
    ts, idx = np.unique(cols["ts"], return_index=True)

    def col(name: str) -> FloatArray:
        return np.asarray(cols[name][idx], dtype=np.float64)

    series = BarSeries(symbol, timeframe, ts.astype(np.int64), col("open"), col("high"),
                       col("low"), col("close"), col("volume"))
    if len(series):
        out.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(series, out, instrument)
        log.info("wrote %d %s %s bars to %s", len(series), symbol, timeframe, out)
    return series


__all__ = ["DownloadResult", "download_klines"]
