"""A private PostgreSQL for tests that restart or break the database server.

``PgServer`` runs ``initdb`` in a directory of its own (trust auth on loopback, a free port) and
starts, stops and restarts that cluster with ``pg_ctl``; ``restart(mode="immediate")`` is a crash
(no checkpoint, recovery from the WAL on start). PostgreSQL refuses to run as root, so when the
tests run as root the server runs as the ``postgres`` system user (the Debian package creates
it). Every test that uses one stops it and removes its directory.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        pytest.fail(f"{name} not found: install PostgreSQL (apt-get install postgresql); "
                    "tests that restart the database run their own server", pytrace=False)
    return candidates[-1]


class PgServer:
    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.port = port or _free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            # The server's own user must reach its directory: test directories are private
            # to root (0700), so the cluster lives in a directory of its own.
            directory = Path(tempfile.mkdtemp(prefix="qt-pg-"))
            directory.chmod(0o755)
            shutil.chown(directory, "postgres", "postgres")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.data = directory / "data"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")

    def start(self, timeout_s: float = 60.0) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.directory} -c fsync=off "
                "-c max_connections=200")
        res = self._run(_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
                        str(self.directory / "pg.log"), "-w", "-t", str(int(timeout_s)),
                        "start", check=False)
        if res.returncode != 0:
            log = (self.directory / "pg.log")
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"PostgreSQL on port {self.port} did not start: {res.stderr}\n{tail}",
                        pytrace=False)
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            res = subprocess.run([_bin("pg_isready"), "-h", "127.0.0.1", "-p",
                                  str(self.port)], capture_output=True)
            if res.returncode == 0:
                return
            time.sleep(0.1)
        pytest.fail(f"PostgreSQL on port {self.port} is not accepting connections",
                    pytrace=False)

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop",
                      check=False)

    def restart(self, mode: str = "immediate") -> None:
        """``immediate`` is a crash: no shutdown checkpoint, WAL recovery on start."""
        self.stop(mode)
        self.start()

    def createdb(self, name: str) -> str:
        self._run(_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  "-d", "postgres", "-c", f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PgServer:
        self.init()
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()
