"""Security units: token store (hashed, revocable, constant-time), scopes, rate limiter,
settings validation, secret registration and the ``token`` CLI."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from quantum_trader.cli.tokens import token_app
from quantum_trader.config import ConfigError, Settings, load_settings
from quantum_trader.observability.logging import redact
from quantum_trader.security.middleware import required_scope
from quantum_trader.security.ratelimit import RateLimiter
from quantum_trader.security.secrets import configured_secrets, register_configured_secrets
from quantum_trader.security.tokens import Scope, TokenError, TokenStore, hash_token


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- tokens ------------------------------------------------------------------------------------


def test_token_is_stored_only_as_a_hash(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token, record = store.create("ops", ["admin"])
    assert token.startswith(f"qt_{record.id}_")
    text = (tmp_path / "tokens.json").read_text()
    assert token not in text
    assert token.split("_", 2)[2] not in text
    assert record.hash == hash_token(token)
    assert record.hash in text
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600
    principal = store.authenticate(token)
    assert principal is not None
    assert principal.name == "ops"
    assert principal.scopes == {Scope.READ, Scope.TRADE, Scope.ADMIN}


def test_wrong_malformed_and_revoked_tokens_are_refused(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token, record = store.create("bot", ["trade"])
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")  # right id, wrong secret
    for bad in (forged, "", "qt_", token + "x", token.upper(), f"Bearer {token}"):
        assert store.authenticate(bad) is None, bad
    # A second store instance (another process: the CLI) revokes; this one notices at once.
    TokenStore(tmp_path / "tokens.json").revoke(record.name)
    assert store.authenticate(token) is None
    with pytest.raises(TokenError, match="no active token"):
        store.revoke(record.id)
    assert [r.revoked_at is not None for r in store.records()] == [True]


def test_scopes_are_hierarchical_and_validated(tmp_path: Path) -> None:
    assert Scope.READ.grants() == {Scope.READ}
    assert Scope.TRADE.grants() == {Scope.READ, Scope.TRADE}
    assert Scope.ADMIN.grants() == {Scope.READ, Scope.TRADE, Scope.ADMIN}
    store = TokenStore(tmp_path / "t.json")
    with pytest.raises(TokenError, match="unknown scope"):
        store.create("x", ["root"])
    with pytest.raises(TokenError, match="at least one scope"):
        store.create("x", [])
    with pytest.raises(TokenError, match="token name"):
        store.create("bad name; rm -rf", ["read"])
    store.create("x", ["read"])
    with pytest.raises(TokenError, match="exists"):
        store.create("x", ["read"])


def test_corrupt_token_file_authenticates_nobody(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    token, _ = store.create("ops", ["read"])
    path.write_text("{not json")
    assert store.authenticate(token) is None
    with pytest.raises(TokenError, match="not a valid token file"):
        store.records()


def test_missing_token_file_means_no_tokens(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "absent.json")
    assert store.records() == []
    assert store.authenticate("qt_000000000000_" + "a" * 43) is None


def test_route_scope_policy() -> None:
    assert required_scope("GET", "/health", None) is None
    assert required_scope("GET", "/metrics", None) is Scope.READ
    assert required_scope("GET", "/trades", None) is Scope.READ
    assert required_scope("POST", "/generate-signal", None) is Scope.TRADE
    assert required_scope("GET", "/control/kill", None) is Scope.ADMIN  # prefix rule

    class Declared:
        openapi_extra: ClassVar[dict[str, str]] = {"x-scope": "admin"}

    assert required_scope("POST", "/anything", Declared()) is Scope.ADMIN


# -- rate limiter ------------------------------------------------------------------------------


def test_token_bucket_allows_bursts_then_refills() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [rl.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.acquire("a")
    assert wait == pytest.approx(0.5)
    assert RateLimiter.retry_after(wait) == "1"
    assert rl.acquire("b") == 0.0  # keys are independent
    clock.now += 0.5
    assert rl.acquire("a") == 0.0
    assert rl.acquire("a") > 0
    clock.now += 100
    assert [rl.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # capped at burst
    assert rl.acquire("a") > 0


def test_rate_limiter_key_table_is_bounded() -> None:
    rl = RateLimiter(rate=1, burst=1, max_keys=100)
    for i in range(1000):
        rl.acquire(f"10.0.{i // 256}.{i % 256}")
    assert len(rl._buckets) == 100
    assert RateLimiter.retry_after(2.01) == "3"
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate=0, burst=1)


# -- settings ----------------------------------------------------------------------------------


def test_security_settings_validation(tmp_path: Path) -> None:
    s = Settings()
    assert s.security.tokens_path(Path("var")) == Path("var/tokens.json")
    assert s.services.host == "127.0.0.1"  # bind loopback unless told otherwise
    with pytest.raises(ConfigError, match="tls_certfile and tls_keyfile"):
        load_settings(env={}, overrides={"security.tls_certfile": str(tmp_path / "c.pem")})
    with pytest.raises(ConfigError, match="not an IP address"):
        load_settings(env={}, overrides={"security.metrics_allow": ["prometheus"]})
    ok = load_settings(env={"QTRADER_SECURITY__TOKENS_FILE": str(tmp_path / "t.json")})
    assert ok.security.tokens_file == tmp_path / "t.json"


def test_configured_secrets_include_url_passwords_and_get_redacted(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("binance-key-Zq81xLmP\n")
    settings = load_settings(env={
        "QTRADER_SECRETS__EXCHANGE_API_KEY_FILE": str(tmp_path / "k"),
        "QTRADER_SERVICES__REDIS_URL": "redis://qt:r3d1s-Pa55w0rd@redis:6379/0",
        "QTRADER_STORE__URL": "postgresql+asyncpg://qt_app:pg%40Secret99@db/qt",
    })
    found = configured_secrets(settings)
    assert found == {"secrets.exchange_api_key": "binance-key-Zq81xLmP",
                     "services.redis_url": "r3d1s-Pa55w0rd",
                     "store.url": "pg@Secret99"}
    register_configured_secrets(settings)
    line = "connect redis r3d1s-Pa55w0rd db pg@Secret99 key binance-key-Zq81xLmP"
    out = redact(line)
    assert all(v not in out for v in found.values())
    # SecretStr never prints its value
    assert "binance-key" not in repr(settings)
    assert "binance-key" not in str(settings.secrets)


# -- CLI ---------------------------------------------------------------------------------------


def test_token_cli_create_list_revoke(tmp_path: Path) -> None:
    runner = CliRunner()
    f = ["--tokens-file", str(tmp_path / "tokens.json")]
    res = runner.invoke(token_app, ["create", "--scope", "admin", "--name", "ops", *f])
    assert res.exit_code == 0, res.output
    token = res.stdout.strip()
    assert token.startswith("qt_")
    assert "\n" not in token
    listed = runner.invoke(token_app, ["list", "--json", *f])
    assert listed.exit_code == 0
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["scopes"]) for r in rows] == [("ops", ["admin"])]
    assert token not in listed.output
    assert "sha256" not in listed.output
    table = runner.invoke(token_app, ["list", *f])
    assert "ops" in table.stdout
    assert token not in table.output
    assert runner.invoke(token_app, ["revoke", "ops", *f]).exit_code == 0
    assert json.loads(runner.invoke(token_app, ["list", "--json", *f]).stdout) == []
    assert len(json.loads(runner.invoke(token_app, ["list", "--all", "--json", *f]).stdout)) == 1
    assert runner.invoke(token_app, ["revoke", "ops", *f]).exit_code == 2
    bad = runner.invoke(token_app, ["create", "--scope", "god", "--name", "x", *f])
    assert bad.exit_code == 2
    assert TokenStore(tmp_path / "tokens.json").authenticate(token) is None
