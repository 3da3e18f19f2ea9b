"""The distributed pipeline's services wired in one event loop over the in-memory bus and a
real SQLite store: the same code paths as separate processes, minus the network. In lockstep
replay it must trade exactly like the embedded node on the same bars."""

from __future__ import annotations

import asyncio
from pathlib import Path

from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.config import Settings
from quantum_trader.services.runner import build_service
from quantum_trader.store.sql import SqlTradeStore
from quantum_trader.store.urls import sqlite_url


async def test_pipeline_trades_end_to_end(tmp_path: Path) -> None:
    settings = Settings.model_validate({
        "data": {"source": "sample:XRP"},
        "risk": {"min_confidence": 0.5, "max_drawdown": 0.9},
        "exits": {"trailing_stop": 0.03, "trailing_activation": 0.01,
                  "max_holding_ms": 24 * 3_600_000},
        "services": {"bus": "memory", "replay_max_bars": 700, "heartbeat_interval_s": 0.2},
        "secrets": {"approval_hmac_key": "k" * 32},
    })
    url = sqlite_url(tmp_path / "qt.db")
    bootstrap = SqlTradeStore(url, create=True)
    await bootstrap.open()
    await bootstrap.close()
    bus = InMemoryBus()
    names = ["execution", "risk-safety", "exit-brain", "ai-engine", "market-data"]
    services = [build_service(n, settings, bus, SqlTradeStore(url)) for n in names]
    for s in services:
        await s.start()
    md = services[-1]
    for _ in range(600):
        await asyncio.sleep(0.05)
        if getattr(md, "finished", False):
            break
    assert getattr(md, "finished", False), "replay did not finish"
    for _ in range(100):  # let the last bar settle
        if await md._settled():  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.02)
    for s in services:
        assert s.health.status.value in ("OK", "DEGRADED"), s.health.as_dict()
    store = SqlTradeStore(url)
    await store.open()
    try:
        counts = await store.counts()
        signals = await store.signals()
        trades = await store.trades(limit=1000)
        fills = await store.fills()
        orders = await store.orders()
        decisions = await store.decisions()
    finally:
        await store.close()
        for s in reversed(services):
            await s.stop()
    assert counts["signals"] == len(signals) > 0
    assert counts["risk_decisions"] >= len(signals)
    assert trades, counts
    order_ids = {o.id for o in orders}
    assert all(f.order_id in order_ids for f in fills)  # no fill without its order
    protective = [d for d in decisions if ":sl:" in d.subject_id or ":tp:" in d.subject_id]
    assert protective
    assert all(d.approved for d in protective), [d.detail for d in protective if not d.approved]
    t = trades[0]
    assert any(o.trace_id == t.trace_id and o.tag in ("sl", "tp") for o in orders)
    assert any(s.trace_id == t.trace_id for s in signals)
    # The same bars through the embedded node give the same round trips.
    from quantum_trader.marketdata.sample import load_sample
    from quantum_trader.runtime.backtest import run_backtest

    embedded = run_backtest([load_sample("XRP").slice(0, 700)], settings)

    def key(t: object) -> tuple[object, ...]:
        return (t.side, t.opened_ts, t.closed_ts, round(t.entry_price, 9),  # type: ignore[attr-defined]
                round(t.exit_price, 9), t.exit_reason)  # type: ignore[attr-defined]

    assert len(trades) >= 5
    assert sorted(map(key, trades)) == sorted(map(key, embedded.trades))
    # one exchange order per intent
    assert len({o.client_order_id for o in orders}) == len({o.intent_id for o in orders
                                                            if o.intent_id})
