"""Live klines and downloads through real ccxt from the simulator's accelerated clock."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantum_trader.cli.exchange import data_app
from quantum_trader.domain.models import Bar
from quantum_trader.exchange.ccxt_binance import BinanceSettings, CcxtBinanceExchange, MarkInfo
from quantum_trader.marketdata.download import download_klines
from quantum_trader.marketdata.files import load_file
from quantum_trader.marketdata.live import LiveKlineFeed
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.venue_sim import SimServer, SimServerConfig, SimState, load_series

SYM = "XRPUSDT"
TF_MS = 1_800_000


async def until(cond: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def start(bar_seconds: float) -> SimServer:
    cfg = SimServerConfig(series=load_series(["sample:XRP"]), bar_seconds=bar_seconds)
    return SimServer(SimState(cfg)).start()


async def test_feed_cut_and_restored_backfills_without_duplicates_or_disorder() -> None:
    srv = start(bar_seconds=0.1)
    venue = CcxtBinanceExchange(BinanceSettings(mode="live", base_url=srv.url,
                                                timeout_ms=500))
    published: list[Bar] = []
    health: list[tuple[bool, str]] = []

    async def publish(bar: Bar) -> None:
        published.append(bar)

    marks: list[MarkInfo] = []

    async def on_mark(info: MarkInfo) -> None:
        marks.append(info)

    feed = LiveKlineFeed(venue, [SYM], "30m", publish, poll_s=0.05, stale_after_s=0.6,
                         on_health=lambda ok, why: health.append((ok, why)),
                         marks=venue, on_mark=on_mark)
    stop = asyncio.Event()
    try:
        await venue.connect()
        task = asyncio.create_task(feed.run(stop))
        await until(lambda: len(published) >= 4)
        assert feed.fresh
        # cut the feed: every klines request fails (connection dropped)
        srv.state.config.faults.paths = ("/fapi/v1/klines",)
        srv.state.config.faults.probabilities = {"drop": 1.0}
        await asyncio.sleep(0.1)  # a poll in flight may still land
        cut_at = published[-1].ts
        await until(lambda: not feed.fresh)
        await asyncio.sleep(0.6)  # ~6 more bars close on the sim clock meanwhile
        assert health[-1][0] is False
        assert published[-1].ts == cut_at  # nothing published while cut
        srv.state.config.faults.probabilities = {}  # restored
        await until(lambda: feed.fresh)
        assert health[-1][0] is True
        stop.set()
        await task
    finally:
        await venue.close()
        srv.stop()
    ts = [b.ts for b in published]
    assert len(ts) == len(set(ts))  # never twice
    assert all(b - a == TF_MS for a, b in itertools.pairwise(ts))  # in order, no hole
    assert len(marks) >= 4
    assert marks[-1].funding_rate == pytest.approx(0.0001)
    assert [m.ts for m in marks] == sorted(m.ts for m in marks)
    assert feed.stats.backfilled >= 8  # the ~15 bars missed during the cut came in one go
    sample = load_sample("XRP")
    first = int(sample.ts.searchsorted(ts[0]))
    assert [b.close for b in published] == pytest.approx(
        sample.close[first:first + len(ts)].tolist())


async def test_download_paginates_and_resumes(tmp_path: Path) -> None:
    srv = start(bar_seconds=0)
    srv.state.advance(2500)  # 3000 closed bars on the sim clock
    venue = CcxtBinanceExchange(BinanceSettings(mode="live", base_url=srv.url))
    out = tmp_path / "xrp.parquet"
    sample = load_sample("XRP")
    since = int(sample.ts[0])
    until = int(sample.ts[1200])
    try:
        await venue.connect()
        first = await download_klines(venue, SYM, "30m", since, out, until, page_size=500)
        assert (first.bars_new, first.resumed_from) == (1200, None)
        second = await download_klines(venue, SYM, "30m", since, out, page_size=500)
        assert second.resumed_from == int(sample.ts[1199])
        assert second.bars_total == 3001
        assert second.bars_new == 1801
        again = await download_klines(venue, SYM, "30m", since, out, page_size=500)
        assert again.bars_new == 0
        assert again.bars_total == 3001
    finally:
        await venue.close()
        srv.stop()
    series = load_file(out)
    assert (series.symbol, series.timeframe, len(series)) == (SYM, "30m", 3001)
    assert series.ts.tolist() == sample.ts[:3001].tolist()
    assert series.close.tolist() == pytest.approx(sample.close[:3001].tolist())


def test_data_download_cli_against_the_simulator(tmp_path: Path) -> None:
    srv = start(bar_seconds=0)
    out = tmp_path / "cli.parquet"
    try:
        res = CliRunner().invoke(data_app, [
            "download", "--symbol", SYM, "--timeframe", "30m", "--since", "2017-01-01",
            "--until", "2017-10-20", "--out", str(out), "--base-url", srv.url])
        assert res.exit_code == 0, res.output
        bad = CliRunner().invoke(data_app, ["download", "--symbol", "NOPEUSDT", "--timeframe",
                                            "30m", "--base-url", srv.url, "--out",
                                            str(tmp_path / "x.parquet")])
        assert bad.exit_code == 2  # bad input: the one error line, nothing written
        assert bad.stderr.strip().startswith("error: unknown symbol 'NOPEUSDT'")
        assert not (tmp_path / "x.parquet").exists()
    finally:
        srv.stop()
    series = load_file(out)
    assert len(series) > 100
    assert series.ts[-1] < 1_508_457_600_000
    from quantum_trader.domain.instruments import instrument_for
    from quantum_trader.marketdata.files import file_instrument

    stored = file_instrument(out)  # the venue's filters, kept with its bars
    assert stored is not None
    venue = instrument_for(SYM)  # what the simulator's exchangeInfo serves for XRPUSDT
    assert (stored.tick_size, stored.step_size, stored.min_qty, stored.min_notional) == \
        (venue.tick_size, venue.step_size, venue.min_qty, venue.min_notional)


def test_pairs_ranks_the_venues_symbols_by_24h_quote_volume() -> None:
    """`data pairs` through real ccxt against the simulator's /fapi/v1/ticker/24hr: ranked by
    quote volume as the venue computes it over its last 24 hours."""
    import json

    cfg = SimServerConfig(series=load_series(["sample:XRP", "sample:BTC", "sample:LTC"]),
                          bar_seconds=0, start_bar=2000)
    state = SimState(cfg)
    srv = SimServer(state).start()
    try:
        res = CliRunner().invoke(data_app, ["pairs", "--top", "2", "--base-url", srv.url,
                                            "--json"])
        assert res.exit_code == 0, res.output
        ranked = json.loads(res.stdout)
        expected = []
        for sym in ("XRPUSDT", "BTCUSDT", "LTCUSDT"):
            bars = state.closed_bars(sym)
            day = bars.ts >= bars.ts[-1] + TF_MS - 86_400_000
            expected.append((float((bars.volume[day] * bars.close[day]).sum()), sym))
        top2 = [s for _v, s in sorted(expected, reverse=True)[:2]]
        assert [r["symbol"] for r in ranked] == top2
        assert ranked[0]["quote_volume"] == pytest.approx(max(expected)[0], rel=1e-6)
        assert [r["rank"] for r in ranked] == [1, 2]
        table = CliRunner().invoke(data_app, ["pairs", "--top", "3", "--exclude", top2[0],
                                              "--base-url", srv.url], env={"COLUMNS": "120"})
        assert table.exit_code == 0, table.output
        assert top2[0] not in table.stdout.split("exchange.symbols:")[0]
        assert "exchange.symbols: [" in table.stdout
        bad = CliRunner().invoke(data_app, ["pairs", "--exclude", "NOPEUSDT", "--base-url",
                                            srv.url])
        assert bad.exit_code == 2
        assert bad.stderr.strip() == "error: --exclude NOPEUSDT: not a symbol on this venue"
    finally:
        srv.stop()
