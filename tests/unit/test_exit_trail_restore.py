"""A restarted exit brain goes on trailing from the best price it had seen, not from the
entry: otherwise the first bar after a restart would loosen a stop that had already trailed
up (a real loss of protection, found as a known gap and fixed here)."""

from __future__ import annotations

from pathlib import Path

from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import Message
from quantum_trader.config import Settings
from quantum_trader.domain.enums import IntentPurpose, OrderType, Side
from quantum_trader.domain.exits import ExitBrain, ExitSettings
from quantum_trader.domain.models import Bar, OrderIntent
from quantum_trader.domain.position import Position
from quantum_trader.domain.records import PositionSnapshot
from quantum_trader.services.exit_brain import ExitBrainService
from quantum_trader.services.messages import bar_payload
from quantum_trader.store.sql import SqlTradeStore
from quantum_trader.store.urls import sqlite_url

SYM = "XRPUSDT"
H = 1_800_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % H
TRACE = "XRPUSDT-trace"
SETTINGS = ExitSettings(trailing_stop=0.03, trailing_activation=0.01, take_profit_rr=3.0)


def bar(i: int, high: float, low: float, close: float) -> Bar:
    return Bar(SYM, "30m", T0 + i * H, close, high, low, close, 1e9)


def opened() -> tuple[ExitBrain, Position]:
    brain = ExitBrain(SETTINGS)
    pos = Position(SYM, 1000.0, 1.0, opened_ts=T0, last_price=1.0)
    entry = OrderIntent("e1", SYM, Side.BUY, 1000.0, OrderType.MARKET, IntentPurpose.ENTRY, T0,
                        T0 + 60_000, TRACE, reference_price=1.0, stop_loss=0.95)
    acts = brain.on_entry_fill(entry, pos, T0, TRACE)
    assert {i.tag for i in acts.intents} == {"sl", "tp"}
    return brain, pos


def restarted(state: dict[str, object] | None, trace: str = TRACE) -> ExitBrain:
    brain = ExitBrain(SETTINGS)
    brain.restore(SYM, Side.BUY, 1.0, T0, trace, 0.95, 1.15, 1000.0, "sl-order", "tp-order", 9)
    if state is not None:
        brain.restore_trail(state)
    return brain


def test_trail_state_survives_a_restart_and_the_stop_never_loosens() -> None:
    brain, pos = opened()
    acts = brain.on_bar(bar(1, 1.12, 1.05, 1.11), pos)
    assert acts is not None
    assert acts.intents[0].tag == "trail"
    trailed = brain.guards[SYM].stop
    assert trailed is not None
    assert trailed > 1.08

    after = restarted(brain.trail_state())
    assert after.guards[SYM].best == 1.12
    assert after.guards[SYM].stop == trailed
    # A bar below the old best: nothing to do, exactly as without the restart.
    quiet = bar(2, 1.11, 1.09, 1.10)
    assert brain.on_bar(quiet, pos) is None
    assert after.on_bar(quiet, pos) is None

    # Without the saved state the restarted brain re-anchors at the entry and, on the same
    # bar, "trails" the stop down to below the level already working: what the fix prevents.
    amnesiac = restarted(None)
    loosened = amnesiac.on_bar(quiet, pos)
    assert loosened is not None
    assert loosened.intents[0].stop_price is not None
    assert loosened.intents[0].stop_price < trailed


def test_saved_trail_of_another_position_is_ignored() -> None:
    brain, pos = opened()
    brain.on_bar(bar(1, 1.12, 1.05, 1.11), pos)
    other = restarted(brain.trail_state(), trace="a-later-position")
    assert other.guards[SYM].best == 1.0
    assert other.guards[SYM].stop == 0.95
    assert other.restore_trail({SYM: "garbage", "BTCUSDT": {"best": 2.0}}) == []


async def test_exit_brain_service_checkpoints_and_restores_its_trail(tmp_path: Path) -> None:
    settings = Settings.model_validate({"exits": {"trailing_stop": 0.03,
                                                  "trailing_activation": 0.01}})
    url = sqlite_url(tmp_path / "qt.db")
    store = SqlTradeStore(url, create=True)
    await store.open()
    try:
        svc = ExitBrainService(settings, InMemoryBus(), store)
        svc.view_ts = 2**62  # the account view is current: on_bar need not wait for it
        brain, pos = opened()
        svc.brain = brain
        svc.positions[SYM] = pos
        for i, (h, lo, c) in enumerate([(1.05, 1.0, 1.04), (1.12, 1.05, 1.11),
                                        (1.11, 1.09, 1.10)], start=1):
            await svc.on_bar(Message("bar", bar_payload(bar(i, h, lo, c)), 0, ""))
        trailed = brain.guards[SYM].stop
        assert trailed is not None
        assert trailed > 1.08
        cp = await store.checkpoint("exit-brain")
        assert cp is not None
        assert cp.extra["trail"][SYM]["best"] == 1.12

        await store.write([PositionSnapshot(SYM, 1000.0, 1.0, 0.0, 0.0, 0.0, T0, 1.10, 3.0,
                                            T0 + 3 * H, TRACE, 0.95, 1.15)])
        again = ExitBrainService(settings, InMemoryBus(), store)
        await again.on_start()
        g = again.brain.guards[SYM]
        assert (g.best, g.stop) == (1.12, trailed)
    finally:
        await store.close()
