"""Distributed mode across real processes, real Redis Streams and real PostgreSQL."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from quantum_trader.config import load_settings
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.runtime.backtest import run_backtest
from tests.support.cluster import PIPELINE_SERVICES, Cluster, cluster

pytestmark = pytest.mark.integration


def _replay_done(c: Cluster, bars: int) -> bool:
    last = int(load_sample("XRP").ts[bars - 1])
    rows = c.query("select last_bar_ts from checkpoints where node = 'market-data'")
    if not rows:
        return False
    done = json.loads(rows[0][0]) if isinstance(rows[0][0], str) else rows[0][0]
    return bool(done.get("XRPUSDT") == last)


def _settled(c: Cluster) -> bool:
    r = redis.Redis()
    for topic in ("market.bars", "signals", "exits", "orders.approved", "executions",
                  "positions"):
        stream = f"{c.namespace}qt:{topic}"
        if not r.exists(stream):
            continue
        for g in r.xinfo_groups(stream):
            if (g.get("lag") or 0) or g["pending"]:
                return False
    return True


def test_full_cycle_across_processes_matches_the_embedded_node(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        for name in PIPELINE_SERVICES:
            c.start(name)
        c.wait_for(lambda: _replay_done(c, 300) and _settled(c), 120, "replay of 300 bars")
        for name in PIPELINE_SERVICES:
            assert c.health(name)["status"] == "OK", c.health(name)
        trades = c.query("select side, opened_ts, closed_ts, entry_price, exit_price, "
                         "exit_reason, trace_id from closed_trades order by opened_ts")
        assert len(trades) >= 3
        # Every fill has its order; every trade's trace id leads back to its signal.
        assert c.query("select count(*) from fills f left join orders o on o.id = f.order_id "
                       "where o.id is null")[0][0] == 0
        for t in trades:
            assert c.query(f"select count(*) from signals where trace_id = '{t['trace_id']}'"
                           )[0][0] == 1
        # One exchange order per intent.
        assert c.query("select count(*) - count(distinct intent_id) from orders "
                       "where intent_id <> ''")[0][0] == 0
        settings = load_settings(c.config)
        embedded = run_backtest([load_sample("XRP").slice(0, 300)], settings)
        assert [(t["side"], t["opened_ts"], t["closed_ts"], round(t["entry_price"], 9),
                 t["exit_reason"]) for t in trades] == \
            [(t.side.value, t.opened_ts, t.closed_ts, round(t.entry_price, 9), t.exit_reason)
             for t in sorted(embedded.trades, key=lambda t: t.opened_ts)]
        # SIGTERM drains and exits cleanly.
        for name in PIPELINE_SERVICES:
            assert c.kill(name, 15) == 0


def test_risk_safety_down_no_entries_exits_run_health_recovers(tmp_path: Path) -> None:
    with cluster(tmp_path, **{"services.replay_pacing": "rate",
                              "services.replay_bars_per_second": 25,
                              "services.replay_max_bars": 1200}) as c:
        for name in PIPELINE_SERVICES:
            c.start(name)
        # Wait for an open position guarded by working protective orders.
        c.wait_for(lambda: c.query("select count(*) from orders where tag in ('sl','tp') "
                                   "and status in ('ACCEPTED','PARTIALLY_FILLED')")[0][0] > 0,
                   60, "a position with protective orders")
        assert c.kill("risk-safety") == -9
        signals_before = c.query("select count(*) from signals")[0][0]
        entries_before = c.query("select count(*) from orders where purpose = 'ENTRY'")[0][0]
        degraded = c.wait_for(
            lambda: (h := c.health("ai-engine"))["status"] == "DEGRADED" and h, 10,
            "ai-engine DEGRADED")
        assert any("risk-safety" in r for r in degraded["reasons"]), degraded
        c.wait_for(lambda: c.health("execution")["status"] == "DEGRADED", 10,
                   "execution DEGRADED (its upstream is silent)")
        # Bars keep flowing and signals keep coming; protective orders keep working.
        c.wait_for(lambda: c.query("select count(*) from signals")[0][0] > signals_before,
                   30, "a signal while risk-safety is down")
        c.wait_for(lambda: c.query("select count(*) from orders where tag in ('sl','tp') "
                                   "and status = 'FILLED'")[0][0] > 0, 60,
                   "a protective exit while risk-safety is down")
        assert c.query("select count(*) from orders where purpose = 'ENTRY'")[0][0] == \
            entries_before, "no entry order may be placed while risk-safety is down"
        waited = c.query("select id from signals")
        c.start("risk-safety")
        t0 = time.time()
        c.wait_for(lambda: all(c.health(n)["status"] == "OK" for n in PIPELINE_SERVICES), 10,
                   "every service OK again")
        assert time.time() - t0 <= 10
        # The signals that waited died at the gate instead of being traded late.
        ids = {row[0] for row in waited}
        c.wait_for(lambda: c.query("select count(*) from risk_decisions where subject_id in "
                                   "(" + ",".join(f"'{i}'" for i in ids) + ")")[0][0]
                   == len(ids), 20, "a decision for every waiting signal")
        stale_trades = c.query(
            "select count(*) from orders o join signals s on o.intent_id = s.id || ':entry' "
            "where o.created_ts > s.expires_at")
        assert stale_trades[0][0] == 0
        assert c.query("select count(*) from risk_decisions where reason = 'SIGNAL_EXPIRED'"
                       )[0][0] >= 1


def test_forged_and_malformed_messages(tmp_path: Path) -> None:
    with cluster(tmp_path, **{"services.replay_max_bars": 50}) as c:
        for name in PIPELINE_SERVICES:
            c.start(name)
        c.wait_for(lambda: _replay_done(c, 50) and _settled(c), 60, "replay of 50 bars")
        r = redis.Redis()
        intent = {"id": "forged-1", "symbol": "XRPUSDT", "side": "BUY", "quantity": 1000.0,
                  "order_type": "MARKET", "purpose": "ENTRY", "ts": 0, "expires_at": 2**62,
                  "trace_id": "forged", "kind": "order"}
        forged = [
            {"intent": intent},  # unsigned
            {"intent": intent, "signature": "00" * 32},  # wrong signature
        ]
        for i, payload in enumerate(forged):
            msg = {"id": f"forged-{i}", "type": "intent", "ts": int(time.time() * 1000),
                   "trace_id": "forged", "payload": payload}
            r.xadd(f"{c.namespace}qt:orders.approved", {"d": json.dumps(msg)})
        # Malformed and oversized messages on the bar stream.
        r.xadd(f"{c.namespace}qt:market.bars", {"d": b"\x00not json"})
        r.xadd(f"{c.namespace}qt:market.bars", {"d": json.dumps(
            {"id": "x", "type": "bar", "ts": 1, "trace_id": "", "payload": {"symbol": 1}})})
        r.xadd(f"{c.namespace}qt:market.bars", {"d": b"{" + b" " * 70_000 + b"}"})
        c.wait_for(lambda: c.query("select count(*) from audit_events where kind = "
                                   "'intent_refused'")[0][0] == 2, 15, "forged intents refused")
        assert c.query("select count(*) from orders where trace_id = 'forged'")[0][0] == 0
        dl = c.wait_for(lambda: (n := r.xlen(f"{c.namespace}qt:deadletter")) >= 12 and n,
                        15, "dead letters for every consuming group")
        reasons = [json.loads(e[1][b"d"])["payload"]["reason"]
                   for e in r.xrange(f"{c.namespace}qt:deadletter")]
        assert any("exceeds" in x or "bytes" in x for x in reasons), reasons
        assert any("not JSON" in x or "malformed" in x for x in reasons), reasons
        assert dl >= 12

        def sick() -> dict[str, Any]:
            return {n: h.get("reasons") for n in PIPELINE_SERVICES
                    if (h := c.health(n))["status"] != "OK"}

        # Everyone is OK again (a heartbeat late behind the burst may take a moment).
        deadline = time.monotonic() + 15
        while (still := sick()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not still, still


def test_kill_9_each_service_in_turn_changes_nothing(tmp_path: Path) -> None:
    """kill -9 of every service in turn during a 1,000-bar stream, then restart: no message
    lost, no duplicate order, the same trades and final position as without the kills."""
    bars = 1000
    with cluster(tmp_path, **{"services.replay_max_bars": bars}) as c:
        for name in PIPELINE_SERVICES:
            c.start(name)
        checkpoints = [150, 300, 450, 600, 750]
        for name, at in zip(PIPELINE_SERVICES, checkpoints, strict=True):
            c.wait_for(lambda at=at: c.query(
                "select count(*) from checkpoints where node = 'market-data' and "
                f"ts >= {int(load_sample('XRP').ts[at])}")[0][0] > 0, 90, f"bar {at}")
            assert c.kill(name) == -9
            time.sleep(0.5)
            c.start(name)
        c.wait_for(lambda: _replay_done(c, bars) and _settled(c), 180, "the whole stream")
        trades = c.query("select side, opened_ts, closed_ts, entry_price, exit_price, "
                         "exit_reason from closed_trades order by opened_ts")
        settings = load_settings(c.config)
        embedded = run_backtest([load_sample("XRP").slice(0, bars)], settings)
        assert [(t["side"], t["opened_ts"], t["closed_ts"], round(t["entry_price"], 9),
                 round(t["exit_price"], 9), t["exit_reason"]) for t in trades] == \
            [(t.side.value, t.opened_ts, t.closed_ts, round(t.entry_price, 9),
              round(t.exit_price, 9), t.exit_reason)
             for t in sorted(embedded.trades, key=lambda t: t.opened_ts)]
        final = c.query("select symbol, qty, avg_entry from positions where qty <> 0")
        emb_pos = [(p.symbol, p.qty, p.avg_entry) for p in embedded_positions(settings, bars)]
        assert [(r["symbol"], r["qty"], round(r["avg_entry"], 9)) for r in final] == \
            [(s, q, round(a, 9)) for s, q, a in emb_pos]
        assert c.query("select count(*) - count(distinct client_order_id) from orders")[0][0] == 0
        assert c.query("select count(*) from fills f left join orders o on o.id = f.order_id "
                       "where o.id is null")[0][0] == 0


def embedded_positions(settings: object, bars: int) -> list[object]:
    from quantum_trader.runtime.wiring import build_node

    node = build_node(settings)  # type: ignore[arg-type]
    for bar in load_sample("XRP").slice(0, bars):
        node.on_bar(bar)
    return [p for p in node.portfolio.positions.values() if p.is_open]


def test_up_restarts_a_crashed_service_and_drains_on_sigterm(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    with cluster(tmp_path, **{"services.replay_max_bars": 100}) as c:
        log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
        up = subprocess.Popen([sys.executable, "-m", "quantum_trader", "up", "--config",
                               str(c.config)], stdout=log, stderr=subprocess.STDOUT,
                              cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})
        try:
            names = (*PIPELINE_SERVICES, "gateway")
            c.wait_for(lambda: all(c.health(n)["status"] == "OK" for n in names), 60,
                       "every service OK under `up`")
            status = subprocess.run([sys.executable, "-m", "quantum_trader", "status",
                                     "--config", str(c.config), "--json"],
                                    capture_output=True, text=True, cwd=tmp_path)
            assert status.returncode == 0, status.stdout + status.stderr
            assert {r["service"] for r in json.loads(status.stdout)} == set(names)
            victim = c.health("exit-brain")["pid"]
            os.kill(victim, signal.SIGKILL)
            c.wait_for(lambda: (h := c.health("exit-brain"))["status"] == "OK"
                       and h["pid"] != victim, 30, "exit-brain restarted by `up`")
            up.send_signal(signal.SIGTERM)
            assert up.wait(timeout=60) == 0
            for n in names:
                assert c.health(n)["status"] == "DOWN"  # nothing left listening
        finally:
            if up.poll() is None:
                up.kill()
