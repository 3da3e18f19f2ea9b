"""Dump, restore and fingerprint the trade store: PostgreSQL (pg_dump/pg_restore) or SQLite.

Consistency: the row counts and checksums recorded in the manifest are taken *in the same
snapshot* as the dump. On PostgreSQL a REPEATABLE READ transaction exports its snapshot and
``pg_dump --snapshot`` reads exactly that; on SQLite one read transaction serves both the
fingerprint and the online backup API. So "restored == manifest" means "restored == source at
the moment of the backup", even while the node keeps trading.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError

from quantum_trader.ops.errors import BackupError
from quantum_trader.store.urls import async_url, redact

TableStats = dict[str, dict[str, Any]]  # table -> {"rows": int, "checksum": str}
T = TypeVar("T")

_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


@dataclass(frozen=True, slots=True)
class Database:
    """A store URL split into what the tools need."""

    url: URL

    @classmethod
    def parse(cls, url: str) -> Database:
        try:
            parsed = async_url(url)
        except ArgumentError:
            raise BackupError("invalid database URL (expected sqlite:///path or "
                              "postgresql://user@host/db)") from None
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            raise BackupError(f"unsupported database {redact(parsed)}")
        return cls(parsed)

    @property
    def kind(self) -> str:
        return "postgresql" if self.url.get_backend_name() == "postgresql" else "sqlite"

    @property
    def path(self) -> Path:
        if self.kind != "sqlite" or not self.url.database or self.url.database == ":memory:":
            raise BackupError(f"{self} is not a SQLite file")
        return Path(self.url.database)

    @property
    def name(self) -> str:
        return self.url.database or ""

    def with_database(self, name: str) -> Database:
        return Database(self.url.set(database=name))

    def __str__(self) -> str:
        return redact(self.url)

    def libpq_env(self) -> dict[str, str]:
        """Connection settings for pg_dump/pg_restore as libpq variables: the password stays
        out of the process list."""
        u = self.url
        env = dict(os.environ)
        for var, value in (("PGHOST", u.host), ("PGPORT", u.port), ("PGUSER", u.username),
                           ("PGPASSWORD", u.password), ("PGDATABASE", u.database)):
            if value is not None:
                env[var] = str(value)
        sslmode = u.query.get("sslmode") or u.query.get("ssl")
        if isinstance(sslmode, str):
            env["PGSSLMODE"] = sslmode
        return env

    async def connect(self, database: str | None = None) -> asyncpg.Connection:
        u = self.url
        try:
            return await asyncpg.connect(host=u.host or "localhost", port=u.port or 5432,
                                         user=u.username, password=u.password,
                                         database=database or u.database, timeout=15)
        except (OSError, asyncpg.PostgresError) as exc:
            where = redact(u.set(database=database or u.database))
            raise BackupError(f"cannot connect to PostgreSQL at {where}: {exc}") from None


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from sync code, also when a loop is already running in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_call(fn))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(_call(fn))).result()


async def _call(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"{name} not found on PATH: install the PostgreSQL client tools "
                          "(apt-get install postgresql-client) matching the server version")
    return path


async def _run_tool(argv: list[str], env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, env=env,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        msg = stderr.decode(errors="replace").strip().splitlines()
        raise BackupError(f"{Path(argv[0]).name} failed (exit {proc.returncode}): "
                          + " | ".join(msg[-5:]))


# --- PostgreSQL -------------------------------------------------------------------------------


async def pg_tables(conn: asyncpg.Connection) -> list[tuple[str, str, list[str]]]:
    """(schema, table, primary key columns) of every user table."""
    rows = await conn.fetch(
        """
        SELECT n.nspname AS schema, c.relname AS table,
               coalesce((SELECT array_agg(a.attname ORDER BY k.ord)
                         FROM pg_index i
                         CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                         WHERE i.indrelid = c.oid AND i.indisprimary), '{}') AS pk
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND n.nspname <> ALL($1::text[])
          AND n.nspname NOT LIKE 'pg_temp%'
        ORDER BY 1, 2
        """,
        list(_SYSTEM_SCHEMAS),
    )
    return [(r["schema"], r["table"], list(r["pk"])) for r in rows]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def pg_stats(conn: asyncpg.Connection) -> TableStats:
    """Row count and a content checksum per table, computed inside the server (no rows cross
    the wire): md5 over the md5 of each row's text form, in primary-key order."""
    out: TableStats = {}
    for schema, table, pk in await pg_tables(conn):
        order = ", ".join(f"t.{_ident(c)}" for c in pk) if pk else "t::text"
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, coalesce(md5(string_agg(md5(t::text), '' ORDER BY {order})),"
            f" '') AS h FROM {_ident(schema)}.{_ident(table)} t"
        )
        assert row is not None
        key = table if schema == "public" else f"{schema}.{table}"
        out[key] = {"rows": int(row["n"]), "checksum": row["h"]}
    return out


async def pg_dump(db: Database, out: Path, *, compress: int = 1) -> TableStats:
    """``pg_dump -Fc`` of ``db`` into ``out``; returns the stats of the same snapshot."""
    binary = need_tool("pg_dump")
    conn = await db.connect()
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            # The exporting transaction stays open until pg_dump has finished with the snapshot;
            # the fingerprint runs alongside it on this connection.
            dump = asyncio.create_task(_run_tool(
                [binary, "--format=custom", f"--compress={compress}", f"--snapshot={snapshot}",
                 "--no-password", f"--file={out}"], db.libpq_env()))
            try:
                stats = await pg_stats(conn)
            finally:
                await asyncio.wait({dump})
            dump.result()
            return stats
    finally:
        await conn.close()


