"""``quantum-trader up``: one process per service, restarted with backoff when it crashes,
drained with SIGTERM on Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from quantum_trader.config import SERVICE_NAMES
from quantum_trader.observability.logging import get_logger

log = get_logger("quantum_trader.launcher")
START_ORDER = ("execution", "risk-safety", "exit-brain", "ai-engine", "market-data", "gateway")


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff_s: float = 1.0
    history: list[int] = field(default_factory=list)  # exit codes


class Launcher:
    def __init__(self, names: list[str] | None = None, config: Path | None = None,
                 max_backoff_s: float = 30.0, drain_timeout_s: float = 20.0) -> None:
        chosen = names or list(SERVICE_NAMES)
        unknown = set(chosen) - set(SERVICE_NAMES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}")
        self.names = [n for n in START_ORDER if n in chosen]
        self.config = config
        self.max_backoff_s = max_backoff_s
        self.drain_timeout_s = drain_timeout_s
        self.children = {n: Child(n) for n in self.names}
        self._stopping = asyncio.Event()

    def _argv(self, name: str) -> list[str]:
        argv = [sys.executable, "-m", "quantum_trader", "serve", name]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        return argv

    async def _spawn(self, child: Child) -> None:
        child.proc = await asyncio.create_subprocess_exec(*self._argv(child.name),
                                                          env=dict(os.environ))
        child.started_at = time.monotonic()
        log.info("service_spawned", service=child.name, pid=child.proc.pid,
                 restarts=child.restarts)

    async def _supervise(self, child: Child) -> None:
        while not self._stopping.is_set():
            await self._spawn(child)
            assert child.proc is not None
            code = await child.proc.wait()
            child.history.append(code)
            if self._stopping.is_set():
                return
            # Crash: restart with exponential backoff, reset after a minute of good health.
            if time.monotonic() - child.started_at > 60:
                child.backoff_s = 1.0
            log.warning("service_exited", service=child.name, code=code,
                        restart_in_s=child.backoff_s)
            child.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), child.backoff_s)
            child.backoff_s = min(child.backoff_s * 2, self.max_backoff_s)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self._stopping.set)
        tasks = [asyncio.create_task(self._supervise(c)) for c in self.children.values()]
        await self._stopping.wait()
        await self.shutdown()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        return 0

    def stop(self) -> None:
        self._stopping.set()

    async def shutdown(self) -> None:
        """SIGTERM everyone (they drain in-flight work), then SIGKILL whoever hangs."""
        live = [c.proc for c in self.children.values()
                if c.proc is not None and c.proc.returncode is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)),
                                   self.drain_timeout_s)
        except TimeoutError:
            for p in live:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
        log.info("all_services_stopped")
