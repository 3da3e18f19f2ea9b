"""A halted embedded account is shown (state, why, when, every change) and resumed by an
operator: audited, confirmed, refused while a run holds the store, and the next run trades."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantum_trader.runtime.state_lock import StateDirLock

pytestmark = pytest.mark.integration


def _qt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    src = Path(__file__).resolve().parents[2] / "src"
    env.update(PYTHONPATH=os.pathsep.join([str(src), env.get("PYTHONPATH", "")]),
               COLUMNS="160")
    return subprocess.run([sys.executable, "-m", "quantum_trader", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env,
                          stdin=subprocess.DEVNULL)


def test_a_halt_is_shown_and_resumed_by_an_operator(tmp_path: Path) -> None:
    (tmp_path / "qt.yaml").write_text("risk:\n  max_drawdown: 0.05\n")
    first = _qt("run", "-c", "qt.yaml", "--max-bars", "8000", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    shown = _qt("state", "-c", "qt.yaml", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    halted = json.loads(shown.stdout)
    assert halted["state"] == "HALTED"
    assert halted["reason"].startswith("max drawdown breached")
    assert [(h["from"], h["to"], h["by"]) for h in halted["history"]] == [
        ("ACTIVE", "HALTED", "risk gate")]
    assert halted["drawdown"] >= 0.05
    table = _qt("state", "-c", "qt.yaml", cwd=tmp_path)
    assert "HALTED since " + halted["since"] in table.stdout

    unconfirmed = _qt("state", "resume", "-c", "qt.yaml", cwd=tmp_path)
    assert unconfirmed.returncode == 2
    assert "--yes" in unconfirmed.stderr
    with StateDirLock(tmp_path / "var"):  # a run holds the store: refused, nothing written
        busy = _qt("state", "resume", "-c", "qt.yaml", "--yes", cwd=tmp_path)
    assert busy.returncode == 2
    assert "in use by another run" in busy.stderr
    assert json.loads(_qt("state", "-c", "qt.yaml", "--json", cwd=tmp_path).stdout) == halted

    resumed = _qt("state", "resume", "-c", "qt.yaml", "--yes", "--reason", "limits reviewed",
                  "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    after = json.loads(resumed.stdout)
    assert after["changed"] is True
    assert after["state"] == "ACTIVE"
    assert after["history"][-1] == {"time": after["market_time"], "from": "HALTED",
                                    "to": "ACTIVE", "reason": "limits reviewed",
                                    "by": "operator (state resume)"}
    assert after["drawdown"] == 0.0  # measured from the equity at the resume
    assert after["peak_equity"] == pytest.approx(halted["equity"])
    again = _qt("state", "resume", "-c", "qt.yaml", "--yes", "--json", cwd=tmp_path)
    assert json.loads(again.stdout)["changed"] is False

    before = json.loads(_qt("trades", "-c", "qt.yaml", "--json", "--limit", "10000",
                            cwd=tmp_path).stdout)
    later = _qt("run", "-c", "qt.yaml", "--max-bars", "3000", cwd=tmp_path)
    assert later.returncode == 0, later.stderr
    trades = json.loads(_qt("trades", "-c", "qt.yaml", "--json", "--limit", "10000",
                            cwd=tmp_path).stdout)
    opened_after = [t for t in trades if t["opened"] > after["market_time"]]
    assert len(trades) > len(before)
    assert opened_after, "the resumed account opens new entries"


def test_keep_peak_keeps_the_drawdown_measure(tmp_path: Path) -> None:
    (tmp_path / "qt.yaml").write_text("risk:\n  max_drawdown: 0.05\n")
    assert _qt("run", "-c", "qt.yaml", "--max-bars", "8000", cwd=tmp_path).returncode == 0
    halted = json.loads(_qt("state", "-c", "qt.yaml", "--json", cwd=tmp_path).stdout)
    kept = json.loads(_qt("state", "resume", "-c", "qt.yaml", "--yes", "--keep-peak",
                          "--json", cwd=tmp_path).stdout)
    assert kept["state"] == "ACTIVE"
    assert kept["peak_equity"] == halted["peak_equity"]
    assert kept["drawdown"] == pytest.approx(halted["drawdown"])
