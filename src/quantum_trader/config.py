"""One configuration: a YAML file, overridden by ``QTRADER_*`` environment variables, with
secrets read from files (``*_FILE``). Validation errors name the key, and the file line or the
variable it came from.

Precedence (highest first): ``load_settings(overrides=...)`` dotted keys, environment
variables, the YAML file (``--config``, else ``$QTRADER_CONFIG``, else ./quantum-trader.yaml or
config/quantum-trader.yaml), defaults.

Environment: ``QTRADER_SECTION__KEY`` (``QTRADER_RISK__MAX_DRAWDOWN=0.3``; deeper keys nest
with more ``__``, top-level keys are ``QTRADER_LEVERAGE``). A secret ``secrets.<name>`` can also
come from the file named by ``QTRADER_SECRETS__<NAME>_FILE`` (Docker secrets under /run/secrets
work this way). Every ``QTRADER_*`` variable is a setting, so an unknown one is an error; our
variables that are not settings use prefixes of their own (``QTBACKUP_*``, ``QTSIM_*``).

The old prefix ``QT_`` is also the Qt toolkit's. It still works for our sections, top-level
keys and ``QT_CONFIG``, with an ``EnvPrefixWarning`` naming the new variable; ``QTRADER_X``
beats ``QT_X``. Every other ``QT_*`` variable (Qt's, other tools') is ignored, except a nested
one (``QT_RISKK__MAX_DRAWDOWN``: Qt never uses ``__``), which is a misspelt section and an error.

An override of one key inside a mapping (``QTRADER_SERVICES__PORTS__GATEWAY=9000``) merges into
the mapping the file gives, or into the default when the file leaves it out; it never replaces
the rest. Shells cannot spell ``-`` in a variable name, so ``_`` stands for it in a mapping key
that has one by default (``QTRADER_SERVICES__PORTS__RISK_SAFETY``).
"""

from __future__ import annotations

import copy
import difflib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from quantum_trader.ai.settings import AISettings
from quantum_trader.domain.exits import ExitSettings
from quantum_trader.domain.instruments import Instrument
from quantum_trader.domain.models import TIMEFRAME_MS
from quantum_trader.domain.risk.limits import RiskLimits
from quantum_trader.exchange.simulated import SimExchangeSettings
from quantum_trader.security.settings import SecuritySection

ENV_PREFIX = "QTRADER_"
OLD_ENV_PREFIX = "QT_"  # Qt's too: only our own names under it are read (module docstring)
DEFAULT_CONFIG_PATHS = (Path("quantum-trader.yaml"), Path("config/quantum-trader.yaml"))


class ConfigError(ValueError):
    """A configuration that cannot be used; the message lists every bad key."""


