"""``quantum-trader backup``: one consistent, timestamped backup set.

A set holds, each as one file listed in ``manifest.json`` with its size and sha256:

- ``database.dump`` (PostgreSQL, ``pg_dump -Fc``) or ``database.sqlite`` (SQLite online backup),
  with per-table row counts and checksums of the same snapshot;
- ``redis.rdb`` (snapshot over the replication protocol) and ``redis-aof.tar`` when AOF is on;
- ``registry.tar``: the model registry directory, byte for byte, with a sha256 per file;
- ``config.yaml``: the settings without secrets; ``secrets.yaml`` only when encrypting.

With a key every file is stored encrypted (``.enc``, AES-256-GCM) and the manifest is signed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quantum_trader import __version__
from quantum_trader.ops import crypto
from quantum_trader.ops.database import Database, pg_dump, run_async, sqlite_backup
from quantum_trader.ops.errors import BackupError
from quantum_trader.ops.manifest import (
    FORMAT,
    PARTIAL,
    dir_size,
    fsync_dir,
    set_name,
    sha256_file,
    write_manifest,
)
from quantum_trader.ops.redis_snapshot import (
    RedisEndpoint,
    aof_info,
    archive_aof,
    fetch_rdb,
    keyspace,
)

#: Called with (step description, total units or None); returns an "advance by n" function.
ProgressFactory = Callable[[str, float | None], Callable[[float], None]]


def no_progress(_desc: str, _total: float | None) -> Callable[[float], None]:
    return lambda _n: None


@dataclass(frozen=True)
class BackupOptions:
    dest: Path
    db_url: str | None = None
    redis_url: str | None = None
    registry_dir: Path | None = None
    config: dict[str, Any] | None = None  # settings without secrets
    secrets: dict[str, str] = field(default_factory=dict)  # stored only when encrypting
    key: bytes | None = None
    redis_aof_dir: Path | None = None
    pg_compress: int = 1


@dataclass(frozen=True)
class BackupResult:
    name: str
    path: Path
    manifest: dict[str, Any]
    size: int
    seconds: float


def settings_payload(settings: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """(config without secrets, secret values by name) of a ``Settings``."""
    config: dict[str, Any] = settings.model_dump(mode="json", exclude={"secrets"})
    secrets: dict[str, str] = {}
    for name, value in settings.secrets:
        if value is not None:
            secrets[name] = value.get_secret_value()
    return config, secrets


def create_backup(opts: BackupOptions, progress: ProgressFactory = no_progress,
                  clock: Callable[[], float] = time.time) -> BackupResult:
    started = time.monotonic()
    created = clock()
    opts.dest.mkdir(parents=True, exist_ok=True)
    name = _unique_name(opts.dest, set_name(created))
    work = opts.dest / (PARTIAL + name)
    work.mkdir(mode=0o700)
    try:
        manifest = _build(opts, work, name, created, progress)
        final = opts.dest / name
        write_manifest(work, manifest, opts.key)
        fsync_dir(work)
        work.rename(final)  # the set exists under its real name only once it is whole
        fsync_dir(opts.dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return BackupResult(name, final, manifest, dir_size(final), time.monotonic() - started)


def _unique_name(dest: Path, base: str) -> str:
    name, n = base, 1
    while (dest / name).exists() or (dest / (PARTIAL + name)).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _build(opts: BackupOptions, work: Path, name: str, created: float,
           progress: ProgressFactory) -> dict[str, Any]:
    files: dict[str, dict[str, Any]] = {}
    components: dict[str, dict[str, Any]] = {}

    def add(plain: Path, kind: str) -> str:
        """Encrypt (if keyed), fingerprint and list one file; returns its stored name."""
        stored = plain
        plain_sha = None
        if opts.key is not None:
            plain_sha = sha256_file(plain)
            stored = plain.with_name(plain.name + ".enc")
            advance = progress(f"encrypt {plain.name}", plain.stat().st_size)
            crypto.encrypt_file(plain, stored, opts.key)
            advance(plain.stat().st_size)
            plain.unlink()
        size = stored.stat().st_size
        advance = progress(f"checksum {stored.name}", size)
        entry: dict[str, Any] = {"size": size, "sha256": sha256_file(stored, advance),
                                 "kind": kind}
        if plain_sha is not None:
            entry["plain_sha256"] = plain_sha
        files[stored.name] = entry
        return stored.name

    if opts.db_url:
        components["database"] = _backup_database(opts, work, progress, add)
    if opts.redis_url:
        components["redis"] = _backup_redis(opts, work, progress, add)
    if opts.registry_dir is not None:
        components["registry"] = _backup_registry(opts.registry_dir, work, progress, add)
    if opts.config is not None:
        components["config"] = _backup_config(opts, work, add)
    if not components:
        raise BackupError("nothing to back up: no database, Redis, registry or config given")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "created_ts": created,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        "host": platform.node(),
        "quantum_trader": __version__,
        "encrypted": opts.key is not None,
        "components": components,
        "files": files,
    }
    if opts.key is not None:
        manifest["encryption"] = {"algorithm": "AES-256-GCM, 1 MiB chunks",
                                  "key_id": crypto.key_id(opts.key)}
    return manifest


AddFile = Callable[[Path, str], str]


def _backup_database(opts: BackupOptions, work: Path, progress: ProgressFactory,
                     add: AddFile) -> dict[str, Any]:
    assert opts.db_url is not None
    db = Database.parse(opts.db_url)
    t0 = time.monotonic()
    advance = progress(f"dump {db.kind} {db.name if db.kind == 'postgresql' else ''}".strip(),
                       None)
    if db.kind == "postgresql":
        out = work / "database.dump"
        stats = run_async(lambda: pg_dump(db, out, compress=opts.pg_compress))
    else:
        out = work / "database.sqlite"
        stats = sqlite_backup(db.path, out)
    advance(1)
    dump_s = time.monotonic() - t0
    stored = add(out, f"database-{db.kind}")
    return {"kind": db.kind, "file": stored, "source": str(db), "tables": stats,
            "dump_seconds": round(dump_s, 3)}


def _backup_redis(opts: BackupOptions, work: Path, progress: ProgressFactory,
                  add: AddFile) -> dict[str, Any]:
    assert opts.redis_url is not None
    ep = RedisEndpoint.parse(opts.redis_url)
    client = ep.client()
    try:
        before = keyspace(client)
        aof = aof_info(client, opts.redis_aof_dir)
    except Exception as exc:  # redis-py raises many types; all mean "cannot reach it"
        raise BackupError(f"cannot query Redis at {ep}: {exc}") from None
    rdb = work / "redis.rdb"
    fetch_rdb(ep, rdb, progress(f"snapshot {ep}", None))
    after = keyspace(client)
    try:
        out: dict[str, Any] = {"source": str(ep), "file": add(rdb, "redis-rdb"),
                               "keys_before": before, "keys_after": after,
                               "aof_enabled": aof.enabled}
        if aof.enabled and aof.directory is not None:
            tar = work / "redis-aof.tar"
            archive_aof(client, aof.directory, tar)
            out["aof_file"] = add(tar, "redis-aof")
        elif aof.enabled:
            # AOF on another machine: the RDB still holds the data; say what is missing.
            out["aof_note"] = "AOF enabled but its directory is not readable here " \
                "(--redis-aof-dir)"
    finally:
        client.close()
    return out


def _registry_files(root: Path) -> Iterator[Path]:
    """Files and symlinks (a ``production`` pointer may be a link to a version directory)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        links = [d for d in dirnames if (Path(dirpath) / d).is_symlink()]
        for f in sorted([*filenames, *links]):
            yield Path(dirpath) / f


