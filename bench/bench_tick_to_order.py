"""In-process tick-to-order latency: a bar arrives → the simulated exchange has accepted the
order it caused (signal, risk gate, sizing, order state machine included). p50 / p99 / max.

Run: .venv/bin/python bench/bench_tick_to_order.py
"""

from __future__ import annotations

import time

import numpy as np

from quantum_trader.config import Settings
from quantum_trader.marketdata.synthetic import synthetic_series
from quantum_trader.runtime.wiring import build_node


def main() -> None:
    from quantum_trader.domain.enums import Direction
    from quantum_trader.domain.models import Bar, Signal

    class EveryNth:
        """Alternates long/short every ``n`` bars so that orders flow all the time."""

        name = "every_nth"

        def __init__(self, n: int) -> None:
            self.n, self.i = n, 0

        def on_bar(self, bar: Bar) -> Signal | None:
            self.i += 1
            if self.i % self.n:
                return None
            d = Direction.LONG if (self.i // self.n) % 2 else Direction.SHORT
            sid = f"{bar.symbol}-{bar.close_ts}"
            return Signal(sid, bar.symbol, d, 0.9, bar.close_ts, bar.close_ts + 60_000,
                          bar.close, self.name, sid, bar.timeframe, 0.02)

    settings = Settings.model_validate({"risk": {"max_drawdown": 1.0, "daily_loss_limit": 1.0,
                                                 "max_orders_per_minute": 10_000,
                                                 "cooldown_after_stop_ms": 0}})
    series = synthetic_series(200_000, seed=3)
    node = build_node(settings, EveryNth(5))
    accepted: list[int] = []
    node.on_order_accepted = lambda _o: accepted.append(time.perf_counter_ns())
    samples: list[int] = []
    for bar in series:
        t0 = time.perf_counter_ns()
        n_before = len(accepted)
        node.on_bar(bar)
        if len(accepted) > n_before and node.signals_seen:
            # first order accepted in this bar caused by the bar (entry or exit)
            samples.append(accepted[n_before] - t0)
    lat = np.array(samples) / 1000.0
    print(f"bars: {len(series):,}  orders accepted: {len(accepted):,}  samples: {len(lat):,}")
    print(f"tick-to-order latency (µs): p50 {np.percentile(lat, 50):.1f}  "
          f"p99 {np.percentile(lat, 99):.1f}  p99.9 {np.percentile(lat, 99.9):.1f}  "
          f"max {lat.max():.1f}")


if __name__ == "__main__":
    main()