class EnvPrefixWarning(FutureWarning):
    """A setting came from (or was shadowed in) a ``QT_*`` variable: rename it ``QTRADER_*``.

    A ``FutureWarning``: it is meant for whoever runs the program, and Python shows those by
    default, once per variable and call site."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RiskSection(_Section):
    min_confidence: float = Field(0.55, ge=0, le=1)
    risk_per_trade: float = Field(0.01, gt=0, le=0.1)
    default_stop_distance: float = Field(0.02, gt=0, lt=1)
    max_position_notional: float = Field(5_000.0, gt=0)
    max_gross_exposure: float = Field(10_000.0, gt=0)
    max_leverage: float = Field(3.0, gt=0, le=125)
    max_open_positions: int = Field(3, ge=1)
    daily_loss_limit: float = Field(0.05, gt=0, le=1)
    max_drawdown: float = Field(0.20, gt=0, le=1)
    max_orders_per_minute: int = Field(30, ge=1)
    cooldown_after_stop_ms: int = Field(4 * 3_600_000, ge=0)
    max_price_deviation: float = Field(0.02, gt=0, le=1)
    order_leverage: float = Field(3.0, ge=1, le=125)

    def limits(self) -> RiskLimits:
        return RiskLimits(**self.model_dump())


class ExitsSection(_Section):
    stop_loss: bool = True
    take_profit_rr: float = Field(2.0, ge=0)
    trailing_stop: float = Field(0.0, ge=0, lt=1)
    trailing_activation: float = Field(0.0, ge=0)
    max_holding_ms: int = Field(0, ge=0)
    exit_on_opposite_signal: bool = True
    exit_on_flat_signal: bool = True
    intent_ttl_ms: int = Field(60_000, gt=0)
    protective_ttl_ms: int = Field(7 * 86_400_000, gt=0)

    def settings(self) -> ExitSettings:
        return ExitSettings(**self.model_dump())


class ExchangeSection(_Section):
    kind: Literal["simulated", "binance-testnet", "binance-demo", "binance-live"] = "simulated"
    maker_fee: float = Field(0.0002, ge=0, lt=0.01)
    taker_fee: float = Field(0.0005, ge=0, lt=0.01)
    slippage_bps: float = Field(1.0, ge=0)
    impact: float = Field(0.1, ge=0)
    max_volume_share: float = Field(0.10, gt=0, le=1)
    funding_rate: float = Field(0.0001, gt=-0.01, lt=0.01)
    funding_interval_ms: int = Field(8 * 3_600_000, gt=0)
    liquidation_fee: float = Field(0.0125, ge=0, lt=0.1)
    # Venue modes (kind binance-*): where to connect and what to follow.
    base_url: str = ""  # override, e.g. the simulator: http://127.0.0.1:8900
    symbols: tuple[str, ...] = ("XRPUSDT",)
    # static: trade `symbols`; volume: the venue's `pairlist_top` most traded USDT perpetuals
    # (24 h quote volume, at least `pairlist_min_quote_volume`), chosen when an account starts
    # (`run --live`; a resume keeps its list; `data pairs` shows it for the services' config).
    pairlist: Literal["static", "volume"] = "static"
    pairlist_top: int = Field(10, ge=1, le=200)
    pairlist_min_quote_volume: float = Field(0.0, ge=0)
    poll_s: float = Field(1.0, gt=0)  # klines and fills polling
    stale_after_s: float = Field(90.0, gt=0)  # no new closed bar for this long: data stale
    reconcile_s: float = Field(30.0, gt=0)  # compare our orders/positions with the venue
    # A position without a working stop on the venue for this long gets one from execution.
    protection_grace_s: float = Field(5.0, gt=0)
    # Our wallet is moved to the venue's when they differ by more than this (USDT).
    wallet_tolerance: float = Field(0.01, ge=0)
    recv_window_ms: int = Field(5_000, ge=1_000, le=60_000)
    # An entry is sent only with at least this much (wall) time left before it expires: a
    # send can take that long (retries, the venue's latency), and it must not arrive stale.
    send_margin_s: float = Field(2.0, ge=0)
    # Binance limits request weight per IP, and every service that talks to the venue runs
    # from the same host: each gets a share, so together they never exceed the limit (even
    # when some requests go unanswered and their counts cannot be read from the venue).
    weight_shares: dict[str, float] = Field(
        default_factory=lambda: {"execution": 0.6, "market-data": 0.3})

    @field_validator("weight_shares")
    @classmethod
    def _shares_fit(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - {"execution", "market-data"})
        if unknown:
            raise ValueError(f"only execution and market-data talk to the venue, not "
                             f"{', '.join(unknown)}")
        if any(not 0 < x <= 1 for x in v.values()) or sum(v.values()) > 1.0:
            raise ValueError(f"shares must each be in (0, 1] and sum to at most 1, got {v}")
        return v


class StrategySection(_Section):
    # auto: a plugin strategy when ``path`` names one, else the production model when the
    # registry has one, else the EMA-cross baseline; model: require a production model;
    # ema_cross: always the baseline.
    kind: Literal["auto", "ema_cross", "model"] = "auto"
    # A plugin strategy (docs/strategies.md): FILE.py[:Class], package.module:Class, or the
    # name of an installed one (entry point group quantum_trader.strategies). Its parameter
    # values go in ``params``; they are checked against the ranges it declares when it loads.
    path: str = ""
    params: dict[str, int | float | str | bool] = Field(default_factory=dict)
    # The baseline's parameters, checked against the ranges EmaCrossStrategy declares.
    fast: int = 12
    slow: int = 26
    atr_period: int = 14
    atr_mult: float = 2.0
    allow_short: bool = True
    signal_ttl_ms: int = Field(60_000, gt=0)  # every source's signals live this long

    @field_validator("fast", "slow", "atr_period", "atr_mult", "allow_short", mode="before")
    @classmethod
    def _in_declared_range(cls, v: Any, info: ValidationInfo) -> Any:
        from quantum_trader.domain.strategy import EmaCrossStrategy

        assert info.field_name is not None
        return EmaCrossStrategy.parameters[info.field_name].coerce(v)

    @model_validator(mode="after")
    def _consistent(self) -> StrategySection:
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be less than slow ({self.slow})")
        if self.path and self.kind != "auto":
            raise ValueError(f"strategy.path ({self.path}) is set, so strategy.kind must be "
                             f"auto, not {self.kind} (or remove strategy.path)")
        if self.params and not self.path:
            raise ValueError("strategy.params are a plugin strategy's: set strategy.path too")
        return self


class DataSection(_Section):
    source: str = "sample:XRP"
    timeframe: str = "30m"
    # A static pair list: each symbol's bars from <dir>/<SYMBOL>-<timeframe>.{parquet,csv,
    # feather} (where `data download` writes them), else the shipped sample of its asset.
    # Used instead of `source` when set; --data on the command line overrides both.
    symbols: tuple[str, ...] = ()
    dir: Path = Path("data")

    @field_validator("symbols")
    @classmethod
    def _symbol_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(s.strip().upper().replace("/", "").replace(":USDT", "") for s in v)
        bad = [s for s in names if not s.isalnum()]
        if bad:
            raise ValueError(f"not a symbol: {', '.join(bad)} (write them as BTCUSDT)")
        repeated = sorted({s for s in names if names.count(s) > 1})
        if repeated:
            raise ValueError(f"listed more than once: {', '.join(repeated)}")
        return names

    @field_validator("timeframe")
    @classmethod
    def _known_timeframe(cls, v: str) -> str:
        if v not in TIMEFRAME_MS:
            raise ValueError(f"unknown timeframe {v!r}; use one of {', '.join(TIMEFRAME_MS)}")
        return v


class PathsSection(_Section):
    state_dir: Path = Path("var")
    reports_dir: Path = Path("reports")
    registry_dir: Path = Path("var/models")


def mask_url_password(url: str) -> str:
    """``scheme://user:***@host/...``: a URL as it may be printed, logged or backed up."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class StoreSection(_Section):
    url: str = ""  # empty: SQLite file in the state dir

    @field_serializer("url", when_used="json")
    def _masked(self, url: str) -> str:  # dumps never carry the database password
        return mask_url_password(url)


