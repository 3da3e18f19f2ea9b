"""``backup [verify|list|prune|keygen]`` and ``restore``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from quantum_trader.analytics.tables import FitColumn, FittedTable
from quantum_trader.cli.common import (
    ConfigOpt,
    ErrorBoundaryGroup,
    UserError,
    check_writable_dir,
    console,
    err,
    fmt_time,
)
from quantum_trader.cli.common import settings as load_cli_settings
from quantum_trader.config import Settings
from quantum_trader.ops.errors import BackupError

backup_app = typer.Typer(cls=ErrorBoundaryGroup,
                         help="Backups: create (default), verify, list, prune, keygen.",
                         invoke_without_command=True, no_args_is_help=False)

# The options' environment variables are QTBACKUP_*: the settings' own prefix would read them
# as settings keys and refuse them as unknown.
DestOpt = Annotated[Path | None, typer.Option(
    "--dest", help="Backup directory (default $QTBACKUP_DIR or <state_dir>/backups)")]
KeyOpt = Annotated[Path | None, typer.Option(
    "--key-file", envvar="QTBACKUP_KEY_FILE",
    help="Encryption key file (32 bytes; make one with `backup keygen`)")]
RedisOpt = Annotated[str | None, typer.Option(
    "--redis-url", envvar="QTBACKUP_REDIS_URL", help="Redis to snapshot (omit: no Redis)")]
S3EndpointOpt = Annotated[str | None, typer.Option(
    "--s3-endpoint", envvar="AWS_ENDPOINT_URL", help="S3-compatible endpoint URL")]
OffsiteOpt = Annotated[list[str] | None, typer.Option(
    "--offsite", envvar="QTBACKUP_OFFSITE",
    help="Copy to DIR, rsync:DEST or s3://bucket/prefix (repeatable; env: space-separated)")]
PolicyOpt = Annotated[str, typer.Option(
    "--policy", envvar="QTBACKUP_RETENTION",
    help="Retention tiers EVERY:KEEP_FOR (default: 6h:7d,1d:30d,1w:12w)")]


def _dest(settings: Settings, dest: Path | None) -> Path:
    from quantum_trader.ops.service import default_dest

    path = dest if dest is not None else default_dest(settings)
    if path.exists() and not path.is_dir():
        raise UserError(f"{'--dest' if dest else 'backup directory'} {path}: not a directory")
    return path


def _policy(text: str) -> Any:
    from quantum_trader.ops.retention import RetentionPolicy

    try:
        return RetentionPolicy.parse(text)
    except ValueError as exc:
        raise UserError(f"--policy {text!r}: {exc}") from None


@contextmanager
def _progress() -> Iterator[Callable[[str, float | None], Callable[[float], None]]]:
    """A rich progress display on stderr; each step is a task (a bar when its size is known)."""
    cols = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
            DownloadColumn(), TimeElapsedColumn())
    with Progress(*cols, console=err, transient=False,
                  disable=not err.is_terminal) as progress:
        last: list[Any] = []

        def factory(desc: str, total: float | None) -> Callable[[float], None]:
            for tid in last:  # the previous step is done when the next starts
                t = progress.tasks[tid]
                progress.update(tid, total=t.completed or 1, completed=t.completed or 1)
            last.clear()
            tid = progress.add_task(desc, total=total)
            last.append(tid)
            return lambda n: progress.advance(tid, n)

        yield factory
        for tid in last:
            t = progress.tasks[tid]
            progress.update(tid, total=t.completed or 1, completed=t.completed or 1)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@backup_app.callback()
def backup(
    ctx: typer.Context,
    config: ConfigOpt = None,
    dest: DestOpt = None,
    key_file: KeyOpt = None,
    redis_url: RedisOpt = None,
    redis: Annotated[bool | None, typer.Option(
        "--redis/--no-redis",
        help="Snapshot Redis (default: when the store is PostgreSQL, services.redis_url)")
    ] = None,
    redis_aof_dir: Annotated[Path | None, typer.Option(
        help="Redis AOF directory, when Redis runs elsewhere but its disk is mounted here")
    ] = None,
    no_db: Annotated[bool, typer.Option("--no-db", help="Skip the database")] = False,
    no_registry: Annotated[bool, typer.Option("--no-registry", help="Skip the registry")
                           ] = False,
    offsite: OffsiteOpt = None,
    s3_endpoint: S3EndpointOpt = None,
    prune: Annotated[bool, typer.Option("--prune", help="Apply retention afterwards")] = False,
    policy: PolicyOpt = "6h:7d,1d:30d,1w:12w",
    metrics_textfile: Annotated[Path | None, typer.Option(
        help="Write backup_last_success_timestamp_seconds here (node_exporter textfile)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Take one consistent, timestamped backup set (database, Redis, registry, config)."""
    if ctx.invoked_subcommand is not None:
        return
    from quantum_trader.ops.service import default_redis_url, run_backup

    settings = load_cli_settings(config)
    target = check_writable_dir(_dest(settings, dest), "--dest" if dest else "backup directory")
    if redis is False:
        redis_url = None
    elif redis_url is None:
        redis_url = default_redis_url(settings)
        if redis and redis_url is None:
            raise BackupError("--redis given but no Redis URL (--redis-url or "
                              "services.redis_url with a PostgreSQL store)")
    pol = _policy(policy)
    from quantum_trader.ops.offsite import target_from_spec

    for spec in offsite or ():  # a bad target is refused before the set is written
        target_from_spec(spec, s3_endpoint)
    with _progress() as progress:
        job = run_backup(settings, target, key_file=key_file, redis_url=redis_url,
                         redis_aof_dir=redis_aof_dir, include_db=not no_db,
                         include_registry=not no_registry, offsite=offsite,
                         s3_endpoint=s3_endpoint, prune=prune, policy=pol,
                         metrics_textfile=metrics_textfile, progress=progress)
    res = job.backup
    if json_out:
        sys.stdout.write(json.dumps({
            "name": res.name, "path": str(res.path), "bytes": res.size,
            "seconds": round(res.seconds, 3), "offsite": job.offsite,
            "pruned": job.pruned.prune if job.pruned else [],
            "components": sorted(res.manifest["components"]),
        }) + "\n")
        return
    table = FittedTable([FitColumn("file"), FitColumn("size", "right"),
                         FitColumn("sha256", priority=1)], title=f"backup {res.name}")
    for fname, meta in sorted(res.manifest["files"].items()):
        table.add_row(fname, _human(meta["size"]), meta["sha256"][:16])
    console.print(table)
    console.print(f"[green]backup complete[/] in {res.seconds:.1f}s: {res.path} "
                  f"({_human(res.size)}{', encrypted' if res.manifest['encrypted'] else ''})")
    for t in job.offsite:
        console.print(f"copied to {t}")
    if job.pruned is not None:
        console.print(f"retention: kept {len(job.pruned.keep)}, pruned {len(job.pruned.prune)}")


