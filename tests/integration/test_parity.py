"""Parity: the same bars through ``backtest`` and through the live stack against the simulator
(five processes, real Redis, real PostgreSQL, the real ccxt client, in lockstep) give the same
round trips: same sides, times, sizes, prices and exit reasons. One execution engine, one
matching core: a difference here is a bug in one of the two paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantum_trader.config import load_settings
from quantum_trader.marketdata.sample import resolve_source
from quantum_trader.runtime.backtest import run_backtest
from quantum_trader.venue_sim import SimServer, SimServerConfig, SimState, load_series
from tests.support.cluster import (
    PIPELINE_SERVICES,
    clear_venue_keys,
    cluster,
    set_venue_keys,
)
from tests.support.lockstep import run_lockstep

pytestmark = pytest.mark.integration
START, BARS = 600, 160


@pytest.mark.timeout(600)
def test_live_stack_in_lockstep_trades_exactly_like_the_backtest(tmp_path: Path) -> None:
    state = SimState(SimServerConfig(series=load_series(["sample:XRP"]), bar_seconds=0,
                                     start_bar=START, weight_limit=100_000))
    srv = SimServer(state).start()
    set_venue_keys(tmp_path, state.config.api_key, state.config.api_secret)
    try:
        with cluster(tmp_path, **{
                "exchange.kind": "binance-live", "exchange.base_url": srv.url,
                "exchange.poll_s": 0.02, "exchange.stale_after_s": 600.0,
                "exchange.reconcile_s": 600.0, "exchange.protection_grace_s": 600.0,
                "strategy.fast": 5, "strategy.slow": 13,
                "risk.cooldown_after_stop_ms": 0, "risk.max_drawdown": 0.9,
                "exits.trailing_stop": 0.02}) as c:
            for name in PIPELINE_SERVICES:
                c.start(name)
            c.wait_for(lambda: all(c.health(n)["status"] in ("OK", "DEGRADED")
                                   for n in PIPELINE_SERVICES), 60, "the stack up")
            run_lockstep(c, state, BARS)
            live = [(r["side"], r["opened_ts"], r["closed_ts"], round(r["quantity"], 8),
                     round(r["entry_price"], 10), round(r["exit_price"], 10),
                     r["exit_reason"])
                    for r in c.query("select * from closed_trades order by closed_ts, id")]
            decisions = [(r["ts"], r["reason"], r["detail"]) for r in
                         c.query("select * from risk_decisions order by ts, id")]
            settings = load_settings(c.config)
    finally:
        srv.stop()
        clear_venue_keys()
    bars = resolve_source("sample:XRP").slice(START, START + BARS + 1)
    result = run_backtest([bars], settings)
    backtest = [(t.side.value, t.opened_ts, t.closed_ts, round(t.quantity, 8),
                 round(t.entry_price, 10), round(t.exit_price, 10), t.exit_reason)
                for t in result.trades]
    assert len(backtest) >= 5, "the window must trade to prove anything"
    first = next((i for i, (a, b) in enumerate(zip(live, backtest, strict=False)) if a != b),
                 None)
    near = [d for d in decisions if first is not None and
            abs(d[0] - live[first][1]) <= 4 * 1_800_000]
    assert live == backtest, f"first difference at {first}; live decisions near it: {near}"
