"""The backup jobs as the CLI, the scheduler and the systemd timer run them: back up, copy
off-site, prune, and record success (metric + a textfile for node_exporter)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantum_trader.observability.metrics import BACKUP_LAST_SUCCESS
from quantum_trader.ops import crypto
from quantum_trader.ops.backup import (
    BackupOptions,
    BackupResult,
    ProgressFactory,
    create_backup,
    no_progress,
    settings_payload,
)
from quantum_trader.ops.errors import BackupError
from quantum_trader.ops.manifest import PARTIAL, list_sets
from quantum_trader.ops.offsite import target_from_spec
from quantum_trader.ops.retention import (
    DEFAULT_POLICY,
    RetentionPlan,
    RetentionPolicy,
    plan_retention,
)

#: Sets still named ``.partial-`` after this long belong to a crashed backup: prune removes them.
STALE_PARTIAL_S = 24 * 3600
LAST_SUCCESS_FILE = "last-success"


def default_dest(settings: Any) -> Path:
    env = os.environ.get("QTBACKUP_DIR")
    return Path(env) if env else Path(settings.paths.state_dir) / "backups"


@dataclass
class JobResult:
    backup: BackupResult
    offsite: list[str] = field(default_factory=list)
    pruned: RetentionPlan | None = None


def default_redis_url(settings: Any) -> str | None:
    """The bus Redis of a distributed deployment (PostgreSQL store + Redis bus); embedded
    mode (SQLite, in-memory bus) has no Redis to back up."""
    services = getattr(settings, "services", None)
    url = getattr(services, "redis_url", None)
    if not url or getattr(services, "bus", "redis") != "redis":
        return None
    return str(url) if settings.store_url().startswith("postgresql") else None


def run_backup(settings: Any, dest: Path, *, key_file: Path | None = None,
               redis_url: str | None = None, redis_aof_dir: Path | None = None,
               include_db: bool = True, include_registry: bool = True,
               offsite: list[str] | None = None, s3_endpoint: str | None = None,
               prune: bool = False, policy: RetentionPolicy = DEFAULT_POLICY,
               metrics_textfile: Path | None = None,
               progress: ProgressFactory = no_progress) -> JobResult:
    key = crypto.load_key(key_file) if key_file is not None else None
    config, secrets = settings_payload(settings)
    opts = BackupOptions(
        dest=dest,
        db_url=settings.store_url() if include_db else None,
        redis_url=redis_url,
        registry_dir=Path(settings.paths.registry_dir) if include_registry else None,
        config=config,
        secrets=secrets,
        key=key,
        redis_aof_dir=redis_aof_dir,
    )
    result = create_backup(opts, progress)
    job = JobResult(result)
    for spec in offsite or []:
        target = target_from_spec(spec, s3_endpoint)
        advance = progress(f"copy to {target}", None)
        target.push(result.path)
        advance(1)
        job.offsite.append(str(target))
    if prune:
        job.pruned = prune_sets(dest, policy)
    record_success(dest, result.manifest["created_ts"], metrics_textfile)
    return job


def record_success(dest: Path, ts: float, textfile: Path | None = None) -> None:
    """Set the gauge (in-process scrapes) and leave the time on disk, since a timer-run backup
    process exits before Prometheus could scrape it."""
    BACKUP_LAST_SUCCESS.set(ts)
    (dest / LAST_SUCCESS_FILE).write_text(f"{ts:.3f}\n")
    if textfile is not None:
        textfile.parent.mkdir(parents=True, exist_ok=True)
        tmp = textfile.with_name(textfile.name + ".tmp")
        tmp.write_text(
            "# HELP backup_last_success_timestamp_seconds Unix time of the last backup that "
            "completed and verified\n# TYPE backup_last_success_timestamp_seconds gauge\n"
            f"backup_last_success_timestamp_seconds {ts:.3f}\n")
        tmp.replace(textfile)


def load_last_success(dest: Path) -> float | None:
    """Restore the gauge in a long-running process from the last recorded success."""
    try:
        ts = float((dest / LAST_SUCCESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    BACKUP_LAST_SUCCESS.set(ts)
    return ts


def prune_sets(dest: Path, policy: RetentionPolicy = DEFAULT_POLICY, *,
               now: float | None = None, dry_run: bool = False) -> RetentionPlan:
    now = time.time() if now is None else now
    sets = list_sets(dest)
    complete = {s.name: s.created_ts for s in sets if s.complete}
    plan = plan_retention(complete, now, policy)
    stale = [s.name for s in sets if s.name.startswith(PARTIAL)
             and now - s.created_ts > STALE_PARTIAL_S]
    if not dry_run:
        for name in [*plan.prune, *stale]:
            shutil.rmtree(dest / name)
    return RetentionPlan(plan.keep, [*plan.prune, *stale])


def resolve_set(ref: str, dest: Path) -> Path:
    """A set by path, by name inside ``dest``, or ``latest``."""
    p = Path(ref)
    if p.is_dir():
        return p
    if ref == "latest":
        done = [s for s in list_sets(dest) if s.complete]
        if not done:
            raise BackupError(f"no finished backup set in {dest}")
        return done[-1].path
    if (dest / ref).is_dir():
        return dest / ref
    raise BackupError(f"backup set {ref!r} not found (looked for a directory and in {dest})")
