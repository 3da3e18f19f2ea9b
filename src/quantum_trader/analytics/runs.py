"""Stored backtest runs: one directory per run under the reports directory.

``<reports_dir>/<run-id>/`` holds ``result.json`` (what ``backtest --json`` prints, plus the
config, the data's fingerprint and the code's version), and, when they were asked for,
``report.html`` (the interactive report) and ``equity.png``. ``result.json`` is written last
and atomically: a directory without one is not a run.

A run id is ``YYYYMMDDTHHMMSSZ-xxxxxxxx``: the UTC time the run was saved, then the first 8 hex
digits of the sha256 of the data fingerprint, the trading config and the signal source. Two
runs of the same config on the same data share the hash; their times tell them apart (a run
saved in the same second as another gets ``-2``, ``-3``, …). Ids sort by time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

RESULT_FILE = "result.json"
REPORT_FILE = "report.html"
CHART_FILE = "equity.png"
RESULT_FORMAT = 1  # result.json's layout; bumped when a key changes meaning
RUN_ID_TIME = "%Y%m%dT%H%M%SZ"
RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}(-\d+)?$")

# The settings a backtest's outcome depends on (paths, services, secrets and the like do not):
# they are stored with the run and hashed into its id.
TRADING_SECTIONS = ("initial_balance", "leverage", "data", "risk", "exits", "exchange",
                    "strategy", "ai")


class RunError(ValueError):
    """A run that cannot be found or read; the message names it."""


class SeriesLike(Protocol):
    @property
    def symbol(self) -> str: ...
    @property
    def timeframe(self) -> str: ...
    @property
    def ts(self) -> npt.NDArray[np.int64]: ...
    @property
    def open(self) -> npt.NDArray[np.float64]: ...
    @property
    def high(self) -> npt.NDArray[np.float64]: ...
    @property
    def low(self) -> npt.NDArray[np.float64]: ...
    @property
    def close(self) -> npt.NDArray[np.float64]: ...
    @property
    def volume(self) -> npt.NDArray[np.float64]: ...


def _series_digest(s: SeriesLike) -> str:
    h = hashlib.sha256(f"{s.symbol}\0{s.timeframe}\0".encode())
    h.update(np.ascontiguousarray(s.ts, dtype="<i8").data)
    for col in (s.open, s.high, s.low, s.close, s.volume):
        h.update(np.ascontiguousarray(col, dtype="<f8").data)
    return h.hexdigest()


def data_fingerprint(series: Sequence[SeriesLike]) -> dict[str, Any]:
    """What the bars were: per symbol its count, first and last open time and a sha256 of
    every value; ``sha256`` covers them all. Equal fingerprints, equal bars."""
    parts = [{"symbol": s.symbol, "timeframe": s.timeframe, "bars": len(s.ts),
              "first_ts": int(s.ts[0]) if len(s.ts) else None,
              "last_ts": int(s.ts[-1]) if len(s.ts) else None,
              "sha256": _series_digest(s)} for s in series]
    whole = hashlib.sha256("\n".join(str(p["sha256"]) for p in parts).encode()).hexdigest()
    return {"sha256": whole, "series": parts}


def trading_config(dump: dict[str, Any]) -> dict[str, Any]:
    """The part of a settings dump (``Settings.model_dump(mode="json")``, secrets masked) that
    decides a backtest."""
    return {k: dump[k] for k in TRADING_SECTIONS if k in dump}


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def run_hash(fingerprint: str, config: dict[str, Any], source: str) -> str:
    return hashlib.sha256(f"{fingerprint}\n{canonical(config)}\n{source}".encode()).hexdigest()[:8]


def new_run_dir(reports_dir: Path, when: datetime, short_hash: str) -> tuple[str, Path]:
    """Make ``<reports_dir>/<run-id>/`` (never an existing one) and return both."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    base = f"{when.astimezone(UTC).strftime(RUN_ID_TIME)}-{short_hash}"
    for n in range(1, 1000):
        run_id = base if n == 1 else f"{base}-{n}"
        path = reports_dir / run_id
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return run_id, path
    raise RunError(f"{reports_dir}: 999 runs named {base}* already")


