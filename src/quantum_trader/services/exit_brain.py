"""exit-brain: watches fills, bars and signals; places protective stops and targets as soon as
an entry fills, trails them, and asks for market exits on time or on an opposite signal. Every
exit goes to risk-safety as a reduce-only intent.

The intents a message causes are written to the store's outbox in the same transaction as the
brain's checkpoint, and published from there: a publish that fails after the brain changed its
mind is never lost (a redelivered fill finds the guard already placed and asks for nothing new,
so the outbox is what carries the stop). The account updates from execution keep the brain's
view of positions honest: a position it never heard a fill for (messages lost with Redis's data)
is guarded from what the store remembers.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any

from quantum_trader.bus.codec import from_payload, to_payload
from quantum_trader.bus.protocol import Bus, Message
from quantum_trader.config import Settings
from quantum_trader.domain.exits import ExitActions, ExitBrain
from quantum_trader.domain.models import Fill, OrderIntent, Signal
from quantum_trader.domain.position import Position
from quantum_trader.domain.records import (
    AccountSnapshot,
    Checkpoint,
    OutboundMessage,
    PositionSnapshot,
)
from quantum_trader.runtime.clock import wall_ms
from quantum_trader.services.base import Service
from quantum_trader.services.messages import bar_from
from quantum_trader.store.protocol import TradeStore


class ExitBrainService(Service):
    name = "exit-brain"
    upstreams = ("execution", "risk-safety")

    def __init__(self, settings: Settings, bus: Bus, store: TradeStore | None) -> None:
        super().__init__(settings, bus, store)
        self.brain = ExitBrain(settings.exits.settings(), settings.instrument_lookup())
        self.positions: dict[str, Position] = {}
        self.last_bar_ts: dict[str, int] = {}
        self.view_ts = -1  # market time execution has matched up to (from account updates)
        self._outgoing: list[OutboundMessage] = []
        self._outbox: Any = None
        # Handlers run concurrently (a signal drains fills itself): commits must reach the
        # outbox in the order their messages were decided (a fill's stop before a later exit).
        self._flushing = asyncio.Lock()
        self.consume("positions", self.on_account)
        self.consume("executions", self.on_execution)
        self.consume("market.bars", self.on_bar)
        self.consume("signals", self.on_signal)

    async def on_start(self) -> None:
        if self.store is None:
            return
        from quantum_trader.bus.outbox import OutboxPublisher
        from quantum_trader.store.outbox import ServiceOutbox

        self._outbox = OutboxPublisher(ServiceOutbox(self.store, self.name), self.bus)
        self.spawn(self._outbox.run(self._stop))
        cp = await self.store.checkpoint(self.name)
        if cp is not None:
            self.last_bar_ts = dict(cp.last_bar_ts)
        open_orders = await self.store.open_orders()
        for snap in await self.store.positions():
            self.positions[snap.symbol] = snap.to_position()
            self.brain.restore_from(snap, open_orders,
                len(await self.store.orders(trace_id=snap.trace_id)))
        if cp is not None:
            restored = self.brain.restore_trail(cp.extra.get("trail") or {})
            if restored:
                self.log.info("trail_restored", symbols=restored)

    async def on_execution(self, msg: Message) -> None:
        if msg.type == "order":
            o = msg.payload.get("order") or {}
            if o.get("tag") == "guard" and o.get("status") in ("ACCEPTED", "PARTIALLY_FILLED"):
                stop = o.get("stop_price")
                if self.brain.adopt_stop(str(o.get("symbol")), str(o.get("intent_id")),
                                         float(stop) if isinstance(stop, int | float) else None):
                    self.log.info("guard_stop_adopted", symbol=o.get("symbol"))
            return
        if msg.type != "fill":
            return
        fill = from_payload(Fill, msg.payload["fill"])
        raw_pos = msg.payload.get("position")
        if raw_pos is None:
            return
        pos = from_payload(PositionSnapshot, raw_pos).to_position()
        known_at = msg.payload.get("known_at")
        at = known_at if isinstance(known_at, int) else fill.ts
        was_open = self.positions.get(fill.symbol)
        self.positions[fill.symbol] = pos
        if msg.payload.get("purpose") == "ENTRY" and pos.is_open:
            raw_entry = msg.payload.get("entry")
            entry = from_payload(OrderIntent, raw_entry) if raw_entry else None
            await self._send(self.brain.on_entry_fill(entry, pos, at, fill.trace_id),
                             fill.trace_id)
        elif not pos.is_open and was_open is not None and was_open.is_open:
            await self._send(self.brain.on_position_closed(fill.symbol), fill.trace_id)
        await self._flush()

    async def on_bar(self, msg: Message) -> None:
        bar = bar_from(msg)
        if bar.ts <= self.last_bar_ts.get(bar.symbol, -1):
            return
        self.last_bar_ts[bar.symbol] = bar.ts
        await self._caught_up(bar.close_ts)
        pos = self.positions.get(bar.symbol)
        if pos is not None and pos.is_open:
            pos.last_price = bar.close
            acts = self.brain.on_bar(bar, pos)
            if acts is not None:
                await self._send(acts, "")
        # resume trailing here after a restart
        await self._flush(replace(Checkpoint.progress(self.name, self.last_bar_ts,
                                                      bar.close_ts),
                                  extra={"trail": self.brain.trail_state()}))

    async def on_account(self, msg: Message) -> None:
        ts = msg.payload.get("ts")
        if not isinstance(ts, int) or ts <= self.view_ts:
            return
        self.view_ts = ts
        # Fills are published before the account update that includes them: with them all
        # applied, a difference left is a fill we never heard of.
        await self.catch_up("executions")
        snap = from_payload(AccountSnapshot, msg.payload)
        venue = {p.symbol: p for p in snap.positions if p.qty != 0}
        for sym, p in venue.items():
            mine = self.positions.get(sym)
            if mine is None or abs(mine.qty - p.qty) > 1e-9:
                self.positions[sym] = p.to_position()
                if sym not in self.brain.guards and self.store is not None:
                    await self._guard_from_store(sym)
        for sym, mine in list(self.positions.items()):
            if mine.is_open and sym not in venue:
                mine.qty = 0.0
                await self._send(self.brain.on_position_closed(sym), "")
        await self._flush()

    async def _guard_from_store(self, symbol: str) -> None:
        assert self.store is not None
        open_orders = await self.store.open_orders()
        for snap in await self.store.positions():
            if snap.symbol == symbol:
                self.brain.restore_from(snap, open_orders,
                                        len(await self.store.orders(trace_id=snap.trace_id)))
                self.log.warning("position_adopted_from_account", symbol=symbol)

    async def _caught_up(self, min_ts: int) -> None:
        """Apply every fill execution made up to market time ``min_ts`` before judging a
        signal, so "close the short on a long signal" never misses a short opened this bar.
        Execution publishes a bar's fills before the account update for that bar, so once the
        account covers ``min_ts``, draining the fills gets them all. Live, if execution is
        down we go on with what we know after a short wait."""
        await self.catch_up_until("positions", lambda: self.view_ts >= min_ts,
                                  self.settings.account_wait_s())
        await self.catch_up("executions")

    async def on_signal(self, msg: Message) -> None:
        signal = from_payload(Signal, msg.payload)
        await self._caught_up(signal.ts)
        acts = self.brain.on_signal(signal, self.positions.get(signal.symbol))
        if acts is not None:
            await self._send(acts, signal.trace_id)
            await self._flush()

    async def on_stop(self) -> None:
        if self._outbox is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._outbox.drain(), 5.0)

    async def _send(self, acts: ExitActions, trace_id: str) -> None:
        """Queue the actions' messages; ``_flush`` commits them (outbox) and publishes."""
        now = wall_ms()
        for intent_id in acts.cancels:
            self._outgoing.append(OutboundMessage(
                "exits", f"cancel-{intent_id}", "cancel", {"intent_id": intent_id, "symbol": ""},
                now, trace_id, self.name))
        for intent in acts.intents:
            self._outgoing.append(OutboundMessage(
                "exits", f"exit-{intent.id}", "exit", to_payload(intent), now, intent.trace_id,
                self.name))
        if self.store is None:
            await self._flush()

    async def _flush(self, checkpoint: Checkpoint | None = None) -> None:
        async with self._flushing:
            out, self._outgoing = self._outgoing, []
            if self.store is None:
                for m in out:
                    await self.bus.publish(m.topic, Message(m.type, m.payload, m.ts,
                                                            m.trace_id, id=m.id))
                return
            if not out and checkpoint is None:
                return
            cp = checkpoint or self._checkpoint()
            await self.store.write([*out, cp])
        if self._outbox is not None:
            self._outbox.kick()

    def _checkpoint(self) -> Checkpoint:
        ts = max(self.view_ts, 0)
        return replace(Checkpoint.progress(self.name, self.last_bar_ts, ts),
                       extra={"trail": self.brain.trail_state()})
