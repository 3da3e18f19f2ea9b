"""Backup/restore time for a store with 1,000,000 fills, and the RPO of the Redis bus.

1. PostgreSQL: a fresh database filled by COPY (1,000,000 fills, 500,000 orders, 100,000
   equity points), then ``backup`` (pg_dump -Fc inside an exported snapshot + per-table
   checksums), ``restore`` into an empty database (that time is the RTO of the store), and the
   ``verify`` drill. Plain and encrypted sets.
2. SQLite: the same fills in an embedded store: online backup and restore.
3. Redis RPO with ``appendonly yes, appendfsync everysec``: a client XADDs a sequence as fast as
   it can, a second thread kill -9s the test-owned redis-server mid-stream, Redis restarts on
   the same directory, and we count acknowledged entries that did not come back.

Run: .venv/bin/python bench/bench_backup.py [--fills 1000000] [--rpo-trials 5]
Needs PostgreSQL (QT_TEST_PG_DSN, default postgres@127.0.0.1:5432) and redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

import asyncpg
import redis
from sqlalchemy.engine import make_url

from quantum_trader.ops.backup import BackupOptions, create_backup
from quantum_trader.ops.redis_snapshot import RedisServer
from quantum_trader.ops.restore import RestoreTargets, restore_set
from quantum_trader.ops.verify import verify_set
from quantum_trader.store.migrate import upgrade
from quantum_trader.store.urls import sqlite_url

ADMIN_DSN = os.environ.get("QT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
T0 = 1_600_000_000_000


def _url(name: str) -> str:
    return make_url(ADMIN_DSN).set(drivername="postgresql+asyncpg", database=name) \
        .render_as_string(hide_password=False)


def _dsn(name: str) -> str:
    return make_url(ADMIN_DSN).set(database=name).render_as_string(hide_password=False)


def fill_rows(n: int) -> list[tuple[object, ...]]:
    rnd = random.Random(7)
    return [(f"fill-{i:08d}", f"ord-{i // 2:08d}", f"qt-{i // 2:08d}", "BTCUSDT",
             "BUY" if i % 4 < 2 else "SELL", round(rnd.uniform(0.001, 2), 6),
             round(rnd.uniform(20_000, 70_000), 2), round(rnd.uniform(0, 5), 6), "TAKER",
             T0 + i * 1000, f"trace-{i // 2:08d}", round(rnd.uniform(-100, 100), 6), False)
            for i in range(n)]


def order_rows(n: int) -> list[tuple[object, ...]]:
    hist = json.dumps([["NEW", T0], ["SUBMITTED", T0 + 1], ["ACCEPTED", T0 + 2]])
    return [(f"ord-{i:08d}", f"qt-{i:08d}", f"int-{i:08d}", "BTCUSDT", "BUY", "MARKET", 1.0,
             "ENTRY", T0 + i * 2000, f"trace-{i:08d}", False, None, None, "FILLED", 1.0,
             40_000.0 + i % 1000, 0.5, T0 + i * 2000 + 5, None, "", "", hist)
            for i in range(n)]


def equity_rows(n: int) -> list[tuple[object, ...]]:
    return [(T0 + i * 60_000, 10_000.0 + i * 0.01, 10_000.0, i * 0.01, 0.0, 0.0)
            for i in range(n)]


async def make_pg_store(name: str, fills: int) -> float:
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    upgrade(_url(name))
    t0 = time.perf_counter()
    conn = await asyncpg.connect(_dsn(name))
    try:
        await conn.copy_records_to_table("fills", records=fill_rows(fills))
        await conn.copy_records_to_table("orders", records=order_rows(fills // 2))
        await conn.copy_records_to_table("equity_snapshots", records=equity_rows(100_000))
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - t0


async def drop(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def bench_postgres(fills: int, work: Path, repeat: int) -> None:
    src, dst = f"qt_bench_{secrets.token_hex(4)}", f"qt_bench_r_{secrets.token_hex(4)}"
    try:
        load_s = asyncio.run(make_pg_store(src, fills))
        print(f"PostgreSQL store: {fills:,} fills, {fills // 2:,} orders, 100,000 equity "
              f"points (COPY in {load_s:.1f}s)")
        for label, key in (("plain", None), ("AES-256-GCM", os.urandom(32))):
            t0 = time.perf_counter()
            res = create_backup(BackupOptions(dest=work / label, db_url=_url(src), key=key))
            backup_s = time.perf_counter() - t0
            db = res.manifest["components"]["database"]
            restores, pg_only = [], []
            for _ in range(repeat):
                t0 = time.perf_counter()
                report = restore_set(res.path, RestoreTargets(db_url=_url(dst)), key=key)
                restores.append(time.perf_counter() - t0)
                pg_only.append(report.timings["database"])
                asyncio.run(drop(dst))
            t0 = time.perf_counter()
            drill = verify_set(res.path, key=key, pg_url=_url(src))
            verify_s = time.perf_counter() - t0
            assert drill.ok, [c for c in drill.checks if not c.ok]
            print(f"  {label:<12} backup {backup_s:6.2f}s (dump+checksums "
                  f"{db['dump_seconds']:.2f}s) set {mib(res.size)}  | restore (RTO) "
                  f"best {min(restores):.2f}s worst {max(restores):.2f}s of {repeat} "
                  f"(pg_restore best {min(pg_only):.2f}s) | verify drill {verify_s:6.2f}s PASS")
    finally:
        asyncio.run(drop(src))
        asyncio.run(drop(dst))


def bench_sqlite(fills: int, work: Path) -> None:
    db = work / "live.db"
    upgrade(sqlite_url(db))
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executemany("INSERT INTO fills VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", fill_rows(fills))
    conn.executemany("INSERT INTO orders VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                     order_rows(fills // 2))
    conn.commit()
    conn.close()
    t0 = time.perf_counter()
    res = create_backup(BackupOptions(dest=work / "sq", db_url=sqlite_url(db)))
    backup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    restore_set(res.path, RestoreTargets(db_url=sqlite_url(work / "restored.db")))
    restore_s = time.perf_counter() - t0
    print(f"SQLite store ({fills:,} fills, {mib(db.stat().st_size)}): backup {backup_s:.2f}s "
          f"(incl. checksums), restore (RTO) {restore_s:.2f}s")


def rpo_trial(work: Path, run_s: float) -> tuple[int, int, float]:
    """(acknowledged, lost, write rate/s) for one kill -9 in the middle of a stream."""
    d = Path(tempfile.mkdtemp(dir=work, prefix="rpo-"))
    server = RedisServer(d, appendonly=True, extra=["--appendfsync", "everysec"]).start()
    port = server.port
    client = redis.Redis(port=port, socket_timeout=5)
    acked = 0
    stop = threading.Event()

    def killer() -> None:
        time.sleep(run_s * random.uniform(0.5, 1.0))
        server.kill()
        stop.set()

    threading.Thread(target=killer, daemon=True).start()
    t0 = time.perf_counter()
    try:
        while not stop.is_set():
            client.xadd("qt:executions", {"seq": acked + 1}, id=f"{acked + 1}-0")
            acked += 1  # counted only once Redis acknowledged it
    except (redis.ConnectionError, redis.TimeoutError):
        pass
    elapsed = time.perf_counter() - t0
    client.close()
    restarted = RedisServer(d, port=port, appendonly=True,
                            extra=["--appendfsync", "everysec"]).start()
    try:
        survived = restarted.client().xlen("qt:executions")
    finally:
        restarted.stop()
    return acked, acked - int(survived), acked / elapsed


def bench_rpo(trials: int, work: Path, run_s: float) -> None:
    results = [rpo_trial(work, run_s) for _ in range(trials)]
    lost = [r[1] for r in results]
    rate = statistics.median(r[2] for r in results)
    print(f"Redis RPO (appendonly yes, appendfsync everysec, kill -9 mid-stream, {trials} "
          f"trials): acknowledged {[r[0] for r in results]}, lost {lost} "
          f"(max {max(lost)} entries = {max(lost) / rate * 1000:.1f} ms of stream at "
          f"{rate:,.0f} XADD/s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fills", type=int, default=1_000_000)
    ap.add_argument("--rpo-trials", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="restores per set")
    ap.add_argument("--rpo-seconds", type=float, default=3.0)
    ap.add_argument("--skip-sqlite", action="store_true")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="qt-bench-backup-") as tmp:
        work = Path(tmp)
        bench_postgres(args.fills, work, args.repeat)
        if not args.skip_sqlite:
            bench_sqlite(args.fills, work)
        bench_rpo(args.rpo_trials, work, args.rpo_seconds)


if __name__ == "__main__":
    main()
