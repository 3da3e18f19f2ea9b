"""The file ``quantum-trader new-strategy NAME`` writes: a strategy that runs as it is (a
moving-average cross), each part of the public API shown once with a comment."""

from __future__ import annotations

import keyword
import re

_TEMPLATE = '''\
"""__CLASS__: a Quantum Trader strategy (the API: docs/strategies.md).

Try it as it is, then make on_bar your own rule:

    quantum-trader backtest --strategy __FILE__:__CLASS__ --data sample:XRP
    quantum-trader lookahead --strategy __FILE__:__CLASS__ --data sample:XRP

As written it goes long when the close crosses above its moving average and short when it
crosses below. Import only from quantum_trader.strategies.
"""

from __future__ import annotations

from collections import deque

from quantum_trader.strategies import Bar, FloatParam, IntParam, Signal, Strategy


class __CLASS__(Strategy):
    # Tunable parameters: a default and the range they may take (an optimiser searches it).
    # Read them as self.window; set them with --param window=100, or strategy.params.
    window = IntParam(50, low=5, high=500, help="moving average length, bars")
    confidence = FloatParam(0.6, low=0.0, high=1.0,
                            help="how sure each signal is; the risk gate refuses entries "
                                 "below risk.min_confidence (0.55 by default)")
    stop = FloatParam(0.02, low=0.001, high=0.5, help="protective stop, fraction of price")

    def setup(self) -> None:
        # Indicator state. There is one instance per symbol, so plain attributes do.
        self.closes: deque[float] = deque(maxlen=self.window)
        self.was_above: bool | None = None

    def warmup(self) -> int:
        # Bars until the signals no longer depend on where the data started.
        return self.window

    def on_bar(self, bar: Bar) -> Signal | None:
        # Once per closed bar, in time order. Return a Signal, or None for nothing new.
        self.closes.append(bar.close)
        if len(self.closes) < self.window:
            return None
        above = bar.close > sum(self.closes) / len(self.closes)
        was_above, self.was_above = self.was_above, above
        if was_above is None or above == was_above:
            return None
        # long/short: be in that position (an opposite one is closed first);
        # Signal.flat() would close whatever is held and open nothing.
        if above:
            return Signal.long(self.confidence, stop_distance=self.stop)
        return Signal.short(self.confidence, stop_distance=self.stop)
'''


def names(name: str) -> tuple[str, str]:
    """(class name, file stem) for ``MyBreakout``, ``my_breakout`` or ``my-breakout``;
    ``ValueError`` for anything else."""
    if re.fullmatch(r"[A-Z][A-Za-z0-9]*", name):
        cls = name
        stem = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
    elif re.fullmatch(r"[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*", name):
        stem = name.replace("-", "_")
        cls = "".join(part.capitalize() for part in stem.split("_"))
    else:
        raise ValueError(f"{name!r}: use a name like MyBreakout or my_breakout (letters and "
                         "digits, starting with a letter)")
    if len(cls) > 40 or keyword.iskeyword(stem):
        raise ValueError(f"{name!r}: use a shorter name (up to 40 characters) that is not a "
                         "Python keyword")
    return cls, stem


def render(cls: str, file: str) -> str:
    return _TEMPLATE.replace("__CLASS__", cls).replace("__FILE__", file)