@backup_app.command("verify")
def backup_verify(
    set_ref: Annotated[str, typer.Argument(metavar="SET",
                                           help="Set name, path, or 'latest'")] = "latest",
    config: ConfigOpt = None,
    dest: DestOpt = None,
    key_file: KeyOpt = None,
    pg_url: Annotated[str | None, typer.Option(
        help="PostgreSQL URL on the server where the scratch database is created "
             "(default: the configured store)")] = None,
) -> None:
    """Full restore drill into scratch databases; prints a pass/fail table (exit 1 on fail)."""
    from quantum_trader.ops.crypto import load_key
    from quantum_trader.ops.service import resolve_set
    from quantum_trader.ops.verify import verify_set

    settings = load_cli_settings(config)
    set_dir = resolve_set(set_ref, _dest(settings, dest))
    key = load_key(key_file) if key_file else None
    url = pg_url or (settings.store.url or None)
    with _progress() as progress:
        report = verify_set(set_dir, key=key, pg_url=url, progress=progress)
    table = FittedTable([FitColumn("component"), FitColumn("item", wrap=True),
                         FitColumn("source (at backup)", "right", priority=1),
                         FitColumn("restored", "right", priority=1), FitColumn("result")],
                        title=f"restore drill of {report.name}")
    for c in report.checks:
        table.add_row(c.component, c.item, c.expected, c.actual,
                      "[green]PASS[/]" if c.ok else "[bold red]FAIL[/]")
    console.print(table)
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in report.timings.items())
    if report.ok:
        console.print(f"[bold green]PASS[/] restore drill in {report.seconds:.1f}s ({timings})")
        return
    console.print(f"[bold red]FAIL[/] restore drill of {report.name}")
    raise typer.Exit(1)


