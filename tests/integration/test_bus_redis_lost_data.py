"""Redis restarted *without* its data while services run: every stream and consumer group is
gone. Each read path (``Consumer``, the heartbeat watcher, the ``redis`` health check) creates
again what it needs, counts it in ``bus_groups_recreated_total``, and the services are back to
OK and consuming on their own, including what was published before they noticed the loss.

A test-owned ``redis-server`` on a free port: killed with SIGKILL, its AOF deleted, started again
on the same port, which is what a restart without persistence (or a lost volume) looks like.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from quantum_trader.bus.protocol import Message
from quantum_trader.bus.redis_streams import RedisStreamBus
from quantum_trader.config import Settings
from quantum_trader.observability.metrics import REGISTRY
from quantum_trader.runtime.health import Status
from quantum_trader.services.base import HEARTBEATS, Service
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


class Source(Service):
    name = "lost-data-source"


class Sink(Service):
    name = "lost-data-sink"
    upstreams = ("lost-data-source",)

    def __init__(self, settings: Settings, bus: RedisStreamBus) -> None:
        super().__init__(settings, bus, None)
        self.seen: list[int] = []
        self.consume("signals", self._on_signal)

    async def _on_signal(self, message: Message) -> None:
        self.seen.append(message.payload["n"])


def recreated(topic: str, group: str) -> float:
    value = REGISTRY.get_sample_value("bus_groups_recreated_total",
                                      {"stream": topic, "group": group})
    return value or 0.0


def restart_without_data(server: RedisServer) -> None:
    server.kill()
    for path in server.directory.iterdir():
        if path.name != server.log_file.name:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    server.start()


async def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Wait for ``predicate``; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"not within {timeout_s}s: {what}", pytrace=False)
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def signal(n: int) -> Message:
    return Message(type="test", payload={"n": n}, ts=1_700_000_000_000 + n, trace_id="")


async def test_services_recover_on_their_own_after_redis_lost_its_data(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"services": {"bus": "redis", "heartbeat_interval_s": 0.2, "heartbeat_stale_s": 2.0}})
    with RedisServer(tmp_path / "redis") as server:
        def bus() -> RedisStreamBus:
            return RedisStreamBus(server.url, reconnect_timeout_s=5, socket_timeout_s=1)

        source, sink = Source(settings, bus(), None), Sink(settings, bus())
        publisher = bus()
        before = {(t, g): recreated(t, g) for t, g in [
            (HEARTBEATS, source.name), (HEARTBEATS, sink.name), ("signals", sink.name)]}
        try:
            await source.start()
            await sink.start()
            for n in range(5):
                await publisher.publish("signals", signal(n))
            await until(lambda: sink.health.status is Status.OK
                        and source.health.status is Status.OK and len(sink.seen) == 5,
                        10, "both services OK and the first signals consumed")

            restart_without_data(server)
            restarted = time.time()
            assert await publisher.length("signals") == 0  # the data is really gone
            # Published right away, most likely before the sink noticed its group is gone:
            # the recreated group starts at the beginning, so these must not be skipped.
            for n in range(100, 120):
                await publisher.publish("signals", signal(n))

            def recovered() -> bool:
                # Judged on health checks run *after* the restart, not on a stale OK.
                checked = all((svc.health.states["redis"].last_ok_at or 0) > restarted
                              for svc in (source, sink))
                return (checked and set(range(100, 120)) <= set(sink.seen)
                        and sink.heartbeats.get(source.name, 0) > restarted
                        and sink.health.status is Status.OK
                        and source.health.status is Status.OK)

            await until(recovered, 15, "services OK again and consuming after the data loss")
            # And they stay so, past the heartbeat staleness limit, and go on consuming.
            await asyncio.sleep(settings.services.heartbeat_stale_s + 0.5)
            for n in range(200, 205):
                await publisher.publish("signals", signal(n))
            await until(lambda: set(range(200, 205)) <= set(sink.seen), 5, "more signals")
            assert sink.health.status is Status.OK, sink.health.reasons()
            assert source.health.status is Status.OK, source.health.reasons()
            assert time.time() - sink.heartbeats[source.name] < 1.0
        finally:
            await sink.stop()
            await source.stop()
            await publisher.close()

    # What was lost is reported: each vanished group counted once.
    assert recreated("signals", sink.name) - before[("signals", sink.name)] == 1
    assert recreated(HEARTBEATS, sink.name) - before[(HEARTBEATS, sink.name)] == 1
    assert recreated(HEARTBEATS, source.name) - before[(HEARTBEATS, source.name)] == 1
    assert sink.seen[:5] == [0, 1, 2, 3, 4]
