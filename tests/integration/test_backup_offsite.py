"""Off-site copies round-trip: directory, rsync, and S3 (moto in server mode, a real HTTP
endpoint on a free port). A set pulled back must pass the same checks as the original."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from quantum_trader.ops.backup import BackupOptions, create_backup
from quantum_trader.ops.errors import BackupError, BackupInvalid
from quantum_trader.ops.manifest import MANIFEST, read_manifest
from quantum_trader.ops.offsite import DirectoryTarget, RsyncTarget, S3Target, target_from_spec
from quantum_trader.ops.redis_snapshot import free_port
from quantum_trader.ops.restore import RestoreTargets, check_set, restore_set
from quantum_trader.store.sql import SqlTradeStore
from quantum_trader.store.urls import sqlite_url

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        pytest.fail("moto_server not found next to the interpreter: pip install "
                    "'moto[server]' (a dev dependency); this test does not skip.", pytrace=False)
    port = free_port()
    proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("moto_server did not start", pytrace=False)
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def backup_set(tmp_path: Path) -> Path:
    db = tmp_path / "live.db"

    async def seed() -> None:
        async with SqlTradeStore(sqlite_url(db), create=True) as s:
            await s.counts()

    asyncio.run(seed())
    reg = tmp_path / "models" / "default" / "v1"
    reg.mkdir(parents=True)
    (reg / "model.bin").write_bytes(os.urandom(200_000))
    return create_backup(BackupOptions(dest=tmp_path / "local", db_url=sqlite_url(db),
                                       registry_dir=tmp_path / "models")).path


def _same(a: Path, b: Path) -> None:
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for p in a.iterdir():
        assert (b / p.name).read_bytes() == p.read_bytes()
    assert check_set(b) == read_manifest(a)


def test_directory_round_trip(backup_set: Path, tmp_path: Path) -> None:
    target = target_from_spec(str(tmp_path / "nas"))
    assert isinstance(target, DirectoryTarget)
    target.push(backup_set)
    assert target.list() == [backup_set.name]
    pulled = target.pull(backup_set.name, tmp_path / "pulled")
    _same(backup_set, pulled)
    target.delete(backup_set.name)
    assert target.list() == []


def test_rsync_round_trip(backup_set: Path, tmp_path: Path) -> None:
    if shutil.which("rsync") is None:
        pytest.fail("rsync is not installed (apt-get install rsync)", pytrace=False)
    target = target_from_spec(f"rsync:{tmp_path / 'remote'}")
    assert isinstance(target, RsyncTarget)
    target.push(backup_set)
    assert target.list() == [backup_set.name]
    _same(backup_set, target.pull(backup_set.name, tmp_path / "pulled"))


def test_s3_round_trip_and_restore_from_it(backup_set: Path, tmp_path: Path,
                                           moto_endpoint: str) -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket="qt-backups")
    target = S3Target("qt-backups", "prod/node1", client=client)
    target.push(backup_set)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="qt-backups")["Contents"]]
    assert f"prod/node1/{backup_set.name}/{MANIFEST}" in keys
    assert target.list() == [backup_set.name]

    pulled = target.pull(backup_set.name, tmp_path / "pulled")
    _same(backup_set, pulled)
    report = restore_set(pulled, RestoreTargets(db_url=sqlite_url(tmp_path / "r.db"),
                                                registry_dir=tmp_path / "r-models"))
    assert report.restored == ["database", "registry"]

    # An upload cut short before the manifest is not a set: not listed, refused on restore.
    client.delete_object(Bucket="qt-backups", Key=f"prod/node1/{backup_set.name}/{MANIFEST}")
    assert target.list() == []
    half = target.pull(backup_set.name, tmp_path / "half")
    with pytest.raises(BackupInvalid, match="partial set"):
        check_set(half)

    target.delete(backup_set.name)
    with pytest.raises(BackupError, match="not found"):
        target.pull(backup_set.name, tmp_path / "gone")
    # The spec form resolves the endpoint the same way.
    spec = target_from_spec("s3://qt-backups/prod/node1", s3_endpoint=moto_endpoint)
    assert isinstance(spec, S3Target)
    assert spec.list() == []
