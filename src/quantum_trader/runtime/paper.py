"""Embedded paper trading: real bars through the in-memory bus into one trading node, every
event committed to the SQL store before the bar is acknowledged.

Crash-only: the store holds a checkpoint (written in the same transaction as the bar's
events), so a restart resumes open positions and working orders instead of opening them again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import Message
from quantum_trader.config import Settings
from quantum_trader.domain.enums import IntentPurpose, OrderStatus, TradingState
from quantum_trader.domain.models import Bar
from quantum_trader.domain.position import Position
from quantum_trader.domain.records import Checkpoint, SeenBar
from quantum_trader.domain.strategy import SignalSource
from quantum_trader.marketdata.replay import ReplayFeed
from quantum_trader.marketdata.series import BarSeries
from quantum_trader.runtime.clock import wall_ms
from quantum_trader.runtime.node import STOP_OUTS, ListJournal, TradingNode
from quantum_trader.runtime.wiring import build_node
from quantum_trader.store.protocol import TradeStore

BARS_TOPIC = "market.bars"
GROUP = "embedded-node"
WARMUP_BARS = 500


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """What a paper store was started on: resuming it on other data would continue that
    account (its wallet, positions and trading state) on bars it never saw."""

    sources: tuple[str, ...]
    symbols: tuple[str, ...]
    timeframe: str

    @classmethod
    def of(cls, sources: Sequence[str], series: Sequence[BarSeries]) -> RunIdentity:
        return cls(tuple(sources), tuple(sorted(s.symbol for s in series)),
                   ",".join(sorted({s.timeframe for s in series})))

    def describe(self) -> str:
        return f"{', '.join(self.sources)} ({', '.join(self.symbols)} {self.timeframe})"


class DifferentRun(ValueError):
    """The store belongs to a run on other data."""

    def __init__(self, stored: RunIdentity, asked: RunIdentity) -> None:
        super().__init__(f"the store was started on {stored.describe()}, not "
                         f"{asked.describe()}")
        self.stored, self.asked = stored, asked


async def stored_identity(store: TradeStore, node: str = "embedded") -> RunIdentity | None:
    """The data the store's run was started on; ``None`` for a store no run has used.

    Stores from before the identity was recorded give their checkpoint's symbols."""
    for event in await store.audit("run_started"):
        d = event.detail
        if "symbols" in d:
            return RunIdentity(tuple(d.get("sources", ())), tuple(d["symbols"]),
                               str(d.get("timeframe", "")))
    cp = await store.checkpoint(node)
    if cp is None:
        return None
    return RunIdentity((), tuple(sorted(cp.last_bar_ts)), "")


def check_identity(stored: RunIdentity | None, asked: RunIdentity) -> None:
    """Refuse to resume a store on other data. What an old store did not record is not
    compared."""
    if stored is None:
        return
    if (stored.symbols != asked.symbols
            or (stored.timeframe and stored.timeframe != asked.timeframe)
            or (stored.sources and stored.sources != asked.sources)):
        raise DifferentRun(stored, asked)


@dataclass
class PaperSummary:
    resumed: bool
    bars_processed: int
    bars_skipped: int
    equity: float
    wallet: float
    max_drawdown: float
    trades_closed: int
    open_positions: list[Position]
    trading_state: str
    signals: int
    rejections: dict[str, int] = field(default_factory=dict)


#: The settings that decide how a node trades, as a run records them (``run_started``):
#: ``parity`` replays with these, whatever the config says by then.
TRADING_SETTINGS = ("initial_balance", "leverage", "data", "risk", "exits", "exchange",
                    "strategy", "ai")


def settings_record(settings: Settings) -> dict[str, Any]:
    return settings.model_dump(mode="json", include=set(TRADING_SETTINGS))


def bar_message(bar: Bar) -> Message:
    return Message("bar", {"symbol": bar.symbol, "timeframe": bar.timeframe, "ts": bar.ts,
                           "open": bar.open, "high": bar.high, "low": bar.low,
                           "close": bar.close, "volume": bar.volume},
                   bar.close_ts, f"bar-{bar.symbol}-{bar.ts}", id=f"bar-{bar.symbol}-{bar.ts}")


