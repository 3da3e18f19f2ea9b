"""Secrets never leak: a whole in-process run (six services, bus traffic including poison
messages that carry secrets, HTTP calls good and bad) and a backup of it are searched for
every configured secret and every API token: zero hits in logs, /metrics pages, error
responses, ``quantum-trader config`` output and the unencrypted backup files."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from typer.testing import CliRunner

from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import Message
from quantum_trader.config import Settings, load_settings
from quantum_trader.observability.logging import configure_logging, get_logger
from quantum_trader.ops import backup
from quantum_trader.security.middleware import required_scope
from quantum_trader.security.secrets import configured_secrets
from quantum_trader.services.base import Service
from tests.integration.test_security_http import (
    UNLIMITED,
    bearer,
    build_services,
    endpoints,
    issue_tokens,
)


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buf = io.StringIO()
    configure_logging(level="DEBUG", json=True, stream=buf, service="leak-test")
    yield buf
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def secret_env(tmp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """QTRADER_* variables reading each secret from its own file, as Docker secrets do."""
    values = {
        "exchange_api_key": "xk-" + secrets.token_urlsafe(24),
        "exchange_api_secret": "xs-" + secrets.token_hex(24),
        "telegram_bot_token": f"{secrets.randbelow(10**9)}:AA{secrets.token_urlsafe(24)}",
        "approval_hmac_key": "hm-" + secrets.token_urlsafe(32),
    }
    files = dict(values)
    values["redis_password"] = "rp-" + secrets.token_urlsafe(18)
    env: dict[str, str] = {}
    for name, value in files.items():
        path = tmp_path / "run-secrets" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(value + "\n")
        env[f"QTRADER_SECRETS__{name.upper()}_FILE"] = str(path)
    env.update({
        "QTRADER_PATHS__STATE_DIR": str(tmp_path / "state"),
        "QTRADER_PATHS__REGISTRY_DIR": str(tmp_path / "state" / "models"),
        "QTRADER_PATHS__REPORTS_DIR": str(tmp_path / "reports"),
        "QTRADER_SERVICES__BUS": "memory",
        "QTRADER_SERVICES__REPLAY_MAX_BARS": "80",
        "QTRADER_SERVICES__HEARTBEAT_INTERVAL_S": "0.2",
        "QTRADER_DATA__SOURCE": "sample:XRP",
        # unused by the memory bus, but configured: its password is a secret too
        "QTRADER_SERVICES__REDIS_URL": f"redis://qt-app:{values['redis_password']}@redis:6379/0",
    })
    return env, values


def leak_settings(env: dict[str, str]) -> Settings:
    limits = {f"security.{k}": UNLIMITED
              for k in ("client_limit", "token_limit", "monitoring_limit")}
    return load_settings(env=env, overrides=limits)


async def poison(bus: InMemoryBus, values: dict[str, str]) -> None:
    """Bad messages that carry secrets: their dead-letter reasons quote the bad values."""
    key, hmac_key = values["exchange_api_key"], values["approval_hmac_key"]
    for topic in ("market.bars", "signals", "orders.approved", "positions", "executions",
                  "exits", "control"):
        await bus.publish_raw(topic, f'{{"api_key": "{key}"'.encode())  # not JSON
        await bus.publish(topic, Message("signal", {"symbol": key, "ts": hmac_key,
                                                    "secret": values["exchange_api_secret"]},
                                         1, ""))
    await bus.publish("control", Message(f"drop-{key}", {}, 1, ""))


async def exercise_http(services: dict[str, Service], tokens: Any,
                        bad_tokens: list[str]) -> tuple[list[str], list[str]]:
    """Every route with good and bad credentials and bad bodies; (error texts, metrics)."""
    errors: list[str] = []
    metrics: list[str] = []
    for svc in services.values():
        app = svc.create_app()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            calls: list[tuple[str, str, dict[str, str], Any]] = []
            for method, path, route in endpoints(app):
                needed = required_scope(method, path, route)
                good = tokens.for_scope(needed) if needed else tokens.read
                for headers in ({}, bearer(good), bearer(tokens.read), *map(bearer, bad_tokens)):
                    calls.append((method, path, headers, None))
                    if method == "POST":
                        calls.append((method, path, headers, {"symbol": 1, "extra": [None]}))
            calls.append(("GET", "/trades?limit=abc", bearer(tokens.read), None))
            calls.append(("GET", "/nowhere", bearer(tokens.admin), None))
            for method, path, headers, body in calls:
                r = await http.request(method, path, headers=headers, json=body)
                if r.status_code >= 400:
                    errors.append(f"{r.status_code} {json.dumps(dict(r.headers))} {r.text}")
            r = await http.get("/metrics", headers=bearer(tokens.read))
            assert r.status_code == 200
            metrics.append(r.text)
    return errors, metrics


async def test_no_secret_in_logs_metrics_errors_or_backups(
        tmp_path: Path, log_buffer: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    env, values = secret_env(tmp_path)
    settings = leak_settings(env)
    assert settings.secrets.exchange_api_key is not None  # really loaded from the file
    assert settings.secrets.exchange_api_key.get_secret_value() == values["exchange_api_key"]
    tokens = issue_tokens(settings)
    bus = InMemoryBus()
    services = await build_services(settings, bus=bus)
    for svc in services.values():
        await svc.start()
    try:
        md = services["market-data"]
        for _ in range(400):
            if getattr(md, "finished", False):
                break
            await asyncio.sleep(0.05)
        assert getattr(md, "finished", False), "replay did not finish"
        await poison(bus, values)
        await asyncio.sleep(1.5)  # consumers dead-letter the poison
        # A careless log call and a crash with the secret in the exception text.
        log = get_logger("leak-test")
        log.warning("careless", note=f"using key {values['exchange_api_key']}",
                    config=settings.secrets.model_dump())
        try:
            raise RuntimeError(f"exchange refused key {values['exchange_api_secret']}")
        except RuntimeError:
            log.exception("exchange_error")
        errors, metrics = await exercise_http(services, tokens, [tokens.revoked])
    finally:
        for svc in reversed(list(services.values())):
            await svc.stop()

    # The same operator commands a person would run: `config`, and a plain backup.
    from quantum_trader.cli import app as cli_app

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    shown = CliRunner().invoke(cli_app, ["config"])
    assert shown.exit_code == 0, shown.output
    cfg, secret_values = backup.settings_payload(settings)
    result = backup.create_backup(backup.BackupOptions(
        dest=tmp_path / "backups", db_url=settings.store_url(),
        registry_dir=settings.paths.state_dir, config=cfg, secrets=secret_values))
    backup_files = {p: p.read_bytes() for p in result.path.rglob("*") if p.is_file()}
    assert any(p.name == "database.sqlite" for p in backup_files)

    logs = log_buffer.getvalue()
    # The run really happened, and the redactor really had work to do.
    assert "service_started" in logs
    assert "bus.deadletter" in logs
    assert "***" in logs
    assert len(errors) > 100
    assert len(metrics) == 6
    must_not_leak = {**configured_secrets(settings), "token:read": tokens.read,
                     "token:trade": tokens.trade, "token:admin": tokens.admin,
                     "token:revoked": tokens.revoked}
    assert len(must_not_leak) >= 8
    places: dict[str, str | bytes] = {"logs": logs, "metrics": "\n".join(metrics),
                                      "errors": "\n".join(errors),
                                      "config output": shown.output}
    places.update({f"backup {p.relative_to(result.path)}": data
                   for p, data in backup_files.items()})
    hits = []
    for where, text in places.items():
        for name, value in must_not_leak.items():
            needle: str | bytes = value.encode() if isinstance(text, bytes) else value
            if needle in text:  # type: ignore[operator]
                hits.append(f"{name} in {where}")
    assert hits == []


def test_url_passwords_stay_out_of_config_dumps() -> None:
    settings = Settings.model_validate({
        "services": {"redis_url": "redis://qt-app:rp-Zx81QmW7@redis:6379/0"},
        "store": {"url": "postgresql+asyncpg://qt_app:pg-Yh62TnB4@postgres/qt"}})
    cfg, _ = backup.settings_payload(settings)
    dumped = json.dumps(cfg) + json.dumps(settings.model_dump(mode="json"))
    assert "rp-Zx81QmW7" not in dumped
    assert "pg-Yh62TnB4" not in dumped
