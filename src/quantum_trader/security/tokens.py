"""API tokens: random bearer tokens with scopes, stored only as SHA-256 hashes.

A token is ``qt_<id>_<secret>``: ``id`` (12 hex) names the record, so a lookup is a dict hit;
``secret`` is 256 random bits. SHA-256 is the right hash here, not a password KDF: the input
has full entropy, so brute force is hopeless anyway, and a slow KDF (scrypt/argon2) would cost
tens of milliseconds on every request. The comparison is constant-time.

The file is JSON (mode 0600) written atomically under an exclusive lock, so the CLI can
create or revoke while services run; services re-read it when it changes, so a revocation
takes effect on the next request without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "Principal",
    "Scope",
    "TokenError",
    "TokenRecord",
    "TokenStore",
    "hash_token",
]

# A public prefix (like GitHub's "ghp_") that makes leaked tokens easy to spot, not a secret.
TOKEN_PREFIX = "qt_"  # nosec B105
_TOKEN_RE = re.compile(r"^qt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_FORMAT = 1


class TokenError(ValueError):
    """A token operation the operator can fix (unknown name, bad scope, corrupt file)."""


class Scope(StrEnum):
    READ = "read"  # status, trades, metrics, readiness, the API schema
    TRADE = "trade"  # endpoints that make or request trading decisions
    ADMIN = "admin"  # kill switch, pause/resume, trading-state changes

    def grants(self) -> frozenset[Scope]:
        """What holding this scope allows: admin includes trade, trade includes read."""
        order = [Scope.READ, Scope.TRADE, Scope.ADMIN]
        return frozenset(order[: order.index(self) + 1])


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    out = set()
    for v in values:
        try:
            out.add(Scope(v.strip().lower()))
        except ValueError:
            raise TokenError(f"unknown scope {v!r}; use read, trade or admin") from None
    if not out:
        raise TokenError("a token needs at least one scope")
    return frozenset(out)


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What the file keeps about a token: never the token itself."""

    id: str
    name: str
    scopes: tuple[str, ...]
    hash: str
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def granted(self) -> frozenset[Scope]:
        return frozenset(g for s in self.scopes for g in Scope(s).grants())


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the token's id and name, and the scopes it grants."""

    token_id: str
    name: str
    scopes: frozenset[Scope]

    def allows(self, needed: Scope) -> bool:
        return needed in self.scopes


class TokenStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._by_id: dict[str, TokenRecord] = {}

    # -- operator side (CLI) -------------------------------------------------------------------

    def create(self, name: str, scopes: Iterable[str]) -> tuple[str, TokenRecord]:
        """Make a token; returns (the token, shown once and never stored; its record)."""
        name = name.strip()
        if not name or len(name) > 64 or not re.fullmatch(r"[\w.@-]+", name):
            raise TokenError("token name: 1-64 letters, digits, '.', '_', '-' or '@'")
        granted = sorted(s.value for s in parse_scopes(scopes))
        self._read()  # a file we could not rewrite is refused before anything is written
        with self._locked() as records:
            if any(r.name == name and r.active for r in records):
                raise TokenError(f"an active token named {name!r} exists; revoke it first")
            ids = {r.id for r in records}
            token_id = secrets.token_hex(6)
            while token_id in ids:  # pragma: no cover - 48 random bits
                token_id = secrets.token_hex(6)
            token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
            record = TokenRecord(token_id, name, tuple(granted), hash_token(token), time.time())
            records.append(record)
        return token, record

    def revoke(self, id_or_name: str) -> TokenRecord:
        """Revoke the active token with this id or name (records stay, for the audit)."""
        def find(records: list[TokenRecord]) -> int:
            for i, r in enumerate(records):
                if r.active and id_or_name in (r.id, r.name):
                    return i
            raise TokenError(f"no active token with id or name {id_or_name!r}")

        find(self._read())  # refused before the lock file or the token file is touched
        with self._locked() as records:
            i = find(records)  # raising here leaves the file as it was
            records[i] = replace(records[i], revoked_at=time.time())
            return records[i]

    def records(self) -> list[TokenRecord]:
        return self._read()

    # -- service side ----------------------------------------------------------------------------

    def authenticate(self, token: str) -> Principal | None:
        """The principal for ``token``, or None if it is malformed, unknown or revoked."""
        m = _TOKEN_RE.match(token)
        if m is None:
            return None
        record = self._current().get(m.group(1))
        # Compare even when there is no record, so timing says nothing about which part failed.
        expected = record.hash if record is not None else hash_token("")
        if not hmac.compare_digest(hash_token(token).encode(), expected.encode()):
            return None
        if record is None or not record.active:
            return None
        return Principal(record.id, record.name, record.granted())

    def _current(self) -> dict[str, TokenRecord]:
        """Records by id, re-read whenever the file changed (a stat per request: cheap)."""
        try:
            st = self.path.stat()
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._by_id = {r.id: r for r in self._read()}
                except TokenError:
                    self._by_id = {}  # a corrupt file authenticates nobody (fail closed)
                self._stamp = stamp
            return self._by_id

    # -- file ------------------------------------------------------------------------------------

    def _read(self) -> list[TokenRecord]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return []
        try:
            data = json.loads(raw)
            if data.get("format") != _FORMAT:
                raise TokenError(f"{self.path}: unknown token file format {data.get('format')!r}")
            return [TokenRecord(**{**r, "scopes": tuple(r["scopes"])}) for r in data["tokens"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TokenError(f"{self.path}: not a valid token file ({exc})") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[TokenRecord]]:
        """Read-modify-write under an exclusive lock; the write is atomic (rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            records = self._read()
            yield records
            self._write(records)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _write(self, records: list[TokenRecord]) -> None:
        body: dict[str, Any] = {"format": _FORMAT,
                                "tokens": [{**asdict(r), "scopes": list(r.scopes)}
                                           for r in records]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tokens-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                json.dump(body, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
