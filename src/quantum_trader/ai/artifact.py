"""``ModelArtifact``: what a signal source needs from a trained model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantum_trader.ai.features import FeatureSpec
from quantum_trader.ai.models import Model
from quantum_trader.ai.settings import SignalSettings


@dataclass
class ModelArtifact:
    model: Model
    features: FeatureSpec
    signals: SignalSettings
    name: str = "unregistered"
    version: str = "dev"
    horizon: int = 8
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """The ``Signal.source`` of its signals: ``<model name>@<version>``."""
        return f"{self.name}@{self.version}"
