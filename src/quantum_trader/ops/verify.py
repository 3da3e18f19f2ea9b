"""``quantum-trader backup verify``: a full restore drill into scratch databases.

The set is checked (sizes, sha256, signature), then every component is restored somewhere
disposable and compared with what the source held at backup time:
- the database into a fresh PostgreSQL database ``qt_verify_<ts>`` (dropped afterwards) or a
  temporary SQLite file: row count and checksum per table against the manifest;
- Redis into a private ``redis-server`` loading the RDB (and another loading the AOF): the
  key count must lie between the counts seen just before and just after the snapshot;
- the registry into a temporary directory: sha256 of every file;
- the config: it must still validate as ``Settings``.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quantum_trader.ops.backup import ProgressFactory, no_progress
from quantum_trader.ops.database import (
    Database,
    TableStats,
    compare_stats,
    pg_drop,
    pg_recreate,
    pg_restore,
    pg_stats_of,
    run_async,
    sqlite_restore,
    sqlite_stats_of,
)
from quantum_trader.ops.errors import BackupError, BackupInvalid
from quantum_trader.ops.redis_snapshot import keyspace, scratch_redis
from quantum_trader.ops.restore import _restore_registry, check_set, stage_file


@dataclass(frozen=True, slots=True)
class Check:
    component: str
    item: str
    expected: str
    actual: str
    ok: bool


@dataclass
class VerifyReport:
    name: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, component: str, item: str, expected: Any, actual: Any, ok: bool) -> None:
        self.checks.append(Check(component, item, str(expected), str(actual), ok))


def _fmt(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "absent"
    return f"{stats['rows']} rows · {str(stats['checksum'])[:12]}"


def verify_set(set_dir: Path, *, key: bytes | None = None, pg_url: str | None = None,
               progress: ProgressFactory = no_progress) -> VerifyReport:
    """Restore drill. ``pg_url``: any database URL on the server to create the scratch
    database on (default: the source recorded in the set, which has no password)."""
    t0 = time.monotonic()
    report = VerifyReport(set_dir.name)
    try:
        manifest = check_set(set_dir, key, progress)
    except BackupInvalid as exc:
        for p in exc.problems:
            report.add("set", "integrity", "intact", p, False)
        report.seconds = time.monotonic() - t0
        return report
    report.add("set", f"{len(manifest['files'])} files", "sha256 as listed", "match", True)
    comps: dict[str, Any] = manifest["components"]
    parent = set_dir.parent if os.access(set_dir.parent, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix=".verify-", dir=parent) as tmp:
        staging = Path(tmp)
        for name, fn in (("database", _verify_db), ("redis", _verify_redis),
                         ("registry", _verify_registry), ("config", _verify_config)):
            if name not in comps:
                continue
            started = time.monotonic()
            advance = progress(f"drill {name}", None)
            try:
                fn(report, set_dir, manifest, staging, key, pg_url)
            except BackupError as exc:
                report.add(name, "restore", "restores", f"failed: {exc}", False)
            advance(1)
            report.timings[name] = round(time.monotonic() - started, 3)
    report.seconds = time.monotonic() - t0
    return report


def _add_table_checks(report: VerifyReport, expected: TableStats, actual: TableStats) -> None:
    for table, e, a, ok in compare_stats(expected, actual):
        report.add("database", table, _fmt(e), _fmt(a), ok)


def _verify_db(report: VerifyReport, set_dir: Path, manifest: dict[str, Any], staging: Path,
               key: bytes | None, pg_url: str | None) -> None:
    comp = manifest["components"]["database"]
    dump = stage_file(set_dir, manifest, comp["file"], staging, key)
    expected: TableStats = comp["tables"]
    if comp["kind"] == "sqlite":
        target = staging / "verify.sqlite"
        sqlite_restore(dump, target)
        _add_table_checks(report, expected, sqlite_stats_of(target))
        return
    base = Database.parse(pg_url or comp["source"])
    scratch = base.with_database(
        f"qt_verify_{time.strftime('%Y%m%d%H%M%S', time.gmtime())}_{secrets.token_hex(3)}")

    async def drill() -> TableStats:
        await pg_recreate(scratch, drop=False)
        try:
            await pg_restore(scratch, dump)
            return await pg_stats_of(scratch)
        finally:
            await pg_drop(scratch)

    _add_table_checks(report, expected, run_async(drill))


def _verify_redis(report: VerifyReport, set_dir: Path, manifest: dict[str, Any], staging: Path,
                  key: bytes | None, _pg: str | None) -> None:
    comp = manifest["components"]["redis"]
    before: dict[str, int] = comp["keys_before"]
    after: dict[str, int] = comp["keys_after"]
    rdb = stage_file(set_dir, manifest, comp["file"], staging, key)
    sources: list[tuple[str, Path | None, Path | None]] = [("rdb", rdb, None)]
    if comp.get("aof_file"):
        sources.append(("aof", None, stage_file(set_dir, manifest, comp["aof_file"], staging,
                                                key)))
    for label, rdb_path, aof_path in sources:
        with scratch_redis(rdb=rdb_path, aof_tar=aof_path) as server:
            got = keyspace(server.client())
        if not (before or after or got):
            report.add("redis", f"{label} keys", "0 keys", "0 keys", True)
        for db in sorted(set(before) | set(after) | set(got)):
            lo = min(before.get(db, 0), after.get(db, 0))
            hi = max(before.get(db, 0), after.get(db, 0))
            n = got.get(db, 0)
            # The AOF copy is taken after the snapshot, so it may hold a few more keys.
            ok = lo <= n <= hi if label == "rdb" else n >= lo
            want = f"{lo} keys" if lo == hi else f"{lo}..{hi} keys"
            report.add("redis", f"{label} {db}", want, f"{n} keys", ok)


def _verify_registry(report: VerifyReport, set_dir: Path, manifest: dict[str, Any],
                     staging: Path, key: bytes | None, _pg: str | None) -> None:
    comp = manifest["components"]["registry"]
    if not comp.get("present"):
        report.add("registry", "directory", "absent at backup", "absent", True)
        return
    tar = stage_file(set_dir, manifest, comp["file"], staging, key)
    try:
        _restore_registry(tar, staging / "registry", comp["files"])
    except BackupError as exc:
        report.add("registry", "files", f"{comp['count']} files", str(exc), False)
        return
    report.add("registry", "files", f"{comp['count']} files sha256",
               f"{comp['count']} files match", True)


def _verify_config(report: VerifyReport, set_dir: Path, manifest: dict[str, Any],
                   staging: Path, key: bytes | None, _pg: str | None) -> None:
    from quantum_trader.config import Settings

    comp = manifest["components"]["config"]
    cfg = stage_file(set_dir, manifest, comp["file"], staging, key)
    try:
        Settings.model_validate(yaml.safe_load(cfg.read_text()))
    except Exception as exc:  # pydantic ValidationError or YAML error: report, don't raise
        report.add("config", "settings", "valid", f"invalid: {exc}"[:200], False)
        return
    report.add("config", "settings", "valid", "valid", True)
