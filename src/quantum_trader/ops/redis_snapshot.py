"""Redis: a point-in-time RDB snapshot over the replication protocol, plus the AOF files.

Why the replication protocol (what ``redis-cli --rdb`` does) rather than BGSAVE + copying
dump.rdb: it works against a Redis on another host or in a container, needs no access to the
server's disk, and never touches the server's own dump.rdb (whose ``save`` may be disabled, as
on a bus that keeps nothing on disk). The server forks and streams a consistent snapshot.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import redis

from quantum_trader.ops.errors import BackupError

RDB_MAGIC = b"REDIS"
_EOF_MARK_LEN = 40


@dataclass(frozen=True, slots=True)
class RedisEndpoint:
    host: str
    port: int
    username: str | None
    password: str | None
    db: int = 0

    @classmethod
    def parse(cls, url: str) -> RedisEndpoint:
        u = urlparse(url)
        if u.scheme != "redis":
            raise BackupError("Redis URL must look like redis://[user:password@]host:port/db "
                              "(TLS is not supported by the snapshot client)")
        db = int(u.path.strip("/") or 0) if u.path.strip("/").isdigit() else 0
        return cls(u.hostname or "127.0.0.1", u.port or 6379,
                   unquote(u.username) if u.username else None,
                   unquote(u.password) if u.password else None, db)

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, username=self.username,
                           password=self.password, db=self.db, socket_timeout=30,
                           decode_responses=True)

    @property
    def local(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")

    def __str__(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


def keyspace(client: redis.Redis) -> dict[str, int]:
    """Keys per database (``db0`` -> n) from INFO keyspace."""
    info: dict[str, Any] = client.info("keyspace")
    return {db: int(v["keys"]) for db, v in info.items() if isinstance(v, dict)}


def _cmd(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for p in parts:
        b = p.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _readline(f: io.BufferedReader) -> bytes:
    line = f.readline()
    if not line:
        raise BackupError("Redis closed the connection during the snapshot")
    return line.rstrip(b"\r\n")


def fetch_rdb(ep: RedisEndpoint, out: Path, on_bytes: Callable[[int], None] | None = None,
              timeout: float = 300.0) -> int:
    """Stream an RDB snapshot of the whole server into ``out``; returns its size."""
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
    except OSError as exc:
        raise BackupError(f"cannot connect to Redis at {ep}: {exc}") from None
    with contextlib.closing(sock), sock.makefile("rb") as f:
        if ep.password:
            auth = ("AUTH", ep.username, ep.password) if ep.username else ("AUTH", ep.password)
            sock.sendall(_cmd(*auth))
            if not _readline(f).startswith(b"+"):
                raise BackupError(f"Redis at {ep} refused the credentials")
        # capa eof: we understand diskless transfers; rdb-only: send no replication stream
        # after the snapshot (Redis >= 7; an older server answers an error we can ignore).
        for cmd in (("REPLCONF", "capa", "eof"), ("REPLCONF", "rdb-only", "1")):
            sock.sendall(_cmd(*cmd))
            _readline(f)
        sock.sendall(_cmd("SYNC"))
        while True:
            line = _readline(f)
            if line == b"":  # keep-alive newlines while the server forks
                continue
            if line.startswith(b"-"):
                raise BackupError(f"Redis refused SYNC: {line[1:].decode(errors='replace')} "
                                  "(the user needs replication rights)")
            if line.startswith(b"$"):
                break
            raise BackupError(f"unexpected reply to SYNC from Redis: {line[:60]!r}")
        with out.open("wb") as fout:
            if line.startswith(b"$EOF:"):
                size = _copy_until_mark(f, fout, line[5:], on_bytes)
            else:
                size = _copy_exact(f, fout, int(line[1:]), on_bytes)
            fout.flush()
            os.fsync(fout.fileno())
    with out.open("rb") as fh:
        if fh.read(5) != RDB_MAGIC:
            raise BackupError("the snapshot Redis sent is not an RDB file")
    return size


def _copy_exact(f: io.BufferedReader, fout: io.BufferedWriter, n: int,
                on_bytes: Callable[[int], None] | None) -> int:
    left = n
    while left:
        block = f.read(min(left, 1 << 20))
        if not block:
            raise BackupError(f"Redis snapshot ended early ({n - left} of {n} bytes)")
        fout.write(block)
        left -= len(block)
        if on_bytes is not None:
            on_bytes(len(block))
    return n


def _copy_until_mark(f: io.BufferedReader, fout: io.BufferedWriter, mark: bytes,
                     on_bytes: Callable[[int], None] | None) -> int:
    if len(mark) != _EOF_MARK_LEN:
        raise BackupError("malformed diskless transfer header from Redis")
    tail = b""
    total = 0
    while True:
        block = f.read1(1 << 20)
        if not block:
            raise BackupError("Redis snapshot ended before its end marker")
        buf = tail + block
        if buf.endswith(mark):
            fout.write(buf[:-_EOF_MARK_LEN])
            total += len(buf) - _EOF_MARK_LEN
            return total
        # Keep the last 40 bytes back: they may be the start of the marker.
        keep = buf[-_EOF_MARK_LEN:]
        body = buf[:-_EOF_MARK_LEN]
        fout.write(body)
        total += len(body)
        if on_bytes is not None:
            on_bytes(len(body))
        tail = keep


@dataclass(frozen=True, slots=True)
class AofInfo:
    enabled: bool
    directory: Path | None  # the server's AOF directory, when it is on this machine


def aof_info(client: redis.Redis, override_dir: Path | None = None) -> AofInfo:
    if client.config_get("appendonly").get("appendonly") != "yes":
        return AofInfo(False, None)
    if override_dir is not None:
        return AofInfo(True, override_dir)
    base = Path(str(client.config_get("dir")["dir"]))
    name = str(client.config_get("appenddirname").get("appenddirname") or "appendonlydir")
    path = base / name
    return AofInfo(True, path if path.is_dir() and os.access(path, os.R_OK) else None)


def archive_aof(client: redis.Redis, aof_dir: Path, out: Path, attempts: int = 5) -> int:
    """Tar the multi-part AOF directory. A rewrite swaps the files under us, so copy only while
    none runs and retry if one started meanwhile. A command cut off at the tail is tolerated by
    Redis on load (aof-load-truncated, on by default)."""
    for _ in range(attempts):
        _wait_no_rewrite(client)
        before = client.info("persistence").get("aof_last_rewrite_time_sec")
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            staged = Path(tmp) / aof_dir.name
            try:
                shutil.copytree(aof_dir, staged)
            except (OSError, shutil.Error):
                continue
            info = client.info("persistence")
            if info.get("aof_rewrite_in_progress") or \
                    info.get("aof_last_rewrite_time_sec") != before:
                continue
            with tarfile.open(out, "w") as tar:
                tar.add(staged, arcname=aof_dir.name)
        return out.stat().st_size
    raise BackupError(f"could not copy the AOF in {aof_dir}: rewrites kept replacing it")


def _wait_no_rewrite(client: redis.Redis, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while client.info("persistence").get("aof_rewrite_in_progress"):
        if time.monotonic() > deadline:
            raise BackupError("an AOF rewrite has been running for over a minute")
        time.sleep(0.05)


# --- a private redis-server (restore drills, tests, benchmarks) --------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """A throwaway ``redis-server`` process owned by the caller."""

    directory: Path
    port: int = 0
    appendonly: bool = False
    dbfilename: str = "dump.rdb"
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BackupError("redis-server not found on PATH (apt-get install redis-server)")
        self.port = self.port or free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--dbfilename", self.dbfilename,
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
                *self.extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            if self.proc.poll() is not None:
                log = (self.directory / "redis.log")
                tail = log.read_text()[-600:] if log.exists() else ""
                raise BackupError(f"redis-server exited with {self.proc.returncode}: {tail}")
            try:
                if client.ping() and not client.info("persistence").get("loading"):
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise BackupError("redis-server did not become ready")
            time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True,
                           socket_timeout=30)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        """kill -9: what a crash looks like to the AOF."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def scratch_redis(rdb: Path | None = None, aof_tar: Path | None = None) -> Iterator[RedisServer]:
    """A temporary Redis loaded from a snapshot (RDB) or from an archived AOF directory."""
    with tempfile.TemporaryDirectory(prefix="qt-redis-") as tmp:
        d = Path(tmp)
        if aof_tar is not None:
            with tarfile.open(aof_tar) as tar:
                tar.extractall(d, filter="tar")
            aof_dirs = [p for p in d.iterdir() if p.is_dir()]
            extra = ["--appenddirname", aof_dirs[0].name] if aof_dirs else []
            server = RedisServer(d, appendonly=True, extra=extra)
        else:
            if rdb is not None:
                shutil.copyfile(rdb, d / "dump.rdb")
            server = RedisServer(d)
        with server:
            yield server
