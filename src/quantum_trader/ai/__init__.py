"""AI engine: features, labels, models, walk-forward training, model registry, live signals.

Names are imported lazily (PEP 562) so that ``quantum_trader.config`` can import
``quantum_trader.ai.settings.AISettings`` without pulling in the training stack (which imports
the config module itself).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "AIEngine": "engine", "NoProductionModel": "engine", "NotReady": "engine",
    "UnknownSymbol": "engine", "UnknownTimeframe": "engine",
    "ModelArtifact": "artifact",
    "FeatureSpec": "features", "FeatureState": "features", "compute_features": "features",
    "make_labels": "labels",
    "LightGBMModel": "models", "LogisticModel": "models", "Model": "models",
    "ModelParams": "models", "make_model": "models",
    "ArtifactTampered": "registry", "ModelRegistry": "registry", "PromotionRefused": "registry",
    "RegistryError": "registry", "gate_reasons": "registry",
    "AISettings": "settings", "GateSettings": "settings", "SignalSettings": "settings",
    "ModelSignalSource": "signals",
    "TrainingReport": "training", "leakage_checks": "training", "train": "training",
    "make_splits": "walkforward", "walk_forward": "walkforward",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