@contextmanager
def removed_on_error(path: Path) -> Iterator[Path]:
    """A run directory that is removed again if writing it fails: half a run is no run."""
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def write_json_atomic(path: Path, value: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # as a plain write would leave it (mkstemp makes it 0600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def code_version() -> dict[str, str | None]:
    """The package's version and, when it runs from a git checkout, the commit (read from
    ``.git`` directly; whether the tree had changes is not known)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg: str | None = version("quantum-trader")
    except PackageNotFoundError:
        pkg = None
    return {"quantum_trader": pkg, "git_commit": _git_commit(Path(__file__).resolve())}


def _git_commit(start: Path) -> str | None:
    for d in start.parents:
        dot = d / ".git"
        if dot.exists():
            try:
                return _read_head(dot)
            except (OSError, ValueError, UnicodeDecodeError):
                return None
    return None


def _read_head(dot: Path) -> str | None:
    git_dir = dot
    if dot.is_file():  # a worktree or submodule: "gitdir: <path>"
        text = dot.read_text().strip()
        if not text.startswith("gitdir:"):
            return None
        git_dir = (dot.parent / text.split(":", 1)[1].strip()).resolve()
    common = git_dir
    if (git_dir / "commondir").is_file():
        common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
    head = (git_dir / "HEAD").read_text().strip()
    if not head.startswith("ref:"):
        return head if re.fullmatch(r"[0-9a-f]{40,64}", head) else None
    ref = head.split(":", 1)[1].strip()
    for d in (git_dir, common):
        if (d / ref).is_file():
            return (d / ref).read_text().strip()
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref:
                return parts[0]
    return None


# --- reading runs back ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredRun:
    run_id: str
    path: Path  # the run's directory
    result: dict[str, Any]  # result.json

    @property
    def report(self) -> dict[str, Any]:
        r = self.result.get("report")
        return r if isinstance(r, dict) else {}

    def file(self, name: str) -> Path | None:
        p = self.path / name
        return p if p.is_file() else None


def load_run(path: Path) -> StoredRun:
    """A run from its directory or its ``result.json``."""
    file = path / RESULT_FILE if path.is_dir() else path
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunError(f"{path}: not a stored run (no {RESULT_FILE})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{file}: cannot be read ({exc})") from None
    try:
        result = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunError(f"{file}: not a backtest result (bad JSON at line {exc.lineno}: "
                       f"{exc.msg})") from None
    if not isinstance(result, dict) or not isinstance(result.get("report"), dict):
        raise RunError(f"{file}: not a backtest result (no performance report in it)")
    run_dir = file.parent
    run_id = result.get("run_id")
    return StoredRun(run_id if isinstance(run_id, str) else run_dir.name, run_dir, result)


def run_dirs(reports_dir: Path) -> list[Path]:
    """Every stored run's directory, newest first (by id, which starts with its time)."""
    if not reports_dir.is_dir():
        return []
    found = [p for p in reports_dir.iterdir() if p.is_dir() and (p / RESULT_FILE).is_file()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def resolve_run(ref: str, reports_dir: Path) -> StoredRun:
    """A run named by its id, a unique prefix of one, its directory or its ``result.json``."""
    if not ref.strip():
        raise RunError("an empty run id: name a run (`quantum-trader reports` lists them)")
    direct = Path(ref)
    if direct.exists():
        return load_run(direct)
    if "/" not in ref and os.sep not in ref:
        stored = reports_dir / ref
        if (stored / RESULT_FILE).is_file():
            return load_run(stored)
        matches = [p for p in run_dirs(reports_dir) if p.name.startswith(ref)]
        if len(matches) == 1:
            return load_run(matches[0])
        if len(matches) > 1:
            names = ", ".join(p.name for p in matches[:3])
            more = f" and {len(matches) - 3} more" if len(matches) > 3 else ""
            raise RunError(f"run {ref!r} is ambiguous: it starts {names}{more} in "
                           f"{reports_dir}; give more of the id")
    raise RunError(f"no run {ref!r} in {reports_dir} (`quantum-trader reports` lists the "
                   f"stored runs; a path to a run's directory works too)")