def bar_from_message(msg: Message) -> Bar:
    p = msg.payload
    bar = Bar(str(p["symbol"]), str(p["timeframe"]), int(p["ts"]), float(p["open"]),
              float(p["high"]), float(p["low"]), float(p["close"]), float(p["volume"]))
    bar.validate()
    return bar


async def restore_node(node: TradingNode, store: TradeStore, series: Sequence[BarSeries]
                       ) -> Checkpoint | None:
    """Bring a fresh node back to where the store says it stopped."""
    cp = await store.checkpoint(node.name)
    if cp is None:
        return None
    pf = node.portfolio
    pf.wallet, pf.peak_equity, pf.max_drawdown = cp.wallet, cp.peak_equity, cp.max_drawdown
    pf.day_start_ts, pf.day_start_equity = cp.day_start_ts, cp.day_start_equity
    pf.fees_paid, pf.funding_paid = cp.fees_paid, cp.funding_paid
    node.risk.ctx.trading_state = TradingState(cp.trading_state)
    snapshots = await store.positions()
    positions = [snap.to_position() for snap in snapshots]
    pf.replace_positions(positions)
    for pos in positions:
        pf.mark(pos.symbol, pos.last_price, cp.ts)
    node.exchange.restore(cp.wallet, positions, cp.extra.get("last_close", {}),
                          cp.extra.get("venue_ids"))
    node.restore_open_trades(cp.extra.get("open_trades", {}))
    # Working orders live on the exchange; the simulated one lost them with the process.
    open_orders = await store.open_orders()
    node.engine.adopt(open_orders)
    # An entry still working carries its stop and target in the intent risk approved: the
    # fill after the restart must protect the position as it would have without one.
    for order in open_orders:
        if order.purpose is IntentPurpose.ENTRY and node.entry_for(order.client_order_id) is None:
            for decision in await store.decisions(trace_id=order.trace_id):
                if decision.intent is not None and decision.intent.id == order.intent_id:
                    node.remember_entry(decision.intent)
    for order in open_orders:
        if not order.status.is_open or order.remaining <= 0:
            continue
        if order.status is OrderStatus.NEW and order.expired(cp.ts):
            node.engine.refuse(order, cp.ts, "expired before it was sent", OrderStatus.EXPIRED)
            continue
        if order.status is OrderStatus.NEW and node.engine.hold_reason(order) is not None:
            node.hold(order)  # it was waiting for the opposite exit: it still is
            continue
        update = node.exchange.submit(node.engine.request_for(order), cp.ts)
        if update.status is OrderStatus.REJECTED:
            node.engine.refuse(order, cp.ts, f"could not be restored: {update.reason}",
                               OrderStatus.CANCELED)
            node.apply(update)
        elif order.status is OrderStatus.NEW:
            node.engine.sent(order, cp.ts, cp.ts)
            node.apply(update)
    for snap in snapshots:
        node.exits.restore_from(snap, open_orders,
            len(await store.orders(trace_id=snap.trace_id)))
    node.risk.sync(pf)
    # The stop-out cooldown runs on: the last stop-out of each symbol is in its closed trades.
    for trade in await store.trades(limit=1_000):
        if trade.exit_reason in STOP_OUTS:
            node.risk.record_stop_out(trade.symbol, trade.closed_ts)
    # Signal sources are stateful: warm them up on the bars before the checkpoint.
    for s in series:
        last = cp.last_bar_ts.get(s.symbol)
        if last is None:
            continue
        idx = int((s.ts <= last).sum())
        for bar in s.slice(max(0, idx - WARMUP_BARS), idx):
            node.source.on_bar(bar)
    return cp