def registry_fingerprint(root: Path) -> dict[str, str]:
    """relative path -> sha256 for every regular file (symlinks: ``link:<target>``)."""
    out: dict[str, str] = {}
    for p in _registry_files(root):
        rel = p.relative_to(root).as_posix()
        out[rel] = f"link:{os.readlink(p)}" if p.is_symlink() else sha256_file(p)
    return out


def _backup_registry(root: Path, work: Path, progress: ProgressFactory,
                     add: AddFile) -> dict[str, Any]:
    if not root.is_dir():
        return {"present": False, "source": str(root)}
    tar_path = work / "registry.tar"
    paths = list(_registry_files(root))
    advance = progress("registry", len(paths))
    # Uncompressed: model artifacts are mostly compressed already; tar keeps modes and mtimes.
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, _ in os.walk(root):
            dirnames.sort()
            for d in dirnames:
                if (Path(dirpath) / d).is_symlink():
                    continue  # added with the files
                tar.add(Path(dirpath) / d, arcname=(Path(dirpath) / d).relative_to(root)
                        .as_posix(), recursive=False)
        for p in paths:
            # A trainer's temp file renamed away meanwhile is not part of the registry.
            with contextlib.suppress(FileNotFoundError):
                tar.add(p, arcname=p.relative_to(root).as_posix(), recursive=False)
            advance(1)
    with tarfile.open(tar_path) as tar:
        # Fingerprint what went into the tar, not the live tree a trainer may be writing.
        files = _tar_fingerprint(tar)
    return {"present": True, "source": str(root), "file": add(tar_path, "registry"),
            "files": files, "count": len(files)}


def _tar_fingerprint(tar: tarfile.TarFile) -> dict[str, str]:
    import hashlib

    out: dict[str, str] = {}
    for m in tar.getmembers():
        if m.issym():
            out[m.name] = f"link:{m.linkname}"
        elif m.isfile():
            fh = tar.extractfile(m)
            assert fh is not None
            h = hashlib.sha256()
            while block := fh.read(1 << 20):
                h.update(block)
            out[m.name] = h.hexdigest()
    return out


def _backup_config(opts: BackupOptions, work: Path, add: AddFile) -> dict[str, Any]:
    assert opts.config is not None
    cfg = work / "config.yaml"
    header = "# Quantum Trader settings at backup time. Secrets are not in this file.\n"
    cfg.write_text(header + yaml.safe_dump(opts.config, sort_keys=True))
    out: dict[str, Any] = {"file": add(cfg, "config"), "secret_names": sorted(opts.secrets)}
    if opts.key is not None and opts.secrets:
        sec = work / "secrets.yaml"
        with _private(sec) as fh:
            fh.write(yaml.safe_dump(opts.secrets))
        out["secrets_file"] = add(sec, "secrets")
    return out


@contextlib.contextmanager
def _private(path: Path) -> Iterator[Any]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yield fh