SERVICE_NAMES = ("gateway", "ai-engine", "execution", "risk-safety", "exit-brain", "market-data")
DEFAULT_PORTS = dict(zip(SERVICE_NAMES, range(8000, 8006), strict=True))


class ServicesSection(_Section):
    """Distributed mode: one process per service over Redis Streams and PostgreSQL."""

    bus: Literal["redis", "memory"] = "redis"
    redis_url: str = "redis://127.0.0.1:6379/0"

    @field_serializer("redis_url", when_used="json")
    def _masked(self, url: str) -> str:  # dumps never carry the Redis password
        return mask_url_password(url)

    bus_namespace: str = ""  # prefix for stream names (tests run side by side)
    host: str = "127.0.0.1"
    ports: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_PORTS))
    heartbeat_interval_s: float = Field(1.0, gt=0)
    heartbeat_stale_s: float = Field(5.0, gt=0)
    # lockstep: the next replayed bar waits until every consumer group has caught up, so a
    # distributed replay is as deterministic as a backtest; rate: a fixed pace.
    replay_pacing: Literal["lockstep", "rate"] = "lockstep"
    replay_bars_per_second: float = Field(20.0, gt=0)
    replay_max_bars: int = Field(0, ge=0)  # 0: all of them
    signal_max_age_ms: int = Field(30_000, gt=0)  # wall-clock age after which signals die
    # How long risk-safety and the exit brain wait for execution's account to cover a bar
    # before deciding without it. Lockstep replay waits longer (through a restart of
    # execution), so a replay stays deterministic; live trading must not wait on a dead peer.
    view_wait_s: float = Field(2.0, gt=0)
    lockstep_view_wait_s: float = Field(60.0, gt=0)
    # A service whose store writes keep failing this long exits and recovers from the store
    # (crash-only) rather than run on with books ahead of it.
    store_retry_s: float = Field(30.0, gt=0)

    @field_validator("ports")
    @classmethod
    def _known_services(cls, v: dict[str, int]) -> dict[str, int]:
        unknown = set(v) - set(SERVICE_NAMES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; use {SERVICE_NAMES}")
        # Every service looks its peers up here: a file that moves one port keeps the others.
        return {**DEFAULT_PORTS, **v}


class NotifySection(_Section):
    """Telegram: who hears about trades and alerts, and who may send commands."""

    telegram_chat_ids: list[int] = Field(default_factory=list)
    telegram_api_url: str = "https://api.telegram.org"


class SecretsSection(_Section):
    exchange_api_key: SecretStr | None = None
    exchange_api_secret: SecretStr | None = None
    telegram_bot_token: SecretStr | None = None
    approval_hmac_key: SecretStr | None = None


class InstrumentSection(_Section):
    """A symbol's exchange filters (Binance's exchangeInfo: PRICE_FILTER tickSize,
    LOT_SIZE stepSize/minQty, MIN_NOTIONAL), for symbols the defaults do not know."""

    tick_size: float = Field(gt=0)
    step_size: float = Field(gt=0)
    min_qty: float = Field(gt=0)
    min_notional: float = Field(5.0, ge=0)
    max_leverage: float = Field(20.0, gt=0, le=125)
    maintenance_margin_rate: float = Field(0.005, gt=0, lt=1)


class Settings(_Section):
    initial_balance: float = Field(10_000.0, gt=0)
    leverage: float = Field(3.0, ge=1, le=125)
    data: DataSection = DataSection()
    risk: RiskSection = RiskSection()
    exits: ExitsSection = ExitsSection()
    exchange: ExchangeSection = ExchangeSection()
    strategy: StrategySection = StrategySection()
    paths: PathsSection = PathsSection()
    store: StoreSection = StoreSection()
    services: ServicesSection = ServicesSection()
    ai: AISettings = AISettings()
    notify: NotifySection = NotifySection()
    secrets: SecretsSection = SecretsSection()
    security: SecuritySection = SecuritySection()
    # Exchange filters by symbol, over the built-in ones (see InstrumentSection).
    instruments: dict[str, InstrumentSection] = {}

    @field_validator("instruments")
    @classmethod
    def _instrument_symbols(cls, v: dict[str, InstrumentSection]
                            ) -> dict[str, InstrumentSection]:
        bad = [k for k in v if not k.isalnum() or k != k.upper()]
        if bad:
            raise ValueError(f"not a symbol: {', '.join(bad)} (write them as BTCUSDT)")
        return v

    def instrument_lookup(self) -> Callable[[str], Instrument]:
        """The filters of a symbol: the config's ``instruments``, else the built-in ones,
        else generic ones."""
        from quantum_trader.domain.instruments import instrument_for

        configured = {sym: Instrument(sym, **spec.model_dump())
                      for sym, spec in self.instruments.items()}
        if not configured:
            return instrument_for

        def lookup(symbol: str) -> Instrument:
            return configured.get(symbol) or instrument_for(symbol)

        return lookup

    def exchange_settings(self) -> SimExchangeSettings:
        x = self.exchange
        names = {f.name for f in fields(SimExchangeSettings)}
        values = {k: v for k, v in x.model_dump().items() if k in names}
        return SimExchangeSettings(initial_balance=self.initial_balance,
                                   default_leverage=self.leverage, **values)

    def account_wait_s(self) -> float:
        """See ``ServicesSection.view_wait_s``: long only for a lockstep historical replay."""
        svc = self.services
        replaying = svc.replay_pacing == "lockstep" and self.exchange.kind == "simulated"
        return svc.lockstep_view_wait_s if replaying else svc.view_wait_s

    def sqlite_path(self) -> Path | None:
        """The embedded store's file when no ``store.url`` is set (``store_url`` creates its
        directory; this only names it, for commands that must not write)."""
        return None if self.store.url else self.paths.state_dir / "quantum_trader.db"

    def store_url(self) -> str:
        """The configured database, or the SQLite file ``sqlite_path`` names (the store
        creates it, and its directory, when it is opened with ``create``)."""
        db = self.sqlite_path()
        if db is None:
            return self.store.url
        from quantum_trader.store.urls import sqlite_url

        return sqlite_url(db)


# Sections and top-level keys: the names an environment variable may start with.
_TOP_LEVEL = frozenset(Settings.model_fields)
_CONFIG_VAR = ("config",)  # QTRADER_CONFIG / QT_CONFIG: the file, not a setting


def load_settings(path: Path | str | None = None, env: dict[str, str] | None = None,
                  overrides: dict[str, Any] | None = None) -> Settings:
    """Load and validate. Raises ``ConfigError`` naming each bad key (and its file line or
    variable); warns ``EnvPrefixWarning`` for each setting read under the old ``QT_`` prefix."""
    environ = dict(os.environ if env is None else env)
    found = _env_settings(environ)
    for note in found.notes:
        warnings.warn(note, EnvPrefixWarning, stacklevel=2)
    cfg_path = _find_config(path, found.config)
    data: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    if cfg_path is not None:
        data, lines = _read_yaml(cfg_path)
    origin: dict[tuple[str, ...], str] = {}
    for key_path, (value, name) in found.values.items():
        _set(data, key_path, value)
        origin[key_path] = name
    for dotted, value in (overrides or {}).items():
        key_path = tuple(dotted.split("."))
        _set(data, key_path, value)
        origin.pop(key_path, None)  # what fails now is the caller's value, not the variable's
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_report([*found.errors, *_explain(exc, cfg_path, lines, origin)])
                          ) from None
    if found.errors:
        raise ConfigError(_report(found.errors))
    return settings


