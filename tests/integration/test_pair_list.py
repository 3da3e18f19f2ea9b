"""A static pair list in config (``data.symbols``): each symbol's bars from the data directory
where ``data download`` writes them, else the shipped sample, traded as one portfolio; a
symbol with no bars is refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantum_trader.marketdata.sample import load_sample

pytestmark = pytest.mark.integration


def _qt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    src = Path(__file__).resolve().parents[2] / "src"
    env.update(PYTHONPATH=os.pathsep.join([str(src), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "quantum_trader", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)


def test_the_pair_list_trades_files_and_samples_as_one_portfolio(tmp_path: Path) -> None:
    eth = load_sample("ETH").slice(0, 3000)
    (tmp_path / "bars").mkdir()
    rows = ["timestamp,open,high,low,close,volume"] + [
        f"{b.ts},{b.open},{b.high},{b.low},{b.close},{b.volume}" for b in eth]
    (tmp_path / "bars" / "ETHUSDT-30m.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "qt.yaml").write_text(
        "data:\n  dir: bars\n  symbols: [eth/usdt:usdt, XRPUSDT]\n")
    res = _qt("backtest", "-c", "qt.yaml", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["symbols"] == ["ETHUSDT", "XRPUSDT"]
    assert out["bars"] == 3000 + len(load_sample("XRP"))  # the file's ETH, the sample's XRP
    assert {p["symbol"] for p in out["pairs"]} == {"ETHUSDT", "XRPUSDT"}
    assert all(t["opened"] <= "2017-12-04" for t in out["trades"] if t["symbol"] == "ETHUSDT")

    (tmp_path / "missing.yaml").write_text("data:\n  symbols: [XRPUSDT, DOGEUSDT]\n")
    refused = _qt("backtest", "-c", "missing.yaml", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: data.symbols: no bars for DOGEUSDT")
    assert "data download --symbol DOGEUSDT" in refused.stderr
    (tmp_path / "twice.yaml").write_text("data:\n  symbols: [XRPUSDT, xrpusdt]\n")
    twice = _qt("run", "-c", "twice.yaml", cwd=tmp_path)
    assert twice.returncode == 2
    assert "listed more than once: XRPUSDT" in twice.stderr
    assert not (tmp_path / "var").exists()
