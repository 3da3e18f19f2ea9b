"""Dry run on live market data: a venue's closed klines into the paper node, fills simulated
locally. One process, the in-memory bus, the SQL store; no order ever leaves the process.

The venue (Binance through ccxt, or our simulator at ``exchange.base_url``) only supplies
bars: ``LiveKlineFeed`` polls its closed klines (gaps backfilled in order, never a bar twice,
stale detection) and the same ``TradingNode`` the paper run uses trades them against the same
``SimulatedExchange`` a backtest uses, journaling into the same store, with the same
checkpoint (a restart resumes and never trades a bar twice).

* **Warm-up.** Before the first traded bar the signal source sees the venue's recent history
  (``WARMUP_BARS`` per symbol): its indicators start where a long-running node's would be.
  Those bars are recorded too (role ``warmup``), so ``parity`` warms its replay up on them.
* **One account.** Bars of every symbol are merged in time order (close time, then symbol, as
  ``ReplayFeed`` does) before the node sees them: a time step is released once every symbol
  has its bar of that time, so the node sees exactly what a backtest of the same bars sees.
* **Late bars.** A bar that arrived while the feed was stale, or after the venue already had
  a newer one (a gap being backfilled, a restart catching up), or that waited longer than the
  stale limit for the other symbols' bars of its time, is a bar whose moment has passed:
  the node still books it (the simulated venue matches the orders resting there, stops
  included; the exit brain, the indicators and the marks follow it) but refuses entries on
  it (``STALE_MARKET_DATA``): a signal is never traded late. Why a bar was late
  is recorded with it, and the replay refuses the same entries (``FeedGate``).
* **Latency.** Each bar records when it reached the process and when the node had acted on
  it (wall clock): ``parity`` reports the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import Message
from quantum_trader.config import Settings
from quantum_trader.domain.models import Bar, Signal, timeframe_ms
from quantum_trader.domain.records import AuditEvent, SeenBar
from quantum_trader.domain.risk.rules import Rejection, RejectReason, RiskRequest, RiskRule
from quantum_trader.domain.strategy import SignalSource
from quantum_trader.marketdata.replay import ReplayFeed
from quantum_trader.marketdata.series import BarSeries
from quantum_trader.runtime.clock import wall_ms
from quantum_trader.runtime.node import ListJournal, TradingNode
from quantum_trader.runtime.paper import (
    BARS_TOPIC,
    GROUP,
    WARMUP_BARS,
    PaperSummary,
    RunIdentity,
    bar_from_message,
    bar_message,
    check_identity,
    node_checkpoint,
    restore_node,
    settings_record,
    stored_identity,
)
from quantum_trader.runtime.wiring import build_node
from quantum_trader.store.protocol import TradeStore

if TYPE_CHECKING:
    from quantum_trader.domain.risk.rules import RiskContext
    from quantum_trader.exchange.ccxt_binance import CcxtBinanceExchange
    from quantum_trader.marketdata.live import BarSource

#: How long the venue may take to answer at start (markets, clock) before the run is refused.
START_TIMEOUT_S = 8.0

VENUE_NAMES = {"binance-testnet": "Binance's futures testnet",
               "binance-demo": "Binance's demo trading",
               "binance-live": "Binance USDⓈ-M (live market data)"}


class DryRunRefused(ValueError):
    """A dry run that cannot start: the message names the input and what to do."""


# --- late bars: entries refused, in the run and in its replay ----------------------------------

class LateBarRule(RiskRule):
    """No entry on a bar that arrived late (``FeedGate``); exits are never stopped by it."""

    reason = RejectReason.STALE_MARKET_DATA

    def __init__(self, limits: Any, gate: FeedGate) -> None:
        super().__init__(limits)
        self.gate = gate

    def check(self, req: RiskRequest, ctx: RiskContext) -> Rejection | None:
        if self.gate.current and not req.is_exit:
            return Rejection(self.reason, f"no entry on a late bar: {self.gate.current}")
        return None


class GatedSource:
    """The node's signal source, telling the gate which bar its signal comes from."""

    def __init__(self, inner: SignalSource, gate: FeedGate) -> None:
        self.inner = inner
        self.gate = gate
        self.name = inner.name

    def on_bar(self, bar: Bar) -> Signal | None:
        self.gate.current = self.gate.late.get((bar.symbol, bar.ts), "")
        return self.inner.on_bar(bar)


