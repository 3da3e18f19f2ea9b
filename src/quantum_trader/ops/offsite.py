"""Off-site copies of finished sets: a directory, an rsync target, or an S3-compatible store.

Specs: ``/mnt/nas/qt`` or ``file:///mnt/nas/qt`` (directory), ``rsync:user@host:/srv/qt``
(anything rsync accepts after ``rsync:``), ``s3://bucket/prefix`` (endpoint from
``--s3-endpoint`` or ``$AWS_ENDPOINT_URL``, credentials the usual boto3 way).

Every target receives the manifest *last*, so an interrupted upload leaves a set without a
manifest, which restore refuses as partial. ``pull`` brings a set back for restore; its
checksums are verified by restore as for any local set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Protocol

from quantum_trader.ops.errors import BackupError
from quantum_trader.ops.manifest import MANIFEST, PARTIAL, PREFIX, name_time


class OffsiteTarget(Protocol):
    def push(self, set_dir: Path) -> None: ...
    def pull(self, name: str, dest_root: Path) -> Path: ...
    def list(self) -> list[str]: ...
    def delete(self, name: str) -> None: ...


def _set_files(set_dir: Path) -> list[Path]:
    """The set's files, manifest last."""
    files = sorted(p for p in set_dir.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = set_dir / MANIFEST
    if not manifest.is_file():
        raise BackupError(f"{set_dir.name} has no {MANIFEST}: only finished sets are copied")
    return [*files, manifest]


class DirectoryTarget:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def push(self, set_dir: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / set_dir.name
        if (final / MANIFEST).is_file():
            return  # already there and whole
        tmp = self.root / (PARTIAL + set_dir.name)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for f in _set_files(set_dir):
            shutil.copyfile(f, tmp / f.name)
            with (tmp / f.name).open("rb") as fh:
                os.fsync(fh.fileno())
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)

    def pull(self, name: str, dest_root: Path) -> Path:
        src = self.root / name
        if not src.is_dir():
            raise BackupError(f"{name} not found in {self.root}")
        dest = dest_root / name
        shutil.copytree(src, dest)
        return dest

    def list(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and name_time(p.name) is not None)

    def delete(self, name: str) -> None:
        shutil.rmtree(self.root / name, ignore_errors=True)


class RsyncTarget:
    def __init__(self, dest: str) -> None:
        self.dest = dest.rstrip("/")
        if shutil.which("rsync") is None:
            raise BackupError("rsync not found on PATH (apt-get install rsync)")

    def __str__(self) -> str:
        return f"rsync:{self.dest}"

    def _rsync(self, *args: str) -> str:
        res = subprocess.run(["rsync", *args], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise BackupError(f"rsync failed ({res.returncode}): {res.stderr.strip()[-400:]}")
        return res.stdout

    def push(self, set_dir: Path) -> None:
        target = f"{self.dest}/{set_dir.name}/"
        # Data files first (resumable with --partial), the manifest in a second pass.
        self._rsync("-a", "--partial", "--mkpath", f"--exclude={MANIFEST}",
                    f"{set_dir}/", target)
        self._rsync("-a", "--mkpath", str(set_dir / MANIFEST), target)

    def pull(self, name: str, dest_root: Path) -> Path:
        dest = dest_root / name
        dest.mkdir(parents=True, exist_ok=True)
        self._rsync("-a", f"{self.dest}/{name}/", f"{dest}/")
        return dest

    def list(self) -> list[str]:
        out = self._rsync("--list-only", f"{self.dest}/")
        names = [line.split()[-1] for line in out.splitlines() if line.startswith("d")]
        return sorted(n for n in names if name_time(n) is not None)

    def delete(self, name: str) -> None:
        if name_time(name) is None:
            raise BackupError(f"{name!r} is not a backup set name")
        with tempfile.TemporaryDirectory() as empty:
            # Syncing an empty directory with --delete empties the set remotely; the empty
            # directory left behind is not a set (no manifest) and is ignored by restore.
            self._rsync("-a", "--delete", f"{empty}/", f"{self.dest}/{name}/")


class S3Target:
    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None = None,
                 client: Any = None) -> None:
        import boto3  # type: ignore[import-untyped]

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client(
            "s3", endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def push(self, set_dir: Path) -> None:
        from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]

        cfg = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)
        try:
            for f in _set_files(set_dir):
                self.client.upload_file(str(f), self.bucket, self._key(set_dir.name, f.name),
                                        Config=cfg)
        except Exception as exc:  # botocore raises a zoo of types; all mean "not copied"
            raise BackupError(f"upload of {set_dir.name} to {self} failed: {exc}") from None

    def _objects(self, name: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(name) + "/"):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return keys

    def pull(self, name: str, dest_root: Path) -> Path:
        keys = self._objects(name)
        if not keys:
            raise BackupError(f"{name} not found in {self}")
        dest = dest_root / name
        dest.mkdir(parents=True)
        try:
            for key in keys:
                self.client.download_file(self.bucket, key, str(dest / key.rsplit("/", 1)[-1]))
        except Exception as exc:
            raise BackupError(f"download of {name} from {self} failed: {exc}") from None
        return dest

    def list(self) -> list[str]:
        names: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        base = self._key() + "/" if self.prefix else ""
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base + PREFIX):
            for o in page.get("Contents", []):
                rest = o["Key"][len(base):]
                name, _, fname = rest.partition("/")
                if fname == MANIFEST and name_time(name) is not None:
                    names.add(name)
        return sorted(names)

    def delete(self, name: str) -> None:
        keys = self._objects(name)
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": k} for k in keys[i:i + 1000]]})


def target_from_spec(spec: str, s3_endpoint: str | None = None) -> OffsiteTarget:
    if spec.startswith("s3://"):
        bucket, _, prefix = spec[5:].partition("/")
        if not bucket:
            raise BackupError(f"bad S3 target {spec!r}: use s3://bucket/prefix")
        return S3Target(bucket, prefix, s3_endpoint)
    if spec.startswith("rsync:"):
        return RsyncTarget(spec[len("rsync:"):])
    if spec.startswith("file://"):
        return DirectoryTarget(Path(spec[len("file://"):]))
    if "://" in spec:
        raise BackupError(f"unknown off-site target {spec!r}: use a directory, "
                          "rsync:DEST or s3://bucket/prefix")
    return DirectoryTarget(Path(spec))
