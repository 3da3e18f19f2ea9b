"""``exchange-sim`` (the Binance-compatible simulator) and ``data download``."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from quantum_trader.cli.common import (
    ErrorBoundaryGroup,
    UserError,
    check_writable_file,
    console,
    fmt_ts,
)
from quantum_trader.cli.services import check_port_free

exchange_app = typer.Typer(cls=ErrorBoundaryGroup,
                           help="Run the Binance USDⓈ-M-compatible exchange simulator.")
data_app = typer.Typer(cls=ErrorBoundaryGroup, no_args_is_help=True,
                       help="Market data: download klines.")


@exchange_app.callback(invoke_without_command=True)
def exchange_sim(
    port: Annotated[int, typer.Option(min=1, max=65_535, help="TCP port")] = 8900,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    data: Annotated[list[str] | None, typer.Option(
        "--data", "-d", metavar="SPEC",
        help="sample:XRP|BTC|ETH|EOS|LTC or a CSV/parquet file; repeat")] = None,
    bar_seconds: Annotated[float, typer.Option(
        min=0.0,
        help="wall seconds per replayed bar (0: the clock moves only on POST /sim/advance)")]
        = 1.0,
    start_bar: Annotated[int, typer.Option(min=0, help="bars of history already closed at start")]
        = 500,
    api_key: Annotated[str, typer.Option(envvar="QTSIM_API_KEY")] = "sim-key",
    api_secret: Annotated[str, typer.Option(envvar="QTSIM_API_SECRET")] = "sim-secret",
    weight_limit: Annotated[int, typer.Option(min=1, help="request weight per minute")]
        = 2400,
    ban_seconds: Annotated[float, typer.Option(min=0.0, help="418 ban length")] = 120.0,
    balance: Annotated[float, typer.Option(min=0.0,
                                           help="initial USDT wallet")] = 10_000.0,
    fault_rate: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="share of /fapi requests given a random fault (timeout, 408, "
                               "5xx, 429, -1021, drop)")] = 0.0,
    wall_clock: Annotated[bool, typer.Option(
        help="replay aligned to the wall clock at the real bar length, serving the open "
             "kline as Binance does (--bar-seconds is ignored)")] = False,
) -> None:
    """Serve ``/fapi`` like Binance USDⓈ-M futures, matching on historical bars."""
    from quantum_trader.venue_sim import (
        FAULT_KINDS,
        FaultConfig,
        SimServer,
        SimServerConfig,
        SimState,
        load_series,
        server_exchange_settings,
    )

    if balance <= 0:
        raise UserError(f"--balance {balance:g}: must be more than 0 USDT")
    check_port_free(host, port, "--port")
    series = load_series(data or ["sample:XRP"])
    faults = FaultConfig({k: fault_rate / len(FAULT_KINDS) for k in FAULT_KINDS}
                         if fault_rate else {})
    state = SimState(SimServerConfig(
        series=series, bar_seconds=bar_seconds, start_bar=start_bar, wall_clock=wall_clock,
        api_key=api_key, api_secret=api_secret, weight_limit=weight_limit,
        ban_seconds=ban_seconds, exchange=server_exchange_settings(initial_balance=balance),
        faults=faults))
    server = SimServer(state, host, port).start()
    symbols = ", ".join(f"{s.symbol} {s.timeframe}" for s in series)
    pace = "on the wall clock" if wall_clock else f"{bar_seconds:g}s per bar"
    console.print(f"exchange simulator on [bold]{server.url}[/] ({symbols}); {pace}; "
                  f"API key {api_key!r}. Ctrl-C stops it.")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _parse_date(value: str, name: str) -> int:
    try:
        if value.isdigit():
            return int(value)
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"{name} {value!r}: use YYYY-MM-DD[THH:MM] (UTC) or epoch ms") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


@data_app.callback()
def data() -> None:
    """Market data: download klines; rank the venue's pairs by volume."""


