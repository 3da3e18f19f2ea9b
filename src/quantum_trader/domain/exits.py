"""The exit brain: protective stop-loss and take-profit orders, a trailing stop, a time exit and
signal-driven exits, evaluated on every bar.

Stops and targets live on the exchange as reduce-only orders as soon as the entry fills, so a
position stays protected even if this process dies. The exchange's bar model decides which
one fills first when a bar touches both (the stop: see ``SimulatedExchange``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quantum_trader.domain.enums import Direction, IntentPurpose, OrderType, Side
from quantum_trader.domain.instruments import Instrument, instrument_for
from quantum_trader.domain.models import Bar, OrderIntent, Signal
from quantum_trader.domain.orders import Order
from quantum_trader.domain.position import Position
from quantum_trader.domain.records import PositionSnapshot


@dataclass(slots=True, frozen=True)
class ExitSettings:
    stop_loss: bool = True
    take_profit_rr: float = 2.0  # target = rr x stop distance; 0 disables the target
    trailing_stop: float = 0.0  # trail this fraction below the best price; 0 disables
    trailing_activation: float = 0.0  # start trailing after this favourable move (fraction)
    max_holding_ms: int = 0  # time exit; 0 disables
    exit_on_opposite_signal: bool = True
    exit_on_flat_signal: bool = True
    intent_ttl_ms: int = 60_000
    protective_ttl_ms: int = 7 * 86_400_000  # stops and targets: still wanted when late


@dataclass(slots=True)
class _Guard:
    """What the exit brain watches for one open position."""

    symbol: str
    side: Side  # side of the entry
    entry_price: float
    opened_ts: int
    trace_id: str
    stop: float | None
    target: float | None
    best: float
    sl_order: str | None = None  # intent id of the working protective stop
    tp_order: str | None = None
    seq: int = 0
    exiting: bool = False  # a market exit is on its way
    protect_qty: float = 0.0
    # The best price the trail was last settled at (stop placed, or already at least as
    # tight): until a new best, there is nothing to recompute.
    settled_best: float = math.nan


@dataclass(slots=True)
class ExitActions:
    intents: list[OrderIntent] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)  # intent ids of orders to cancel


class ExitBrain:
    def __init__(self, settings: ExitSettings | None = None,
                 instruments: Callable[[str], Instrument] = instrument_for) -> None:
        self.settings = settings or ExitSettings()
        self.guards: dict[str, _Guard] = {}
        self._inst = instruments
        # The last intent number used in each trace. A position of one trace can close and
        # open again (the rest of a partly filled entry arriving after its stop closed the
        # first part): the new guard must go on numbering, or its stop would get the dead
        # stop's intent id, and an intent has one order, whatever became of it.
        self._trace_seq: dict[str, int] = {}

    # --- position lifecycle -----------------------------------------------------------------
    def on_entry_fill(self, entry: OrderIntent | None, position: Position, ts: int,
                      trace_id: str) -> ExitActions:
        """Place (or resize) protective orders for a position an entry just opened or grew."""
        acts = ExitActions()
        if not position.is_open:
            return acts
        side = Side.BUY if position.qty > 0 else Side.SELL
        sign = side.sign
        g = self.guards.get(position.symbol)
        inst = self._inst(position.symbol)
        if g is None or g.side is not side:
            stop = target = None
            if entry is not None and entry.stop_loss is not None and entry.reference_price > 0:
                # Keep the distance risk sized for, anchored to the price we actually got.
                dist = abs(entry.reference_price - entry.stop_loss) / entry.reference_price
                stop = inst.round_price(position.avg_entry * (1.0 - sign * dist))
                if entry.target_distance:  # the strategy named its target: it has it
                    target = inst.round_price(
                        position.avg_entry * (1.0 + sign * entry.target_distance))
                elif self.settings.take_profit_rr > 0:
                    target = inst.round_price(
                        position.avg_entry * (1.0 + sign * dist * self.settings.take_profit_rr))
            g = _Guard(position.symbol, side, position.avg_entry, position.opened_ts or ts,
                       trace_id, stop if self.settings.stop_loss else None, target,
                       position.avg_entry, seq=self._trace_seq.get(trace_id, 0))
            self.guards[position.symbol] = g
        qty = abs(position.qty)
        if qty <= g.protect_qty + 1e-12:
            return acts
        g.protect_qty = qty
        # (Re)place protective orders sized to the whole position.
        if g.stop is not None:
            if g.sl_order:
                acts.cancels.append(g.sl_order)
            g.sl_order = self._protective(g, OrderType.STOP_MARKET, g.stop, qty, ts, "sl", acts)
        if g.target is not None:
            if g.tp_order:
                acts.cancels.append(g.tp_order)
            g.tp_order = self._protective(g, OrderType.LIMIT, g.target, qty, ts, "tp", acts)
        return acts

    def on_position_closed(self, symbol: str) -> ExitActions:
        """Cancel whatever protection is left once the position is flat."""
        acts = ExitActions()
        g = self.guards.pop(symbol, None)
        if g is not None:
            acts.cancels.extend(oid for oid in (g.sl_order, g.tp_order) if oid)
        return acts

    # --- per bar ----------------------------------------------------------------------------
    def on_bar(self, bar: Bar, position: Position | None) -> ExitActions | None:
        g = self.guards.get(bar.symbol)
        if g is None or position is None or not position.is_open or g.exiting:
            return None
        s = self.settings
        if s.max_holding_ms and bar.close_ts - g.opened_ts >= s.max_holding_ms:
            return self._market_exit(g, position, bar.close_ts, bar.close, "time_exit", "time")
        if s.trailing_stop > 0:
            return self._trail(g, bar)
        return None

    def _trail(self, g: _Guard, bar: Bar) -> ExitActions | None:
        s = self.settings
        long = g.side is Side.BUY
        best = max(g.best, bar.high) if long else min(g.best, bar.low)
        g.best = best
        if best == g.settled_best:
            return None
        moved = (best / g.entry_price - 1.0) if long else (1.0 - best / g.entry_price)
        if moved < s.trailing_activation:
            return None
        inst = self._inst(g.symbol)
        level = inst.round_price(best * (1.0 - s.trailing_stop) if long
                                 else best * (1.0 + s.trailing_stop))
        improves = g.stop is None or (level > g.stop if long else level < g.stop)
        # Never trail to a level the bar's close is already through: that would fill at once.
        valid = level < bar.close if long else level > bar.close
        if not improves or abs(level - (g.stop or 0.0)) < inst.tick_size:
            g.settled_best = best  # the stop is already there or tighter
            return None
        if not valid:
            return None  # the close is through the level: try again on a later bar
        g.settled_best = best
        acts = ExitActions()
        if g.sl_order:
            acts.cancels.append(g.sl_order)
        g.stop = level
        g.sl_order = self._protective(g, OrderType.STOP_MARKET, level, g.protect_qty,
                                      bar.close_ts, "trail", acts)
        return acts

    def on_signal(self, signal: Signal, position: Position | None) -> ExitActions | None:
        """An opposite or flat signal closes the position at market."""
        if position is None or not position.is_open:
            return None
        g = self.guards.get(signal.symbol)
        held = Direction.LONG if position.qty > 0 else Direction.SHORT
        s = self.settings
        wants_out = (signal.direction is Direction.FLAT and s.exit_on_flat_signal) or (
            signal.direction not in (Direction.FLAT, held) and s.exit_on_opposite_signal)
        if not wants_out:
            return None
        if g is None:  # a position we did not open (adopted): guard it from now on
            g = _Guard(signal.symbol, Side.BUY if position.qty > 0 else Side.SELL,
                       position.avg_entry, position.opened_ts, signal.trace_id, None, None,
                       position.avg_entry, seq=self._trace_seq.get(signal.trace_id, 0))
            self.guards[signal.symbol] = g
        if g.exiting:
            return None
        return self._market_exit(g, position, signal.ts, signal.price, "signal_exit", "signal",
                                 signal.id)

    # --- helpers ----------------------------------------------------------------------------
    def _market_exit(self, g: _Guard, position: Position, ts: int, price: float, reason: str,
                     tag: str, signal_id: str | None = None) -> ExitActions:
        g.exiting = True
        g.seq += 1
        self._trace_seq[g.trace_id] = g.seq
        acts = ExitActions()
        acts.intents.append(OrderIntent(
            id=f"{g.trace_id}:{tag}:{g.seq}", symbol=g.symbol, side=g.side.opposite,
            quantity=abs(position.qty), order_type=OrderType.MARKET,
            purpose=IntentPurpose.EXIT, ts=ts, expires_at=ts + self.settings.intent_ttl_ms,
            trace_id=g.trace_id, reduce_only=True, signal_id=signal_id, reason=reason,
            reference_price=price, tag=tag))
        return acts

    def _protective(self, g: _Guard, order_type: OrderType, level: float, qty: float, ts: int,
                    tag: str, acts: ExitActions) -> str:
        g.seq += 1
        self._trace_seq[g.trace_id] = g.seq
        intent = OrderIntent(
            id=f"{g.trace_id}:{tag}:{g.seq}", symbol=g.symbol, side=g.side.opposite,
            quantity=qty, order_type=order_type, purpose=IntentPurpose.EXIT, ts=ts,
            # Protective orders work until the position closes; their intent must not lapse
            # on its way (a live venue learns of the entry fill between bars).
            expires_at=ts + self.settings.protective_ttl_ms, trace_id=g.trace_id,
            reduce_only=True,
            price=level if order_type is OrderType.LIMIT else None,
            stop_price=level if order_type is OrderType.STOP_MARKET else None,
            reason={"sl": "stop_loss", "tp": "take_profit", "trail": "trailing_stop"}[tag],
            reference_price=level, tag=tag)
        acts.intents.append(intent)
        return intent.id

    def restore_from(self, snap: PositionSnapshot, open_orders: list[Order],
                     orders_in_trace: int) -> None:
        """Guard a position again after a restart, from what the store remembers: the
        position snapshot (levels) and its working protective orders."""
        guards = [o for o in open_orders if o.symbol == snap.symbol and o.reduce_only]
        sl = next((o.intent_id for o in guards if o.tag in ("sl", "trail", "guard")), None)
        tp = next((o.intent_id for o in guards if o.tag == "tp"), None)
        self.restore(snap.symbol, Side.BUY if snap.qty > 0 else Side.SELL, snap.avg_entry,
                     snap.opened_ts, snap.trace_id, snap.stop_loss, snap.take_profit,
                     abs(snap.qty), sl, tp, orders_in_trace + 1)

    def trail_state(self) -> dict[str, dict[str, Any]]:
        """Per guarded symbol, what a restart needs to go on trailing where it was: the best
        price seen since entry and the stop level working now, tagged with the position's
        trace id so it is never applied to a later position."""
        return {sym: {"trace_id": g.trace_id, "best": g.best, "stop": g.stop}
                for sym, g in self.guards.items()}

    def restore_trail(self, state: dict[str, Any]) -> list[str]:
        """Apply a ``trail_state()`` saved before a restart to the guards ``restore_from``
        rebuilt; entries for other positions are ignored. Returns the symbols restored."""
        restored = []
        for sym, saved in state.items():
            g = self.guards.get(sym)
            if g is None or not isinstance(saved, dict) or saved.get("trace_id") != g.trace_id:
                continue
            best, stop = saved.get("best"), saved.get("stop")
            if isinstance(best, int | float) and math.isfinite(best):
                g.best = max(g.best, best) if g.side is Side.BUY else min(g.best, best)
            if isinstance(stop, int | float) and math.isfinite(stop):
                g.stop = float(stop)
            restored.append(sym)
        return restored

    def adopt_stop(self, symbol: str, intent_id: str, level: float | None) -> bool:
        """A protective stop placed for ``symbol`` by someone else (execution's guard, when
        the position had none): guard with it from now on. Returns whether it was taken."""
        g = self.guards.get(symbol)
        if g is None or g.exiting:
            return False
        g.sl_order = intent_id
        if level is not None:
            g.stop = level
        return True

    def restore(self, symbol: str, side: Side, entry_price: float, opened_ts: int,
                trace_id: str, stop: float | None, target: float | None, qty: float,
                sl_order: str | None, tp_order: str | None, seq: int) -> None:
        """Guard a position again after a restart; ``seq`` continues the intent numbering so
        new protective orders never reuse an old client order id."""
        self._trace_seq[trace_id] = max(seq, self._trace_seq.get(trace_id, 0))
        self.guards[symbol] = _Guard(symbol, side, entry_price, opened_ts, trace_id, stop,
                                     target, entry_price, sl_order, tp_order, seq=seq,
                                     protect_qty=qty)
