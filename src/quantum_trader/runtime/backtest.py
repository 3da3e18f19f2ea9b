"""Backtests: the trading node on a simulated clock, as fast as the event path allows."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from quantum_trader.analytics.performance import (
    PairResult,
    PerformanceReport,
    basket_buy_and_hold,
    compute_report,
    pair_results,
)
from quantum_trader.config import Settings
from quantum_trader.domain.models import TIMEFRAME_MS
from quantum_trader.domain.records import AuditEvent, ClosedTrade
from quantum_trader.domain.strategy import SignalSource
from quantum_trader.marketdata.replay import ReplayFeed
from quantum_trader.marketdata.series import BarSeries
from quantum_trader.runtime.node import Journal, TradingNode
from quantum_trader.runtime.wiring import build_node


@dataclass
class BacktestResult:
    source: str
    symbols: list[str]
    timeframe: str
    bars: int
    elapsed_s: float
    report: PerformanceReport
    trades: list[ClosedTrade]
    equity_ts: np.ndarray
    equity: np.ndarray
    orders: int
    fills: int
    signals: int
    rejections: dict[str, int] = field(default_factory=dict)
    pairs: list[PairResult] = field(default_factory=list)
    basket_buy_and_hold: float | None = None
    state_changes: list[AuditEvent] = field(default_factory=list)  # halts: when and why

    @property
    def bars_per_second(self) -> float:
        return self.bars / self.elapsed_s if self.elapsed_s > 0 else float("inf")


def run_backtest(series: Sequence[BarSeries], settings: Settings,
                 source: SignalSource | None = None,
                 progress: Callable[[int], None] | None = None,
                 progress_every: int = 10_000, journal: Journal | None = None,
                 setup: Callable[[TradingNode], None] | None = None) -> BacktestResult:
    """Replay ``series`` through a fresh node and report. ``progress`` gets bar counts;
    ``journal`` gets every event the node records (``parity`` compares them with a run's);
    ``setup`` sees the node before its first bar."""
    if not series:
        raise ValueError("no bars to backtest")
    if len({s.timeframe for s in series}) > 1:
        raise ValueError("all series of one backtest must share a timeframe")
    node = build_node(settings, source, journal, name="backtest")
    if setup is not None:
        setup(node)
    feed = ReplayFeed(list(series))
    n = len(feed)
    # One account: one equity point per bar time (after every symbol's bar of that time), and
    # a time is exposed when any symbol holds a position after its bar.
    eq_ts = np.empty(n, dtype=np.int64)
    eq = np.empty(n, dtype=np.float64)
    step_exposed = np.zeros(n, dtype=np.bool_)
    exposed_bars = dict.fromkeys((s.symbol for s in series), 0)
    pf = node.portfolio
    on_bar = node.on_bar
    positions = pf.positions
    tf_ms = TIMEFRAME_MS[series[0].timeframe]
    # What exists before the run (modules, settings, the data) lives through it: the cyclic
    # collector need not walk it on every full collection the run's allocations trigger.
    gc.freeze()
    t0 = time.perf_counter()
    i = 0
    k = -1
    last_ts = -1
    try:
        for bar in feed:
            on_bar(bar)
            if bar.ts != last_ts:
                k += 1
                last_ts = bar.ts
                eq_ts[k] = last_ts + tf_ms
            eq[k] = pf.wallet + pf.unrealized
            if positions:
                p = positions.get(bar.symbol)
                if p is not None and p.qty != 0.0:
                    exposed_bars[bar.symbol] += 1
                    step_exposed[k] = True
            i += 1
            if progress is not None and i % progress_every == 0:
                progress(progress_every)
    finally:
        gc.unfreeze()  # collectable again afterwards, garbage included
    elapsed = time.perf_counter() - t0
    if progress is not None:
        progress(i % progress_every)
    steps = k + 1
    exposure = float(step_exposed[:steps].sum()) / max(steps, 1)
    return _result(node, series, eq_ts[:steps], eq[:steps], exposure, exposed_bars, i, elapsed)


def _result(node: TradingNode, series: Sequence[BarSeries], eq_ts: np.ndarray, eq: np.ndarray,
            exposure: float, exposed_bars: dict[str, int], bars: int,
            elapsed: float) -> BacktestResult:
    pf = node.portfolio
    report = compute_report(eq_ts, eq, node.trades, pf.fees_paid, pf.funding_paid, exposure,
                            series[0].timeframe)
    orders = len(node.engine.orders)
    fills = sum(1 for o in node.engine.orders.values() if o.filled_qty > 0)
    pairs = pair_results(node.trades, {s.symbol: len(s) for s in series}, exposed_bars,
                         {s.symbol: (float(s.close[0]), float(s.close[-1]))
                          for s in series if len(s)})
    return BacktestResult(node.source.name, [s.symbol for s in series], series[0].timeframe,
                          bars, elapsed, report, list(node.trades), eq_ts, eq, orders, fills,
                          node.signals_seen, dict(node.rejections), pairs,
                          basket_buy_and_hold(pairs), list(node.state_changes))
