"""Start the distributed services as real processes against real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml

PIPELINE_SERVICES = ("execution", "risk-safety", "exit-brain", "ai-engine", "market-data")
PG_ADMIN = os.environ.get("QT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


_KEY_VARS = ("QTRADER_SECRETS__EXCHANGE_API_KEY_FILE",
             "QTRADER_SECRETS__EXCHANGE_API_SECRET_FILE")


def set_venue_keys(directory: Path, api_key: str, api_secret: str) -> None:
    """The venue's API key and secret as secret files, named in the environment the service
    processes inherit (and ``load_settings`` reads); ``clear_venue_keys`` undoes it."""
    for var, name, value in zip(_KEY_VARS, ("key", "secret"), (api_key, api_secret),
                                strict=True):
        (directory / name).write_text(value)
        os.environ[var] = str(directory / name)


def clear_venue_keys() -> None:
    for var in _KEY_VARS:
        os.environ.pop(var, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    root: Path
    config: Path
    db_url: str
    namespace: str
    ports: dict[str, int]
    token: str = ""  # an admin bearer token for endpoints other than /health
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start(self, name: str) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "quantum_trader", "serve", name, "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.root)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        return proc.wait(timeout=30)

    def health(self, name: str) -> dict[str, Any]:
        try:
            r = httpx.get(f"http://127.0.0.1:{self.ports[name]}/health", timeout=2)
            body: dict[str, Any] = r.json()
            return body
        except httpx.HTTPError as exc:
            return {"status": "DOWN", "reasons": [str(exc)]}

    def wait_for(self, cond: Any, timeout: float, what: str, every: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = cond()
            if last:
                return last
            time.sleep(every)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.root.glob("*.log")))
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}\n"
                             f"{logs}")

    def query(self, sql: str) -> list[Any]:
        async def go() -> list[Any]:
            conn = await asyncpg.connect(self.db_url.replace("+asyncpg", ""))
            try:
                return list(await conn.fetch(sql))
            finally:
                await conn.close()

        return asyncio.run(go())

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextmanager
def cluster(tmp: Path, *, redis_url: str = "redis://127.0.0.1:6379/0", pg_admin: str = PG_ADMIN,
            **overrides: Any) -> Iterator[Cluster]:
    """A fresh PostgreSQL database, a Redis namespace, a config file; services not started.
    ``redis_url``/``pg_admin``: servers of the test's own (e.g. ones it restarts)."""
    dbname = f"qt_dist_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{dbname}"'))
    db_url = pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + \
        f"/{dbname}"
    namespace = f"qttest{uuid.uuid4().hex[:8]}"
    key = tmp / "hmac.key"
    key.write_text(secrets.token_hex(32))
    ports = {name: free_port() for name in (*PIPELINE_SERVICES, "gateway")}
    cfg: dict[str, Any] = {
        "data": {"source": "sample:XRP"},
        "risk": {"min_confidence": 0.5, "max_drawdown": 0.9},
        "store": {"url": db_url},
        "paths": {"state_dir": str(tmp / "var"), "registry_dir": str(tmp / "models")},
        "strategy": {"kind": "ema_cross"},
        "services": {"bus": "redis", "bus_namespace": namespace, "ports": ports,
                     "redis_url": redis_url,
                     "heartbeat_interval_s": 0.25, "heartbeat_stale_s": 1.5,
                     "replay_max_bars": 300},
    }
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    config = tmp / "qt.yaml"
    config.write_text(yaml.safe_dump(cfg))
    os.environ["QTRADER_SECRETS__APPROVAL_HMAC_KEY_FILE"] = str(key)
    subprocess.run([sys.executable, "-m", "quantum_trader", "db", "upgrade", "--url", db_url],
                   check=True, capture_output=True, cwd=tmp)
    from quantum_trader.security.tokens import TokenStore

    token, _ = TokenStore(tmp / "var" / "tokens.json").create("tests", ["admin"])
    c = Cluster(tmp, config, db_url, namespace, ports, token)
    try:
        yield c
    finally:
        c.stop_all()
        os.environ.pop("QTRADER_SECRETS__APPROVAL_HMAC_KEY_FILE", None)
        cli = ["redis-cli", "-u", redis_url]
        keys = subprocess.run([*cli, "--scan", "--pattern", f"*{namespace}*"],
                              capture_output=True, text=True).stdout.split()
        if keys:
            subprocess.run([*cli, "del", *keys], capture_output=True)
        with contextlib.suppress(Exception):
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
