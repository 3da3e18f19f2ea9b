"""One config file, environment overrides, secrets from files, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantum_trader.config import ConfigError, load_settings


def test_defaults_file_and_env_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "qt.yaml"
    cfg.write_text("initial_balance: 5000\nrisk:\n  max_leverage: 2\n")
    s = load_settings(cfg, env={"QT_RISK__MAX_LEVERAGE": "4", "QT_EXITS__TRAILING_STOP": "0.05"})
    assert s.initial_balance == 5000
    assert s.risk.max_leverage == 4  # environment beats the file
    assert s.exits.trailing_stop == 0.05
    assert s.risk.max_open_positions == 3  # default
    assert s.risk.limits().max_leverage == 4


def test_secret_from_file_is_held_as_secret(tmp_path: Path) -> None:
    secret = tmp_path / "hmac"
    secret.write_text("s3cr3t-value-123\n")
    s = load_settings(None, env={"QT_SECRETS__APPROVAL_HMAC_KEY_FILE": str(secret)})
    assert s.secrets.approval_hmac_key is not None
    assert s.secrets.approval_hmac_key.get_secret_value() == "s3cr3t-value-123"
    assert "s3cr3t" not in repr(s)
    assert "s3cr3t" not in s.model_dump_json()


def test_missing_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="QT_SECRETS__EXCHANGE_API_KEY_FILE"):
        load_settings(None, env={"QT_SECRETS__EXCHANGE_API_KEY_FILE": str(tmp_path / "no")})


def test_errors_name_key_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "qt.yaml"
    cfg.write_text("risk:\n  max_drawdown: 2\ndata:\n  timeframe: 7m\nexitz: {}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg, env={})
    text = str(exc.value)
    assert f"{cfg}:2: risk.max_drawdown" in text
    assert f"{cfg}:4: data.timeframe" in text
    assert f"{cfg}:5: exitz: unknown key" in text


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    cfg = tmp_path / "qt.yaml"
    cfg.write_text("risk: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(cfg, env={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_exchange_weight_shares_must_fit_one_ip(tmp_path: Path) -> None:
    cfg = tmp_path / "qt.yaml"
    cfg.write_text("exchange:\n  weight_shares: {execution: 0.8, market-data: 0.3}\n")
    with pytest.raises(ConfigError, match="sum to at most 1"):
        load_settings(cfg, env={})
    cfg.write_text("exchange:\n  weight_shares: {gateway: 0.1}\n")
    with pytest.raises(ConfigError, match="not gateway"):
        load_settings(cfg, env={})
    cfg.write_text("exchange:\n  weight_shares: {execution: 0.5, market-data: 0.4}\n")
    assert load_settings(cfg, env={}).exchange.weight_shares["market-data"] == 0.4


def test_the_shipped_distributed_config_is_valid_and_says_what_the_readme_promises() -> None:
    """README's distributed-mode commands use deploy/quantum-trader.yaml: it must load as is
    (no secrets in it) and name PostgreSQL and Redis, not the embedded defaults."""
    path = Path(__file__).resolve().parents[2] / "deploy" / "quantum-trader.yaml"
    s = load_settings(path, env={})
    assert s.store_url().startswith("postgresql+asyncpg://")
    assert s.services.bus == "redis"
    assert s.secrets.exchange_api_key is None
    assert s.secrets.approval_hmac_key is None
