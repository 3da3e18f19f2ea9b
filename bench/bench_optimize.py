"""Optimisation throughput: Optuna trials per minute of the EMA-cross parameters on the real
2-year 30-minute XRP set (each trial one backtest of all 34,991 bars), with 1 and with 2
worker processes on one study (a journal file, as ``optimize`` uses by default), and the wall
time of a small nested walk-forward study through the command line.

Run: .venv/bin/python bench/bench_optimize.py [--trials 24] [--nested-trials 10]

The 2-worker figure includes starting the processes (spawn: each imports the package and
Optuna, about a second); on a 2-core machine the ratio is bounded by 2.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.research.optimize import (
    OptimizeSpec,
    WorkerJob,
    _worker_main,
    complete_trials,
    run_worker,
    scoring_settings,
    storage_for,
)


def trials_per_minute(workers: int, trials: int, directory: Path) -> tuple[float, float]:
    series = [load_sample("XRP")]
    spec = OptimizeSpec(["sample:XRP"], trials=trials, windows=1, warmup=0, min_trades=1,
                        space={"fast": [2, 60], "slow": [20, 200]})
    url = str(directory / f"bench-{workers}.log")
    storage = storage_for(url)
    study = optuna.create_study(study_name="bench", storage=storage, direction="maximize")
    train = [(int(series[0].ts[0]), int(series[0].ts[-1]) + 1_800_000)]
    cfg = scoring_settings(Settings())
    jobs = [WorkerJob(url, "bench", spec, cfg, series, train, i) for i in range(workers)]
    t0 = time.perf_counter()
    if workers == 1:
        run_worker(jobs[0])
    else:
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker_main, args=(j,)) for j in jobs]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    wall = time.perf_counter() - t0
    done = len(complete_trials(study))
    assert done == trials, (done, trials)
    return trials / wall * 60.0, wall


def nested_wall(trials: int, directory: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = str(src)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "quantum_trader", "optimize", "--data", "sample:XRP",
                    "--windows", "3", "--trials", str(trials), "--space", "fast=2..60",
                    "--space", "slow=20..200", "--json"], cwd=directory, env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--nested-trials", type=int, default=10)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        one, wall1 = trials_per_minute(1, args.trials, Path(d))
        two, wall2 = trials_per_minute(2, args.trials, Path(d))
        nested = nested_wall(args.nested_trials, Path(d))
    print(json.dumps({"bars": 34991, "trials": args.trials,
                      "trials_per_minute_1_worker": round(one, 1), "wall_1_s": round(wall1, 2),
                      "trials_per_minute_2_workers": round(two, 1), "wall_2_s": round(wall2, 2),
                      "ratio_2_to_1": round(two / one, 2),
                      "nested_3_windows_x_trials": args.nested_trials,
                      "nested_wall_s": round(nested, 2)}, indent=2))


if __name__ == "__main__":
    main()
