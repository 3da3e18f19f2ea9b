"""deploy/redis works as shipped: a real ``redis-server`` with our redis.conf and ACL lets the
services' bus do all it needs as ``qt-app``, and refuses everything else: anonymous access,
wrong passwords, dangerous commands, keys outside ``qt:*``. The backup user can read the
server but not write."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.retry import Retry

from quantum_trader.bus.consumer import Consumer
from quantum_trader.bus.protocol import Message
from quantum_trader.bus.redis_streams import RedisStreamBus

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "redis"
APP_PW = "app-" + "x7Kq2mP9" * 3
BACKUP_PW = "bkp-" + "Lw4nR8tZ" * 3
MONITOR_PW = "mon-" + "Hc5vT1qY" * 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    work = tmp_path_factory.mktemp("redis-acl")
    # What deploy/redis/entrypoint.sh does: only SHA-256 hashes go into the ACL file.
    acl = (DEPLOY / "users.acl").read_text()
    acl = acl.replace("__QT_APP_SHA256__", hashlib.sha256(APP_PW.encode()).hexdigest())
    acl = acl.replace("__QT_BACKUP_SHA256__", hashlib.sha256(BACKUP_PW.encode()).hexdigest())
    acl = acl.replace("__QT_MONITOR_SHA256__", hashlib.sha256(MONITOR_PW.encode()).hexdigest())
    assert "__QT_" not in acl  # every placeholder has a secret behind it
    (work / "users.acl").write_text(acl)
    # The shipped redis.conf, with only the container paths moved into the test directory.
    conf = (DEPLOY / "redis.conf").read_text()
    conf = conf.replace("dir /data", f"dir {work}")
    conf = conf.replace("aclfile /tmp/users.acl", f"aclfile {work / 'users.acl'}")
    (work / "redis.conf").write_text(conf)
    p = free_port()
    proc = subprocess.Popen(
        [binary, str(work / "redis.conf"), "--port", str(p), "--bind", "127.0.0.1",
         "--appendonly", "no", "--logfile", str(work / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", p), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    log = (work / "redis.log").read_text() if (work / "redis.log").exists() \
                        else ""
                    pytest.fail(f"redis-server did not start with deploy/redis config:\n{log}")
                time.sleep(0.05)
        yield p
    finally:
        proc.terminate()
        proc.wait(10)


def client(port: int, user: str | None, password: str | None) -> Redis:
    # No retries: a refused login is the answer, not a network blip to wait out.
    return Redis(host="127.0.0.1", port=port, username=user, password=password,
                 socket_timeout=5, retry=Retry(NoBackoff(), 0))


async def test_the_bus_works_as_qt_app(port: int) -> None:
    bus = RedisStreamBus(f"redis://qt-app:{APP_PW}@127.0.0.1:{port}/0", claim_idle_ms=50)
    try:
        seen: list[str] = []

        async def handler(m: Message) -> None:
            if m.type == "poison":
                raise ValueError("bad")
            seen.append(m.id)

        consumer = Consumer(bus, "signals", "risk-safety", "risk-safety-1", handler,
                            max_attempts=1)
        await bus.ensure_group("signals", "risk-safety")
        good = Message("signal", {"n": 1}, 1, "t")
        await bus.publish("signals", good)
        await bus.publish("signals", Message("poison", {}, 1, "t"))
        while await consumer.run_once():
            pass
        assert seen == [good.id]
        assert await bus.lag("signals", "risk-safety") == 0
        assert await bus.pending_count("signals", "risk-safety") == 0
        assert len(await bus.entries("deadletter")) == 1
    finally:
        await bus.close()


def test_everything_else_is_refused(port: int) -> None:
    anonymous = client(port, None, None)
    with pytest.raises((AuthenticationError, ResponseError)):
        anonymous.set("qt:x", "1")
    with pytest.raises(AuthenticationError):
        client(port, "qt-app", "wrong-password").ping()
    with pytest.raises(AuthenticationError):
        client(port, "default", "").ping()
    app = client(port, "qt-app", APP_PW)
    assert app.ping()
    for cmd in (("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"), ("KEYS", "*"),
                ("DEBUG", "SLEEP", "0"), ("SHUTDOWN",), ("ACL", "LIST"), ("MODULE", "LIST"),
                ("SCRIPT", "FLUSH"), ("SYNC",), ("MONITOR",), ("CLIENT", "KILL", "ID", "1"),
                ("SET", "not-ours", "1"), ("XADD", "other:stream", "*", "d", "x")):
        # NoPermissionError (ACL), or refused outright (DEBUG/MODULE are disabled)
        with pytest.raises(ResponseError, match=r"permission|not allowed"):
            app.execute_command(*cmd)  # type: ignore[no-untyped-call]
    with pytest.raises(NoPermissionError):
        app.execute_command("FLUSHALL")  # type: ignore[no-untyped-call]
    backup = client(port, "qt-backup", BACKUP_PW)
    assert "redis_version" in backup.info("server")
    assert backup.config_get("dir")
    with pytest.raises(NoPermissionError):
        backup.set("qt:x", "1")
    with pytest.raises(NoPermissionError):
        backup.execute_command("FLUSHALL")  # type: ignore[no-untyped-call]


def test_the_exporter_user_sees_stats_not_data(port: int) -> None:
    app = client(port, "qt-app", APP_PW)
    app.xadd("qt:signals", {"d": "secret payload"})
    monitor = client(port, "qt-monitor", MONITOR_PW)
    assert "connected_clients" in monitor.info("clients")
    assert monitor.xlen("qt:signals") >= 1
    assert monitor.xinfo_stream("qt:signals")["length"] >= 1
    assert b"qt:signals" in monitor.scan(0, match="qt:*", count=100)[1]
    for cmd in (("XRANGE", "qt:signals", "-", "+"), ("GET", "qt:signals"), ("SET", "qt:x", "1"),
                ("XADD", "qt:signals", "*", "d", "x"), ("FLUSHALL",), ("CONFIG", "SET",
                                                                       "maxclients", "1")):
        with pytest.raises(NoPermissionError):
            monitor.execute_command(*cmd)  # type: ignore[no-untyped-call]
