"""The signal-source contract, tunable parameters, and the rule-based baseline strategy.

Any signal source (the EMA-cross baseline here, a plugin strategy, the AI engine) sees one
closed bar at a time and may answer with a ``Signal``. It must only use bars it has been
given: that is what makes backtests free of lookahead.

A source's tunable parameters are declared as ``Param`` values (``IntParam``, ``FloatParam``,
``ChoiceParam``): a default and the values it may take. They are the one place a range is
stated: settings and plugin parameters are checked against them, and an optimiser searches
inside them. On a ``quantum_trader.strategies.Strategy`` they are class attributes (read as
plain values on an instance); the baseline lists them in ``parameters``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Generic, NoReturn, Protocol, Self, TypeVar, overload

from quantum_trader.domain.enums import Direction
from quantum_trader.domain.models import Bar, Signal

ParamValue = int | float | str | bool
T = TypeVar("T", int, float, str, bool)


class ParamError(ValueError):
    """A parameter value its strategy does not accept; ``name`` is the parameter."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


@dataclass(frozen=True)
class Param(Generic[T]):
    """A tunable parameter: its default, and (in subclasses) the values it may take.

    As a class attribute of a ``Strategy`` it is a read-only descriptor: ``self.fast`` is the
    run's value, and assigning to it is an error (parameters are fixed for a run)."""

    default: T
    help: str = field(default="", kw_only=True)
    _name: str = field(default="", init=False, repr=False, compare=False)

    def describe(self) -> str:
        """The values it takes, as a phrase: "an integer in [2, 200]"."""
        raise NotImplementedError

    def coerce(self, value: object) -> T:
        """``value`` (text from the command line, or a YAML scalar) as this parameter's type,
        checked against its range; raises ``ValueError`` saying what it takes."""
        raise NotImplementedError

    def _refuse(self, value: object) -> NoReturn:
        # Text as typed (the command line's "--param fast=abc" is already quoted enough).
        shown = value if isinstance(value, str) and value.strip() else repr(value)
        raise ValueError(f"{shown} is not {self.describe()}")

    # --- the descriptor ---------------------------------------------------------------------
    def __set_name__(self, owner: type[Any], name: str) -> None:
        object.__setattr__(self, "_name", name)

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> Self: ...
    @overload
    def __get__(self, obj: object, owner: type[Any] | None = None) -> T: ...

    def __get__(self, obj: object, owner: type[Any] | None = None) -> Self | T:
        if obj is None:
            return self
        values: Mapping[str, T] | None = obj.__dict__.get("_qt_params")
        if values is None:
            raise AttributeError(f"parameter {self._name} is not set yet: a strategy's "
                                 "__init__ must call super().__init__(**params) (or make its "
                                 "state in setup() instead)")
        return values[self._name]

    def __set__(self, obj: object, value: object) -> NoReturn:
        raise AttributeError(f"parameter {self._name} is read-only: its value is fixed for "
                             "the run (keep changing state in attributes of your own)")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class IntParam(Param[int]):
    low: int
    high: int

    def __post_init__(self) -> None:
        for what in ("default", "low", "high"):
            if not isinstance(getattr(self, what), int) or isinstance(getattr(self, what), bool):
                raise TypeError(f"IntParam {what} must be an integer, got "
                                f"{getattr(self, what)!r}")
        if not self.low <= self.default <= self.high:
            raise ValueError(f"IntParam default {self.default} is outside "
                             f"[{self.low}, {self.high}]")

    def describe(self) -> str:
        return f"an integer in [{self.low}, {self.high}]"

    def coerce(self, value: object) -> int:
        number = value
        if isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                self._refuse(value)
        if not isinstance(number, int) or isinstance(number, bool) \
                or not self.low <= number <= self.high:
            self._refuse(value)
        return number


@dataclass(frozen=True)
class FloatParam(Param[float]):
    low: float
    high: float

    def __post_init__(self) -> None:
        for what in ("default", "low", "high"):
            v = getattr(self, what)
            if not _is_number(v) or not math.isfinite(v):
                raise TypeError(f"FloatParam {what} must be a finite number, got {v!r}")
        if not self.low <= self.default <= self.high:
            raise ValueError(f"FloatParam default {self.default:g} is outside "
                             f"[{self.low:g}, {self.high:g}]")
        object.__setattr__(self, "default", float(self.default))

    def describe(self) -> str:
        return f"a number in [{self.low:g}, {self.high:g}]"

    def coerce(self, value: object) -> float:
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                self._refuse(value)
        if not isinstance(number, (int, float)) or isinstance(number, bool) \
                or not (math.isfinite(number) and self.low <= number <= self.high):
            self._refuse(value)
        return float(number)


def _text(choice: ParamValue) -> str:
    return str(choice).lower() if isinstance(choice, bool) else str(choice)


