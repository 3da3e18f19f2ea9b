"""A halt is explained, not just named: when and why, in the backtest's output, JSON and
chart, and in the paper summary (the first-run demo halts at the drawdown limit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.runtime.backtest import run_backtest

pytestmark = pytest.mark.integration


def _qt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    src = Path(__file__).resolve().parents[2] / "src"
    env.update(PYTHONPATH=os.pathsep.join([str(src), env.get("PYTHONPATH", "")]),
               COLUMNS="160")
    return subprocess.run([sys.executable, "-m", "quantum_trader", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def test_a_backtest_records_when_and_why_it_halted() -> None:
    tight = Settings.model_validate({"risk": {"max_drawdown": 0.05}})
    r = run_backtest([load_sample("XRP").slice(0, 8000)], tight)
    (halt,) = r.state_changes
    assert halt.detail["to"] == "HALTED"
    assert halt.detail["reason"].startswith("max drawdown breached")
    assert r.equity_ts[0] <= halt.ts <= r.equity_ts[-1]
    # Nothing was opened after it.
    assert all(t.opened_ts <= halt.ts for t in r.trades)
    loose = run_backtest([load_sample("XRP").slice(0, 8000)],
                         Settings.model_validate({"risk": {"max_drawdown": 0.99,
                                                           "daily_loss_limit": 0.99}}))
    assert loose.state_changes == []


def test_the_cli_says_when_and_why_in_text_json_and_the_paper_summary(tmp_path: Path) -> None:
    cfg = tmp_path / "qt.yaml"
    cfg.write_text("risk:\n  max_drawdown: 0.05\n")
    res = _qt("backtest", "--config", str(cfg), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    (change,) = json.loads(res.stdout)["state_changes"]
    assert change["to"] == "HALTED"
    assert change["time"].endswith("Z")
    text = _qt("backtest", "--config", str(cfg), cwd=tmp_path)
    assert f"trading HALTED: {change['reason']} at {change['time']}" in " ".join(
        text.stderr.split())
    paper = _qt("run", "--config", str(cfg), "--max-bars", "8000", cwd=tmp_path)
    assert paper.returncode == 0, paper.stderr
    row = next(ln for ln in paper.stdout.splitlines() if "trading state" in ln)
    assert "HALTED since" in row
    assert "max drawdown breached" in " ".join(paper.stdout.split())
