"""Periodic backups inside a long-running process (embedded mode has no systemd of its own).

The job runs in a worker thread (pg_dump, hashing and encryption block), never overlaps with
itself, and a failure is logged and retried at the next tick: a broken backup must never take
the trading node down with it. Distributed deployments use the systemd timer or cron instead
(deploy/systemd, deploy/cron).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class BackupScheduler:
    def __init__(self, job: Callable[[], Any], every_s: float, *,
                 first_after_s: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if every_s <= 0:
            raise ValueError("every_s must be positive")
        self.job = job
        self.every_s = every_s
        self.first_after_s = first_after_s
        self.clock = clock
        self.runs = 0
        self.failures = 0
        self.last_error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    def delay_until_next(self) -> float:
        """Seconds to the next multiple of ``every_s`` (UTC-aligned, like the retention
        buckets, so each 6-hour bucket gets its set)."""
        now = self.clock()
        return self.every_s - (now % self.every_s)

    async def run_once(self) -> bool:
        try:
            await asyncio.to_thread(self.job)
        except Exception as exc:
            self.failures += 1
            self.last_error = exc
            log.error("scheduled backup failed: %s", exc)
            return False
        self.runs += 1
        return True

    async def run_forever(self) -> None:
        delay = self.first_after_s if self.first_after_s is not None \
            else self.delay_until_next()
        while True:
            await asyncio.sleep(delay)
            await self.run_once()
            delay = self.delay_until_next()

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run_forever(),
                                                                name="backup-scheduler")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def embedded_job(settings: Any, dest: Path, *, key_file: Path | None = None,
                 redis_url: str | None = None, prune: bool = True) -> Callable[[], Any]:
    """The job embedded mode schedules: back up the store, registry and config, then prune."""
    from quantum_trader.ops.service import run_backup

    def job() -> Any:
        return run_backup(settings, dest, key_file=key_file, redis_url=redis_url, prune=prune)

    return job
