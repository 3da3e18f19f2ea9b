"""Exchange filters for a symbol the defaults do not know, from ``instruments:`` in the
config: orders are sized and priced on its grid, and the generic-filters note is not shown."""

from __future__ import annotations

import dataclasses
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

DOGE = {"tick_size": 0.00001, "step_size": 1.0, "min_qty": 1.0, "min_notional": 5.0,
        "max_leverage": 50.0}


def test_configured_filters_size_every_order_on_the_symbols_grid() -> None:
    bars = dataclasses.replace(load_sample("XRP").slice(0, 6000), symbol="DOGEUSDT")
    generic = run_backtest([bars], Settings())
    configured = run_backtest([bars], Settings.model_validate({"instruments": {"DOGEUSDT":
                                                                               DOGE}}))
    assert configured.trades
    assert all(t.quantity == round(t.quantity) for t in configured.trades)  # step 1
    assert any(t.quantity != round(t.quantity) for t in generic.trades)  # step 0.1


def test_the_cli_takes_them_from_the_config_and_drops_the_note(tmp_path: Path) -> None:
    load = load_sample("XRP").slice(0, 3000)
    rows = ["timestamp,open,high,low,close,volume"] + [
        f"{b.ts},{b.open},{b.high},{b.low},{b.close},{b.volume}" for b in load]
    (tmp_path / "DOGEUSDT-30m.csv").write_text("\n".join(rows) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    src = Path(__file__).resolve().parents[2] / "src"
    env.update(PYTHONPATH=os.pathsep.join([str(src), env.get("PYTHONPATH", "")]))

    def backtest(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "quantum_trader", "backtest", "--data",
                               "DOGEUSDT-30m.csv", "--json", *extra], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, env=env)

    plain = backtest()
    assert plain.returncode == 0, plain.stderr
    assert "no exchange filters known for DOGEUSDT" in plain.stderr
    assert "instruments:" in plain.stderr  # the note says how to give them
    (tmp_path / "qt.yaml").write_text("instruments:\n  DOGEUSDT: " + json.dumps(DOGE) + "\n")
    told = backtest("--config", "qt.yaml")
    assert told.returncode == 0, told.stderr
    assert "no exchange filters known" not in told.stderr
    trades = json.loads(told.stdout)["trades"]
    assert trades
    assert all(t["quantity"] == round(t["quantity"]) for t in trades)
    (tmp_path / "bad.yaml").write_text("instruments:\n  dogeusdt: {tick_size: 0}\n")
    bad = backtest("--config", "bad.yaml")
    assert bad.returncode == 2
    assert "instruments" in bad.stderr


def test_filters_stored_with_downloaded_data_are_used(tmp_path: Path) -> None:
    """``data download`` keeps the venue's filters in the parquet; a backtest of the file
    uses them (no generic-filters note), and ``instruments:`` in the config still wins."""
    from quantum_trader.domain.instruments import Instrument
    from quantum_trader.marketdata.files import file_instrument, write_parquet

    bars = dataclasses.replace(load_sample("XRP").slice(0, 3000), symbol="DOGEUSDT")
    path = write_parquet(bars, tmp_path / "DOGEUSDT-30m.parquet",
                         Instrument("DOGEUSDT", tick_size=0.00001, step_size=1.0, min_qty=1.0))
    assert file_instrument(path) == Instrument("DOGEUSDT", tick_size=0.00001, step_size=1.0,
                                               min_qty=1.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    src = Path(__file__).resolve().parents[2] / "src"
    env.update(PYTHONPATH=os.pathsep.join([str(src), env.get("PYTHONPATH", "")]))

    def backtest(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "quantum_trader", "backtest", "--data",
                               "DOGEUSDT-30m.parquet", "--json", *extra], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, env=env)

    res = backtest()
    assert res.returncode == 0, res.stderr
    assert "no exchange filters known" not in res.stderr
    trades = json.loads(res.stdout)["trades"]
    assert trades
    assert all(t["quantity"] == round(t["quantity"]) for t in trades)  # the file's step 1
    (tmp_path / "qt.yaml").write_text(
        "instruments:\n  DOGEUSDT: {tick_size: 0.00001, step_size: 10, min_qty: 10}\n")
    told = backtest("--config", "qt.yaml")
    assert all(t["quantity"] % 10 == 0 for t in json.loads(told.stdout)["trades"])