@backup_app.command("list")
def backup_list(
    config: ConfigOpt = None,
    dest: DestOpt = None,
    offsite: Annotated[str | None, typer.Option(help="List an off-site target instead")
                       ] = None,
    s3_endpoint: S3EndpointOpt = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Backup sets, oldest first (partial ones are marked)."""
    from quantum_trader.ops.manifest import list_sets
    from quantum_trader.ops.offsite import target_from_spec

    settings = load_cli_settings(config)
    if offsite:
        names = target_from_spec(offsite, s3_endpoint).list()
        if json_out:
            sys.stdout.write(json.dumps(names) + "\n")
        else:
            for n in names:
                console.print(n)
        return
    sets = list_sets(_dest(settings, dest))
    if json_out:
        sys.stdout.write(json.dumps([{
            "name": s.name, "created_ts": s.created_ts, "complete": s.complete,
            "bytes": s.size, "encrypted": s.encrypted, "components": list(s.components),
        } for s in sets]) + "\n")
        return
    table = FittedTable([FitColumn("name"), FitColumn("created", priority=1),
                         FitColumn("size", "right"), FitColumn("components", priority=2,
                                                               wrap=True),
                         FitColumn("state")], title=f"{len(sets)} backup sets")
    for s in sets:
        state = ("[green]complete[/]" + (" · encrypted" if s.encrypted else "")) \
            if s.complete else "[red]partial[/]"
        table.add_row(s.name, fmt_time(s.created_ts), _human(s.size), ", ".join(s.components),
                      state)
    console.print(table)


@backup_app.command("prune")
def backup_prune(
    config: ConfigOpt = None,
    dest: DestOpt = None,
    policy: PolicyOpt = "6h:7d,1d:30d,1w:12w",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show, delete nothing")] = False,
    offsite: Annotated[str | None, typer.Option(
        help="Prune an off-site target with the same policy")] = None,
    s3_endpoint: S3EndpointOpt = None,
) -> None:
    """Delete the sets the retention policy no longer keeps."""
    from quantum_trader.ops.manifest import name_time
    from quantum_trader.ops.offsite import target_from_spec
    from quantum_trader.ops.retention import plan_retention
    from quantum_trader.ops.service import prune_sets

    settings = load_cli_settings(config)
    pol = _policy(policy)
    if offsite:
        target = target_from_spec(offsite, s3_endpoint)
        names = {n: t for n in target.list() if (t := name_time(n)) is not None}
        plan = plan_retention(names, time.time(), pol)
        if not dry_run:
            for n in plan.prune:
                target.delete(n)
    else:
        plan = prune_sets(_dest(settings, dest), pol, dry_run=dry_run)
    verb = "would prune" if dry_run else "pruned"
    for name in plan.prune:
        console.print(f"{verb} {name}")
    for name, why in sorted(plan.keep.items()):
        console.print(f"keep   {name}  ({', '.join(why)})")
    console.print(f"policy {pol}: kept {len(plan.keep)}, {verb} {len(plan.prune)}")


@backup_app.command("keygen")
def backup_keygen(path: Annotated[Path, typer.Argument(help="Where to write the key")]) -> None:
    """Create a random encryption key file (mode 0600). Keep a copy off this machine."""
    from quantum_trader.ops.crypto import generate_key, key_id, load_key

    p = generate_key(path)
    console.print(f"wrote {p} (key id {key_id(load_key(p))}). Store a copy away from "
                  "the backups: without it an encrypted set cannot be restored.")


def restore(
    set_ref: Annotated[str, typer.Argument(metavar="SET",
                                           help="Set name, path, or 'latest'")],
    config: ConfigOpt = None,
    dest: DestOpt = None,
    key_file: KeyOpt = None,
    db_url: Annotated[str | None, typer.Option(
        help="Database to restore into (default: the configured store)")] = None,
    redis_dir: Annotated[Path | None, typer.Option(
        help="Data directory of the stopped Redis (omit: Redis is not restored)")] = None,
    redis_dbfilename: Annotated[str, typer.Option(help="Redis dbfilename")] = "dump.rdb",
    registry_dir: Annotated[Path | None, typer.Option(
        help="Model registry directory (default: paths.registry_dir)")] = None,
    config_out: Annotated[Path | None, typer.Option(
        help="Write the backed-up config here (omit: not restored)")] = None,
    no_db: Annotated[bool, typer.Option("--no-db")] = False,
    no_registry: Annotated[bool, typer.Option("--no-registry")] = False,
    from_offsite: Annotated[str | None, typer.Option(
        help="Fetch SET from DIR, rsync:DEST or s3://bucket/prefix first")] = None,
    s3_endpoint: S3EndpointOpt = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace data in a non-empty target (stop the deployment first)")
    ] = False,
) -> None:
    """Restore a backup set into an empty (or stopped, with --force) deployment. Every
    checksum is verified first; a partial or tampered set is refused and nothing changes."""
    from quantum_trader.ops.crypto import load_key
    from quantum_trader.ops.offsite import target_from_spec
    from quantum_trader.ops.restore import RestoreTargets, restore_set
    from quantum_trader.ops.service import resolve_set

    settings = load_cli_settings(config)
    root = _dest(settings, dest)
    if from_offsite:
        target = target_from_spec(from_offsite, s3_endpoint)
        if set_ref == "latest":
            names = target.list()
            if not names:
                raise BackupError(f"no backup sets at {target}")
            set_ref = names[-1]
        root.mkdir(parents=True, exist_ok=True)
        set_dir = root / set_ref if (root / set_ref).is_dir() \
            else target.pull(set_ref, root)
    else:
        set_dir = resolve_set(set_ref, root)
    key = load_key(key_file) if key_file else None
    targets = RestoreTargets(
        db_url=None if no_db else (db_url or settings.store_url()),
        redis_dir=redis_dir, redis_dbfilename=redis_dbfilename,
        registry_dir=None if no_registry else (registry_dir or
                                               Path(settings.paths.registry_dir)),
        config_out=config_out,
    )
    with _progress() as progress:
        report = restore_set(set_dir, targets, key=key, force=force, progress=progress)
    console.print(f"[green]restored[/] {report.name} in {report.seconds:.1f}s: "
                  + ", ".join(f"{k} ({report.timings[k]:.1f}s)" for k in report.restored))
    for s in report.skipped:
        console.print(f"skipped {s}")
