"""Backtest throughput through the full event path (strategy + risk + exchange + portfolio).

Prints bars/s on the real 2-year 30-minute XRP set, on a synthetic 1,000,000-bar set, and on
all five real sets backtested as one portfolio (one account).
Run: .venv/bin/python bench/bench_backtest.py [--repeat 3]

``--against REF`` measures a git revision side by side (its own worktree, the same venv),
alternating runs, and prints each side's median and the ratio: machines differ from session to
session, so a figure is only worth comparing with one taken in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import SAMPLE_ASSETS, load_sample
from quantum_trader.marketdata.synthetic import synthetic_series
from quantum_trader.runtime.backtest import run_backtest

# Keep trading on all the way through (the default 20% drawdown halt would stop entries early
# and flatter the figure): every bar pays for strategy, risk, exchange and portfolio work.
SETTINGS = Settings.model_validate({"risk": {"max_drawdown": 1.0, "daily_loss_limit": 1.0,
                                             "min_confidence": 0.5},
                                    "exits": {"trailing_stop": 0.03}})


def _side_by_side(ref: str, rounds: int, bars: int) -> None:
    root = Path(__file__).resolve().parents[1]
    tree = Path(tempfile.mkdtemp(prefix="qt-bench-")) / "tree"
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), ref],
                   check=True, capture_output=True)
    here = Path(__file__).resolve()
    try:
        times: dict[str, list[list[float]]] = {"this tree": [], ref: []}
        for _ in range(rounds):
            for name, src in (("this tree", root / "src"), (ref, tree / "src")):
                out = subprocess.run([sys.executable, str(here), "--repeat", "1", "--bars",
                                      str(bars), "--raw"], capture_output=True, text=True,
                                     check=True, env={"PYTHONPATH": str(src)})
                times[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{'data set':<12} {'this tree s':>12} {ref + ' s':>14} {'ratio':>7}")
        for i, label in enumerate(("XRP 30m", f"synthetic {bars:,}")):
            a = statistics.median(t[i] for t in times["this tree"])
            b = statistics.median(t[i] for t in times[ref])
            print(f"{label:<12} {a:>12.3f} {b:>14.3f} {a / b:>7.3f}")
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)],
                       capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--against", help="a git revision to measure side by side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.against:
        _side_by_side(args.against, args.rounds, args.bars)
        return
    sets = [("XRP 30m 2017-10..2019-10 (real)", [load_sample("XRP")]),
            (f"synthetic 1m x {args.bars:,}", [synthetic_series(args.bars, seed=7)])]
    if args.raw:  # the side-by-side runs: data sets every revision can backtest
        best_s = []
        for _name, group in sets:
            run_backtest([group[0].slice(0, 5_000)], SETTINGS)  # warm: caches, first calls
            t0 = time.perf_counter()
            run_backtest(group, SETTINGS)
            best_s.append(time.perf_counter() - t0)
        print(json.dumps(best_s))
        return
    # One account over all five real sets, next to the single-symbol figure above it.
    sets.append(("5 real sets as one portfolio (30m)",
                 [load_sample(a) for a in SAMPLE_ASSETS]))
    print(f"{'data set':<36} {'bars':>10} {'best s':>8} {'bars/s':>12} {'trades':>7} "
          f"{'orders':>7}")
    for name, group in sets:
        best = float("inf")
        result = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = run_backtest(group, SETTINGS)
            best = min(best, time.perf_counter() - t0)
        assert result is not None
        bars = sum(len(s) for s in group)
        print(f"{name:<36} {bars:>10,} {best:>8.3f} {bars / best:>12,.0f} "
              f"{len(result.trades):>7,} {result.orders:>7,}")


if __name__ == "__main__":
    main()
