"""Distributed mode on loopback: bar-to-order latency across processes over Redis (p50/p99),
and /health under load with wrk.

Starts the five pipeline services as processes (real Redis, real PostgreSQL), replays bars at
a fixed rate with a fast-crossing EMA so orders flow, then reads execution's latency summary.
Run: PYTHONPATH=. .venv/bin/python bench/bench_distributed.py [--bars 1500] [--rate 50]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import redis
from tests.support.cluster import PIPELINE_SERVICES, cluster

from quantum_trader.bus.protocol import Message, stream_name
from quantum_trader.domain.models import TIMEFRAME_MS


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _entries(namespace: str, topic: str) -> list[tuple[int, Message]]:
    """(XADD time in ms, message) of every entry on ``topic``'s stream."""
    r = redis.Redis()
    out = []
    for entry_id, fields in r.xrange(namespace + stream_name(topic)):
        out.append((int(entry_id.split(b"-")[0]), Message.decode(fields[b"d"])))
    return out


def print_hops(namespace: str) -> None:
    """Where the time goes: per-hop delays from the streams' own XADD times (ms)."""
    bars = {m.payload["ts"] + TIMEFRAME_MS[m.payload["timeframe"]]: t
            for t, m in _entries(namespace, "market.bars")}
    signals = {m.trace_id: (t, m.payload["ts"]) for t, m in _entries(namespace, "signals")}
    approved = {m.trace_id: t for t, m in _entries(namespace, "orders.approved")
                if m.type == "intent" and m.payload["intent"].get("purpose") == "ENTRY"}
    hops: dict[str, list[float]] = {"bar -> signal": [], "signal -> approved": []}
    for trace, t_approved in approved.items():
        if trace not in signals:
            continue
        t_signal, bar_close = signals[trace]
        if bar_close in bars:
            hops["bar -> signal"].append(t_signal - bars[bar_close])
            hops["signal -> approved"].append(t_approved - t_signal)
    for name, xs in hops.items():
        xs.sort()
        if xs:
            print(f"  {name:<20} n={len(xs):>4}  p50 {xs[len(xs) // 2]:6.1f} ms  "
                  f"p99 {xs[min(len(xs) - 1, int(0.99 * len(xs)))]:6.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=1500)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--wrk-seconds", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, cluster(
            Path(tmp), **{"services.replay_pacing": "rate",
                          "services.replay_bars_per_second": args.rate,
                          "services.replay_max_bars": args.bars,
                          "strategy.fast": 2, "strategy.slow": 3,
                          "risk.cooldown_after_stop_ms": 0,
                          "risk.max_orders_per_minute": 100_000,
                          # production heartbeat timings (the test cluster's are 4x faster)
                          "services.heartbeat_interval_s": 1.0,
                          "services.heartbeat_stale_s": 5.0,
                          # measure /health itself, not the monitoring rate limit
                          "security.monitoring_limit": {"rate": 1e6, "burst": 1_000_000}}
    ) as c:
        for name in PIPELINE_SERVICES:
            c.start(name)
        c.wait_for(lambda: c.health("execution").get("status") == "OK", 30, "services up")
        cpu0 = {name: _cpu_seconds(p.pid) for name, p in c.procs.items()}
        time.sleep(args.bars / args.rate + 3)
        cpu = {name: _cpu_seconds(p.pid) - cpu0[name] for name, p in c.procs.items()}
        print("CPU per bar replayed: " + ", ".join(
            f"{name} {1000 * sec / args.bars:.2f} ms" for name, sec in cpu.items()))
        url = f"http://127.0.0.1:{c.ports['execution']}"
        stats = httpx.get(f"{url}/stats/latency", timeout=5,
                          headers={"Authorization": f"Bearer {c.token}"}).json()
        print(f"bar -> entry order accepted, across processes over Redis: {stats}")
        print_hops(c.namespace)
        if shutil.which("wrk") is None:
            print("wrk not installed (apt-get install wrk) - skipping /health load")
            return
        out = subprocess.run(["wrk", "-t2", "-c10", f"-d{args.wrk_seconds}s", "--latency",
                              f"{url}/health"], capture_output=True, text=True).stdout
        lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
        rps = re.search(r"Requests/sec:\s+(\S+)", out)
        print(f"/health under wrk -t2 -c10: p50 {lat.get('50')} p99 {lat.get('99')} "
              f"req/s {rps.group(1) if rps else '?'}")


if __name__ == "__main__":
    main()
