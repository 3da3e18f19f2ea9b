"""What every service shares: bus consumers acked after commit, heartbeats, a health model,
and a small FastAPI app with ``/health``, ``/ready`` and ``/metrics``.

Services never call each other. They learn about each other from heartbeats on the bus, so a
dead neighbour makes a service DEGRADED (naming it), never stuck or crashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from quantum_trader.bus.consumer import Consumer, ConsumerEvent
from quantum_trader.bus.protocol import Bus, Message, UnknownGroup, stream_name
from quantum_trader.bus.recovery import recreate_group
from quantum_trader.config import Settings
from quantum_trader.observability.http_metrics import HttpMetricsMiddleware
from quantum_trader.observability.logging import get_logger
from quantum_trader.observability.metrics import (
    BUS_CONSUMER_LAG,
    DEADLETTER,
    REGISTRY,
    SERVICE_UP,
)
from quantum_trader.runtime.clock import wall_ms
from quantum_trader.runtime.health import HealthModel, Status
from quantum_trader.security.middleware import install as install_security
from quantum_trader.security.secrets import register_configured_secrets
from quantum_trader.store.protocol import TradeStore

HEARTBEATS = "heartbeats"
STATUS_CODE = {Status.OK: 0, Status.DEGRADED: 1, Status.DOWN: 2}



class Service:
    """Base class. Subclasses set ``name``, register consumers and health checks."""

    name = "service"
    #: services whose heartbeat this one watches; a stale one makes us DEGRADED
    upstreams: tuple[str, ...] = ()

    def __init__(self, settings: Settings, bus: Bus, store: TradeStore | None) -> None:
        self.settings = settings
        self.bus = bus
        self.store = store
        self.log = get_logger(f"quantum_trader.{self.name}")
        register_configured_secrets(settings)  # before anything can log a secret
        self.health = HealthModel(self.name, interval_s=0.5)
        self.heartbeats: dict[str, float] = {}
        self.peer_status: dict[str, str] = {}  # last status each service announced
        # A stable name: a restarted process picks up its own pending messages at once.
        self.consumer_name = f"{self.name}-1"
        self._consumers: list[Consumer] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        self._stopping = False  # set first thing in stop(): in-flight waits give up
        self._handled: dict[str, asyncio.Event] = {}  # stream -> "its consumer handled one"
        self.owns_bus = True  # False when several services share one in-process bus
        self.health.add("redis", self._check_bus, critical=True)
        if store is not None:
            self.health.add("database", self._check_store, critical=True)
        for up in self.upstreams:
            self.health.add(f"heartbeat:{up}", self._heartbeat_check(up), critical=False)

    # --- wiring -------------------------------------------------------------------------------
    def consume(self, topic: str, handler: Callable[[Message], Awaitable[None]],
                batch: int = 100) -> None:
        self._consumers.append(Consumer(self.bus, topic, self.name, self.consumer_name, handler,
                                        max_attempts=5, batch=batch, block_ms=200,
                                        metrics=self._on_consumer_event))

    async def catch_up(self, topic: str) -> None:
        """Handle everything already waiting on ``topic`` now (read-your-writes across
        streams: e.g. the account update that precedes an exit intent)."""
        for c in self._consumers:
            if c.topic == topic:
                while await c.run_once(block_ms=0):
                    pass

    async def catch_up_until(self, topic: str, done: Callable[[], bool],
                             timeout_s: float) -> bool:
        """Handle ``topic`` until ``done()`` holds or ``timeout_s`` passes; False on timeout.

        Between checks it sleeps until ``topic``'s own consumer task handles something (it
        wakes on a blocking read the moment an entry lands), instead of polling the bus.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        handled = self._handled.setdefault(stream_name(topic), asyncio.Event())
        while True:
            if self._stopping:
                # A stopping service does not wait out a peer (up to a minute in a lockstep
                # replay): the message in hand stays pending and is redelivered after the
                # restart, as after a crash.
                raise asyncio.CancelledError
            handled.clear()  # before the check: whatever is handled after it wakes us
            await self.catch_up(topic)
            if done():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(handled.wait(), remaining)

    def _on_consumer_event(self, ev: ConsumerEvent) -> None:
        if ev.kind == "handled":
            handled = self._handled.get(ev.stream)
            if handled is not None:
                handled.set()
        if ev.kind == "deadletter":
            DEADLETTER.labels(ev.stream).inc()
            self.log.warning("deadletter", stream=ev.stream, entry_id=ev.entry_id,
                             reason=ev.reason)

    async def publish(self, topic: str, type_: str, payload: dict[str, Any], trace_id: str,
                      msg_id: str | None = None) -> None:
        kwargs = {"id": msg_id} if msg_id else {}
        await self.bus.publish(topic, Message(type_, payload, wall_ms(), trace_id, **kwargs))

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self.store is not None:
            await self.store.open()  # refuses a schema that is not at the latest migration
        await self.bus.ensure_group(HEARTBEATS, self.name)
        await self.on_start()
        self._tasks.append(asyncio.create_task(self.health.run(self._stop)))
        self._tasks.append(asyncio.create_task(self._heartbeat_loop()))
        self._tasks.append(asyncio.create_task(self._watch_heartbeats()))
        self._tasks.append(asyncio.create_task(self._lag_loop()))
        for c in self._consumers:
            self._tasks.append(asyncio.create_task(c.run()))
        await self.health.refresh()
        self.health.ready = True
        self.log.info("service_started", consumers=[c.topic for c in self._consumers])

    async def on_start(self) -> None:
        """Subclass hook: restore state, ensure groups, start extra tasks."""

    async def stop(self) -> None:
        """Drain: finish in-flight messages, then stop everything."""
        self.health.ready = False
        self._stopping = True
        for waiting in self._handled.values():
            waiting.set()  # wake catch_up_until, which then gives up
        for c in self._consumers:
            await c.stop()
        self._stop.set()
        await self.on_stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.store is not None:
            await self.store.close()
        if self.owns_bus:
            await self.bus.close()
        self.log.info("service_stopped")

    async def on_stop(self) -> None:
        """Subclass hook."""

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(self._on_task_done)
        self._tasks.append(task)

    def _on_task_done(self, task: asyncio.Future[Any]) -> None:
        """A background task that dies must say so (a silent death stops e.g. reconciliation)."""
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.log.error("background_task_failed", error=f"{type(exc).__name__}: {exc}")

    # --- heartbeats and health ----------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        iv = self.settings.services.heartbeat_interval_s
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                await self.publish(HEARTBEATS, "heartbeat",
                                   {"service": self.name, "status": self.health.status.value,
                                    "pid": os.getpid()}, "")
            SERVICE_UP.labels(self.name).set(STATUS_CODE[self.health.status])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), iv)

    async def _watch_heartbeats(self) -> None:
        while not self._stop.is_set():
            try:
                deliveries = await self.bus.read(HEARTBEATS, self.name, self.consumer_name,
                                                 count=500, block_ms=500)
            except UnknownGroup:
                # Redis lost its data: our group went with it. Create it again and read on.
                try:
                    await recreate_group(self.bus, HEARTBEATS, self.name, self.consumer_name)
                except Exception:
                    await asyncio.sleep(0.5)
                continue
            except Exception:
                await asyncio.sleep(0.5)
                continue
            for d in deliveries:
                if d.message is not None:
                    svc = d.message.payload.get("service")
                    if isinstance(svc, str):
                        self.heartbeats[svc] = time.time()
                        self.peer_status[svc] = str(d.message.payload.get("status", ""))
            if deliveries:
                with contextlib.suppress(Exception):
                    await self.bus.ack(HEARTBEATS, self.name, [d.entry_id for d in deliveries])

    def _heartbeat_check(self, upstream: str) -> Callable[[], Awaitable[str | None]]:
        async def check() -> str | None:
            seen = self.heartbeats.get(upstream)
            stale = self.settings.services.heartbeat_stale_s
            if seen is None:
                return f"no heartbeat from {upstream} yet"
            age = time.time() - seen
            if age > stale:
                return f"{upstream} silent for {age:.1f}s (down?)"
            return None

        return check

    async def _check_bus(self) -> str | None:
        try:
            await self.bus.pending_count(HEARTBEATS, self.name)
        except UnknownGroup:
            # Redis answers but lost its data (restarted without it): not DOWN. Recreate the
            # group (counted in bus_groups_recreated_total) and check once more.
            await recreate_group(self.bus, HEARTBEATS, self.name, "health")
            await self.bus.pending_count(HEARTBEATS, self.name)
        return None

    async def _check_store(self) -> str | None:
        assert self.store is not None
        await self.store.checkpoint("__health__")
        return None

    async def _lag_loop(self) -> None:
        while not self._stop.is_set():
            for c in self._consumers:
                with contextlib.suppress(Exception):
                    BUS_CONSUMER_LAG.labels(c.topic, self.name).set(await c.lag())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 2.0)

    def upstream_down(self, upstream: str) -> bool:
        st = self.health.states.get(f"heartbeat:{upstream}")
        return st is not None and not st.ok

    # --- HTTP ---------------------------------------------------------------------------------
    def create_app(self) -> FastAPI:
        app = FastAPI(title=f"quantum-trader {self.name}", version="0.1.0")
        service = self.name
        install_security(app, self.settings, service)  # auth + rate limits on every route

        app.add_middleware(HttpMetricsMiddleware, service=service)  # outermost

        @app.get("/health")
        async def health() -> JSONResponse:
            body = self.health.as_dict()
            body["pid"] = os.getpid()
            code = 503 if self.health.status is Status.DOWN else 200
            return JSONResponse(body, status_code=code)

        @app.get("/ready")
        async def ready() -> JSONResponse:
            ok = self.health.ready and self.health.status is not Status.DOWN
            return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

        @app.get("/metrics")
        async def metrics() -> Response:
            return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

        self.add_routes(app)
        return app

    def add_routes(self, app: FastAPI) -> None:
        """Subclass hook for service-specific endpoints."""
