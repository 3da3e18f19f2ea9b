"""A model backtested (or paper-traded) on bars it was trained on says so loudly, and the
stored result marks it; on bars after its training window it does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantum_trader.ai.registry import ModelRegistry

pytestmark = pytest.mark.integration

FAST = ("ai:\n  model: {n_estimators: 40, num_leaves: 7, min_child_samples: 50}\n"
        "  walkforward: {folds: 2, min_train_bars: 2400, embargo_bars: 8}\n  chart: false\n")


def _qt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    src = Path(__file__).resolve().parents[2] / "src"
    env.update(PYTHONPATH=os.pathsep.join([str(src), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "quantum_trader", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900, env=env)


def test_results_on_the_training_window_are_marked_in_sample(tmp_path: Path) -> None:
    (tmp_path / "qt.yaml").write_text(FAST)
    trained = _qt("train", "-c", "qt.yaml", "--data", "sample:XRP", "--timerange",
                  "2018-01-01..2018-05-01", "--json", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    version = json.loads(trained.stdout)["version"]
    # Production through the registry's pointer: the gate's verdict is not the point here.
    ModelRegistry(tmp_path / "var" / "models")._set_production("default", version, "promote")
    inside = _qt("backtest", "-c", "qt.yaml", "--data", "sample:XRP", "--timerange",
                 "2018-03-01..2018-06-01", "--json", cwd=tmp_path)
    assert inside.returncode == 0, inside.stderr
    assert "IN-SAMPLE: XRPUSDT: " in inside.stderr
    marked = json.loads(inside.stdout)["in_sample"]
    assert len(marked) == 1
    assert marked[0].startswith("XRPUSDT: ")
    assert "2018-03-01.." in marked[0]
    run_dir = tmp_path / json.loads(inside.stdout)["run_dir"]  # relative to the cwd
    stored = json.loads((run_dir / "result.json").read_text())
    assert stored["in_sample"] == marked
    after = _qt("backtest", "-c", "qt.yaml", "--data", "sample:XRP", "--timerange",
                "2018-06-01..2018-08-01", "--json", cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    assert "IN-SAMPLE" not in after.stderr
    assert json.loads(after.stdout)["in_sample"] == []
    other = _qt("backtest", "-c", "qt.yaml", "--data", "sample:LTC", "--timerange",
                "2018-03-01..2018-04-01", "--json", cwd=tmp_path)
    assert json.loads(other.stdout)["in_sample"] == []  # trained on XRP only
    paper = _qt("run", "-c", "qt.yaml", "--data", "sample:XRP", "--max-bars", "100",
                cwd=tmp_path)
    assert paper.returncode == 0, paper.stderr
    assert "IN-SAMPLE: XRPUSDT: " in paper.stderr