async def run_paper(settings: Settings, series: Sequence[BarSeries], store: TradeStore,
                    source: SignalSource | None = None,
                    progress: Callable[[int], None] | None = None,
                    max_bars: int | None = None, batch: int = 200,
                    bars_per_second: float | None = None,
                    identity: RunIdentity | None = None) -> PaperSummary:
    """Replay ``series`` through the node, resuming from the store's checkpoint.

    With ``identity`` a store started on other data is refused (``DifferentRun``) before
    anything is written, and a new store records it."""
    journal = ListJournal()
    node = build_node(settings, source, journal)
    if identity is not None:
        check_identity(await stored_identity(store, node.name), identity)
    cp = await restore_node(node, store, series)
    last_ts: dict[str, int] = dict(cp.last_bar_ts) if cp else {}
    feed = ReplayFeed(list(series), start_after=last_ts or None)
    total = len(feed) if max_bars is None else min(len(feed), max_bars)
    if cp is None:
        started = {} if identity is None else {
            "sources": list(identity.sources), "symbols": list(identity.symbols),
            "timeframe": identity.timeframe}
        node.audit("run_started", wall_ms(), mode="paper", bars=total, **started,
                   settings=settings_record(settings), source=node.source.name)
    else:
        node.audit("run_resumed", wall_ms(), from_checkpoint=cp.ts, bars=total,
                   settings=settings_record(settings), source=node.source.name)
    bus = InMemoryBus(maxlen=batch * 10)
    await bus.ensure_group(BARS_TOPIC, GROUP)
    state = {"processed": 0, "skipped": 0}

    async def produce() -> None:
        for i, bar in enumerate(feed):
            if i >= total:
                break
            await bus.publish(BARS_TOPIC, bar_message(bar))  # waits when the node lags
            if bars_per_second:
                await asyncio.sleep(1.0 / bars_per_second)

    producer = asyncio.create_task(produce())
    try:
        while state["processed"] + state["skipped"] < total:
            deliveries = await bus.read(BARS_TOPIC, GROUP, "node-1", count=batch, block_ms=200)
            if not deliveries:
                if producer.done():
                    producer.result()
                    if await bus.lag(BARS_TOPIC, GROUP) == 0:
                        break
                continue
            done: list[str] = []
            received = wall_ms()
            for d in deliveries:
                if d.message is None:
                    await bus.dead_letter(d, GROUP, d.error)
                    continue
                try:
                    bar = bar_from_message(d.message)
                except (KeyError, TypeError, ValueError) as exc:
                    await bus.dead_letter(d, GROUP, f"bad bar: {exc}")
                    continue
                if bar.ts <= last_ts.get(bar.symbol, -1):
                    state["skipped"] += 1  # already processed before a restart
                else:
                    node.on_bar(bar)
                    journal.record(SeenBar.of(bar, "trade", received, wall_ms()))
                    last_ts[bar.symbol] = bar.ts
                    state["processed"] += 1
                    journal.record(node.portfolio.snapshot(bar.close_ts))
                done.append(d.entry_id)
            events = journal.drain()
            events.append(node_checkpoint(node, last_ts))
            await store.write(events)  # commit first ...
            await bus.ack(BARS_TOPIC, GROUP, done)  # ... then acknowledge
            if progress is not None:
                progress(len(done))
    finally:
        producer.cancel()
        await bus.close()
    pf = node.portfolio
    return PaperSummary(cp is not None, state["processed"], state["skipped"], pf.equity,
                        pf.wallet, pf.max_drawdown, len(node.trades), pf.open_positions,
                        node.risk.trading_state.name, node.signals_seen, dict(node.rejections))


def node_checkpoint(node: TradingNode, last_ts: dict[str, int]) -> Checkpoint:
    pf = node.portfolio
    ts = max(last_ts.values()) if last_ts else 0
    return Checkpoint(node.name, dict(last_ts), pf.wallet, pf.peak_equity, pf.max_drawdown,
                      pf.day_start_ts, pf.day_start_equity, int(node.risk.trading_state),
                      pf.fees_paid, pf.funding_paid, ts,
                      {"open_trades": node.open_trades_state(),
                       "last_close": node.exchange.last_prices(),
                       "venue_ids": node.exchange.ids()})
