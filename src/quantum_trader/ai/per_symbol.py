"""One model per symbol (``train --per-symbol``): models named ``<model>-<SYMBOL>`` in the
registry, each trained on its own symbol only. ``PerSymbolSignalSource`` routes each bar to
its symbol's model; a symbol without one gets the fallback (the baseline under
``strategy.kind: auto``) or no signals (``model``)."""

from __future__ import annotations

from collections.abc import Mapping

from quantum_trader.ai.registry import ModelRegistry
from quantum_trader.domain.models import Bar, Signal
from quantum_trader.domain.strategy import SignalSource


def per_symbol_name(model_name: str, symbol: str) -> str:
    return f"{model_name}-{symbol}"


def per_symbol_production(registry: ModelRegistry, model_name: str) -> dict[str, str]:
    """Symbol -> production version of every ``<model_name>-<SYMBOL>`` model."""
    prefix = f"{model_name}-"
    out = {}
    for name in registry.models():
        symbol = name[len(prefix):]
        if name.startswith(prefix) and symbol.isalnum() and symbol == symbol.upper():
            version = registry.production(name)
            if version is not None:
                out[symbol] = version
    return dict(sorted(out.items()))


class PerSymbolSignalSource:
    def __init__(self, sources: Mapping[str, SignalSource],
                 fallback: SignalSource | None = None) -> None:
        self.sources = dict(sources)
        self.fallback = fallback
        self.name = "per-symbol(" + ",".join(
            f"{sym}:{src.name}" for sym, src in self.sources.items()) + ")"

    def on_bar(self, bar: Bar) -> Signal | None:
        source = self.sources.get(bar.symbol, self.fallback)
        return None if source is None else source.on_bar(bar)


__all__ = ["PerSymbolSignalSource", "per_symbol_name", "per_symbol_production"]