async def pg_is_empty(db: Database) -> tuple[bool, str]:
    """Whether the target database is missing or has no user tables (and who is connected)."""
    admin = await db.connect("postgres")
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", db.name)
        if not exists:
            return True, f"database {db.name} does not exist (it will be created)"
        sessions = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> "
            "pg_backend_pid()", db.name)
    finally:
        await admin.close()
    conn = await db.connect()
    try:
        tables = await pg_tables(conn)
    finally:
        await conn.close()
    if tables:
        more = f", {sessions} session(s) connected" if sessions else ""
        return False, f"PostgreSQL database {db.name} has {len(tables)} tables{more}"
    return True, f"database {db.name} exists and is empty"


async def pg_recreate(db: Database, *, drop: bool) -> None:
    admin = await db.connect("postgres")
    try:
        if drop:
            await admin.execute(f"DROP DATABASE IF EXISTS {_ident(db.name)} WITH (FORCE)")
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", db.name)
        if not exists:
            await admin.execute(f"CREATE DATABASE {_ident(db.name)}")
    finally:
        await admin.close()


async def pg_restore(db: Database, dump: Path, *, jobs: int | None = None) -> None:
    binary = need_tool("pg_restore")
    jobs = jobs or max(1, min(4, os.cpu_count() or 1))
    env = db.libpq_env()
    await _run_tool([binary, "--no-owner", "--no-privileges", "--exit-on-error",
                     f"--jobs={jobs}", "--no-password", f"--dbname={db.name}", str(dump)], env)


async def pg_stats_of(db: Database) -> TableStats:
    conn = await db.connect()
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await pg_stats(conn)
    finally:
        await conn.close()


async def pg_drop(db: Database) -> None:
    admin = await db.connect("postgres")
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {_ident(db.name)} WITH (FORCE)")
    finally:
        await admin.close()


# --- SQLite -----------------------------------------------------------------------------------


def _sqlite_tables(conn: sqlite3.Connection) -> list[tuple[str, list[str]]]:
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name")]
    out = []
    for name in names:
        info = conn.execute(f"PRAGMA table_info({_ident(name)})").fetchall()
        pk = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
        out.append((name, pk))
    return out


def sqlite_stats(conn: sqlite3.Connection) -> TableStats:
    """Row count and sha256 over each row's repr, in primary-key (or rowid) order."""
    out: TableStats = {}
    for name, pk in _sqlite_tables(conn):
        order = ", ".join(_ident(c) for c in pk) if pk else "rowid"
        h = hashlib.sha256()
        n = 0
        for row in conn.execute(f"SELECT * FROM {_ident(name)} ORDER BY {order}"):
            h.update(repr(row).encode())
            h.update(b"\n")
            n += 1
        out[name] = {"rows": n, "checksum": h.hexdigest()}
    return out


def sqlite_backup(src_path: Path, out: Path) -> TableStats:
    """Online backup of a live SQLite (WAL) file into ``out`` as one self-contained file."""
    if not src_path.is_file():
        raise BackupError(f"SQLite database {src_path} not found")
    src = sqlite3.connect(src_path, isolation_level=None, timeout=30)
    try:
        # One read transaction: the fingerprint and the copy see the same snapshot, whatever
        # the node commits meanwhile.
        src.execute("BEGIN")
        stats = sqlite_stats(src)
        dst = sqlite3.connect(out, isolation_level=None)
        try:
            src.backup(dst)  # pages=-1: one step, so the copy never restarts under writers
            dst.execute("PRAGMA journal_mode=DELETE")  # a single file, no -wal beside it
        finally:
            dst.close()
        src.execute("COMMIT")
    finally:
        src.close()
    return stats


def sqlite_stats_of(path: Path) -> TableStats:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return sqlite_stats(conn)
    finally:
        conn.close()


def sqlite_is_empty(path: Path) -> tuple[bool, str]:
    if not path.exists() or path.stat().st_size == 0:
        return True, f"SQLite file {path} does not exist (it will be created)"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = _sqlite_tables(conn)
    finally:
        conn.close()
    if tables:
        return False, f"SQLite database {path} has {len(tables)} tables"
    return True, f"SQLite file {path} is empty"


def sqlite_restore(snapshot: Path, target: Path) -> None:
    """Put the snapshot in place atomically; stale -wal/-shm files of the old file go first,
    or SQLite would replay them onto the restored database."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".restoring")
    shutil.copyfile(snapshot, tmp)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    for suffix in ("-wal", "-shm", "-journal"):
        Path(str(target) + suffix).unlink(missing_ok=True)
    tmp.replace(target)


def compare_stats(expected: TableStats, actual: TableStats) -> list[tuple[str, Any, Any, bool]]:
    """(table, expected, actual, ok) for every table in either side."""
    rows = []
    for table in sorted(set(expected) | set(actual)):
        e, a = expected.get(table), actual.get(table)
        rows.append((table, e, a, e == a))
    return rows
