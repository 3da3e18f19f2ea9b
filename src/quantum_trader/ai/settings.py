"""``AISettings``: the ``ai:`` section of the configuration (features, labels, model,
walk-forward, signals, promotion gate)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quantum_trader.ai.features import FeatureSpec
from quantum_trader.ai.labels import LabelMode
from quantum_trader.ai.models import ModelParams


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelSettings(_Section):
    horizon: int = Field(8, ge=1)  # bars ahead
    margin: float = Field(0.0, ge=0)  # on top of the 2 * taker_fee round trip
    mode: LabelMode = "up_vs_down"


class WalkForwardSettings(_Section):
    mode: Literal["expanding", "rolling"] = "expanding"
    folds: int = Field(5, ge=1)
    min_train_bars: int = Field(8_000, ge=100)
    train_bars: int = Field(17_520, ge=100)  # window length for mode=rolling (~1 year of 30m)
    embargo_bars: int = Field(16, ge=0)


class SignalSettings(_Section):
    upper: float = Field(0.55, gt=0, lt=1)  # LONG when p(up) > upper
    lower: float = Field(0.45, gt=0, lt=1)  # SHORT when p(up) < lower
    emit_flat: bool = False  # in between: FLAT signal (closes positions) or nothing
    allow_short: bool = True
    ttl_ms: int = Field(60_000, gt=0)
    atr_mult: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> SignalSettings:
        if self.lower > self.upper:
            raise ValueError("signals.lower must be <= signals.upper")
        return self


class GateSettings(_Section):
    """Promotion gate margins: a version goes to production only if it beats all of these."""

    min_auc_over_shuffled: float = Field(0.01, ge=0)
    min_auc_over_random: float = Field(0.005, ge=0)  # AUC >= 0.5 + this
    min_sharpe_over_baselines: float = Field(0.0)  # vs max(rule-based, flat)
    require_leakage_checks: bool = True


class AISettings(_Section):
    model_name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 42
    features: FeatureSpec = FeatureSpec()
    labels: LabelSettings = LabelSettings()
    model: ModelParams = ModelParams()
    walkforward: WalkForwardSettings = WalkForwardSettings()
    signals: SignalSettings = SignalSettings()
    gate: GateSettings = GateSettings()
    backtest_folds: bool = True  # backtest the model and baselines on each test fold
    chart: bool = True  # write equity.png next to the artifact
