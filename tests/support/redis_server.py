"""Real Redis for tests: the shared local server, or a throwaway ``redis-server`` per test.

* ``LOCAL_REDIS_URL`` (``$QT_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``) is the
  server most tests share; each test uses its own key namespace (``unique_namespace``) and
  deletes it afterwards (``delete_namespace``). ``require_redis`` fails, never skips, when it
  is unreachable: the Redis bus is the production shape.
* ``RedisServer`` runs a private ``redis-server`` on a free port in a directory of its own,
  with AOF on, for tests that kill or restart Redis: ``kill()`` is ``kill -9``, ``start()``
  again reuses the same port and directory, so the AOF is replayed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Literal

import pytest
from redis.asyncio import Redis

LOCAL_REDIS_URL = os.environ.get("QT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unique_namespace(prefix: str = "qt-test") -> str:
    return f"{prefix}:{uuid.uuid4().hex[:12]}:"


async def require_redis(url: str = LOCAL_REDIS_URL) -> None:
    """Fail the test with a clear message if Redis at ``url`` does not answer PING."""
    client = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    error: Exception | None = None
    try:
        await client.ping()
    except Exception as exc:
        error = exc
    finally:
        await client.aclose()
    if error is not None:
        pytest.fail(
            f"Redis is not reachable at {url} ({type(error).__name__}: {error}). The Redis bus "
            "tests need a real server: start one (`redis-server --daemonize yes`) or point "
            "QT_TEST_REDIS_URL at one.", pytrace=False)


async def delete_namespace(namespace: str, url: str = LOCAL_REDIS_URL) -> None:
    if not namespace:
        raise ValueError("refusing to delete an empty namespace (that is every key)")
    client = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        keys = [key async for key in client.scan_iter(match=namespace + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private ``redis-server`` with AOF in ``directory``; restartable on the same port."""

    def __init__(self, directory: Path, port: int | None = None,
                 appendfsync: Literal["always", "everysec"] = "always",
                 persist: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server); the "
                        "restart tests run their own instance", pytrace=False)
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.persist = persist  # False: a restart loses every stream and consumer group
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.directory / "redis.log"

    def start(self, timeout_s: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("redis-server is already running")
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--appendonly", "yes" if self.persist else "no",
             "--appendfsync", self.appendfsync, "--save", "",
             "--daemonize", "no", "--logfile", str(self.log_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        # Ready = PING answers PONG; "-LOADING" while the AOF is replayed is not ready yet.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
        self.stop()
        pytest.fail(f"redis-server on port {self.port} did not become ready:\n{tail}",
                    pytrace=False)

    def kill(self) -> None:
        """``kill -9``: no shutdown, no final fsync; only what the AOF already holds survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def restart(self, *, hard: bool = True) -> None:
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
