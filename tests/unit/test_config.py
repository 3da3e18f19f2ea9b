"""One config file, environment overrides, secrets from files, errors that name the key."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import typer

from quantum_trader.cli.exchange import exchange_app
from quantum_trader.config import (
    DEFAULT_PORTS,
    ConfigError,
    EnvPrefixWarning,
    Settings,
    load_settings,
)


def test_defaults_file_and_env_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "qt.yaml"
    cfg.write_text("initial_balance: 5000\nrisk:\n  max_leverage: 2\n")
    s = load_settings(cfg, env={"QTRADER_RISK__MAX_LEVERAGE": "4",
                                   "QTRADER_EXITS__TRAILING_STOP": "0.05"})
    assert s.initial_balance == 5000
    assert s.risk.max_leverage == 4  # environment beats the file
    assert s.exits.trailing_stop == 0.05
    assert s.risk.max_open_positions == 3  # default
    assert s.risk.limits().max_leverage == 4


def test_secret_from_file_is_held_as_secret(tmp_path: Path) -> None:
    secret = tmp_path / "hmac"
    secret.write_text("s3cr3t-value-123\n")
    s = load_settings(None, env={"QTRADER_SECRETS__APPROVAL_HMAC_KEY_FILE": str(secret)})
    assert s.secrets.approval_hmac_key is not None
    assert s.secrets.approval_hmac_key.get_secret_value() == "s3cr3t-value-123"
    assert "s3cr3t" not in repr(s)
    assert "s3cr3t" not in s.model_dump_json()


def test_missing_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="QTRADER_SECRETS__EXCHANGE_API_KEY_FILE"):
        load_settings(None, env={"QTRADER_SECRETS__EXCHANGE_API_KEY_FILE": str(tmp_path / "no")})


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


def _quiet_load(env: dict[str, str]) -> Settings:
    """``load_settings`` that fails on any warning: none is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_settings(env=env)


def test_qt_toolkit_and_other_tools_variables_are_ignored() -> None:
    """QT_ is the Qt toolkit's prefix: a desktop session's variables must not stop us."""
    env = {"QT_QPA_PLATFORMTHEME": "gtk3", "QT_IM_MODULE": "ibus", "QT_SCALE_FACTOR": "1.5",
           "QT_SECRETS_DIR": "/etc/quantum-trader/secrets", "QT_SERVICE": "gateway",
           "QT_TEST_PG_DSN": "postgresql://postgres@127.0.0.1/postgres"}
    assert _quiet_load(env) == Settings()


def test_simulator_credentials_are_not_settings() -> None:
    """The simulator reads QTSIM_*; neither that nor its old QT_SIM_* name is a setting."""
    env = {"QTSIM_API_KEY": "k", "QTSIM_API_SECRET": "s", "QT_SIM_API_KEY": "k"}
    assert _quiet_load(env) == Settings()
    params = {p.name: p for p in typer.main.get_command(exchange_app).params}
    assert params["api_key"].envvar == "QTSIM_API_KEY"
    assert params["api_secret"].envvar == "QTSIM_API_SECRET"


def test_new_prefix_sets_sections_top_level_keys_secret_files_and_config(
        tmp_path: Path) -> None:
    cfg = tmp_path / "elsewhere.yaml"
    cfg.write_text("initial_balance: 5000\n")
    key = tmp_path / "hmac"
    key.write_text("k3y\n")
    s = _quiet_load({"QTRADER_CONFIG": str(cfg), "QTRADER_RISK__MAX_DRAWDOWN": "0.3",
                     "QTRADER_LEVERAGE": "2", "QTRADER_SECRETS__APPROVAL_HMAC_KEY_FILE": str(key)})
    assert s.initial_balance == 5000
    assert s.risk.max_drawdown == 0.3
    assert s.leverage == 2
    assert s.secrets.approval_hmac_key is not None
    assert s.secrets.approval_hmac_key.get_secret_value() == "k3y"


def test_old_prefix_still_works_for_our_names_with_a_deprecation_note(tmp_path: Path) -> None:
    cfg = tmp_path / "old.yaml"
    cfg.write_text("initial_balance: 5000\n")
    with pytest.warns(EnvPrefixWarning) as notes:
        s = load_settings(env={"QT_CONFIG": str(cfg), "QT_RISK__MAX_DRAWDOWN": "0.3",
                               "QT_IM_MODULE": "ibus"})
    assert s.initial_balance == 5000
    assert s.risk.max_drawdown == 0.3
    texts = sorted(str(n.message) for n in notes)
    assert len(texts) == 2  # Qt's variable is not ours: no note for it
    assert texts[0].startswith("QT_CONFIG is deprecated")
    assert texts[0].endswith("rename it QTRADER_CONFIG")
    assert texts[1].endswith("rename it QTRADER_RISK__MAX_DRAWDOWN")


