"""Training time and honest out-of-sample results on the full 2-year 30-minute XRP set.

Walk-forward (expanding, purged, embargoed), leakage checks, final fit and artifact, into a
throwaway registry. Prints the per-fold and overall tables (model vs buy-and-hold, flat, the
rule-based EMA cross, and the same model on shuffled labels) and the promotion gate's verdict.
Run: .venv/bin/python bench/bench_training.py [--model lightgbm|logistic] [--folds 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console

from quantum_trader.ai.registry import ModelRegistry
from quantum_trader.ai.settings import AISettings
from quantum_trader.ai.training import train
from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import load_sample


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lightgbm", choices=("lightgbm", "logistic"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--keep", type=Path, default=None, help="registry dir to keep the artifact")
    args = ap.parse_args()
    console = Console(width=170)
    series = load_sample("XRP")
    ai = AISettings.model_validate({"model": {"kind": args.model},
                                    "walkforward": {"folds": args.folds}})
    settings = Settings()
    root = args.keep or Path(tempfile.mkdtemp(prefix="qt-bench-registry-"))
    registry = ModelRegistry(root, ai.gate)
    t0 = time.perf_counter()
    last = [t0]

    def progress(msg: str) -> None:
        now = time.perf_counter()
        console.print(f"[dim]{now - t0:7.2f}s (+{now - last[0]:.2f}s) {msg}[/dim]")
        last[0] = now

    report = train(series, settings, ai, registry, progress=progress)
    elapsed = time.perf_counter() - t0
    console.print(report.render())
    console.print(f"{series.symbol} {series.timeframe}: {len(series):,} bars, model "
                  f"{args.model}, {args.folds} folds — total training time {elapsed:.1f} s")
    if report.chart_path:
        console.print(f"chart: {report.chart_path}")


if __name__ == "__main__":
    main()
