"""Health that tells the truth: one entry per dependency, each with latency and last error.

Checks run in the background on a short interval and ``/health`` serves the last result, so
answering is O(1) and never blocks on a slow dependency. Status is DOWN if a *critical*
dependency fails, DEGRADED if any other fails, else OK.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    OK = "OK"
    DEGRADED = "DEGRADED"
    DOWN = "DOWN"


Check = Callable[[], Awaitable[str | None]]  # returns None when healthy, else what is wrong


@dataclass
class DependencyState:
    name: str
    critical: bool
    ok: bool = False
    latency_ms: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_ok_at: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "critical": self.critical,
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
                "last_error": self.last_error, "last_error_at": self.last_error_at,
                "last_ok_at": self.last_ok_at, "detail": self.detail}


@dataclass
class HealthModel:
    service: str
    interval_s: float = 1.0
    timeout_s: float = 2.0
    _checks: dict[str, tuple[Check, bool]] = field(default_factory=dict)
    states: dict[str, DependencyState] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    ready: bool = False

    def add(self, name: str, check: Check, critical: bool = True) -> None:
        self._checks[name] = (check, critical)
        self.states[name] = DependencyState(name, critical, last_error="not checked yet")

    async def refresh(self) -> None:
        await asyncio.gather(*(self._run(name) for name in self._checks))

    async def _run(self, name: str) -> None:
        check, _ = self._checks[name]
        st = self.states[name]
        t0 = time.perf_counter()
        try:
            problem = await asyncio.wait_for(check(), self.timeout_s)
        except TimeoutError:
            problem = f"timed out after {self.timeout_s}s"
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        st.latency_ms = (time.perf_counter() - t0) * 1000
        now = time.time()
        if problem is None:
            st.ok, st.last_ok_at, st.detail = True, now, ""
        else:
            st.ok, st.last_error, st.last_error_at, st.detail = False, problem, now, problem

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    @property
    def status(self) -> Status:
        bad = [s for s in self.states.values() if not s.ok]
        if any(s.critical for s in bad):
            return Status.DOWN
        return Status.DEGRADED if bad else Status.OK

    def reasons(self) -> list[str]:
        return [f"{s.name}: {s.detail or s.last_error}" for s in self.states.values() if not s.ok]

    def as_dict(self) -> dict[str, Any]:
        return {"service": self.service, "status": self.status.value, "reasons": self.reasons(),
                "uptime_s": round(time.time() - self.started_at, 1),
                "dependencies": [s.as_dict() for s in self.states.values()]}
