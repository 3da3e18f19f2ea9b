"""The runner serves HTTPS when ``security.tls_*`` is set: a client trusting our self-signed
test certificate connects, a plain-text request to the same port gets no HTTP answer."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import signal
import socket
import ssl
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from quantum_trader.config import Settings
from quantum_trader.security.tls import uvicorn_options
from quantum_trader.services.runner import serve
from tests.integration.test_security_http import bearer, build_services, issue_tokens, make_settings


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quantum-trader test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


def tls_settings(tmp_path: Path) -> Settings:
    cert, key = self_signed(tmp_path)
    return make_settings(tmp_path, security={"tls_certfile": str(cert),
                                             "tls_keyfile": str(key)})


async def test_runner_serves_tls_and_refuses_plain_text(tmp_path: Path) -> None:
    settings = tls_settings(tmp_path)
    tokens = issue_tokens(settings)
    [gateway] = (await build_services(settings, ("gateway",))).values()
    assert gateway.store is not None
    await gateway.store.close()  # serve() opens it via start()
    port = free_port()
    task = asyncio.create_task(serve(gateway, "127.0.0.1", port))
    try:
        await wait_listening(port)
        trust = ssl.create_default_context(cafile=str(settings.security.tls_certfile))
        async with httpx.AsyncClient(verify=trust, timeout=5) as https:
            r = await https.get(f"https://127.0.0.1:{port}/health")
            assert r.status_code == 200, r.text
            assert (await https.get(f"https://localhost:{port}/status")).status_code == 401
            r = await https.get(f"https://127.0.0.1:{port}/trades", headers=bearer(tokens.read))
            assert r.status_code == 200
        # Without trusting our certificate the handshake fails (no silent downgrade).
        async with httpx.AsyncClient(timeout=5) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(f"https://127.0.0.1:{port}/health")
        # Plain HTTP to the TLS port: no HTTP response at all.
        async with httpx.AsyncClient(timeout=5) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{port}/health")
        # The negotiated protocol is TLS 1.2 or newer.
        ctx = ssl.create_default_context(cafile=str(settings.security.tls_certfile))
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        await writer.wait_closed()
        assert version in ("TLSv1.2", "TLSv1.3")
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # the runner's own shutdown path: drain, stop
        await asyncio.wait_for(task, 15)


async def test_server_context_refuses_old_protocols(tmp_path: Path) -> None:
    settings = tls_settings(tmp_path)
    config = uvicorn.Config(lambda *a: None, **uvicorn_options(settings))
    config.load()
    assert config.ssl is not None
    assert config.ssl.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert config.forwarded_allow_ips == ["127.0.0.1", "::1"]


def test_missing_tls_files_are_refused_at_start(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, security={"tls_certfile": str(tmp_path / "nope.pem"),
                                                 "tls_keyfile": str(tmp_path / "nope.key")})
    with pytest.raises(ValueError, match="not found"):
        uvicorn_options(settings)
    assert "ssl_certfile" not in uvicorn_options(make_settings(tmp_path))