@data_app.command("download")
def download(
    symbol: Annotated[str, typer.Option(help="exchange symbol, e.g. XRPUSDT")],
    timeframe: Annotated[str, typer.Option(help="1m, 5m, 15m, 30m, 1h, 4h, 1d, ...")] = "5m",
    since: Annotated[str, typer.Option(help="first bar, YYYY-MM-DD (UTC) or epoch ms")]
        = "2024-01-01",
    until: Annotated[str | None, typer.Option(help="stop before this time")] = None,
    out: Annotated[Path | None, typer.Option(
        help="parquet file (default data/<SYMBOL>-<tf>.parquet); an existing one is resumed")]
        = None,
    mode: Annotated[str, typer.Option(help="live | demo | testnet")] = "live",
    base_url: Annotated[str | None, typer.Option(
        help="another Binance-compatible endpoint, e.g. the simulator")] = None,
) -> None:
    """Download closed klines through ccxt, with pagination and resume."""
    from quantum_trader.domain.models import timeframe_ms
    from quantum_trader.exchange.ccxt_binance import BinanceSettings, CcxtBinanceExchange, Mode
    from quantum_trader.exchange.errors import ExchangeError
    from quantum_trader.marketdata.download import download_klines

    try:
        timeframe_ms(timeframe)
    except ValueError as exc:
        raise UserError(f"--timeframe: {exc}") from None
    if mode not in ("live", "demo", "testnet"):
        raise UserError(f"--mode {mode!r}: use live, demo or testnet")
    since_ms = _parse_date(since, "--since")
    until_ms = _parse_date(until, "--until") if until else None
    if until_ms is not None and until_ms <= since_ms:
        raise UserError(f"--until {until} is not after --since {since}: nothing to download")
    target = check_writable_file(out or Path("data") / f"{symbol}-{timeframe}.parquet",
                                 "--out", (".parquet",))
    if target.exists():
        _check_resumable(target, symbol, timeframe)

    async def run() -> None:
        venue = CcxtBinanceExchange(BinanceSettings(mode=cast(Mode, mode), base_url=base_url))
        try:
            await venue.connect()
            if symbol not in venue.instruments:
                raise ExchangeError(f"unknown symbol {symbol!r} on this venue")

            def progress(n: int, last: int) -> None:
                console.print(f"  {n} bars, up to {fmt_ts(last)}", end="\r")

            res = await download_klines(venue, symbol, timeframe, since_ms, target, until_ms,
                                        progress=progress,
                                        instrument=venue.instruments[symbol])
        finally:
            await venue.close()
        resumed = "" if res.resumed_from is None else " (resumed)"
        console.print(f"{res.path}: {res.bars_new} new bars{resumed}, {res.bars_total} in "
                      "the file")

    asyncio.run(run())


@data_app.command("pairs")
def pairs(
    top: Annotated[int, typer.Option(min=1, help="How many symbols")] = 10,
    quote: Annotated[str, typer.Option(help="Quote asset of the perpetuals")] = "USDT",
    min_volume: Annotated[float, typer.Option(
        min=0, help="Least 24 h quote volume (e.g. 5e7 for 50M USDT)")] = 0.0,
    exclude: Annotated[list[str] | None, typer.Option(
        help="A symbol to leave out; repeat for more")] = None,
    mode: Annotated[str, typer.Option(help="live | demo | testnet")] = "live",
    base_url: Annotated[str | None, typer.Option(
        help="another Binance-compatible endpoint, e.g. the simulator")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
        = False,
) -> None:
    """The venue's most traded perpetuals now (24 h quote volume): a volume-ranked pair list
    for exchange.symbols / data.symbols."""
    import json

    from quantum_trader.analytics.tables import FitColumn, FittedTable
    from quantum_trader.cli.common import stdout_json
    from quantum_trader.exchange.ccxt_binance import BinanceSettings, CcxtBinanceExchange, Mode
    from quantum_trader.marketdata.pairlist import rank_by_volume

    if mode not in ("live", "demo", "testnet"):
        raise UserError(f"--mode {mode!r}: use live, demo or testnet")
    quote = quote.strip().upper()
    if not quote.isalnum():
        raise UserError(f"--quote {quote!r}: an asset name, like USDT")
    left_out = [x.strip().upper() for x in exclude or []]

    async def run() -> list[Any]:
        venue = CcxtBinanceExchange(BinanceSettings(mode=cast(Mode, mode), base_url=base_url))
        try:
            await venue.connect()
            unknown = [x for x in left_out if x not in venue.instruments]
            if unknown:
                raise UserError(f"--exclude {', '.join(unknown)}: not a symbol on this venue")
            return rank_by_volume(await venue.tickers_24h(), venue.instruments, top, quote,
                                  min_volume, left_out)
        finally:
            await venue.close()

    ranked = asyncio.run(run())
    if as_json:
        stdout_json(json.dumps([{"rank": p.rank, "symbol": p.ticker.symbol,
                                 "quote_volume": p.ticker.quote_volume,
                                 "last_price": p.ticker.last_price,
                                 "change_pct": p.ticker.change_pct,
                                 "trades": p.ticker.trades} for p in ranked], indent=2))
        return
    table = FittedTable([FitColumn("#", "right"), FitColumn("symbol"),
                         FitColumn(f"24h volume ({quote})", "right"),
                         FitColumn("last", "right"), FitColumn("24h change", "right"),
                         FitColumn("trades", "right")],
                        title=f"Top {len(ranked)} by 24 h volume")
    for p in ranked:
        t = p.ticker
        table.add_row(str(p.rank), t.symbol, f"{t.quote_volume:,.0f}", f"{t.last_price:.6g}",
                      f"{t.change_pct:+.2f}%", f"{t.trades:,}")
    console.print(table)
    if ranked:
        console.print("exchange.symbols: [" + ", ".join(p.ticker.symbol for p in ranked) + "]")
    else:
        console.print(f"no {quote} perpetual traded {min_volume:,.0f} {quote} in 24 h")


def _check_resumable(target: Path, symbol: str, timeframe: str) -> None:
    """An existing ``--out`` is resumed: refuse, before any download, one that is not klines
    we could append to."""
    from quantum_trader.marketdata.files import load_file

    try:
        load_file(target, symbol, timeframe)
    except Exception as exc:  # any reason it cannot be read is a reason not to append to it
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"--out {target}: exists and cannot be resumed ({reason}); move it "
                        "away or choose another --out") from None


__all__ = ["data_app", "exchange_app"]