class FeedGate:
    """Why entries are refused on a bar (``late``: (symbol, open time) -> reason); the run
    fills it as bars arrive, ``parity`` from the bars on record, so both refuse the same."""

    def __init__(self, late: Mapping[tuple[str, int], str] | None = None) -> None:
        self.late: dict[tuple[str, int], str] = dict(late or {})
        self.current = ""

    def install(self, node: TradingNode) -> None:
        node.risk.rules.insert(0, LateBarRule(node.risk.limits, self))
        node.source = GatedSource(node.source, self)


def late_reason(stale: bool, backfilling: bool, stale_why: str) -> str:
    """Why entries are refused on a bar arriving now ("" when they are not)."""
    if stale:
        return f"market data was stale when it arrived ({stale_why})"
    if backfilling:
        return "backfilled: the venue already had a newer closed bar when it arrived"
    return ""


# --- bars ----------------------------------------------------------------------------------------

def series_of(bars: Sequence[Bar] | Sequence[SeenBar]) -> list[BarSeries]:
    """One ``BarSeries`` per (symbol, timeframe), in time order (duplicates dropped)."""
    by_key: dict[tuple[str, str], dict[int, tuple[float, ...]]] = {}
    for b in bars:
        by_key.setdefault((b.symbol, b.timeframe), {})[int(b.ts)] = (
            b.open, b.high, b.low, b.close, b.volume)
    out = []
    for (sym, tf), rows in sorted(by_key.items()):
        ts = np.array(sorted(rows), dtype=np.int64)
        cols = np.array([rows[int(t)] for t in ts], dtype=np.float64).reshape(len(ts), 5)
        out.append(BarSeries(sym, tf, ts, *(np.ascontiguousarray(cols[:, i])
                                             for i in range(5))))
    return out


def merged(bars: Sequence[Bar] | Sequence[SeenBar]) -> list[Bar]:
    """``bars`` in the order a backtest of them sees them (``ReplayFeed``)."""
    return list(ReplayFeed(series_of(bars)))


class TimeMerge:
    """Releases bars in time order across symbols: a bar once every symbol has reached its
    time (the node sees a time step whole, as a backtest does)."""

    def __init__(self, symbols: Sequence[str], last_ts: Mapping[str, int]) -> None:
        self.latest = {s: last_ts.get(s, -1) for s in symbols}
        self.pending: list[tuple[Bar, int, str]] = []

    def add(self, bar: Bar, received_ms: int, late: str) -> list[tuple[Bar, int, str]]:
        self.pending.append((bar, received_ms, late))
        self.latest[bar.symbol] = max(self.latest.get(bar.symbol, -1), bar.ts)
        upto = min(self.latest.values())
        ready = [p for p in self.pending if p[0].ts <= upto]
        if not ready:
            return []
        self.pending = [p for p in self.pending if p[0].ts > upto]
        return sorted(ready, key=lambda p: (p[0].close_ts, p[0].symbol))

    def waiting_for(self) -> list[str]:
        """The symbols the held bars wait for."""
        if not self.pending:
            return []
        top = max(self.latest.values())
        return sorted(s for s, ts in self.latest.items() if ts < top)


# --- the venue ---------------------------------------------------------------------------------

def venue_name(settings: Settings) -> str:
    x = settings.exchange
    if x.kind == "simulated":
        return f"the simulator at {x.base_url}"
    name = VENUE_NAMES[x.kind]
    return f"{name} at {x.base_url}" if x.base_url else name


def venue_source(settings: Settings) -> str:
    """The run identity's source of a dry run: which venue's bars it trades."""
    x = settings.exchange
    return f"live:{x.kind}" + (f"@{x.base_url.rstrip('/')}" if x.base_url else "")


def venue_client(settings: Settings) -> CcxtBinanceExchange:
    """A keyless client of the configured venue (public market data is all a dry run
    reads), limited to market-data's share of the request weight."""
    from quantum_trader.exchange.ccxt_binance import MODES, BinanceSettings, CcxtBinanceExchange

    x = settings.exchange
    if x.kind == "simulated" and not x.base_url:
        raise DryRunRefused(
            "run --live with exchange.kind simulated needs exchange.base_url: start our "
            "simulator (`quantum-trader exchange-sim`) and set exchange.base_url: "
            "http://127.0.0.1:8900, or set exchange.kind binance-testnet, binance-demo or "
            "binance-live for that venue's market data")
    mode = "live" if x.kind == "simulated" else MODES[x.kind]
    return CcxtBinanceExchange(BinanceSettings(
        mode=mode, base_url=x.base_url or None, recv_window_ms=x.recv_window_ms,
        headroom=x.weight_shares.get("market-data", 0.3)))