@pytest.mark.parametrize("name", ["QTRADER_RISKK__MAX_DRAWDOWN", "QT_RISKK__MAX_DRAWDOWN"])
def test_misspelt_section_is_an_error_naming_the_variable(name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env={name: "0.3"})
    assert f"{name} (environment): unknown section 'riskk' (did you mean 'risk'?)" \
        in str(exc.value)


def test_every_qtrader_variable_is_ours_but_only_nested_qt_ones_are() -> None:
    assert _quiet_load({"QT_FOO": "1"}) == Settings()
    with pytest.raises(ConfigError, match=r"QTRADER_FOO \(environment\): unknown section 'foo'"):
        load_settings(env={"QTRADER_FOO": "1"})


def test_unknown_key_in_a_known_section_names_the_variable() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env={"QTRADER_RISK__MAX_DRAWDOWNN": "0.3"})
    assert ("QTRADER_RISK__MAX_DRAWDOWNN (environment): risk.max_drawdownn: unknown key "
            "(did you mean 'max_drawdown'?)") in str(exc.value)


def test_new_prefix_beats_the_old_one() -> None:
    with pytest.warns(EnvPrefixWarning, match="QT_RISK__MAX_DRAWDOWN is ignored: "
                                              "QTRADER_RISK__MAX_DRAWDOWN is set"):
        s = load_settings(env={"QT_RISK__MAX_DRAWDOWN": "0.3",
                               "QTRADER_RISK__MAX_DRAWDOWN": "0.4"})
    assert s.risk.max_drawdown == 0.4


def test_one_port_override_keeps_the_other_five() -> None:
    s = _quiet_load({"QTRADER_SERVICES__PORTS__GATEWAY": "9000"})
    assert s.services.ports == {**DEFAULT_PORTS, "gateway": 9000}
    assert len(s.services.ports) == 6
    # "-" cannot be written in a variable name: "_" stands for it.
    s = _quiet_load({"QTRADER_SERVICES__PORTS__RISK_SAFETY": "9003"})
    assert s.services.ports == {**DEFAULT_PORTS, "risk-safety": 9003}


def test_env_override_of_one_mapping_key_starts_from_the_default_mapping() -> None:
    """Generic, not a ports special case: the validator that fills ports is not at work."""
    s = _quiet_load({"QTRADER_EXCHANGE__WEIGHT_SHARES__MARKET_DATA": "0.2"})
    assert s.exchange.weight_shares == {"execution": 0.6, "market-data": 0.2}


def test_env_override_merges_into_the_yaml_section_and_mapping(tmp_path: Path) -> None:
    cfg = tmp_path / "qt.yaml"
    cfg.write_text("services:\n  bus: memory\n  ports:\n    execution: 9102\n")
    s = load_settings(cfg, env={"QTRADER_SERVICES__PORTS__GATEWAY": "9100"})
    assert s.services.bus == "memory"
    assert s.services.ports == {**DEFAULT_PORTS, "gateway": 9100, "execution": 9102}


def test_partial_yaml_ports_mapping_keeps_the_other_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "qt.yaml"
    cfg.write_text("services:\n  ports:\n    gateway: 9000\n")
    assert load_settings(cfg, env={}).services.ports == {**DEFAULT_PORTS, "gateway": 9000}


def test_dotted_override_into_a_mapping_or_section_merges() -> None:
    s = load_settings(env={}, overrides={"services.ports.execution": 9102,
                                         "exchange.weight_shares.execution": 0.5,
                                         "security.client_limit.rate": 5.0})
    assert s.services.ports == {**DEFAULT_PORTS, "execution": 9102}
    assert s.exchange.weight_shares == {"execution": 0.5, "market-data": 0.3}
    # A nested section whose fields have no defaults of their own keeps the rest too.
    assert s.security.client_limit.burst == Settings().security.client_limit.burst
    assert Settings().services.ports == DEFAULT_PORTS  # the defaults themselves are untouched