@dataclass
class _EnvSettings:
    """What the environment says, and what is wrong with it."""

    values: dict[tuple[str, ...], tuple[Any, str]] = field(default_factory=dict)  # (value, var)
    config: tuple[str, str] | None = None  # (variable, config file)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # deprecations, for EnvPrefixWarning


def _env_settings(environ: dict[str, str]) -> _EnvSettings:
    """``QTRADER_SECTION__KEY`` (and our old ``QT_`` names) as key paths; see the module
    docstring for which variables are ours."""
    out = _EnvSettings()
    chosen: dict[tuple[str, ...], tuple[str, bool]] = {}  # key path -> (variable, is a file)
    for prefix in (OLD_ENV_PREFIX, ENV_PREFIX):  # the new prefix second, so it wins
        for name in sorted(n for n in environ if n.startswith(prefix)):
            parts = name[len(prefix):].lower().split("__")
            if tuple(parts) != _CONFIG_VAR and parts[0] not in _TOP_LEVEL:
                # Every QTRADER_ variable is ours; a QT_ one only when nested, as Qt's never are.
                if prefix == ENV_PREFIX or len(parts) > 1:
                    names = sorted([*_TOP_LEVEL, *_CONFIG_VAR])
                    out.errors.append(
                        f"{name} (environment): unknown section {parts[0]!r}"
                        + _did_you_mean(parts[0], names, f"use one of {', '.join(names)}"))
                continue
            key_path, is_file = _env_key_path(parts)
            before = chosen.get(key_path)
            if before is not None and before[0].startswith(prefix):
                out.errors.append(f"{before[0]} and {name} (environment) both set "
                                  f"{'.'.join(key_path)}")
            elif before is not None:
                out.notes.append(f"{before[0]} is ignored: {name} is set (remove {before[0]}: "
                                 f"{OLD_ENV_PREFIX} is also the Qt toolkit's prefix)")
            chosen[key_path] = (name, is_file)
    for key_path, (name, is_file) in chosen.items():
        if name.startswith(OLD_ENV_PREFIX):
            out.notes.append(f"{name} is deprecated ({OLD_ENV_PREFIX} is also the Qt toolkit's "
                             f"prefix): rename it {ENV_PREFIX}{name[len(OLD_ENV_PREFIX):]}")
        value = environ[name]
        if key_path == _CONFIG_VAR:
            out.config = (name, value)
        elif is_file:
            secret_path = Path(value)
            if secret_path.is_file():
                out.values[key_path] = (secret_path.read_text().strip(), name)
            else:
                out.errors.append(f"{name} (environment): secret file {secret_path} not found")
        else:
            out.values[key_path] = (_scalar(value), name)
    return out


