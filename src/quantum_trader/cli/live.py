"""``run --live``: the dry run on a venue's live closed klines (``runtime/dry_run.py``), and the
note ``run`` and ``backtest`` give when the config names a venue they do not use."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from rich.markup import escape

from quantum_trader.analytics.tables import FitColumn, FittedTable
from quantum_trader.cli.common import (
    UserError,
    account_rows,
    check_writable_dir,
    console,
    err,
    fmt_ts,
    progress_bar,
    say_if_halted,
    settings,
    state_overrides,
)
from quantum_trader.config import Settings


def replay_note(cfg: Settings, what: str) -> None:
    """One line when the config names a venue that a replay does not use (it fills locally)."""
    x = cfg.exchange
    if x.kind == "simulated" and not x.base_url:
        return
    venue = f"exchange.kind {x.kind}" + (f" at {x.base_url}" if x.base_url else "")
    err.print(f"[yellow]note:[/] {escape(venue)}: {what} replays history and fills locally; "
              "nothing is sent to the venue (`run --live` dry-runs on its market data, `up` "
              "trades on it)", soft_wrap=True)


def run_live(config: Path | None, state_dir: Path | None, data: list[str] | None,
             speed: float | None, max_bars: int | None, fresh: bool,
             symbols: list[str] | None, duration: float | None, *,
             strategy: str | None = None, param: list[str] | None = None,
             yes: bool = False) -> None:
    """``run --live``: refuses bad input before anything is written, then trades until
    Ctrl-C / SIGTERM (graceful: the batch in hand is committed, exit 0 with the summary),
    ``--max-bars`` or ``--duration``."""
    from quantum_trader.cli.trading import (
        _one_run,
        _set_aside,
        choose_source,
        confirm_fresh,
        say_source,
        with_strategy,
    )
    from quantum_trader.runtime.dry_run import (
        connect_venue,
        recent_bars,
        run_live,
        venue_client,
        venue_name,
        venue_source,
    )
    from quantum_trader.runtime.paper import (
        DifferentRun,
        RunIdentity,
        check_identity,
        stored_identity,
    )
    from quantum_trader.store.sql import SqlTradeStore

    if data:
        raise UserError(f"--data {data[0]}: --data replays history, --live trades the venue's "
                        "bars (exchange.kind, exchange.base_url): use one or the other")
    if speed is not None:
        raise UserError(f"--speed {speed:g}: paces a replay; --live runs at the venue's pace")
    if duration is not None and not duration > 0:
        raise UserError(f"--duration {duration:g}: must be more than 0 seconds")
    choice = with_strategy(settings(config, state_overrides(state_dir)), strategy, param)
    cfg = choice.settings
    if symbols:
        chosen = tuple(dict.fromkeys(s.strip().upper() for s in symbols))
        bad = [s for s in chosen if not s.isalnum()]
        if bad:
            raise UserError(f"--symbol {bad[0]!r}: a venue symbol is letters and digits, "
                            "e.g. XRPUSDT")
    else:
        chosen = tuple(cfg.exchange.symbols)
    by_volume = not symbols and cfg.exchange.pairlist == "volume"
    if not chosen and not by_volume:
        raise UserError("exchange.symbols is empty: name the symbols to trade (or --symbol)")
    symbols_from = "--symbol" if symbols else "exchange.symbols"
    state = cfg.paths.state_dir
    check_writable_dir(state, "state directory" if state_dir is None else "--state-dir")
    db = cfg.sqlite_path()
    if fresh and db is None:
        raise UserError("--fresh resets only the embedded SQLite store; this config uses "
                        "store.url (drop that database yourself, or unset store.url)")
    confirm_fresh(db, fresh, yes)
    source, why = choose_source(choice)  # a bad strategy is refused before anything is written
    tf = cfg.data.timeframe
    identity = RunIdentity((venue_source(cfg),), tuple(sorted(chosen)), tf)
    url = cfg.store_url()

    async def go() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []

        def graceful(sig: signal.Signals) -> None:
            # The first stops after the batch in hand is committed; a second one is the
            # default (Ctrl-C twice: interrupted at once, exit 130).
            stop.set()
            loop.remove_signal_handler(sig)

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.add_signal_handler(sig, graceful, sig)
                handled.append(sig)
        nonlocal chosen, identity
        venue = None
        try:
            # Everything that can refuse the run does so before anything is written.
            venue = venue_client(cfg)  # refuses a simulator without a base_url
            await connect_venue(venue, cfg, () if by_volume else chosen, symbols_from)
            if by_volume:
                resumable = db is not None and db.exists() and not fresh
                chosen = await volume_pairs(venue, cfg, url if resumable else None)
                identity = RunIdentity((venue_source(cfg),), tuple(sorted(chosen)), tf)
            recent = await recent_bars(venue, chosen, tf)
            with _one_run(state):
                if fresh and db is not None and (moved := _set_aside(db)) is not None:
                    err.print(f"previous store moved to {moved}")
                store = SqlTradeStore(url, create=True)
                await store.open()
                try:
                    check_identity(await stored_identity(store), identity)
                    say_source(why)
                    err.print(f"dry run: closed {tf} klines of {', '.join(chosen)} from "
                              f"{escape(venue_name(cfg))} (exchange.kind {cfg.exchange.kind}); "
                              "fills are simulated locally, as in a backtest: a dry run never "
                              "sends an order and uses no API keys. Ctrl-C stops it.",
                              soft_wrap=True)
                    with progress_bar() as prog:
                        task = prog.add_task("dry run", total=None, rate="")
                        summary = await run_live(
                            cfg, venue, chosen, store, recent, source, identity=identity,
                            max_bars=max_bars, duration_s=duration, stop=stop,
                            on_status=lambda line: err.print(escape(line), soft_wrap=True),
                            progress=lambda n: prog.update(task, advance=n))
                        prog.update(task, total=summary.bars_processed + summary.bars_skipped)
                    counts = await store.counts()
                    state_events = await store.audit("trading_state")
                finally:
                    await store.close()
            return summary, counts, state_events
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            if venue is not None:
                await venue.close()

    try:
        summary, counts, state_events = asyncio.run(go())
    except DifferentRun as exc:
        raise UserError(f"{exc}: resuming would continue that account on other bars. Use "
                        "--fresh to start a new account (the old store is kept in backups/) "
                        "or --state-dir for a separate one") from None
    _print_summary(cfg, url, f"{', '.join(identity.symbols)} {tf}", summary, counts,
                   state_events)


async def volume_pairs(venue: Any, cfg: Settings, store_url: str | None) -> tuple[str, ...]:
    """``exchange.pairlist: volume``: the symbols an account trades, chosen by the venue's 24 h
    quote volume when it starts; a resumed account keeps the list it started with (its books
    and positions are in those symbols)."""
    from quantum_trader.marketdata.pairlist import rank_by_volume
    from quantum_trader.runtime.paper import stored_identity
    from quantum_trader.store.sql import SqlTradeStore

    if store_url is not None:
        store = SqlTradeStore(store_url)
        await store.open()
        try:
            stored = await stored_identity(store)
        finally:
            await store.close()
        if stored is not None and stored.symbols:
            err.print(f"pair list: {', '.join(stored.symbols)} (the account's, from its start; "
                      "--fresh ranks the venue's pairs again)", soft_wrap=True)
            return tuple(stored.symbols)
    x = cfg.exchange
    ranked = rank_by_volume(await venue.tickers_24h(), venue.instruments, x.pairlist_top,
                            "USDT", x.pairlist_min_quote_volume)
    if not ranked:
        raise UserError(f"exchange.pairlist volume: no USDT perpetual traded "
                        f"{x.pairlist_min_quote_volume:,.0f} USDT in 24 h "
                        "(exchange.pairlist_min_quote_volume)")
    err.print("pair list: " + ", ".join(f"{p.ticker.symbol} ({p.ticker.quote_volume:,.0f})"
                                        for p in ranked)
              + f" — the top {len(ranked)} by 24 h USDT volume", soft_wrap=True)
    return tuple(p.ticker.symbol for p in ranked)


def _ms(figures: dict[str, float]) -> str:
    if not figures:
        return "none"
    return (f"p50 {figures['p50']:.1f} ms, p95 {figures['p95']:.1f} ms, max "
            f"{figures['max']:.1f} ms ({int(figures['n'])} bars)")


def _print_summary(cfg: Settings, url: str, data: str, s: Any, counts: dict[str, int],
                   state_events: list[Any]) -> None:
    from quantum_trader.runtime.dry_run import venue_name

    table = FittedTable([FitColumn("what"), FitColumn("value", "right", wrap=True)],
                        title="Dry run — summary")
    table.add_row("store", url.split("///")[-1])
    table.add_row("market data", f"{data} from {venue_name(cfg)}")
    table.add_row("fills", "simulated locally (no order sent)")
    table.add_row("resumed from checkpoint", "yes" if s.resumed else "no")
    if not s.resumed:
        table.add_row("warm-up bars", f"{s.warmup_bars:,}")
    span = (f" ({fmt_ts(s.first_bar)} .. {fmt_ts(s.last_bar)})"
            if s.first_bar is not None and s.last_bar is not None else "")
    table.add_row("bars traded (this run)", f"{s.bars_processed:,}{span}")
    table.add_row("late bars (no entries)", f"{s.late_bars:,}")
    feed = f"{s.backfilled} backfilled, {s.stale_episodes} stale episodes, {s.feed_errors} errors"
    if s.last_error:
        feed += f" (last: {s.last_error})"
    table.add_row("feed", feed)
    table.add_row("bar arrival to decision", _ms(s.latency_ms))
    table.add_row("signals", f"{s.signals:,}")
    account_rows(table, s, state_events)
    table.add_row("stopped", s.stopped or "?")
    table.add_row("rows in store", ", ".join(f"{k}={v}" for k, v in counts.items()))
    console.print(table)
    say_if_halted(s.trading_state)
