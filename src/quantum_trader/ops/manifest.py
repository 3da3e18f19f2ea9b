"""The manifest of a backup set: what it holds, with the size and sha256 of every file.

A set is a directory ``qt-backup-<UTC time>``. It is written under a ``.partial-`` name and
renamed only after ``manifest.json`` is on disk, so a directory with the final name and a
manifest is a finished set; anything else is partial and restore refuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quantum_trader.ops import crypto
from quantum_trader.ops.errors import BackupError

MANIFEST = "manifest.json"
FORMAT = 1
PREFIX = "qt-backup-"
PARTIAL = ".partial-"
_NAME_RE = re.compile(r"^qt-backup-(\d{8}T\d{6})Z(?:-\d+)?$")
_HASH_BLOCK = 1 << 20


def set_name(ts: float) -> str:
    return PREFIX + datetime.fromtimestamp(ts, UTC).strftime("%Y%m%dT%H%M%SZ")


def name_time(name: str) -> float | None:
    """The UTC time encoded in a set's name, or None for a name that is not a set's."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC).timestamp()


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return h.hexdigest()


def canonical(manifest: dict[str, Any]) -> bytes:
    """The bytes the manifest signature covers: everything but the signature itself."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def write_manifest(set_dir: Path, manifest: dict[str, Any], key: bytes | None) -> None:
    if key is not None:
        manifest["signature"] = crypto.sign(key, canonical(manifest))
    tmp = set_dir / (MANIFEST + ".tmp")
    with tmp.open("w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(set_dir / MANIFEST)


def read_manifest(set_dir: Path) -> dict[str, Any]:
    path = set_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupError(f"{set_dir.name}: no {MANIFEST}: the backup did not finish "
                          "(a partial set)") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{set_dir.name}: {MANIFEST} is unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or \
            not isinstance(data.get("files"), dict):
        raise BackupError(f"{set_dir.name}: {MANIFEST} is not a format-{FORMAT} manifest")
    return data


@dataclass(frozen=True, slots=True)
class SetInfo:
    """One backup set found in a backup directory."""

    name: str
    path: Path
    created_ts: float
    complete: bool
    size: int
    encrypted: bool
    components: tuple[str, ...]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_sets(root: Path) -> list[SetInfo]:
    """Every set (finished or partial) under ``root``, oldest first."""
    out: list[SetInfo] = []
    if not root.is_dir():
        return out
    for child in root.iterdir():
        if not child.is_dir():
            continue
        name = child.name
        partial = name.startswith(PARTIAL)
        ts = name_time(name[len(PARTIAL):] if partial else name)
        if ts is None:
            continue
        complete, encrypted, components = False, False, ()
        if not partial:
            try:
                m = read_manifest(child)
            except BackupError:
                pass
            else:
                complete = True
                ts = float(m.get("created_ts", ts))
                encrypted = bool(m.get("encrypted"))
                components = tuple(sorted(m.get("components", {})))
        out.append(SetInfo(name, child, ts, complete, dir_size(child), encrypted, components))
    return sorted(out, key=lambda s: (s.created_ts, s.name))


def now() -> float:
    return time.time()
