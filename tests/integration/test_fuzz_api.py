"""schemathesis against every service's OpenAPI schema: no 5xx, valid input or not.

The six services run for real (uvicorn on free loopback ports, one event loop in a thread,
the in-memory bus and a SQLite store), so /status really asks the other services over HTTP.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from quantum_trader.config import SERVICE_NAMES
from quantum_trader.security.tls import uvicorn_options
from quantum_trader.services.base import Service
from tests.integration.test_security_http import (
    Tokens,
    bearer,
    build_services,
    issue_tokens,
    make_settings,
)

# Per operation and generation mode; FUZZ_EXAMPLES=1000 for a deeper run (not QTRADER_*: those
# are settings keys).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """All six services served by uvicorn from one background event loop."""

    def __init__(self, tmp: Path) -> None:
        self.ports = {n: free_port() for n in SERVICE_NAMES}
        self.settings = make_settings(tmp, services={"ports": self.ports})
        self.tokens: Tokens = issue_tokens(self.settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.services: dict[str, Service] = {}
        self.servers: list[uvicorn.Server] = []
        self.tasks: list[asyncio.Task[None]] = []

    def run(self, coro: Any, timeout: float = 60) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    async def _start(self) -> None:
        self.services = await build_services(self.settings)
        for name, svc in self.services.items():
            await svc.start()
            config = uvicorn.Config(svc.create_app(), host="127.0.0.1", port=self.ports[name],
                                    log_level="warning", access_log=False, lifespan="off",
                                    **uvicorn_options(self.settings))
            server = uvicorn.Server(config)
            self.servers.append(server)
            self.tasks.append(asyncio.create_task(server.serve()))
        async with asyncio.timeout(20):
            while not all(s.started for s in self.servers):  # noqa: ASYNC110 (no event)
                await asyncio.sleep(0.02)

    async def _stop(self) -> None:
        for s in self.servers:
            s.should_exit = True
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for svc in reversed(list(self.services.values())):
            await svc.stop()

    def __enter__(self) -> Cluster:
        self.thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("fuzz")) as c:
        yield c


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_schemathesis_finds_no_server_errors(cluster: Cluster, name: str) -> None:
    base = cluster.url(name)
    doc = httpx.get(f"{base}/openapi.json", headers=bearer(cluster.tokens.admin)).json()
    schema = schemathesis.openapi.from_dict(doc)
    operations = [r.ok() for r in schema.get_all_operations()]  # type: ignore[union-attr]
    assert {"/health", "/ready", "/metrics"} <= {op.path for op in operations}
    failures: list[str] = []
    seen = {"calls": 0}
    # Admin reaches every handler; read exercises the scope refusal; none the 401 path.
    credentials = [bearer(cluster.tokens.admin), bearer(cluster.tokens.read), {}]

    def check(case: Any) -> None:
        headers = credentials[seen["calls"] % len(credentials)]
        seen["calls"] += 1
        response = case.call(base_url=base, headers=headers, timeout=10)
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.path} -> {response.status_code}: "
                            f"{response.text[:200]} ({case.as_curl_command()})")

    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None,
                            suppress_health_check=list(HealthCheck))(
                given(case=op.as_strategy(generation_mode=mode))(check))
            try:
                fuzz()
            except Exception as exc:
                if "Unsatisfiable" not in type(exc).__name__:  # nothing negative to make
                    raise
    assert seen["calls"] >= len(operations)
    assert failures == [], "\n".join(failures[:10])
    health = httpx.get(f"{base}/health").json()
    assert health["status"] in ("OK", "DEGRADED"), health
