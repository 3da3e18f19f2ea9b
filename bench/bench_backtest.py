"""Backtest throughput through the full event path (strategy + risk + exchange + portfolio).

Prints bars/s on the real 2-year 30-minute XRP set and on a synthetic 1,000,000-bar set.
Run: .venv/bin/python bench/bench_backtest.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.marketdata.synthetic import synthetic_series
from quantum_trader.runtime.backtest import run_backtest

# Keep trading on all the way through (the default 20% drawdown halt would stop entries early
# and flatter the figure): every bar pays for strategy, risk, exchange and portfolio work.
SETTINGS = Settings.model_validate({"risk": {"max_drawdown": 1.0, "daily_loss_limit": 1.0,
                                             "min_confidence": 0.5},
                                    "exits": {"trailing_stop": 0.03}})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bars", type=int, default=1_000_000)
    args = ap.parse_args()
    sets = [("XRP 30m 2017-10..2019-10 (real)", load_sample("XRP")),
            (f"synthetic 1m x {args.bars:,}", synthetic_series(args.bars, seed=7))]
    print(f"{'data set':<36} {'bars':>10} {'best s':>8} {'bars/s':>12} {'trades':>7} "
          f"{'orders':>7}")
    for name, series in sets:
        best = float("inf")
        result = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = run_backtest([series], SETTINGS)
            best = min(best, time.perf_counter() - t0)
        assert result is not None
        print(f"{name:<36} {len(series):>10,} {best:>8.3f} {len(series) / best:>12,.0f} "
              f"{len(result.trades):>7,} {result.orders:>7,}")


if __name__ == "__main__":
    main()
