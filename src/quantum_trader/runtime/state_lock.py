"""One run per state directory: an advisory lock (``flock``) on ``<state_dir>/run.lock``.

Two runs on one store would interleave their checkpoints (the second one's moves the first
one's backwards). The lock is the kernel's, so it dies with its process, however that ends:
a stale file never blocks a run. The file names its holder, so the refusal can say who.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

LOCK_NAME = "run.lock"


class StateDirInUse(RuntimeError):
    """Another process holds the state directory."""

    def __init__(self, state_dir: Path, holder: dict[str, object]) -> None:
        who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "host", "command") if k in holder)
        since = holder.get("started")
        when = (time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(float(str(since))))
                if isinstance(since, (int, float)) else "?")
        super().__init__(f"state directory {state_dir} is in use by another run "
                         f"({who or 'holder unknown'}, since {when})")
        self.holder = holder


class StateDirLock:
    """Held for as long as the ``with`` block runs."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> StateDirLock:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StateDirInUse(self.state_dir, holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.time(),
                                 "command": " ".join(["quantum-trader", *sys.argv[1:]])})
                 .encode())
        self._fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the lock
            self._fd = None


def _read_holder(fd: int) -> dict[str, object]:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw.decode() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
