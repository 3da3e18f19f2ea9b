"""The public Strategy API: what a strategy sees, what it returns, how it declares parameters.

docs/strategies.md is its manual. The model, stated once:

- A ``Strategy`` subclass is made once per symbol, with the run's parameter values, and sees
  that symbol's closed bars one at a time, in time order (``on_bar``). It keeps its indicator
  state in its own attributes (``setup`` makes them). It sees nothing else: no future bars,
  no clock, no positions (its signals are the same in a backtest, on paper and in
  distributed mode, where the ai-engine that runs it holds no account).
- ``on_bar`` returns a ``Signal`` (long, short or flat, a confidence in [0, 1], optionally
  a stop distance) or ``None`` for "nothing new on this bar". The adapter
  (``strategies/adapter.py``) stamps ids, times and expiry on it; a strategy that raises or
  returns anything else is refused, naming the bar.
- Tunable parameters are class attributes (``IntParam``/``FloatParam``/``ChoiceParam``, from
  ``domain/strategy.py``) and collected in ``parameters``; on an instance they read as plain
  values (``self.fast``) that cannot be changed. ``warmup()`` says after how many bars the
  signals no longer depend on where the history started (the recursive check uses it).

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from quantum_trader.domain.models import Bar
from quantum_trader.domain.strategy import Param, ParamValue, resolve_params

Direction = Literal["long", "short", "flat"]
DIRECTIONS: tuple[Direction, ...] = ("long", "short", "flat")
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,39}")  # it goes into signal ids


@dataclass(frozen=True, slots=True)
class Signal:
    """What a strategy wants in its symbol after this bar.

    ``long``/``short``: be in that position (an opposite one is closed first). ``flat``: close
    whatever is held, never open anything. ``confidence`` in [0, 1]: the risk gate refuses
    entries below ``risk.min_confidence`` (0.55 by default) with the reason LOW_CONFIDENCE.
    ``stop_distance``: the protective stop's distance from the price, as a fraction of it
    (0.02 is 2%); it also sizes the position (a stop-out loses ``risk.risk_per_trade`` of
    equity). None: ``risk.default_stop_distance``. ``target_distance``: where to take profit,
    as a fraction of the entry price (0.05 is 5%); None: ``exits.take_profit_rr`` times the
    stop distance (a hint is used even when that ratio is 0).
    """

    direction: Direction
    confidence: float
    stop_distance: float | None = None
    target_distance: float | None = None

    @classmethod
    def long(cls, confidence: float, stop_distance: float | None = None,
             target_distance: float | None = None) -> Signal:
        return cls("long", confidence, stop_distance, target_distance)

    @classmethod
    def short(cls, confidence: float, stop_distance: float | None = None,
              target_distance: float | None = None) -> Signal:
        return cls("short", confidence, stop_distance, target_distance)

    @classmethod
    def flat(cls) -> Signal:
        return cls("flat", 1.0)


class Strategy:
    """Subclass it, declare parameters as class attributes, and write ``on_bar``.

    >>> class Momentum(Strategy):
    ...     lookback = IntParam(20, low=2, high=500)
    ...     def setup(self) -> None:
    ...         self.closes: list[float] = []
    ...     def on_bar(self, bar: Bar) -> Signal | None:
    ...         self.closes.append(bar.close)
    ...         if len(self.closes) <= self.lookback:
    ...             return None
    ...         past = self.closes.pop(0)
    ...         return Signal.long(0.6) if bar.close > past else Signal.flat()
    """

    #: Shown in reports and carried in signal ids; the class name unless set.
    name: ClassVar[str] = ""
    #: Every parameter, by name (collected from the class attributes, base classes first).
    parameters: ClassVar[Mapping[str, Param[Any]]] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, Param[Any]] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                if isinstance(value, Param):
                    found[attr] = value
                elif attr in found:  # a subclass replaced the parameter with something else
                    del found[attr]
        cls.parameters = MappingProxyType(found)
        if "name" not in vars(cls):
            cls.name = cls.__name__
        if not NAME_PATTERN.fullmatch(cls.name):
            raise ValueError(f"strategy name {cls.name!r}: use up to 40 letters, digits, "
                             "'_', '.' or '-', starting with a letter")

    def __init__(self, **params: object) -> None:
        """Made by the adapter, once per symbol. Raises ``ParamError`` (a ``ValueError``) for
        an unknown parameter or a value outside its range; then calls ``setup``."""
        self.__dict__["_qt_params"] = MappingProxyType(
            resolve_params(type(self).parameters, params))
        self.setup()

    @property
    def params(self) -> Mapping[str, ParamValue]:
        """This run's parameter values, by name (read-only)."""
        values: Mapping[str, ParamValue] = self.__dict__["_qt_params"]
        return values

    def setup(self) -> None:
        """Make the indicator state (parameters are set). Raise ``ValueError`` to refuse a
        combination of parameter values (``fast`` not below ``slow``, say)."""

    def warmup(self) -> int:
        """How many bars the indicators need before the signals no longer depend on where
        the history started (an EMA of span n: about 10 n). 0: from the first bar."""
        return 0

    def on_bar(self, bar: Bar) -> Signal | None:
        """Called once per closed bar of this instance's symbol, in time order."""
        raise NotImplementedError(f"{type(self).__name__} must define on_bar(self, bar)")
