"""``StrategySource``: a user's ``Strategy`` as a ``SignalSource`` the node and services run.

It makes one instance per symbol (on that symbol's first bar), hands it each bar, and turns
what it returns into the internal ``Signal``: the id ``<symbol>-<close time>-<name>`` (one
per bar, so a redelivered bar gives the same id), ``ts`` the bar's close time, ``expires_at``
``signal_ttl_ms`` later, ``price`` the close. Anything else is refused with a
``StrategyError`` naming the strategy and the bar (symbol and open time, as in the data
file): an exception, a value that is not a ``Signal``, an unknown direction, a confidence
that is not a number in [0, 1], a stop distance outside (0, 1). After one refusal the source
stays refused: the instance's state is no longer known to be sound.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from quantum_trader.domain.enums import Direction
from quantum_trader.domain.models import Bar
from quantum_trader.domain.models import Signal as DomainSignal
from quantum_trader.domain.strategy import ParamValue
from quantum_trader.strategies.api import DIRECTIONS, Signal, Strategy

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # the CLI's one time format (analytics.tables)
_DIRECTION = {"long": Direction.LONG, "short": Direction.SHORT, "flat": Direction.FLAT}


class StrategyError(ValueError):
    """A strategy refused: it raised, or returned something that is not a valid Signal."""


def bar_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime(TIME_FORMAT)


def show_value(v: ParamValue) -> str:
    """As the command line takes it: ``true``, ``2.5``, ``12``, ``fast``."""
    if isinstance(v, bool):
        return str(v).lower()
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe_params(params: Mapping[str, ParamValue]) -> str:
    return ", ".join(f"{k}={show_value(v)}" for k, v in params.items())


class StrategySource:
    """A ``SignalSource`` over ``cls`` with ``params`` (validated by ``Strategy.__init__``)."""

    def __init__(self, cls: type[Strategy], params: Mapping[str, ParamValue],
                 signal_ttl_ms: int) -> None:
        self.cls = cls
        self.name = cls.name
        self.params = dict(params)
        self._ttl = signal_ttl_ms
        self.instances: dict[str, Strategy] = {}
        self.broken: StrategyError | None = None
        self._warmup = cls(**self.params).warmup()  # a probe: bad values fail here, not later
        if not isinstance(self._warmup, int) or isinstance(self._warmup, bool) \
                or self._warmup < 0:
            raise StrategyError(f"strategy {self.name}: warmup() returned {self._warmup!r}, "
                                "not a whole number of bars (0 or more)")

    def warmup(self) -> int:
        return self._warmup

    def on_bar(self, bar: Bar) -> DomainSignal | None:
        if self.broken is not None:
            raise self.broken
        inst = self.instances.get(bar.symbol)
        try:
            if inst is None:
                inst = self.instances[bar.symbol] = self.cls(**self.params)
            out = inst.on_bar(bar)
        except Exception as exc:
            text = " ".join(str(exc).split())
            self._refuse(bar, f"raised {type(exc).__name__}{': ' + text if text else ''}",
                         where=self._where(exc.__traceback__))
        if out is None:
            return None
        return self._signal(out, bar)

    def _signal(self, out: object, bar: Bar) -> DomainSignal:
        if not isinstance(out, Signal):
            shown = repr(out)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            self._refuse(bar, f"returned {type(out).__name__} {shown}",
                         "return a quantum_trader.strategies.Signal, or None for no signal")
        if out.direction not in DIRECTIONS:
            self._refuse(bar, f"returned direction {out.direction!r}",
                         "direction must be long, short or flat")
        conf = out.confidence
        if not isinstance(conf, (int, float)) or isinstance(conf, bool) \
                or not 0.0 <= conf <= 1.0:  # NaN fails the comparison too
            self._refuse(bar, f"returned confidence {conf!r}",
                         "confidence must be a number in [0, 1]")
        stop = out.stop_distance
        if stop is not None and (not isinstance(stop, (int, float)) or isinstance(stop, bool)
                                 or not 0.0 < stop < 1.0):
            self._refuse(bar, f"returned stop_distance {stop!r}",
                         "stop_distance must be None or a fraction of the price in (0, 1)")
        target = out.target_distance
        if target is not None and (not isinstance(target, (int, float))
                                   or isinstance(target, bool) or not 0.0 < target < 10.0):
            self._refuse(bar, f"returned target_distance {target!r}",
                         "target_distance must be None or a fraction of the price in (0, 10)")
        if target is not None and out.direction == "flat":
            self._refuse(bar, "returned a target_distance on a flat signal",
                         "a flat signal opens nothing to take profit on")
        ts = bar.close_ts
        sid = f"{bar.symbol}-{ts}-{self.name}"
        return DomainSignal(id=sid, symbol=bar.symbol, direction=_DIRECTION[out.direction],
                            confidence=float(conf), ts=ts, expires_at=ts + self._ttl,
                            price=bar.close, source=self.name, trace_id=sid,
                            timeframe=bar.timeframe,
                            stop_distance=None if stop is None else float(stop),
                            target_distance=None if target is None else float(target))

    def _refuse(self, bar: Bar, what: str, rule: str = "", where: str = "") -> NoReturn:
        self.broken = StrategyError(
            f"strategy {self.name} {what} on {bar.symbol} bar {bar_time(bar.ts)}{where}"
            f"{': ' + rule if rule else ''}")
        raise self.broken

    def _where(self, tb: TracebackType | None) -> str:
        """`` (file.py:line)``: the last line of the strategy's own file the error went
        through, so the user knows where to look."""
        module = sys.modules.get(self.cls.__module__)
        own = getattr(module, "__file__", None)
        if own is None or tb is None:
            return ""
        lines = [f for f in traceback.extract_tb(tb) if f.filename == own]
        return f" ({Path(own).name}:{lines[-1].lineno})" if lines else ""
