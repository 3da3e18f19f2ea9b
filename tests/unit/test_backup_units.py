"""Backup building blocks without servers: encryption, set names, listing, the scheduler."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from quantum_trader.ops import crypto
from quantum_trader.ops.errors import BackupError
from quantum_trader.ops.manifest import list_sets, name_time, set_name
from quantum_trader.ops.scheduler import BackupScheduler


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.mark.parametrize("size", [0, 1, crypto.CHUNK - 1, crypto.CHUNK, 2 * crypto.CHUNK + 7])
def test_encrypt_round_trip(tmp_path: Path, key: bytes, size: int) -> None:
    plain = os.urandom(size)
    (tmp_path / "p").write_bytes(plain)
    crypto.encrypt_file(tmp_path / "p", tmp_path / "c", key)
    if size >= 64:
        assert plain[:64] not in (tmp_path / "c").read_bytes()
    crypto.decrypt_file(tmp_path / "c", tmp_path / "d", key)
    assert (tmp_path / "d").read_bytes() == plain


def _encrypted(tmp_path: Path, key: bytes, size: int = 3 * crypto.CHUNK) -> bytes:
    (tmp_path / "p").write_bytes(os.urandom(size))
    crypto.encrypt_file(tmp_path / "p", tmp_path / "c", key)
    return (tmp_path / "c").read_bytes()


def test_truncation_at_a_chunk_boundary_is_detected(tmp_path: Path, key: bytes) -> None:
    data = _encrypted(tmp_path, key)
    one_chunk = 6 + 8 + 4 + crypto.CHUNK + 16
    (tmp_path / "c").write_bytes(data[:one_chunk])  # a whole first chunk, nothing after
    with pytest.raises(crypto.DecryptionFailed, match="authentication failed"):
        crypto.decrypt_file(tmp_path / "c", tmp_path / "d", key)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("where", ["flip", "cut", "wrong_key"])
def test_tampering_is_detected(tmp_path: Path, key: bytes, where: str) -> None:
    data = bytearray(_encrypted(tmp_path, key))
    use_key = key
    if where == "flip":
        data[len(data) // 2] ^= 0x80
    elif where == "cut":
        data = data[:-10]
    else:
        use_key = os.urandom(32)
    (tmp_path / "c").write_bytes(bytes(data))
    with pytest.raises(crypto.DecryptionFailed):
        crypto.decrypt_file(tmp_path / "c", tmp_path / "d", use_key)
    assert not (tmp_path / "d").exists()


def test_key_files(tmp_path: Path) -> None:
    p = crypto.generate_key(tmp_path / "k")
    assert p.stat().st_mode & 0o777 == 0o600
    k = crypto.load_key(p)
    assert len(k) == 32
    with pytest.raises(BackupError, match="refusing to overwrite"):
        crypto.generate_key(p)
    (tmp_path / "hex").write_text(k.hex())
    assert crypto.load_key(tmp_path / "hex") == k
    (tmp_path / "short").write_text("abc")
    with pytest.raises(BackupError, match="32-byte key"):
        crypto.load_key(tmp_path / "short")
    assert crypto.signature_ok(k, b"m", crypto.sign(k, b"m"))
    assert not crypto.signature_ok(k, b"m2", crypto.sign(k, b"m"))


def test_set_names_round_trip(tmp_path: Path) -> None:
    t = 1_795_000_000.0
    assert set_name(t) == "qt-backup-20261118T110640Z"
    assert name_time(set_name(t)) == t
    assert name_time(set_name(t) + "-2") == t
    assert name_time("other") is None
    (tmp_path / set_name(t)).mkdir()
    (tmp_path / (".partial-" + set_name(t + 60))).mkdir()
    sets = list_sets(tmp_path)
    assert [(s.complete, s.name.startswith(".partial-")) for s in sets] == \
        [(False, False), (False, True)]  # no manifest anywhere: nothing is complete


async def test_scheduler_runs_survives_failures_and_stops() -> None:
    calls: list[int] = []

    def job() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise BackupError("disk full")

    sched = BackupScheduler(job, every_s=0.05, first_after_s=0)
    sched.start()
    for _ in range(200):
        if len(calls) >= 4:
            break
        await asyncio.sleep(0.01)
    await sched.stop()
    assert len(calls) >= 4
    assert sched.failures == 1
    assert isinstance(sched.last_error, BackupError)
    n = len(calls)
    await asyncio.sleep(0.1)
    assert len(calls) == n  # stopped means stopped


def test_scheduler_aligns_to_utc_multiples() -> None:
    sched = BackupScheduler(lambda: None, every_s=6 * 3600, clock=lambda: 6 * 3600 * 10 + 60)
    assert sched.delay_until_next() == 6 * 3600 - 60
