"""The CLI end to end: the main job, backtest JSON, and bad input that writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def qt(*args: str, cwd: Path,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "quantum_trader", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=240, env=full_env)


def test_backtest_json_on_real_data(tmp_path: Path) -> None:
    res = qt("backtest", "--data", "sample:XRP", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["bars"] == 34_991
    assert out["symbols"] == ["XRPUSDT"]
    assert out["report"]["trades"] == len(out["trades"]) > 0
    # Stored as a run; --json draws no chart (tests/integration/test_backtest_reports.py).
    assert out["chart"] is None
    assert json.loads(Path(tmp_path, out["run_dir"], "result.json").read_text())["trades"] == \
        out["trades"]


def test_run_then_trades(tmp_path: Path) -> None:
    res = qt("run", "--data", "sample:ETH", "--max-bars", "3000", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "bars processed" in res.stdout
    res = qt("trades", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert isinstance(json.loads(res.stdout), list)


def test_malformed_data_file_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,open,high,low,close,volume\n"
                   "1700000000000,1,2,0.5,1.5,10\n"
                   "1700000060000,1,2,0.5,nan,10\n")
    res = qt("run", "--data", str(bad), cwd=tmp_path)
    assert res.returncode == 2
    assert "row" in res.stderr.lower() or "line" in res.stderr.lower()
    assert "close" in res.stderr
    assert not (tmp_path / "var").exists()


def test_out_of_order_bars_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "unordered.csv"
    bad.write_text("timestamp,open,high,low,close,volume\n"
                   "1700000060000,1,2,0.5,1.5,10\n"
                   "1700000000000,1,2,0.5,1.5,10\n")
    res = qt("backtest", "--data", str(bad), cwd=tmp_path)
    assert res.returncode == 2
    assert "order" in res.stderr.lower()
    assert not (tmp_path / "reports").exists()


def test_bad_config_names_the_key_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "quantum-trader.yaml"
    cfg.write_text("initial_balance: 5000\nrisk:\n  max_leverage: lots\n  max_levrage: 2\n")
    res = qt("run", "--data", "sample:XRP", cwd=tmp_path)
    assert res.returncode == 2
    assert f"{cfg.name}:3: risk.max_leverage" in res.stderr
    assert f"{cfg.name}:4: risk.max_levrage: unknown key" in res.stderr
    assert not (tmp_path / "var").exists()


def test_bad_env_override_is_named(tmp_path: Path) -> None:
    res = qt("config", cwd=tmp_path, env={"QTRADER_RISK__MAX_DRAWDOWN": "7"})
    assert res.returncode == 2
    assert "QTRADER_RISK__MAX_DRAWDOWN" in res.stderr
