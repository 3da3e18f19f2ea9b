"""``AIEngine``: the AI engine's service logic, without HTTP.

* holds the registry's production model and hot-reloads it when the ``production`` pointer
  changes (checked between bars: the bar in hand is always scored by exactly one model, and
  the new model's feature state is rebuilt from the bars already seen, so no bar is dropped);
* ``on_bar(bar)`` -> ``Signal | None``; ``generate_signal(symbol, timeframe)`` -> the signal
  for the latest bar (FLAT when the model has no opinion), equal to what ``on_bar`` returned;
  a redelivered or out-of-order bar is ignored (counted in ``bars_ignored``), never folded
  into the features twice;
* online accuracy: once a LONG/SHORT signal's label horizon has passed, it is scored (did the
  close move its way?), kept per model name;
* it is a ``SignalSource`` (``name``, ``on_bar``), so a node or the ai-engine service can use it
  directly (the service calls its ``generate_signal`` when present);
* counters for Prometheus as plain attributes: ``inference_seconds`` (recent samples),
  ``signals_generated[(symbol, direction)]``.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from dataclasses import dataclass

from quantum_trader.ai.artifact import ModelArtifact
from quantum_trader.ai.registry import ModelRegistry, RegistryError
from quantum_trader.ai.signals import ModelSignalSource
from quantum_trader.domain.enums import Direction
from quantum_trader.domain.models import TIMEFRAME_MS, Bar, Signal


class UnknownSymbol(LookupError):
    pass


class UnknownTimeframe(LookupError):
    pass


class NoProductionModel(RegistryError):
    pass


class NotReady(LookupError):
    """The features for this symbol are still warming up."""


@dataclass
class _Pending:
    due: int  # bar count of its (symbol, timeframe) at which it is scored
    direction: Direction
    price: float
    model: str


@dataclass
class _Latest:
    bar: Bar
    p: float | None
    source: ModelSignalSource


class AIEngine:
    def __init__(self, registry: ModelRegistry, model_name: str = "default",
                 check_every_bars: int = 1, history_bars: int | None = None,
                 latency_samples: int = 100_000) -> None:
        self.registry = registry
        self.model_name = model_name
        self.name = f"{model_name}@none"  # SignalSource name: "<model>@<version>" once loaded
        self.check_every_bars = max(1, check_every_bars)
        self._history_bars = history_bars
        self._pointer = registry.pointer_path(model_name)
        self._pointer_sig: tuple[int, int, int] | None = None
        self.source: ModelSignalSource | None = None
        self.artifact: ModelArtifact | None = None
        self._history: dict[tuple[str, str], deque[Bar]] = {}
        self._latest: dict[tuple[str, str], _Latest] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._pending: dict[tuple[str, str], deque[_Pending]] = {}
        self._since_check = 0
        self.symbols: set[str] = set()
        self.inference_seconds: deque[float] = deque(maxlen=latency_samples)
        self.signals_generated: Counter[tuple[str, str]] = Counter()
        self.accuracy: dict[str, list[int]] = {}  # model name -> [right, scored]
        self.reloads = 0
        self.last_reload_error: str | None = None
        self.bars_seen = 0
        self.bars_ignored = 0
        self.reload()

    # --- model ----------------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        return self.artifact.version if self.artifact else None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._pointer)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> bool:
        """Load the production version if it differs from the one held; True if it changed."""
        self._pointer_sig = self._stat()
        version = self.registry.production(self.model_name)
        if version is None or (self.artifact is not None and version == self.artifact.version):
            return False
        try:
            artifact = self.registry.load(self.model_name, version)
        except RegistryError as exc:  # keep serving the model we have
            self.last_reload_error = str(exc)
            return False
        source = ModelSignalSource(artifact)
        old = self.source
        if old is not None and old.artifact.features == artifact.features:
            source.adopt_state(old)  # same features: carry the state over
        else:
            for bars in self._history.values():
                source.warm_up(list(bars))
        self.artifact, self.source = artifact, source
        self.name = source.name
        self.reloads += 1
        self.last_reload_error = None
        return True

    def check_reload(self) -> bool:
        """Cheap: one ``stat`` of the pointer file; reloads only when it changed."""
        if self._stat() == self._pointer_sig:
            return False
        return self.reload()

    # --- bars -----------------------------------------------------------------------------------
    def on_bar(self, bar: Bar) -> Signal | None:
        self._since_check += 1
        if self._since_check >= self.check_every_bars:
            self._since_check = 0
            self.check_reload()
        key = (bar.symbol, bar.timeframe)
        src = self.source
        hist = self._history.get(key)
        if hist and bar.ts <= hist[-1].ts:
            self.bars_ignored += 1  # a redelivered or out-of-order bar: never fold it twice
            return None
        self.bars_seen += 1
        self.symbols.add(bar.symbol)
        if hist is None:
            maxlen = self._history_bars or 10 * (
                self.artifact.features.warmup if self.artifact else 150)
            hist = self._history[key] = deque(maxlen=maxlen)
        hist.append(bar)
        count = self._counts[key] = self._counts.get(key, 0) + 1
        self._score(key, count, bar.close)
        if src is None:
            return None
        t0 = time.perf_counter()
        p = src.probability(bar)
        sig = None if p is None else src.decide(bar, p)
        self.inference_seconds.append(time.perf_counter() - t0)
        self._latest[key] = _Latest(bar, p, src)
        if sig is not None:
            self.signals_generated[(sig.symbol, sig.direction.value)] += 1
            if sig.direction is not Direction.FLAT:
                q = self._pending.setdefault(key, deque())
                q.append(_Pending(count + src.artifact.horizon, sig.direction, bar.close,
                                  src.artifact.name))
        return sig

    def generate_signal(self, symbol: str, timeframe: str) -> Signal:
        """The signal for the latest bar of ``symbol``/``timeframe`` (FLAT if no opinion)."""
        if timeframe not in TIMEFRAME_MS:
            raise UnknownTimeframe(f"unknown timeframe {timeframe!r}")
        if symbol not in self.symbols:
            raise UnknownSymbol(f"no bars seen for symbol {symbol!r}")
        latest = self._latest.get((symbol, timeframe))
        if latest is None:
            if self.source is None:
                raise NoProductionModel(f"{self.model_name}: no production model")
            raise UnknownTimeframe(f"no {timeframe} bars seen for {symbol}")
        if latest.p is None:
            raise NotReady(f"{symbol} {timeframe}: features warming up")
        sig = latest.source.decide(latest.bar, latest.p, always=True)
        assert sig is not None
        return sig

    # --- online accuracy ------------------------------------------------------------------------
    def _score(self, key: tuple[str, str], count: int, close: float) -> None:
        q = self._pending.get(key)
        while q and q[0].due <= count:
            pend = q.popleft()
            move = close - pend.price
            right = move > 0 if pend.direction is Direction.LONG else move < 0
            acc = self.accuracy.setdefault(pend.model, [0, 0])
            acc[0] += int(right)
            acc[1] += 1

    def model_accuracy(self, model_name: str | None = None) -> float | None:
        acc = self.accuracy.get(model_name or self.model_name)
        return None if not acc or acc[1] == 0 else acc[0] / acc[1]
