"""``backtest --timerange`` and ``train --timerange`` use only the bars in the range: the
same result as the backtester on those bars, and nothing outside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.marketdata.timerange import parse_timerange
from quantum_trader.runtime.backtest import run_backtest

pytestmark = pytest.mark.integration


def _qt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    src = Path(__file__).resolve().parents[2] / "src"
    env.update(PYTHONPATH=os.pathsep.join([str(src), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "quantum_trader", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)


def test_backtest_timerange_is_the_backtest_of_those_bars(tmp_path: Path) -> None:
    res = _qt("backtest", "--data", "sample:ETH", "--timerange", "20180101-20180401", "--json",
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    eth = load_sample("ETH").ts
    start, end = 1_514_764_800_000, 1_522_540_800_000  # 2018-01-01, 2018-04-01
    assert out["bars"] == int(((eth >= start) & (eth < end)).sum()) > 4000
    assert out["trades"], "three months of ETH trade"
    assert all(t["opened"] >= "2018-01-01" and t["closed"] < "2018-04-01" for t in out["trades"])
    bars = parse_timerange("20180101-20180401").select(load_sample("ETH"))
    direct = run_backtest([bars], Settings())
    assert [t["net_pnl"] for t in out["trades"]] == [round(t.net_pnl, 6)
                                                     for t in direct.trades]


def test_train_timerange_trains_on_the_range(tmp_path: Path) -> None:
    res = _qt("train", "--data", "sample:XRP", "--timerange", "2018-01-01..2018-07-01",
              "--folds", "2", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    window = json.loads(res.stdout)["training_window"]
    xrp = load_sample("XRP").ts
    start, end = 1_514_764_800_000, 1_530_403_200_000  # 2018-01-01, 2018-07-01
    assert window["bars"] == int(((xrp >= start) & (xrp < end)).sum())
    assert start <= window["first_ts"] < window["last_ts"] < end
