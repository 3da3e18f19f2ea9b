"""Restarting ``run`` on the same store resumes open positions instead of opening them again,
and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.runtime.paper import run_paper
from quantum_trader.store.sql import SqlTradeStore
from quantum_trader.store.urls import sqlite_url

SETTINGS = Settings.model_validate({
    "risk": {"max_drawdown": 0.9, "daily_loss_limit": 0.5, "min_confidence": 0.5},
    "exits": {"trailing_stop": 0.04, "trailing_activation": 0.01},
})


async def _run(db: Path, bars: int | None, series_len: int = 2400,
               settings: Settings = SETTINGS) -> tuple[object, ...]:
    series = [load_sample("XRP").slice(0, series_len)]
    store = SqlTradeStore(sqlite_url(db), create=True)
    await store.open()
    try:
        summary = await run_paper(settings, series, store, max_bars=bars, batch=50)
        trades = await store.trades(limit=10_000)
        positions = await store.positions()
        orders = await store.orders()
        counts = await store.counts()
    finally:
        await store.close()
    return summary, trades, positions, orders, counts


@pytest.mark.integration
async def test_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    _, trades_full, pos_full, orders_full, _ = await _run(tmp_path / "full.db", None)
    assert len(trades_full) > 5

    # Find a stopping point with a position open, so the resume has something to carry.
    stop_at = None
    for t in sorted(trades_full, key=lambda t: t.opened_ts):
        if t.closed_ts - t.opened_ts > 3 * 1_800_000:
            stop_at = int((t.opened_ts - load_sample("XRP").ts[0]) // 1_800_000) + 2
            break
    assert stop_at is not None
    split = tmp_path / "split.db"
    first, _, pos_mid, _, _ = await _run(split, stop_at)
    assert pos_mid, "the first leg must stop with a position open"
    assert first.open_positions  # type: ignore[attr-defined]
    second, trades_split, pos_split, orders_split, counts = await _run(split, None)
    assert second.resumed  # type: ignore[attr-defined]
    assert second.bars_processed == 2400 - stop_at  # type: ignore[attr-defined]

    def key(t: object) -> tuple[object, ...]:
        return (t.symbol, t.side, t.opened_ts, t.closed_ts, round(t.entry_price, 10),  # type: ignore[attr-defined]
                round(t.exit_price, 10), round(t.net_pnl, 8), t.exit_reason)  # type: ignore[attr-defined]

    assert sorted(map(key, trades_split)) == sorted(map(key, trades_full))
    assert [(p.symbol, p.qty, round(p.avg_entry, 10)) for p in pos_split] == \
        [(p.symbol, p.qty, round(p.avg_entry, 10)) for p in pos_full]
    # No order was placed twice: same client order ids as the uninterrupted run.
    assert sorted(o.client_order_id for o in orders_split) == \
        sorted(o.client_order_id for o in orders_full)
    assert counts["checkpoints"] == 1


@pytest.mark.integration
async def test_an_entry_working_at_the_checkpoint_is_protected_when_it_fills_after_the_resume(
        tmp_path: Path) -> None:
    """A run stopped right after the bar whose signal placed an entry (it fills at the next
    bar's open, after the restart): the fill gets the stop and target the uninterrupted run
    gives it. The entry's levels live in the intent risk approved, which the restart reads."""
    _, _, _, orders_full, _ = await _run(tmp_path / "full.db", None)
    t0 = int(load_sample("XRP").ts[0])
    entries = sorted((o for o in orders_full if o.purpose.value == "ENTRY"),
                     key=lambda o: o.created_ts)
    entry = entries[len(entries) // 2]
    stop_at = int((entry.created_ts - t0) // 1_800_000)  # the signal bar is the last one
    split = tmp_path / "split.db"
    await _run(split, stop_at)
    store = SqlTradeStore(sqlite_url(split))
    await store.open()
    try:
        working = await store.order_by_client_id(entry.client_order_id)
    finally:
        await store.close()
    assert working is not None
    assert working.status.is_open, "the entry must be working"
    _, _, _, orders_split, _ = await _run(split, None)

    def protective(orders: list[Any]) -> list[tuple[Any, ...]]:
        return sorted((o.client_order_id, o.order_type.value, o.stop_price, o.price, o.status)
                      for o in orders if o.trace_id == entry.trace_id)

    assert any(o.tag for o in orders_full if o.trace_id == entry.trace_id)
    assert protective(orders_split) == protective(orders_full)


@pytest.mark.integration
async def test_the_stop_out_cooldown_runs_on_through_a_resume(tmp_path: Path) -> None:
    """Stopped right after a stop-out, the resumed run still refuses the symbol's entries
    until the cooldown is over, as the uninterrupted run does."""
    full = tmp_path / "full.db"
    _, trades_full, _, _, _ = await _run(full, None)
    store = SqlTradeStore(sqlite_url(full))
    await store.open()
    try:
        decisions_full = await store.decisions()
    finally:
        await store.close()
    cooled = [d for d in decisions_full if d.reason == "COOLDOWN"]
    assert cooled, "the run must hit the cooldown once at least"
    first = cooled[0]
    stop_out = max((t for t in trades_full if t.exit_reason == "stop_loss"
                    and t.closed_ts <= first.ts and first.subject_id.startswith(t.symbol)),
                   key=lambda t: t.closed_ts)
    t0 = int(load_sample("XRP").ts[0])
    stop_at = int((stop_out.closed_ts - t0) // 1_800_000) + 1  # the stop-out's bar, then stop
    split = tmp_path / "split.db"
    await _run(split, stop_at)
    await _run(split, None)
    store = SqlTradeStore(sqlite_url(split))
    await store.open()
    try:
        decisions_split = await store.decisions()
    finally:
        await store.close()
    assert [(d.id, d.reason) for d in decisions_split] == \
        [(d.id, d.reason) for d in decisions_full]


@pytest.mark.integration
async def test_an_entry_held_for_the_opposite_exit_is_still_held_after_the_resume(
        tmp_path: Path) -> None:
    """An entry against the position held waits, unsent, until that position's exit is on
    the venue. Stopped while one waits, the restart keeps it waiting (it sent it).

    With ``exit_on_opposite_signal`` off, an opposite signal's entry waits for the stop or the
    target to close the position, and expires waiting (the default closes the position at
    once, and the entry never waits)."""
    waits = SETTINGS.model_copy(update={"exits": SETTINGS.exits.model_copy(
        update={"exit_on_opposite_signal": False})})

    _, _, _, orders_full, _ = await _run(tmp_path / "full.db", None, settings=waits)
    held = [o for o in orders_full if o.reason == "expired waiting for the opposite exit"]
    assert held, "the run must hold an entry once at least"
    entry = held[0]
    t0 = int(load_sample("XRP").ts[0])
    split = tmp_path / "split.db"
    await _run(split, int((entry.created_ts - t0) // 1_800_000), settings=waits)
    store = SqlTradeStore(sqlite_url(split))
    await store.open()
    try:
        waiting = await store.order_by_client_id(entry.client_order_id)
    finally:
        await store.close()
    assert waiting is not None
    assert waiting.status.value == "NEW"
    _, _, _, orders_split, _ = await _run(split, None, settings=waits)
    (after,) = [o for o in orders_split if o.client_order_id == entry.client_order_id]
    assert (after.status, after.filled_qty, after.reason) == \
        (entry.status, entry.filled_qty, entry.reason)
