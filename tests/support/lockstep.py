"""Lockstep: the live stack against the simulator, one bar at a time.

The simulator's clock stands still (``bar_seconds=0``) until the whole stack has settled on the
bar it last closed: market-data has published it, every consumer group has handled everything,
every outbox is empty, no order is in flight and every venue trade is booked. Then the clock
moves one bar on. Orders sent between two bars are matched on the next one, exactly as the
backtester matches them, which is what makes a live run comparable, trade for trade, with a
backtest of the same bars.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from quantum_trader.services.messages import PIPELINE
from quantum_trader.venue_sim import SimState
from tests.support.cluster import Cluster


def _last_published(r: redis.Redis, ns: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for _id, fields in r.xrevrange(f"{ns}qt:market.bars", count=50):
        p = json.loads(fields[b"d"])["payload"]
        out.setdefault(str(p["symbol"]), int(p["ts"]))
    return out


def _quiet(c: Cluster, r: redis.Redis, state: SimState) -> str | None:
    """None when the stack has nothing left to do for the current bar; else what it waits on."""
    closed = {sym: int(state.closed_bars(sym).ts[-1]) for sym in state.series}
    published = _last_published(r, c.namespace)
    if any(published.get(s) != ts for s, ts in closed.items()):
        return f"market-data has published {published}, the venue closed {closed}"
    for topic, groups in PIPELINE.items():
        key = f"{c.namespace}qt:{topic}"
        try:
            infos: list[dict[str, Any]] = r.xinfo_groups(key)  # type: ignore[assignment]
        except redis.ResponseError:
            continue
        for g in infos:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name not in groups:
                continue
            if int(g.get("lag") or 0) or int(g.get("pending") or 0):
                return f"{name} has work left on {topic}"
    if c.query("select count(*) from outbox")[0][0]:
        return "an outbox holds unpublished messages"
    flying = c.query("select client_order_id, status, purpose, tag, reason from orders "
                     "where status in ('NEW', 'SUBMITTED')")
    if flying:
        return f"orders in flight: {[dict(r) for r in flying]}"
    ours = int(c.query("select count(*) from venue_trades")[0][0])
    if ours != len(state.trades()):
        return f"{len(state.trades()) - ours} venue trades not booked yet"
    return None


def settle(c: Cluster, r: redis.Redis, state: SimState, timeout_s: float = 60.0) -> None:
    """Wait until two checks in a row find nothing to do (a message can hop from a topic
    checked later to one checked earlier within one pass, not within two)."""
    deadline = time.monotonic() + timeout_s
    clean = 0
    why: str | None = "not checked yet"
    while time.monotonic() < deadline:
        why = _quiet(c, r, state)
        clean = clean + 1 if why is None else 0
        if clean >= 3:
            return
        time.sleep(0.05 if why is None else 0.02)
    raise AssertionError(f"the stack did not settle in {timeout_s}s: {why}")


def run_lockstep(c: Cluster, state: SimState, bars: int, timeout_s: float = 60.0) -> None:
    r = redis.Redis()
    for _ in range(bars):
        settle(c, r, state, timeout_s)
        state.advance(1)
    settle(c, r, state, timeout_s)
