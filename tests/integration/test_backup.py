"""Backup and restore against a real PostgreSQL, real Redis servers and real SQLite files.

Never skipped: a missing PostgreSQL or redis-server fails with a message saying what to start.
Each test owns its PostgreSQL databases (dropped afterwards) and its redis-server processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from quantum_trader.config import Settings
from quantum_trader.domain.enums import IntentPurpose, Liquidity, OrderStatus, OrderType, Side
from quantum_trader.domain.models import Fill
from quantum_trader.domain.orders import Order, client_order_id_for
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.ops import crypto
from quantum_trader.ops.backup import BackupOptions, create_backup, settings_payload
from quantum_trader.ops.errors import BackupInvalid, TargetNotEmpty
from quantum_trader.ops.manifest import MANIFEST, read_manifest
from quantum_trader.ops.redis_snapshot import RedisServer
from quantum_trader.ops.restore import RestoreTargets, restore_set
from quantum_trader.ops.verify import verify_set
from quantum_trader.runtime.paper import run_paper
from quantum_trader.store.sql import SqlTradeStore
from quantum_trader.store.urls import sqlite_url

pytestmark = pytest.mark.integration

ADMIN_DSN = os.environ.get("QT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
SETTINGS = Settings.model_validate({
    "risk": {"max_drawdown": 0.9, "daily_loss_limit": 0.5, "min_confidence": 0.5},
    "exits": {"trailing_stop": 0.04, "trailing_activation": 0.01},
})


# --- fixtures ---------------------------------------------------------------------------------


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(ADMIN_DSN, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_DSN}: {exc}. Start it (bash "
                    "scripts/ensure-services.sh) or set QT_TEST_PG_DSN; this test does not skip.",
                    pytrace=False)


def _url(name: str) -> str:
    return make_url(ADMIN_DSN).set(drivername="postgresql+asyncpg", database=name) \
        .render_as_string(hide_password=False)


async def _drop(name: str) -> None:
    admin = await _admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pg_names() -> AsyncIterator[list[str]]:
    """Databases the test creates; every one is dropped afterwards (the verify drill drops
    its own qt_verify_ database)."""
    names: list[str] = []
    yield names
    for n in names:
        await _drop(n)


async def _fresh_db(names: list[str]) -> str:
    name = f"qt_test_bk_{secrets.token_hex(5)}"
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    names.append(name)
    return name


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server); "
                    "this test does not skip.", pytrace=False)
    server = RedisServer(tmp_path / "redis-data", appendonly=True,
                         extra=["--appendfsync", "everysec", "--repl-diskless-sync-delay", "0"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_registry(root: Path) -> None:
    """An opaque registry tree: versioned binary artifacts, manifests and a pointer link."""
    for version in ("v0001", "v0002"):
        d = root / "default" / version
        d.mkdir(parents=True)
        (d / "model.bin").write_bytes(os.urandom(50_000))
        (d / "manifest.json").write_text(f'{{"version": "{version}"}}\n')
        os.chmod(d / "model.bin", 0o640)
    (root / "default" / "production").symlink_to("v0002")
    (root / "default" / "history.jsonl").write_text('{"action": "promote"}\n')


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() + f":{p.stat().st_mode:o}"
    return out


async def trade(url: str, bars: int = 1200) -> dict[str, Any]:
    store = SqlTradeStore(url, create=True)
    await store.open()
    try:
        await run_paper(SETTINGS, [load_sample("XRP").slice(0, bars)], store, batch=100)
        return await snapshot(store)
    finally:
        await store.close()


async def snapshot(store: SqlTradeStore) -> dict[str, Any]:
    return {
        "orders": await store.orders(),
        "fills": await store.fills(),
        "positions": await store.positions(),
        "trades": await store.trades(limit=100_000),
        "decisions": await store.decisions(),
        "equity": await store.equity_curve(),
        "counts": await store.counts(),
    }


async def read_store(url: str) -> dict[str, Any]:
    store = SqlTradeStore(url)
    await store.open()
    try:
        return await snapshot(store)
    finally:
        await store.close()


def redis_streams(server: RedisServer) -> dict[str, Any]:
    c = server.client()
    return {k: c.xrange(k) if c.type(k) == "stream" else c.dump(k)
            for k in sorted(c.keys("*"))}


# --- must show: trade, back up, destroy, restore ----------------------------------------------


async def test_trade_backup_destroy_restore_on_postgres_and_redis(
        tmp_path: Path, pg_names: list[str], redis_server: RedisServer) -> None:
    name = await _fresh_db(pg_names)
    url = _url(name)
    before = await trade(url)
    assert before["counts"]["fills"] > 20
    assert before["counts"]["orders"] > 20
    assert before["trades"], "the slice must close trades"

    registry = tmp_path / "models"
    make_registry(registry)
    registry_before = tree_digest(registry)
    r = redis_server.client()
    for i in range(500):
        r.xadd("qt:executions", {"i": str(i), "kind": "fill"})
    r.hset("qt:state", mapping={"trading_state": "ACTIVE"})
    redis_before = redis_streams(redis_server)

    key_file = crypto.generate_key(tmp_path / "backup.key")
    key = crypto.load_key(key_file)
    settings = SETTINGS.model_copy(update={"secrets": SETTINGS.secrets.model_copy(
        update={"approval_hmac_key": SecretStr("hmac-s3cret")})})
    config, secret_values = settings_payload(settings)
    dest = tmp_path / "backups"
    res = create_backup(BackupOptions(dest=dest, db_url=url, redis_url=redis_server.url,
                                      registry_dir=registry, config=config,
                                      secrets=secret_values, key=key))
    manifest = read_manifest(res.path)
    assert manifest["encrypted"]
    assert manifest["components"]["redis"]["aof_file"]
    assert manifest["components"]["database"]["tables"]["fills"]["rows"] == \
        before["counts"]["fills"]
    # Secrets never reach the set in clear text (the set is encrypted, config has none).
    for f in res.path.iterdir():
        assert b"hmac-s3cret" not in f.read_bytes()

    drill = verify_set(res.path, key=key, pg_url=url)
    assert drill.ok, [c for c in drill.checks if not c.ok]
    assert {c.component for c in drill.checks} >= {"database", "redis", "registry", "config"}

    # Destroy everything.
    await _drop(name)
    shutil.rmtree(registry)
    redis_server.stop()
    shutil.rmtree(redis_server.directory)

    redis_dir = tmp_path / "redis-restored"
    report = restore_set(res.path, RestoreTargets(
        db_url=url, redis_dir=redis_dir, registry_dir=registry,
        config_out=tmp_path / "restored.yaml"), key=key)
    assert report.restored == ["database", "redis", "registry", "config"]

    after = await read_store(url)
    for k in ("orders", "fills", "positions", "trades", "decisions", "equity", "counts"):
        assert after[k] == before[k], k
    assert tree_digest(registry) == registry_before
    restored = RedisServer(redis_dir, appendonly=True,
                           extra=["--appenddirname", "appendonlydir"]).start()
    try:
        assert redis_streams(restored) == redis_before
    finally:
        restored.stop()
    assert "approval_hmac_key" not in (tmp_path / "restored.yaml").read_text()
    assert "hmac-s3cret" in (tmp_path / "restored.secrets.yaml").read_text()
    restored_cfg = yaml.safe_load((tmp_path / "restored.yaml").read_text())
    assert Settings.model_validate(restored_cfg).paths == SETTINGS.paths

    # A tampered set is refused even with --force, and the restored database is untouched.
    enc = res.path / "database.dump.enc"
    data = bytearray(enc.read_bytes())
    data[100] ^= 0xFF
    enc.write_bytes(bytes(data))
    with pytest.raises(BackupInvalid, match=r"database.dump.enc: sha256 mismatch"):
        restore_set(res.path, RestoreTargets(db_url=url, registry_dir=registry), key=key,
                    force=True)
    assert await read_store(url) == before
    assert tree_digest(registry) == registry_before


# --- must show: a backup taken while trading is consistent ------------------------------------


def _order(i: int) -> Order:
    intent = f"int-{i}"
    return Order(id=f"ord-{i}", client_order_id=client_order_id_for(intent), intent_id=intent,
                 symbol="BTCUSDT", side=Side.BUY, order_type=OrderType.MARKET, quantity=0.01,
                 purpose=IntentPurpose.ENTRY, created_ts=1_700_000_000_000 + i,
                 trace_id=f"t{i}", reduce_only=False, status=OrderStatus.NEW,
                 updated_ts=1_700_000_000_000 + i)


def _fill(i: int) -> Fill:
    return Fill(f"fill-{i}", f"ord-{i}", client_order_id_for(f"int-{i}"), "BTCUSDT", Side.BUY,
                0.01, 60_000.0 + i, 0.3, Liquidity.TAKER, 1_700_000_000_000 + i, f"t{i}")


async def _writer(url: str, stop: asyncio.Event, written: list[int]) -> None:
    """Like execution: the order is committed first, its fill in a later transaction."""
    store = SqlTradeStore(url)
    await store.open()
    try:
        i = 0
        while not stop.is_set():
            await store.write([_order(i)])
            await store.write([_fill(i)])
            written.append(i)
            i += 1
            await asyncio.sleep(0)
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_backup_while_trading_is_consistent(tmp_path: Path, pg_names: list[str],
                                                  backend: str) -> None:
    if backend == "postgresql":
        url = _url(await _fresh_db(pg_names))
    else:
        url = sqlite_url(tmp_path / "live.db")
    async with SqlTradeStore(url, create=True) as s:
        # Some history first, so the dump takes long enough to overlap many writes.
        await s.write([e for i in range(100_000, 103_000) for e in (_order(i), _fill(i))])
    stop, written = asyncio.Event(), []
    writer = asyncio.create_task(_writer(url, stop, written))
    for _ in range(1000):  # let it get going
        if len(written) >= 20:
            break
        await asyncio.sleep(0.01)
    res = await asyncio.to_thread(create_backup, BackupOptions(dest=tmp_path / "b", db_url=url))
    n_during = len(written)
    await asyncio.sleep(0.2)
    stop.set()
    await writer
    assert len(written) > n_during > 20, "the writer must have been running during the backup"

    tables = read_manifest(res.path)["components"]["database"]["tables"]
    if backend == "postgresql":
        target_name = await _fresh_db(pg_names)
        target = _url(target_name)
        restore_set(res.path, RestoreTargets(db_url=target))
        conn = await asyncpg.connect(ADMIN_DSN.rsplit("/", 1)[0] + "/" + target_name)
        try:
            orphans = await conn.fetchval(
                "SELECT count(*) FROM fills f LEFT JOIN orders o ON o.id = f.order_id "
                "WHERE o.id IS NULL")
            counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t}")
                      for t in ("orders", "fills")}
        finally:
            await conn.close()
    else:
        target_path = tmp_path / "restored.db"
        restore_set(res.path, RestoreTargets(db_url=sqlite_url(target_path)))
        conn2 = sqlite3.connect(target_path)
        try:
            orphans = conn2.execute(
                "SELECT count(*) FROM fills f LEFT JOIN orders o ON o.id = f.order_id "
                "WHERE o.id IS NULL").fetchone()[0]
            counts = {t: conn2.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                      for t in ("orders", "fills")}
        finally:
            conn2.close()
    assert orphans == 0, "a fill without its order: the backup was not a snapshot"
    # The manifest's counts were taken in the dump's own snapshot.
    assert counts == {t: tables[t]["rows"] for t in ("orders", "fills")}
    assert 3000 < counts["fills"] < 3000 + len(written)


# --- must show: a tampered, truncated or partial set is refused; nothing overwritten ----------


@pytest.fixture
def sqlite_set(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A SQLite store with data, a registry, and one backup set of both."""
    db = tmp_path / "live.db"
    asyncio.run(_seed(sqlite_url(db)))
    registry = tmp_path / "models"
    make_registry(registry)
    res = create_backup(BackupOptions(dest=tmp_path / "backups", db_url=sqlite_url(db),
                                      registry_dir=registry))
    return res.path, db, registry


