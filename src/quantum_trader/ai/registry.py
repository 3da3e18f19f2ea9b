"""The model registry: a directory of versioned, hash-checked artifacts and a production pointer.

Layout::

    <root>/<model_name>/<version>/model.txt | model.joblib
    <root>/<model_name>/<version>/manifest.json
    <root>/<model_name>/production          # the production version, one line
    <root>/<model_name>/history.jsonl       # promote / rollback events, for rollback

The manifest records the model file's sha256, the features and their parameters, the training
window, out-of-sample metrics and baselines, library versions, the seed, a fingerprint of the
training data and the leakage checks. ``manifest_hash`` is the sha256 of the manifest's
canonical JSON without the wall-clock and naming fields (``created_at``, ``version``), so the
same data, settings and seed give the same hash.

``load`` refuses an artifact whose model file or manifest no longer matches its hashes
(``ArtifactTampered``). ``promote`` passes a version through the promotion gate
(``PromotionRefused`` lists every failed condition).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantum_trader.ai.artifact import ModelArtifact
from quantum_trader.ai.features import FeatureSpec
from quantum_trader.ai.models import MODEL_FILES, Model, load_model
from quantum_trader.ai.settings import GateSettings, SignalSettings

UNHASHED_FIELDS = frozenset({"created_at", "version", "manifest_hash"})
_VERSION_RE = re.compile(r"^v(\d+)$")


class RegistryError(ValueError):
    """Unknown model or version, or a registry operation that cannot be done."""


class ArtifactTampered(RegistryError):
    """The model file or manifest does not match the hashes recorded at training time."""


class PromotionRefused(RegistryError):
    def __init__(self, name: str, version: str, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__(f"{name}@{version} not promoted: " + "; ".join(reasons))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _clean(value: Any) -> Any:
    """JSON-safe and canonical: NaN/inf -> None, tuples -> lists, floats rounded to 12 digits."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.12g}")
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def manifest_hash(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k not in UNHASHED_FIELDS}
    text = json.dumps(_clean(body), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def gate_reasons(manifest: dict[str, Any], gate: GateSettings) -> list[str]:
    """Why a manifest may not go to production (empty: it may)."""
    reasons: list[str] = []
    metrics = manifest.get("metrics") or {}
    overall = metrics.get("overall") or {}
    auc = (overall.get("model") or {}).get("auc")
    shuffled = (overall.get("shuffled") or {}).get("auc")
    if auc is None:
        reasons.append("no out-of-sample AUC")
    else:
        if auc < 0.5 + gate.min_auc_over_random:
            reasons.append(f"AUC {auc:.4f} < 0.5 + {gate.min_auc_over_random}")
        if shuffled is None:
            reasons.append("no shuffled-label baseline AUC")
        elif auc < shuffled + gate.min_auc_over_shuffled:
            reasons.append(f"AUC {auc:.4f} < shuffled-label AUC {shuffled:.4f} + "
                           f"{gate.min_auc_over_shuffled}")
    bts = metrics.get("backtests") or {}
    if "model" not in bts:
        reasons.append("no out-of-sample backtest")
    else:
        sharpe = bts["model"].get("sharpe") or 0.0  # None: a flat curve
        base = {k: (bts[k].get("sharpe") or 0.0) for k in ("rule_based", "flat") if k in bts}
        base.setdefault("flat", 0.0)
        best_name = max(base, key=lambda k: base[k])
        need = base[best_name] + gate.min_sharpe_over_baselines
        if sharpe < need:
            reasons.append(f"backtest Sharpe {sharpe:.3f} < {best_name} Sharpe "
                           f"{base[best_name]:.3f} + {gate.min_sharpe_over_baselines}")
    if gate.require_leakage_checks:
        leak = manifest.get("leakage") or {}
        if not leak.get("passed", False):
            failed = [k for k, v in (leak.get("checks") or {}).items()
                      if not (isinstance(v, dict) and v.get("passed"))]
            reasons.append("leakage checks not passed" + (f": {', '.join(failed)}"
                                                          if failed else " (none recorded)"))
    return reasons


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    created_at: str
    kind: str
    auc: float | None
    sharpe: float | None
    production: bool
    manifest_hash: str


class ModelRegistry:
    def __init__(self, root: Path | str, gate: GateSettings | None = None) -> None:
        self.root = Path(root)
        self.gate = gate or GateSettings()

    # --- paths ----------------------------------------------------------------------------------
    def model_dir(self, name: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
            raise RegistryError(f"invalid model name {name!r}")
        return self.root / name

    def version_dir(self, name: str, version: str) -> Path:
        d = self.model_dir(name) / version
        if not _VERSION_RE.match(version) or not (d / "manifest.json").is_file():
            known = ", ".join(self.versions(name)) or "none"
            raise RegistryError(f"{name}: no version {version!r} (known: {known})")
        return d

    def pointer_path(self, name: str) -> Path:
        return self.model_dir(name) / "production"

    # --- queries --------------------------------------------------------------------------------
    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        d = self.model_dir(name)
        if not d.is_dir():
            return []
        found = [(int(m.group(1)), p.name) for p in d.iterdir()
                 if (m := _VERSION_RE.match(p.name)) and (p / "manifest.json").is_file()]
        return [v for _, v in sorted(found)]

    def production(self, name: str) -> str | None:
        p = self.pointer_path(name)
        try:
            v = p.read_text().strip()
        except FileNotFoundError:
            return None
        return v or None

    def show(self, name: str, version: str | None = None) -> dict[str, Any]:
        version = version or self.production(name)
        if version is None:
            raise RegistryError(f"{name}: no production version")
        data = json.loads((self.version_dir(name, version) / "manifest.json").read_text())
        if not isinstance(data, dict):
            raise ArtifactTampered(f"{name}@{version}: manifest.json is not an object")
        return data

    def list_versions(self, name: str | None = None) -> list[VersionInfo]:
        out = []
        for n in [name] if name else self.models():
            prod = self.production(n)
            for v in self.versions(n):
                m = self.show(n, v)
                metrics = m.get("metrics") or {}
                auc = ((metrics.get("overall") or {}).get("model") or {}).get("auc")
                sharpe = ((metrics.get("backtests") or {}).get("model") or {}).get("sharpe")
                out.append(VersionInfo(n, v, str(m.get("created_at", "")), str(m.get("kind")),
                                       auc, sharpe, v == prod, str(m.get("manifest_hash"))))
        return out

    # --- writing --------------------------------------------------------------------------------
    def register(self, name: str, model: Model, manifest: dict[str, Any]) -> dict[str, Any]:
        """Store ``model`` as the next version of ``name``; returns the completed manifest."""
        d = self.model_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        existing = self.versions(name)
        n = int(existing[-1][1:]) + 1 if existing else 1
        while True:
            version = f"v{n}"
            try:
                (d / version).mkdir()
                break
            except FileExistsError:
                n += 1
        vdir = d / version
        model_file = vdir / MODEL_FILES[model.kind]
        model.save(model_file)
        full = dict(manifest)
        full.update(name=name, kind=model.kind, model_file=model_file.name,
                    sha256=sha256_file(model_file))
        full = {str(k): _clean(v) for k, v in full.items()}
        full["manifest_hash"] = manifest_hash(full)
        full["version"] = version
        full["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _write_atomic(vdir / "manifest.json", json.dumps(full, indent=2, sort_keys=True) + "\n")
        return full

    def verify(self, name: str, version: str) -> dict[str, Any]:
        """The manifest, after checking the model file and manifest hashes."""
        vdir = self.version_dir(name, version)
        manifest = self.show(name, version)
        model_file = vdir / str(manifest.get("model_file", ""))
        if not model_file.is_file():
            raise ArtifactTampered(f"{name}@{version}: model file {model_file.name} missing")
        actual = sha256_file(model_file)
        if actual != manifest.get("sha256"):
            raise ArtifactTampered(f"{name}@{version}: {model_file.name} sha256 {actual} does "
                                   f"not match the manifest ({manifest.get('sha256')})")
        if manifest_hash(manifest) != manifest.get("manifest_hash"):
            raise ArtifactTampered(f"{name}@{version}: manifest.json was modified after "
                                   f"training (manifest_hash mismatch)")
        return manifest

    def load(self, name: str, version: str | None = None) -> ModelArtifact:
        """A verified artifact (the production version when ``version`` is None)."""
        version = version or self.production(name)
        if version is None:
            raise RegistryError(f"{name}: no production version")
        manifest = self.verify(name, version)
        vdir = self.version_dir(name, version)
        model = load_model(str(manifest["kind"]), vdir / str(manifest["model_file"]))
        return ModelArtifact(
            model=model,
            features=FeatureSpec(**manifest["features"]["params"]),
            signals=SignalSettings(**manifest["signals"]),
            name=name, version=version,
            horizon=int(manifest["labels"]["horizon"]),
            manifest=manifest,
        )

    def _history(self, name: str) -> list[dict[str, Any]]:
        p = self.model_dir(name) / "history.jsonl"
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def _set_production(self, name: str, version: str, action: str,
                        extra: dict[str, Any] | None = None) -> None:
        event = {"action": action, "version": version,
                 "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {})}
        hist = self.model_dir(name) / "history.jsonl"
        with hist.open("a") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")
        _write_atomic(self.pointer_path(name), version + "\n")

    def promote(self, version: str, name: str = "default") -> None:
        """Make ``version`` production if it passes the gate, else ``PromotionRefused``."""
        manifest = self.verify(name, version)
        reasons = gate_reasons(manifest, self.gate)
        if reasons:
            raise PromotionRefused(name, version, reasons)
        if self.production(name) == version:
            return  # already production: no history entry, so rollback stays meaningful
        self._set_production(name, version, "promote")

    def production_stack(self, name: str) -> list[str]:
        stack: list[str] = []
        for ev in self._history(name):
            if ev.get("action") == "promote":
                stack.append(str(ev["version"]))
            elif ev.get("action") == "rollback" and stack:
                stack.pop()
        return stack

    def rollback(self, name: str = "default") -> str:
        """Back to the version that was production before the current one; returns it."""
        stack = self.production_stack(name)
        if len(stack) < 2:
            raise RegistryError(f"{name}: no earlier production version to roll back to")
        previous = stack[-2]
        self.verify(name, previous)
        self._set_production(name, previous, "rollback", {"from": stack[-1]})
        return previous