def _env_key_path(parts: list[str]) -> tuple[tuple[str, ...], bool]:
    """The key path a variable's lower-cased ``__`` parts name, and whether its value is the
    name of a file holding a secret (``SECRETS__<NAME>_FILE``)."""
    is_file = parts[0] == "secrets" and parts[-1].endswith("_file")
    if is_file:
        parts = [*parts[:-1], parts[-1][: -len("_file")]]
    path: list[str] = []
    for part in parts:
        # Variable names cannot hold "-": RISK_SAFETY is the default mapping's "risk-safety".
        default = _default_at(tuple(path))
        dashed = part.replace("_", "-")
        hyphen_key = isinstance(default, dict) and part not in default and dashed in default
        path.append(dashed if hyphen_key else part)
    return tuple(path), is_file


@cache
def _defaults() -> Settings:
    return Settings()


def _default_at(key_path: tuple[str, ...]) -> Any:
    """The default value at ``key_path``: a section, a mapping, a value; None if there is none."""
    cur: Any = _defaults()
    for part in key_path:
        if isinstance(cur, BaseModel):
            cur = getattr(cur, part) if part in type(cur).model_fields else None
        elif isinstance(cur, dict):
            cur = cur.get(part)
        else:
            return None
    return cur


def _did_you_mean(word: str, choices: list[str], otherwise: str) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" ({otherwise})"