#: Where each venue kind's REST API is (for messages: the client knows its own URLs).
VENUE_HOSTS = {"binance-testnet": "https://testnet.binancefuture.com",
               "binance-demo": "https://demo-fapi.binance.com",
               "binance-live": "https://fapi.binance.com"}


def _where(settings: Settings) -> str:
    x = settings.exchange
    if x.base_url:
        return f"exchange.base_url {x.base_url}"
    return f"exchange.kind {x.kind} ({VENUE_HOSTS.get(x.kind, '?')})"


async def connect_venue(venue: CcxtBinanceExchange, settings: Settings, symbols: Sequence[str],
                        symbols_from: str, timeout_s: float = START_TIMEOUT_S) -> None:
    """Markets and the clock, within ``timeout_s``; every symbol must be listed."""
    from quantum_trader.exchange.errors import ExchangeError

    try:
        await asyncio.wait_for(venue.connect(), timeout_s)
    except TimeoutError:
        raise DryRunRefused(f"{_where(settings)}: the venue did not answer within "
                            f"{timeout_s:g}s: is it running and reachable?") from None
    except ExchangeError as exc:
        raise DryRunRefused(f"{_where(settings)}: the venue refused: {exc}") from None
    listed = venue.instruments
    for sym in symbols:
        if sym not in listed:
            raise DryRunRefused(f"{symbols_from} {sym}: not listed on {venue_name(settings)} "
                                f"({len(listed)} USDⓈ-M perpetuals are)")


async def recent_bars(venue: BarSource, symbols: Sequence[str], timeframe: str,
                      n: int = WARMUP_BARS) -> dict[str, list[Bar]]:
    """The venue's latest ``n`` closed bars of each symbol (a warm-up, and proof that the
    venue serves them)."""
    from quantum_trader.exchange.errors import ExchangeError
    from quantum_trader.exchange.reliable import call_with_retries

    out: dict[str, list[Bar]] = {}
    for sym in symbols:
        try:
            bars = await call_with_retries(
                lambda s=sym: venue.bars(s, timeframe, None, min(n + 1, 1500)),  # type: ignore[misc]
                attempts=4)
        except ExchangeError as exc:
            raise DryRunRefused(f"data.timeframe {timeframe}: the venue refused {sym}'s "
                                f"klines: {exc}") from None
        if not bars:
            raise DryRunRefused(f"{sym}: the venue has no closed {timeframe} klines "
                                "(data.timeframe)")
        out[sym] = sorted(bars, key=lambda b: b.ts)[-n:]
    return out


def bar_clock(recent: Mapping[str, Sequence[Bar]], now_ms: int) -> str:
    """``wall`` when the venue's bars close on the wall clock (Binance, the simulator with
    --wall-clock), ``replay`` when it replays history on a clock of its own."""
    last = max(bars[-1].close_ts for bars in recent.values() if bars)
    tf = timeframe_ms(next(iter(recent.values()))[-1].timeframe)
    return "wall" if now_ms - last <= 2 * tf + 60_000 else "replay"


# --- the run -----------------------------------------------------------------------------------

