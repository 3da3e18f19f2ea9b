"""Per-signal latency of the AI engine: incremental features + model + signal, one bar at a time.

Trains a model on the first part of the 2-year 30-minute XRP set, promotes it through a gate
with zero margins (this measures speed, not quality), and replays the last ``--bars`` bars through
``ModelSignalSource.on_bar`` and through ``AIEngine.on_bar`` (which adds the hot-reload
pointer check, online accuracy and counters). Prints p50/p99/max per bar.
Run: .venv/bin/python bench/bench_inference.py [--bars 20000] [--model lightgbm|logistic]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from quantum_trader.ai.engine import AIEngine
from quantum_trader.ai.features import FeatureState
from quantum_trader.ai.registry import ModelRegistry
from quantum_trader.ai.settings import AISettings, GateSettings
from quantum_trader.ai.signals import ModelSignalSource
from quantum_trader.ai.training import train
from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import load_sample


def _row(name: str, samples: list[float]) -> str:
    us = np.asarray(samples) * 1e6
    p50, p99 = np.percentile(us, [50, 99])
    return f"{name:<44} {len(us):>8,} {p50:>9.1f} {p99:>9.1f} {us.max():>9.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=20_000)
    ap.add_argument("--model", default="lightgbm", choices=("lightgbm", "logistic"))
    args = ap.parse_args()
    series = load_sample("XRP")
    n_train = len(series) - args.bars
    ai = AISettings.model_validate({"model": {"kind": args.model}, "chart": False,
                                    "walkforward": {"folds": 2, "min_train_bars": 8_000}})
    # A gate with no margins: this measures speed, not quality.
    open_gate = GateSettings(min_auc_over_shuffled=0, min_auc_over_random=0,
                             min_sharpe_over_baselines=-1e9, require_leakage_checks=False)
    reg = ModelRegistry(tempfile.mkdtemp(prefix="qt-bench-inf-"), open_gate)
    t0 = time.perf_counter()
    report = train(series.slice(0, n_train), Settings(), ai, reg)
    print(f"trained {report.name}@{report.version} ({args.model}) on {n_train:,} bars in "
          f"{time.perf_counter() - t0:.1f} s; replaying {args.bars:,} bars")
    reg.promote(report.version, ai.model_name)
    artifact = reg.load(ai.model_name)
    live = list(series.slice(n_train))
    warm = list(series.slice(n_train - 10 * ai.features.warmup, n_train))

    feats = FeatureState(ai.features)
    for b in warm:
        feats.update(b)
    f_lat = []
    for b in live:
        t = time.perf_counter()
        feats.update(b)
        f_lat.append(time.perf_counter() - t)

    src = ModelSignalSource(artifact, record_latency=True)
    src.warm_up(warm)
    signals = sum(src.on_bar(b) is not None for b in live)

    engine = AIEngine(reg, ai.model_name)
    for b in warm:
        engine.on_bar(b)
    engine.inference_seconds.clear()
    e_lat = []
    for b in live:
        t = time.perf_counter()
        engine.on_bar(b)
        e_lat.append(time.perf_counter() - t)

    assert src.latencies is not None
    print(f"{'per bar (µs)':<44} {'bars':>8} {'p50':>9} {'p99':>9} {'max':>9}")
    print(_row("features only (FeatureState.update)", f_lat))
    print(_row("ModelSignalSource.on_bar (features+model)", src.latencies))
    print(_row("AIEngine.on_bar (+reload check, accuracy)", e_lat))
    print(_row("AIEngine model_inference_seconds samples", list(engine.inference_seconds)))
    print(f"signals: {signals:,} of {len(live):,} bars; online accuracy "
          f"{engine.model_accuracy()}")


if __name__ == "__main__":
    main()