async def _seed(url: str) -> None:
    async with SqlTradeStore(url, create=True) as s:
        await s.write([e for i in range(50) for e in (_order(i), _fill(i))])


def _state(*paths: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in paths:
        out[str(p)] = tree_digest(p) if p.is_dir() else \
            (p.read_bytes() if p.exists() else None)
    return out


def test_tampered_set_is_refused_and_nothing_is_overwritten(
        sqlite_set: tuple[Path, Path, Path], tmp_path: Path) -> None:
    set_dir, _db, _registry = sqlite_set
    # A deployment that holds *other* data: a refused restore must leave it exactly as it was.
    target_db, target_reg = tmp_path / "target.db", tmp_path / "target-models"
    asyncio.run(_seed(sqlite_url(target_db)))
    target_reg.mkdir()
    (target_reg / "keep.bin").write_bytes(b"precious")
    before = _state(target_db, target_reg)
    targets = RestoreTargets(db_url=sqlite_url(target_db), registry_dir=target_reg)

    dump = set_dir / "database.sqlite"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    with pytest.raises(BackupInvalid, match=r"database.sqlite: sha256 mismatch"):
        restore_set(set_dir, targets, force=True)
    assert _state(target_db, target_reg) == before
    assert not verify_set(set_dir).ok


def test_truncated_and_partial_sets_are_refused(sqlite_set: tuple[Path, Path, Path],
                                                tmp_path: Path) -> None:
    set_dir, _db, _reg = sqlite_set
    target = tmp_path / "empty-target.db"
    targets = RestoreTargets(db_url=sqlite_url(target), registry_dir=tmp_path / "t-models")

    tar = set_dir / "registry.tar"
    tar.write_bytes(tar.read_bytes()[:-4096])
    with pytest.raises(BackupInvalid, match=r"registry.tar: size .* \(truncated or altered\)"):
        restore_set(set_dir, targets)
    assert not target.exists()
    assert not (tmp_path / "t-models").exists()

    (set_dir / MANIFEST).unlink()
    with pytest.raises(BackupInvalid, match="partial set"):
        restore_set(set_dir, targets)
    assert not target.exists()


def test_encrypted_set_refuses_tampering_truncation_and_wrong_key(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    asyncio.run(_seed(sqlite_url(db)))
    key = crypto.load_key(crypto.generate_key(tmp_path / "k"))
    res = create_backup(BackupOptions(dest=tmp_path / "b", db_url=sqlite_url(db), key=key))
    targets = RestoreTargets(db_url=sqlite_url(tmp_path / "out.db"))

    with pytest.raises(BackupInvalid, match="encrypted: pass --key-file"):
        restore_set(res.path, targets)
    with pytest.raises(BackupInvalid, match="not the key"):
        restore_set(res.path, targets, key=os.urandom(32))
    # A forger who fixes up the checksums in the manifest is caught by its signature.
    man = res.path / MANIFEST
    text = man.read_text()
    enc = res.path / "database.sqlite.enc"
    enc.write_bytes(enc.read_bytes()[:-100])
    m = json.loads(text)
    m["files"]["database.sqlite.enc"]["size"] = enc.stat().st_size
    m["files"]["database.sqlite.enc"]["sha256"] = hashlib.sha256(enc.read_bytes()).hexdigest()
    man.write_text(json.dumps(m))
    with pytest.raises(BackupInvalid, match="signature does not match"):
        restore_set(res.path, targets, key=key)
    assert not (tmp_path / "out.db").exists()


def test_non_empty_target_needs_force(sqlite_set: tuple[Path, Path, Path],
                                      tmp_path: Path) -> None:
    set_dir, db, registry = sqlite_set
    expected = asyncio.run(read_store(sqlite_url(db)))
    target_db = tmp_path / "target.db"
    asyncio.run(_seed_other(sqlite_url(target_db)))
    before = target_db.read_bytes()
    targets = RestoreTargets(db_url=sqlite_url(target_db), registry_dir=registry)
    with pytest.raises(TargetNotEmpty, match=r"has \d+ tables[\s\S]*registry .* not empty"):
        restore_set(set_dir, targets)
    assert target_db.read_bytes() == before
    restore_set(set_dir, targets, force=True)
    assert asyncio.run(read_store(sqlite_url(target_db))) == expected


async def _seed_other(url: str) -> None:
    async with SqlTradeStore(url, create=True) as s:
        await s.write([_order(999), _fill(999)])


def test_verify_on_sqlite_reports_every_table(sqlite_set: tuple[Path, Path, Path]) -> None:
    set_dir, _db, _reg = sqlite_set
    t0 = time.monotonic()
    report = verify_set(set_dir)
    assert report.ok, report.checks
    tables = {c.item for c in report.checks if c.component == "database"}
    assert {"orders", "fills", "positions", "alembic_version"} <= tables
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("diskless", ["yes", "no"])
def test_redis_snapshot_over_the_replication_protocol(tmp_path: Path, diskless: str) -> None:
    """Both transfer forms Redis may choose: streamed with an EOF marker (diskless) and a
    length-prefixed RDB written on the server first."""
    from quantum_trader.ops.redis_snapshot import RedisEndpoint, fetch_rdb, scratch_redis

    server = RedisServer(tmp_path / "src", extra=["--repl-diskless-sync", diskless,
                                                  "--repl-diskless-sync-delay", "0"]).start()
    try:
        c = server.client()
        pipe = c.pipeline()
        for i in range(20_000):
            pipe.xadd("qt:signals", {"i": str(i), "pad": "x" * 50})
            if i % 40 == 0:
                pipe.set(f"k{i}", str(i))
        pipe.execute()
        expected = redis_streams(server)
        size = fetch_rdb(RedisEndpoint.parse(server.url), tmp_path / "snap.rdb")
    finally:
        server.stop()
    assert size == (tmp_path / "snap.rdb").stat().st_size > 100_000
    with scratch_redis(rdb=tmp_path / "snap.rdb") as restored:
        assert redis_streams(restored) == expected