@dataclass
class LiveSummary(PaperSummary):
    warmup_bars: int = 0
    late_bars: int = 0
    backfilled: int = 0
    stale_episodes: int = 0
    feed_errors: int = 0
    last_error: str = ""
    stopped: str = ""
    first_bar: int | None = None
    last_bar: int | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)  # received -> decided
    held: list[str] = field(default_factory=list)  # symbols bars were still waiting for


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {"n": float(len(a)), "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)), "max": float(a.max())}


async def run_live(settings: Settings, venue: BarSource, symbols: Sequence[str],
                   store: TradeStore, recent: Mapping[str, Sequence[Bar]],
                   source: SignalSource | None = None, *,
                   identity: RunIdentity, max_bars: int | None = None,
                   duration_s: float | None = None, stop: asyncio.Event | None = None,
                   on_status: Callable[[str], None] | None = None,
                   progress: Callable[[int], None] | None = None, batch: int = 200,
                   clock: Callable[[], float] = time.monotonic) -> LiveSummary:
    """Trade the venue's closed klines until ``stop`` is set, ``max_bars`` bars were traded
    or ``duration_s`` passed; every bar is committed with its effects before the next batch.

    ``recent`` is the venue's latest closed bars per symbol (``recent_bars``): the warm-up
    of a new run. A store started on other data is refused (``DifferentRun``)."""
    from quantum_trader.marketdata.live import LiveKlineFeed
    from quantum_trader.services.messages import check_bar_time

    say = on_status or (lambda _line: None)
    tf = settings.data.timeframe
    stop = stop or asyncio.Event()
    journal = ListJournal()
    node = build_node(settings, source, journal)
    gate = FeedGate()
    gate.install(node)
    check_identity(await stored_identity(store, node.name), identity)
    seen = await store.bars()
    cp = await restore_node(node, store, series_of(seen))
    gate.current = ""
    clock_kind = bar_clock(recent, wall_ms())
    warmed = 0
    if cp is None:
        now = wall_ms()
        for bar in merged([b for bars in recent.values() for b in bars]):
            node.source.on_bar(bar)  # indicators only: nothing is traded on history
            journal.record(SeenBar.of(bar, "warmup", now, now))
            warmed += 1
        gate.current = ""
        last_ts = {sym: bars[-1].ts for sym, bars in recent.items()}
        node.audit("run_started", wall_ms(), mode="dry-run", sources=list(identity.sources),
                   symbols=list(identity.symbols), timeframe=identity.timeframe,
                   settings=settings_record(settings), source=node.source.name,
                   venue=venue_name(settings), bar_clock=clock_kind, warmup_bars=warmed)
        say(f"warmed up on {warmed} bars of history ({', '.join(sorted(recent))})")
    else:
        last_ts = dict(cp.last_bar_ts)
        node.audit("run_resumed", wall_ms(), mode="dry-run", from_checkpoint=cp.ts,
                   settings=settings_record(settings), source=node.source.name,
                   bar_clock=clock_kind)
        say(f"resumed from the checkpoint: last bars {_last(last_ts)}; bars closed since are "
            "backfilled first (no entries on them)")
    await store.write([*journal.drain(), node_checkpoint(node, last_ts)])

    x = settings.exchange
    # A bar is due every timeframe on a wall-clock venue: stale once it is stale_after_s
    # overdue. A replaying venue's pace is its own: stale_after_s without a bar.
    stale_after = x.stale_after_s + (timeframe_ms(tf) / 1000 if clock_kind == "wall" else 0)
    bus = InMemoryBus(maxlen=batch * 10)
    await bus.ensure_group(BARS_TOPIC, GROUP)
    merge = TimeMerge(symbols, last_ts)
    health = {"why": ""}

    def on_health(fresh: bool, why: str) -> None:
        health["why"] = "" if fresh else why
        journal.record(AuditEvent("market_data", wall_ms(), {"fresh": fresh, "reason": why}))
        if fresh:
            say("market data is back: the bars missed are backfilled in order (no entries "
                "on them); trading resumes with the next bar")
        else:
            say(f"market data STALE: {why}; no new entries until the feed is back")

    feed: LiveKlineFeed

    refused: set[tuple[str, int]] = set()

    async def publish(bar: Bar) -> bool:
        try:
            bar.validate()
            check_bar_time(bar, wall_ms())
        except ValueError as exc:
            if (bar.symbol, bar.ts) not in refused:  # the feed asks again: said once
                refused.add((bar.symbol, bar.ts))
                say(f"bar refused: {exc}")
            return False
        now = wall_ms()
        late = late_reason(feed.stale, feed.backfilling, health["why"])
        for b, received, why in merge.add(bar, now, late):
            if not why and now - received > stale_after * 1000:
                why = (f"held {(now - received) / 1000:.1f}s for the other symbols' bars of "
                       "its time")
            msg = bar_message(b)
            msg = Message(msg.type, {**msg.payload, "received_ms": received, "late": why},
                          msg.ts, msg.trace_id, id=msg.id)
            await bus.publish(BARS_TOPIC, msg)
        return True

    feed = LiveKlineFeed(venue, list(symbols), tf, publish, poll_s=x.poll_s,
                         stale_after_s=stale_after, on_health=on_health, start_after=last_ts,
                         page_size=1000)
    feed_stop = asyncio.Event()
    feed_task = asyncio.create_task(feed.run(feed_stop))
    deadline = None if duration_s is None else clock() + duration_s
    state = {"processed": 0, "skipped": 0, "late": 0}
    latencies: list[float] = []
    first_bar: int | None = None
    stopped = ""
    holding = False
    try:
        while True:
            if stop.is_set():
                stopped = "stopped (signal)"
                break
            if deadline is not None and clock() >= deadline:
                stopped = f"--duration {duration_s:g}s reached"
                break
            if max_bars is not None and state["processed"] >= max_bars:
                stopped = f"--max-bars {max_bars} reached"
                break
            if feed_task.done():
                feed_task.result()  # the feed never ends on its own: raise what killed it
                stopped = "the feed ended"
                break
            room = batch if max_bars is None else min(batch, max_bars - state["processed"])
            deliveries = await bus.read(BARS_TOPIC, GROUP, "node-1", count=room, block_ms=100)
            if not deliveries:
                if journal.events:  # market-data health changes
                    await store.write(journal.drain())
                held = merge.pending
                if held and not holding and wall_ms() - held[0][1] > stale_after * 1000:
                    holding = True
                    say(f"holding {len(held)} bars until {', '.join(merge.waiting_for())} "
                        "catches up: one account sees every symbol's bar of a time together")
                holding = holding and bool(held)
                continue
            done: list[str] = []
            for d in deliveries:
                if d.message is None:
                    await bus.dead_letter(d, GROUP, d.error)
                    continue
                try:
                    bar = bar_from_message(d.message)
                except (KeyError, TypeError, ValueError) as exc:
                    await bus.dead_letter(d, GROUP, f"bad bar: {exc}")
                    continue
                p = d.message.payload
                if bar.ts <= last_ts.get(bar.symbol, -1):
                    state["skipped"] += 1
                else:
                    late = str(p.get("late", ""))
                    key = (bar.symbol, bar.ts)
                    if late:
                        gate.late[key] = late
                        state["late"] += 1
                    node.on_bar(bar)
                    gate.late.pop(key, None)
                    gate.current = ""
                    decided = wall_ms()
                    received = int(p.get("received_ms", decided))
                    latencies.append(float(decided - received))
                    journal.record(SeenBar.of(bar, "trade", received, decided, late))
                    journal.record(node.portfolio.snapshot(bar.close_ts))
                    last_ts[bar.symbol] = bar.ts
                    first_bar = bar.ts if first_bar is None else first_bar
                    state["processed"] += 1
                done.append(d.entry_id)
            events = journal.drain()
            events.append(node_checkpoint(node, last_ts))
            await store.write(events)  # commit first ...
            await bus.ack(BARS_TOPIC, GROUP, done)  # ... then acknowledge
            if progress is not None:
                progress(len(done))
    finally:
        feed_stop.set()
        feed_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await feed_task
        if journal.events:
            with contextlib.suppress(Exception):
                await store.write(journal.drain())
        await bus.close()
    pf = node.portfolio
    st = feed.stats
    return LiveSummary(
        cp is not None, state["processed"], state["skipped"], pf.equity, pf.wallet,
        pf.max_drawdown, len(node.trades), pf.open_positions, node.risk.trading_state.name,
        node.signals_seen, dict(node.rejections), warmup_bars=warmed, late_bars=state["late"],
        backfilled=st.backfilled, stale_episodes=st.stale_episodes, feed_errors=st.errors,
        last_error=st.last_error, stopped=stopped, first_bar=first_bar,
        last_bar=max(last_ts.values()) if last_ts else None,
        latency_ms=percentiles(latencies), held=merge.waiting_for())


def _last(last_ts: Mapping[str, int]) -> str:
    from quantum_trader.analytics.tables import fmt_ts

    return ", ".join(f"{s} {fmt_ts(ts)}" for s, ts in sorted(last_ts.items()))


__all__ = ["START_TIMEOUT_S", "DryRunRefused", "FeedGate", "LateBarRule", "LiveSummary",
           "TimeMerge", "bar_clock", "connect_venue", "merged", "percentiles", "recent_bars",
           "run_live", "series_of", "venue_client", "venue_name", "venue_source"]