@dataclass(frozen=True)
class ChoiceParam(Param[T]):
    choices: tuple[T, ...]

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError("ChoiceParam needs at least one choice")
        kinds = {type(c) for c in self.choices}
        if len(kinds) > 1 or not kinds <= {int, float, str, bool}:
            raise TypeError(f"ChoiceParam choices must all be of one type (int, float, str or "
                            f"bool), got {self.choices!r}")
        if self._find(self.default) is None:
            raise ValueError(f"ChoiceParam default {self.default!r} is not one of its choices")

    def _find(self, value: object) -> T | None:
        # By type and value: True == 1, but a bool is not a choice of integers.
        return next((c for c in self.choices if type(c) is type(value) and c == value), None)

    def describe(self) -> str:
        return f"one of {', '.join(_text(c) for c in self.choices)}"

    def coerce(self, value: object) -> T:
        found = self._find(value)
        if found is None and isinstance(value, str):
            text = value.strip()
            found = next((c for c in self.choices if _text(c) == text
                          or (isinstance(c, bool) and _text(c) == text.lower())), None)
        if found is None:
            self._refuse(value)
        return found


def resolve_params(declared: Mapping[str, Param[Any]], given: Mapping[str, object]
                   ) -> dict[str, ParamValue]:
    """Every declared parameter's value: ``given``'s, checked, else its default.

    Raises ``ParamError`` naming the first parameter that is unknown or out of range."""
    for name in given:
        if name not in declared:
            known = ", ".join(declared) or "none"
            raise ParamError(name, f"no such parameter (parameters: {known})")
    values: dict[str, ParamValue] = {}
    for name, param in declared.items():
        if name not in given:
            values[name] = param.default
            continue
        try:
            values[name] = param.coerce(given[name])
        except ValueError as exc:
            raise ParamError(name, str(exc)) from None
    return values


class SignalSource(Protocol):
    name: str

    def on_bar(self, bar: Bar) -> Signal | None:
        """Called once per closed bar, in time order, per symbol."""


class EmaCrossStrategy:
    """Long when the fast EMA crosses above the slow one, short when it crosses below.

    Confidence is ``0.5 + 0.5 * tanh(|close - slow EMA| / ATR)``: a cross with price already
    well away from the slow average is a stronger one. The stop distance it suggests is
    ``atr_mult`` average true ranges, so sizing follows volatility.
    """

    parameters: ClassVar[Mapping[str, Param[Any]]] = MappingProxyType({
        "fast": IntParam(12, 1, 200, help="fast EMA span, bars"),
        "slow": IntParam(26, 2, 500, help="slow EMA span, bars (more than fast)"),
        "atr_period": IntParam(14, 1, 200, help="ATR smoothing period, bars"),
        "atr_mult": FloatParam(2.0, 0.1, 20.0, help="suggested stop, in ATRs"),
        "allow_short": ChoiceParam(True, (True, False), help="short on a cross down"),
    })

    def __init__(self, fast: int = 12, slow: int = 26, atr_period: int = 14,
                 atr_mult: float = 2.0, signal_ttl_ms: int = 60_000,
                 allow_short: bool = True) -> None:
        if not 1 <= fast < slow:
            raise ValueError(f"need 1 <= fast < slow, got fast={fast} slow={slow}")
        self.name = f"ema_cross_{fast}_{slow}"
        self._af = 2.0 / (fast + 1)
        self._as = 2.0 / (slow + 1)
        self._aa = 1.0 / atr_period
        self._warmup = slow
        self._atr_mult = atr_mult
        self._ttl = signal_ttl_ms
        self._allow_short = allow_short
        self._state: dict[str, list[float]] = {}  # symbol -> [fast, slow, atr, prev_close, n]
        self._seq = 0
        self._slow, self._atr_period = slow, atr_period

    def warmup(self) -> int:
        """Bars after which its signals no longer depend on where the history started: an
        EMA keeps (1 - 2/(span + 1))**n of its seed after n bars, about e**-20 at 10 spans."""
        return 10 * max(self._slow, self._atr_period)

    def on_bar(self, bar: Bar) -> Signal | None:
        st = self._state.get(bar.symbol)
        c = bar.close
        if st is None:
            self._state[bar.symbol] = [c, c, bar.high - bar.low, c, 1.0]
            return None
        fast, slow, atr, prev_close, n = st
        was_above = fast > slow
        fast += self._af * (c - fast)
        slow += self._as * (c - slow)
        tr = max(bar.high, prev_close) - min(bar.low, prev_close)
        atr += self._aa * (tr - atr)
        n += 1.0
        st[0], st[1], st[2], st[3], st[4] = fast, slow, atr, c, n
        if n <= self._warmup:
            return None
        above = fast > slow
        if above == was_above:
            return None
        direction = Direction.LONG if above else (
            Direction.SHORT if self._allow_short else Direction.FLAT)
        self._seq += 1
        ts = bar.close_ts
        sid = f"{bar.symbol}-{ts}-{self.name}"
        return Signal(
            id=sid,
            symbol=bar.symbol,
            direction=direction,
            confidence=0.5 + 0.5 * math.tanh(abs(c - slow) / atr) if atr > 0 else 0.5,
            ts=ts,
            expires_at=ts + self._ttl,
            price=c,
            source=self.name,
            trace_id=sid,
            timeframe=bar.timeframe,
            stop_distance=self._atr_mult * atr / c if atr > 0 else None,
        )
