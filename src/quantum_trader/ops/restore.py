"""``quantum-trader restore``: checks a set completely before it changes anything.

Order of work, so a bad set or a busy target never leaves a half-restored deployment:
1. the manifest is present, well-formed and (with a key) correctly signed;
2. every listed file is present with the listed size and sha256;
3. every target is empty (or ``force``);
4. encrypted files are decrypted into a staging directory (authenticated, chunk by chunk);
5. only then are the database, Redis files, registry and config put in place.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantum_trader.ops import crypto
from quantum_trader.ops.backup import ProgressFactory, no_progress
from quantum_trader.ops.database import (
    Database,
    pg_is_empty,
    pg_recreate,
    pg_restore,
    run_async,
    sqlite_is_empty,
    sqlite_restore,
)
from quantum_trader.ops.errors import BackupError, BackupInvalid, TargetNotEmpty
from quantum_trader.ops.manifest import MANIFEST, PARTIAL, canonical, read_manifest, sha256_file


@dataclass(frozen=True)
class RestoreTargets:
    """Where each component goes; None skips it."""

    db_url: str | None = None
    redis_dir: Path | None = None  # data dir of the (stopped) Redis that will load the files
    redis_dbfilename: str = "dump.rdb"
    registry_dir: Path | None = None
    config_out: Path | None = None


@dataclass
class RestoreReport:
    name: str
    restored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def check_set(set_dir: Path, key: bytes | None = None,
              progress: ProgressFactory = no_progress) -> dict[str, Any]:
    """The manifest of a whole, untampered set; raises ``BackupInvalid`` listing every problem."""
    name = set_dir.name
    if name.startswith(PARTIAL):
        raise BackupInvalid(name, ["this is a partial set (the backup never finished)"])
    if not set_dir.is_dir():
        raise BackupInvalid(name, [f"{set_dir} is not a directory"])
    try:
        manifest = read_manifest(set_dir)
    except BackupError as exc:
        raise BackupInvalid(name, [str(exc)]) from None
    problems: list[str] = []
    if manifest.get("encrypted"):
        if key is None:
            raise BackupInvalid(name, ["the set is encrypted: pass --key-file (key id "
                                       f"{manifest.get('encryption', {}).get('key_id')})"])
        if manifest.get("encryption", {}).get("key_id") != crypto.key_id(key):
            raise BackupInvalid(name, ["the key given is not the key this set was made with"])
        sig = manifest.get("signature")
        if not isinstance(sig, str) or not crypto.signature_ok(key, canonical(manifest), sig):
            raise BackupInvalid(name, [f"{MANIFEST} signature does not match: the manifest "
                                       "was altered"])
    for fname, meta in sorted(manifest["files"].items()):
        path = set_dir / fname
        if "/" in fname or fname.startswith("."):
            problems.append(f"{fname}: not a plain file name")
            continue
        if not path.is_file():
            problems.append(f"{fname}: missing")
            continue
        size = path.stat().st_size
        if size != meta.get("size"):
            problems.append(f"{fname}: size {size} bytes, manifest says {meta.get('size')} "
                            "(truncated or altered)")
            continue
        digest = sha256_file(path, progress(f"verify {fname}", size))
        if digest != meta.get("sha256"):
            problems.append(f"{fname}: sha256 mismatch (altered or corrupted)")
    if problems:
        raise BackupInvalid(name, problems)
    return manifest


def stage_file(set_dir: Path, manifest: dict[str, Any], stored: str, staging: Path,
               key: bytes | None) -> Path:
    """The plaintext of one stored file: decrypted into ``staging``, or the file itself."""
    src = set_dir / stored
    if not manifest.get("encrypted"):
        return src
    assert key is not None
    out = staging / stored.removesuffix(".enc")
    crypto.decrypt_file(src, out, key)
    want = manifest["files"][stored].get("plain_sha256")
    if want and sha256_file(out) != want:
        raise BackupInvalid(set_dir.name, [f"{stored}: decrypted content does not match"])
    return out


def _dir_empty(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def restore_set(set_dir: Path, targets: RestoreTargets, *, key: bytes | None = None,
                force: bool = False, progress: ProgressFactory = no_progress,
                staging_root: Path | None = None) -> RestoreReport:
    t_start = time.monotonic()
    manifest = check_set(set_dir, key, progress)
    comps: dict[str, Any] = manifest["components"]
    report = RestoreReport(set_dir.name)

    # 3. Targets: collect every objection before touching anything.
    busy: list[str] = []
    db = Database.parse(targets.db_url) if targets.db_url and "database" in comps else None
    if db is not None:
        if db.kind != comps["database"]["kind"]:
            raise BackupError(f"the set holds a {comps['database']['kind']} database, the "
                              f"target is {db.kind}")
        empty, why = (run_async(lambda: pg_is_empty(db)) if db.kind == "postgresql"
                      else sqlite_is_empty(db.path))
        if not empty:
            busy.append(why)
    redis_c = comps.get("redis")
    if targets.redis_dir is not None and redis_c:
        rdb_target = targets.redis_dir / targets.redis_dbfilename
        if rdb_target.exists():
            busy.append(f"Redis snapshot {rdb_target} exists")
        aof_dirs = [p for p in targets.redis_dir.glob("appendonlydir*") if p.is_dir()] \
            if targets.redis_dir.is_dir() else []
        if aof_dirs:
            busy.append(f"Redis AOF directory {aof_dirs[0]} exists")
    reg = comps.get("registry")
    if targets.registry_dir is not None and reg and reg.get("present") \
            and not _dir_empty(targets.registry_dir):
        busy.append(f"model registry {targets.registry_dir} is not empty")
    if targets.config_out is not None and "config" in comps and targets.config_out.exists():
        busy.append(f"config file {targets.config_out} exists")
    if busy and not force:
        raise TargetNotEmpty(busy)

    # 4. Stage (decrypt) everything before the first write to a target.
    # Next to the set (same disk, room for it) unless that is read-only, e.g. a NAS mount.
    staging_parent = staging_root or (set_dir.parent if os.access(set_dir.parent, os.W_OK)
                                      else None)
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=staging_parent) as tmp:
        staging = Path(tmp)
        os.chmod(staging, 0o700)

        def stage(stored: str) -> Path:
            return stage_file(set_dir, manifest, stored, staging, key)

        plan: list[tuple[str, Callable[[], None]]] = []
        if db is not None:
            dump = stage(comps["database"]["file"])
            plan.append(("database", lambda: _restore_db(db, dump, force)))
        elif "database" in comps:
            report.skipped.append("database (no target URL)")
        if targets.redis_dir is not None and redis_c:
            rdb = stage(redis_c["file"])
            aof = stage(redis_c["aof_file"]) if redis_c.get("aof_file") else None
            rdir, fname = targets.redis_dir, targets.redis_dbfilename
            plan.append(("redis", lambda: _restore_redis(rdb, aof, rdir, fname, force)))
        elif redis_c:
            report.skipped.append("redis (no --redis-dir)")
        if targets.registry_dir is not None and reg and reg.get("present"):
            tar = stage(reg["file"])
            rd = targets.registry_dir
            plan.append(("registry", lambda: _restore_registry(tar, rd, reg["files"])))
        elif reg and reg.get("present"):
            report.skipped.append("registry (no target directory)")
        cfg = comps.get("config")
        if targets.config_out is not None and cfg:
            cfg_file = stage(cfg["file"])
            sec_file = stage(cfg["secrets_file"]) if cfg.get("secrets_file") else None
            out = targets.config_out
            plan.append(("config", lambda: _restore_config(cfg_file, sec_file, out)))
        elif cfg:
            report.skipped.append("config (no --config-out)")

        # 5. Apply.
        for label, action in plan:
            t0 = time.monotonic()
            advance = progress(f"restore {label}", None)
            action()
            advance(1)
            report.timings[label] = round(time.monotonic() - t0, 3)
            report.restored.append(label)
    report.seconds = time.monotonic() - t_start
    return report


def _restore_db(db: Database, dump: Path, force: bool) -> None:
    if db.kind == "postgresql":
        async def go() -> None:
            await pg_recreate(db, drop=force)
            await pg_restore(db, dump)
        run_async(go)
    else:
        sqlite_restore(dump, db.path)


def _restore_redis(rdb: Path, aof: Path | None, redis_dir: Path, dbfilename: str,
                   force: bool) -> None:
    redis_dir.mkdir(parents=True, exist_ok=True)
    if force:
        for old in redis_dir.glob("appendonlydir*"):
            if old.is_dir():
                shutil.rmtree(old)
    tmp = redis_dir / (dbfilename + ".restoring")
    shutil.copyfile(rdb, tmp)
    tmp.replace(redis_dir / dbfilename)
    if aof is not None:
        with tarfile.open(aof) as tar:
            tar.extractall(redis_dir, filter="tar")


def _restore_registry(tar_path: Path, target: Path, expected: dict[str, str]) -> None:
    """Extract next to the target, check every file's sha256, then swap it in."""
    from quantum_trader.ops.backup import registry_fingerprint

    target.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{target.name}.restoring-", dir=target.parent))
    try:
        with tarfile.open(tar_path) as tar:
            tar.extractall(new, filter="tar")
        got = registry_fingerprint(new)
        if got != expected:
            diff = sorted(set(got.items()) ^ set(expected.items()))[:5]
            raise BackupError(f"restored registry differs from the manifest: {diff}")
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{int(time.time())}")
            target.rename(old)
        new.rename(target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


def _restore_config(cfg: Path, secrets: Path | None, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cfg, out)
    if secrets is not None:
        sec_out = out.with_name(out.stem + ".secrets.yaml")
        fd = os.open(sec_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.read_bytes())
