"""The one example config (``examples/config.yaml``): every step of the path from a backtest
to live trading uses it, so it must load and backtest as shipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantum_trader.cli import app

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"


def clean_env() -> dict[str, str | None]:
    import os

    return {k: None for k in os.environ if k.startswith(("QT_", "QTRADER_"))}


def test_the_example_config_loads_and_backtests(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    shown = runner.invoke(app, ["config", "--config", str(EXAMPLE)], env=clean_env())
    assert shown.exit_code == 0, shown.output
    cfg = json.loads(shown.stdout)
    assert cfg["exchange"]["kind"] == "binance-testnet"  # steps 2-3; step 4 flips it to live
    assert cfg["secrets"]["exchange_api_key"] is None  # keys never come from the file

    res = runner.invoke(app, ["backtest", "--config", str(EXAMPLE), "--json"],
                        env=clean_env())
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["symbols"] == ["XRPUSDT"]
    assert report["bars"] > 30_000
    assert report["trades"], "the example trades"
    # A backtest never uses the venue the config names, and says so in one line.
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1
    assert "binance-testnet" in notes[0]
    assert "fills locally" in notes[0]

    paper = runner.invoke(app, ["run", "--config", str(EXAMPLE), "--max-bars", "5"],
                          env=clean_env())
    assert paper.exit_code == 0, paper.output
    assert "run without --live replays history and fills locally" in paper.stderr