def _find_config(path: Path | str | None, from_env: tuple[str, str] | None) -> Path | None:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        return p
    if from_env is not None and from_env[1]:
        name, value = from_env
        if not Path(value).is_file():
            raise ConfigError(f"config file {value} not found (from {name})")
        return Path(value)
    return next((p for p in DEFAULT_CONFIG_PATHS if p.is_file()), None)


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the config must be a mapping of sections, got "
                          f"{type(data).__name__}")
    lines: dict[tuple[str, ...], int] = {}
    _walk(node, (), lines)
    return data, lines


def _walk(node: yaml.Node | None, prefix: tuple[str, ...],
          lines: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            lines[key] = key_node.start_mark.line + 1
            _walk(value_node, key, lines)


def _scalar(value: str) -> Any:
    """Environment strings parsed as YAML scalars, so numbers and booleans work."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return parsed if isinstance(parsed, (int, float, bool, str)) else value


def _set(data: dict[str, Any], key_path: tuple[str, ...], value: Any) -> None:
    """Set one key and keep its siblings: a section or mapping the file leaves out starts as
    its default, so overriding one port does not drop the other five."""
    cur = data
    for depth, part in enumerate(key_path[:-1], start=1):
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = cur[part] = _seed(_default_at(key_path[:depth]))
        cur = nxt
    cur[key_path[-1]] = value


def _seed(default: Any) -> dict[str, Any]:
    if isinstance(default, BaseModel):
        return default.model_dump()
    if isinstance(default, dict):
        return copy.deepcopy(default)  # the frozen defaults' dicts are still mutable
    return {}


def _report(problems: list[str]) -> str:
    if len(problems) == 1:  # one problem, one line
        return f"invalid configuration: {problems[0]}"
    return "invalid configuration:\n  " + "\n  ".join(problems)


def _explain(exc: ValidationError, path: Path | None, lines: dict[tuple[str, ...], int],
             origin: dict[tuple[str, ...], str]) -> list[str]:
    msgs = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc)
        # A mapping's own check (ports) fails at the mapping: blame a variable below it
        # unless the file sets the mapping.
        below = sorted(var for p, var in origin.items() if p[:len(loc)] == loc)
        if loc in origin:
            where = f"{origin[loc]} (environment)"
        elif path is not None and loc in lines:
            where = f"{path}:{lines[loc]}"
        elif below:
            where = f"{', '.join(below)} (environment)"
        else:
            where = str(path) if path else "config"
        if err["type"] == "extra_forbidden":
            parent = _default_at(loc[:-1])
            names = list(type(parent).model_fields) if isinstance(parent, BaseModel) else []
            text = "unknown key" + _did_you_mean(loc[-1], names, "check the spelling")
        else:
            text = err["msg"]
        msgs.append(f"{where}: {key}: {text}")
    return msgs

