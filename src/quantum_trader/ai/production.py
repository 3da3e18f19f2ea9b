"""Which signal source trades: a plugin strategy, the registry's production model, or the
rule-based baseline.

One decision for every front door (``run``/``backtest``/``lookahead`` and the ai-engine
service). Loading raises ``ArtifactTampered`` (a ``ValueError``) rather than trade on a
modified artifact, and ``StrategyLoadError`` (a ``ValueError``) for a plugin that cannot be
found or made with its parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from quantum_trader.ai.per_symbol import per_symbol_production
from quantum_trader.ai.registry import ModelRegistry
from quantum_trader.ai.settings import AISettings
from quantum_trader.ai.signals import ModelSignalSource
from quantum_trader.config import Settings
from quantum_trader.domain.strategy import SignalSource
from quantum_trader.marketdata.series import BarSeries

if TYPE_CHECKING:
    from quantum_trader.strategies.loader import LoadedStrategy


def ai_settings(settings: Settings) -> AISettings:
    return settings.ai


def registry_for(settings: Settings) -> ModelRegistry:
    return ModelRegistry(settings.paths.registry_dir, ai_settings(settings).gate)


def production_source(settings: Settings) -> ModelSignalSource | None:
    ai = ai_settings(settings)
    registry = registry_for(settings)
    if registry.production(ai.model_name) is None:
        return None
    return ModelSignalSource(registry.load(ai.model_name))


class NoProductionModelConfigured(ValueError):
    """``strategy.kind: model`` with nothing promoted."""


def plugin_strategy(settings: Settings, origin: str = "strategy.path",
                    param_origin: Callable[[str], str] | None = None) -> LoadedStrategy | None:
    """The plugin ``strategy.path`` names, its ``strategy.params`` checked; None if unset.
    ``origin``/``param_origin`` name where the spec and values came from in its errors."""
    s = settings.strategy
    if not s.path:
        return None
    from quantum_trader.strategies.loader import load_strategy

    return load_strategy(s.path, s.params, origin=origin, param_origin=param_origin)


def choose_signal_source(settings: Settings, hot_reload: bool = False,
                         origin: str = "strategy.path",
                         param_origin: Callable[[str], str] | None = None
                         ) -> tuple[SignalSource, str]:
    """The signal source the ``strategy`` settings ask for, and why it is that one.

    A plugin when ``strategy.path`` names one (see ``plugin_strategy``). Else by
    ``strategy.kind``: ``auto``: the production model when the registry has one (else the
    per-symbol ones, ``<model>-<SYMBOL>``, the baseline for other symbols), else the
    EMA-cross baseline; ``model``: the production model or an error; ``ema_cross``: the
    baseline. ``hot_reload`` (services) wraps the model in the ``AIEngine``, which follows
    promotions between bars.
    """
    from quantum_trader.ai.engine import AIEngine
    from quantum_trader.runtime.wiring import baseline_strategy

    plugin = plugin_strategy(settings, origin, param_origin)
    if plugin is not None:
        return (plugin.source(settings.strategy.signal_ttl_ms),
                f"strategy {plugin.describe()} ({origin})")
    kind = settings.strategy.kind
    if kind != "ema_cross":
        registry = registry_for(settings)
        name = settings.ai.model_name
        if registry.production(name) is not None:
            if hot_reload:
                engine = AIEngine(registry, name)
                return engine, f"production model {name}@{engine.version} (hot reload)"
            source = ModelSignalSource(registry.load(name))
            return source, f"production model {source.name}"
        per_symbol = per_symbol_production(registry, name)
        if per_symbol:
            from quantum_trader.ai.per_symbol import PerSymbolSignalSource, per_symbol_name

            models = {sym: ModelSignalSource(registry.load(per_symbol_name(name, sym)))
                      for sym in per_symbol}
            fallback = baseline_strategy(settings) if kind == "auto" else None
            others = f"other symbols: {fallback.name}" if fallback is not None else \
                "other symbols: no signals"
            return (PerSymbolSignalSource(models, fallback),
                    "per-symbol production models " + ", ".join(
                        f"{per_symbol_name(name, s)}@{v}" for s, v in per_symbol.items())
                    + f" ({others})")
        if kind == "model":
            raise NoProductionModelConfigured(
                "strategy.kind is 'model' but the registry has no production model: run "
                "`quantum-trader train --promote` or `quantum-trader models promote VERSION`")
    baseline = baseline_strategy(settings)
    reason = "configured" if kind == "ema_cross" else "no production model"
    return baseline, f"rule-based baseline {baseline.name} ({reason})"


def in_sample_overlaps(source: object, series: Sequence[BarSeries]) -> list[str]:
    """Where ``series`` overlaps the training window of a model ``source`` trades with: a
    result there is in-sample (the model has seen those bars), whatever it looks like."""
    from quantum_trader.ai.per_symbol import PerSymbolSignalSource

    models: list[tuple[ModelSignalSource, set[str] | None]] = []
    if isinstance(source, ModelSignalSource):
        models.append((source, None))
    elif isinstance(source, PerSymbolSignalSource):
        models += [(m, {sym}) for sym, m in source.sources.items()
                   if isinstance(m, ModelSignalSource)]
    out = []
    for model, only in models:
        manifest = model.artifact.manifest
        window = manifest.get("training_window") or {}
        data = manifest.get("data") or {}
        trained_on = set(data.get("symbols") or [data.get("symbol")])
        first, last = window.get("first_ts"), window.get("last_ts")
        if first is None or last is None:
            continue
        for s in series:
            if s.symbol not in trained_on or (only is not None and s.symbol not in only) \
                    or not len(s):
                continue
            lo, hi = max(int(s.ts[0]), int(first)), min(int(s.ts[-1]), int(last))
            if lo <= hi:
                n = int(((s.ts >= lo) & (s.ts <= hi)).sum())
                out.append(f"{s.symbol}: {n:,} of {len(s):,} bars ({_day(lo)}..{_day(hi)}) "
                           f"are in {model.name}'s training window")
    return out


def _day(ms: int) -> str:
    import time

    return time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))
