"""Streaming authenticated encryption for backup files (AES-256-GCM in 1 MiB chunks).

Why chunked: dumps can be gigabytes, so a file is never held in memory. Each chunk's nonce is
the file's random 8-byte prefix plus the chunk counter, and the associated data binds the
counter and a "last chunk" flag, so reordered, dropped or truncated chunks fail authentication
instead of decrypting to a shorter file.

File layout: ``MAGIC`` (6) | prefix (8) | repeated [u32 big-endian length | ciphertext+tag].
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from quantum_trader.ops.errors import BackupError

MAGIC = b"QTENC1"
CHUNK = 1 << 20
_TAG = 16
_LEN = struct.Struct(">I")


class DecryptionFailed(BackupError):
    """Wrong key, or the encrypted file was altered or truncated."""


def load_key(path: Path | str) -> bytes:
    """A 32-byte key from a secret file: raw bytes, 64 hex digits, or base64 (urlsafe or not)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read the backup key file {p}: {exc.strerror}") from None
    if len(raw) == 32:
        return raw
    text = raw.strip()
    candidates: list[bytes] = []
    with contextlib.suppress(binascii.Error, ValueError):
        candidates.append(binascii.unhexlify(text))
    for decode in (base64.urlsafe_b64decode, base64.b64decode):
        with contextlib.suppress(binascii.Error, ValueError):
            candidates.append(decode(text))
    for key in candidates:
        if len(key) == 32:
            return key
    raise BackupError(f"backup key file {p} must hold a 32-byte key (raw, hex or base64); "
                      "create one with `quantum-trader backup keygen FILE`")


def generate_key(path: Path | str) -> Path:
    """Write a new random key (base64) readable by its owner only; never overwrite one."""
    p = Path(path)
    if p.exists():
        raise BackupError(f"{p} already exists; refusing to overwrite a key")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.urlsafe_b64encode(os.urandom(32)) + b"\n")
    return p


def key_id(key: bytes) -> str:
    """A short public fingerprint, so a set names the key it needs without revealing it."""
    return hashlib.sha256(b"qt-backup-key-id" + key).hexdigest()[:16]


def sign(key: bytes, payload: bytes) -> str:
    """HMAC of the manifest: with encryption on, a forged manifest is refused too."""
    mac_key = hashlib.sha256(b"qt-backup-manifest-mac" + key).digest()
    return hmac.new(mac_key, payload, hashlib.sha256).hexdigest()


def signature_ok(key: bytes, payload: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(key, payload), signature)


def _aad(prefix: bytes, index: int, last: bool) -> bytes:
    return MAGIC + prefix + struct.pack(">QB", index, 1 if last else 0)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


def encrypt_file(src: Path, dst: Path, key: bytes) -> None:
    aes = AESGCM(key)
    prefix = os.urandom(8)
    with src.open("rb") as fin, dst.open("wb") as fout:
        fout.write(MAGIC + prefix)
        index = 0
        chunk = fin.read(CHUNK)
        while True:
            nxt = fin.read(CHUNK) if chunk else b""
            last = not nxt
            if index >= 2**32:  # pragma: no cover - 4 PiB
                raise BackupError("file too large to encrypt")
            ct = aes.encrypt(_nonce(prefix, index), chunk, _aad(prefix, index, last))
            fout.write(_LEN.pack(len(ct)) + ct)
            if last:
                break
            chunk, index = nxt, index + 1


def decrypt_file(src: Path, dst: Path, key: bytes) -> None:
    """Decrypt ``src`` into ``dst``; on any failure ``dst`` is removed and nothing is left."""
    try:
        _decrypt(src, dst, key)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


def _decrypt(src: Path, dst: Path, key: bytes) -> None:
    aes = AESGCM(key)
    with src.open("rb") as fin, dst.open("wb") as fout:
        head = fin.read(len(MAGIC) + 8)
        if len(head) != len(MAGIC) + 8 or not head.startswith(MAGIC):
            raise DecryptionFailed(f"{src.name}: not an encrypted backup file")
        prefix = head[len(MAGIC):]
        index = 0
        while True:
            raw_len = fin.read(_LEN.size)
            if len(raw_len) != _LEN.size:
                raise DecryptionFailed(f"{src.name}: truncated (no final chunk)")
            (n,) = _LEN.unpack(raw_len)
            if n < _TAG or n > CHUNK + _TAG:
                raise DecryptionFailed(f"{src.name}: corrupt chunk header at chunk {index}")
            ct = fin.read(n)
            if len(ct) != n:
                raise DecryptionFailed(f"{src.name}: truncated inside chunk {index}")
            at_end = fin.peek(1) == b"" if hasattr(fin, "peek") else False
            try:
                pt = aes.decrypt(_nonce(prefix, index), ct, _aad(prefix, index, at_end))
            except InvalidTag:
                raise DecryptionFailed(
                    f"{src.name}: authentication failed at chunk {index} "
                    "(wrong key, or the file was altered or truncated)"
                ) from None
            fout.write(pt)
            if at_end:
                return
            index += 1
