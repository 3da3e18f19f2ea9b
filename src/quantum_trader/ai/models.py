"""Models behind one small protocol: LightGBM (default) and logistic regression (baseline).

``predict_proba(X)`` returns p(label = 1) for each row; ``predict_one(x)`` is the live path for a
single feature row (LightGBM's ``Booster.predict`` on a 2-D numpy row, not the sklearn wrapper;
the logistic model is a dot product). lightgbm, scikit-learn and joblib are imported on first
use, so reading ``AISettings`` (which embeds ``ModelParams``) stays cheap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import lightgbm as lgb

FloatArray = npt.NDArray[np.float64]
ModelKind = Literal["lightgbm", "logistic"]

MODEL_FILES: dict[str, str] = {"lightgbm": "model.txt", "logistic": "model.joblib"}


class ModelParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ModelKind = "lightgbm"
    num_leaves: int = Field(15, ge=2)
    n_estimators: int = Field(200, ge=1)
    learning_rate: float = Field(0.03, gt=0)
    min_child_samples: int = Field(200, ge=1)
    feature_fraction: float = Field(0.8, gt=0, le=1)
    bagging_fraction: float = Field(0.8, gt=0, le=1)
    lambda_l2: float = Field(1.0, ge=0)
    num_threads: int = Field(2, ge=1)
    logistic_c: float = Field(1.0, gt=0)


@runtime_checkable
class Model(Protocol):
    kind: str

    def fit(self, X: FloatArray, y: FloatArray) -> None: ...

    def predict_proba(self, X: FloatArray) -> FloatArray: ...

    def predict_one(self, x: FloatArray) -> float: ...

    def importance(self) -> FloatArray:
        """Each feature's share of what the model uses (non-negative, sums to 1)."""
        ...

    def save(self, path: Path) -> None: ...


class LightGBMModel:
    kind = "lightgbm"

    def __init__(self, params: ModelParams | None = None, seed: int = 0,
                 feature_names: list[str] | None = None,
                 booster: lgb.Booster | None = None) -> None:
        self.params = params or ModelParams()
        self.seed = seed
        self.feature_names = feature_names
        self.booster = booster

    def _lgb_params(self) -> dict[str, Any]:
        p = self.params
        return {
            "objective": "binary", "num_leaves": p.num_leaves, "learning_rate": p.learning_rate,
            "min_data_in_leaf": p.min_child_samples, "feature_fraction": p.feature_fraction,
            "bagging_fraction": p.bagging_fraction, "bagging_freq": 1 if p.bagging_fraction < 1
            else 0, "lambda_l2": p.lambda_l2, "num_threads": p.num_threads,
            "deterministic": True, "force_row_wise": True, "seed": self.seed,
            "verbosity": -1,
        }

    def fit(self, X: FloatArray, y: FloatArray) -> None:
        import lightgbm as lgb

        ds = lgb.Dataset(X, label=y, feature_name=self.feature_names or "auto",
                         params={"verbosity": -1}, free_raw_data=True)
        self.booster = lgb.train(self._lgb_params(), ds, num_boost_round=self.params.n_estimators)

    def _b(self) -> lgb.Booster:
        if self.booster is None:
            raise RuntimeError("model is not fitted")
        return self.booster

    def predict_proba(self, X: FloatArray) -> FloatArray:
        return np.asarray(self._b().predict(X), dtype=np.float64)

    def predict_one(self, x: FloatArray) -> float:
        out = self._b().predict(x.reshape(1, -1), num_threads=1)
        return float(np.asarray(out)[0])

    def importance(self) -> FloatArray:
        gain = np.asarray(self._b().feature_importance(importance_type="gain"),
                          dtype=np.float64)
        total = float(gain.sum())
        return gain / total if total > 0 else gain

    def save(self, path: Path) -> None:
        self._b().save_model(str(path))

    @classmethod
    def load(cls, path: Path) -> LightGBMModel:
        import lightgbm as lgb

        return cls(booster=lgb.Booster(model_file=str(path)))


class LogisticModel:
    """Standardized features, L2 logistic regression (sklearn ``lbfgs``)."""

    kind = "logistic"

    def __init__(self, params: ModelParams | None = None, seed: int = 0) -> None:
        self.params = params or ModelParams(kind="logistic")
        self.seed = seed
        self.mean: FloatArray = np.zeros(0)
        self.scale: FloatArray = np.ones(0)
        self.coef: FloatArray = np.zeros(0)
        self.intercept = 0.0

    def fit(self, X: FloatArray, y: FloatArray) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(X)
        clf = LogisticRegression(C=self.params.logistic_c, max_iter=1000,
                                 random_state=self.seed)
        clf.fit(scaler.transform(X), y)
        self.mean = np.asarray(scaler.mean_, dtype=np.float64)
        self.scale = np.asarray(scaler.scale_, dtype=np.float64)
        self.coef = np.asarray(clf.coef_[0], dtype=np.float64)
        self.intercept = float(clf.intercept_[0])

    def predict_proba(self, X: FloatArray) -> FloatArray:
        z = ((X - self.mean) / self.scale) @ self.coef + self.intercept
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)

    def predict_one(self, x: FloatArray) -> float:
        z = float(((x - self.mean) / self.scale) @ self.coef) + self.intercept
        return 1.0 / (1.0 + math.exp(-z))

    def importance(self) -> FloatArray:
        # Standardized features: a coefficient's size is its weight in the decision.
        w = np.abs(self.coef)
        total = float(w.sum())
        return w / total if total > 0 else w

    def save(self, path: Path) -> None:
        import joblib

        joblib.dump({"mean": self.mean, "scale": self.scale, "coef": self.coef,
                     "intercept": self.intercept, "params": self.params.model_dump()}, path)

    @classmethod
    def load(cls, path: Path) -> LogisticModel:
        import joblib

        d = joblib.load(path)
        m = cls(ModelParams(**d["params"]))
        m.mean, m.scale, m.coef = d["mean"], d["scale"], d["coef"]
        m.intercept = float(d["intercept"])
        return m


def make_model(params: ModelParams, seed: int, feature_names: list[str] | None = None) -> Model:
    if params.kind == "lightgbm":
        return LightGBMModel(params, seed, feature_names)
    if params.kind == "logistic":
        return LogisticModel(params, seed)
    raise ValueError(f"unknown model kind {params.kind!r}")


def load_model(kind: str, path: Path) -> Model:
    if kind == "lightgbm":
        return LightGBMModel.load(path)
    if kind == "logistic":
        return LogisticModel.load(path)
    raise ValueError(f"unknown model kind {kind!r}")
