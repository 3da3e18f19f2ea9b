"""``train --per-symbol``: one model per symbol (``<model>-<SYMBOL>``), each trained on its own
bars only; once promoted, each trades its own symbol and any other symbol gets the baseline
(``strategy.kind: auto``) or nothing (``model``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantum_trader.ai.per_symbol import PerSymbolSignalSource
from quantum_trader.ai.production import choose_signal_source
from quantum_trader.ai.registry import ModelRegistry
from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.runtime.backtest import run_backtest

pytestmark = pytest.mark.integration

FAST = ("ai:\n  model: {n_estimators: 40, num_leaves: 7, min_child_samples: 50}\n"
        "  walkforward: {folds: 2, min_train_bars: 2400, embargo_bars: 8}\n  chart: false\n")


def _qt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    src = Path(__file__).resolve().parents[2] / "src"
    env.update(PYTHONPATH=os.pathsep.join([str(src), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "quantum_trader", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900, env=env)


def test_one_model_per_symbol_each_trading_its_own(tmp_path: Path) -> None:
    (tmp_path / "qt.yaml").write_text(FAST)
    res = _qt("train", "-c", "qt.yaml", "--data", "sample:XRP", "--data", "sample:LTC",
              "--timerange", "2019-01-01..2019-04-01", "--per-symbol", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    manifests = json.loads(res.stdout)
    assert [(m["name"], m["data"]["symbol"]) for m in manifests] == [
        ("default-XRPUSDT", "XRPUSDT"), ("default-LTCUSDT", "LTCUSDT")]
    assert all("pooled" not in m["data"] for m in manifests)
    registry = ModelRegistry(tmp_path / "var" / "models")
    assert sorted(registry.models()) == ["default-LTCUSDT", "default-XRPUSDT"]
    table = _qt("train", "-c", "qt.yaml", "--data", "sample:XRP", "--timerange",
                "2019-01-01..2019-04-01", "--per-symbol", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "default-XRPUSDT" in table.stdout

    # Promoted (through the registry's own pointer, whatever the gate thinks of a model
    # trained on three months), the chooser routes each symbol to its model.
    for m in manifests:
        registry._set_production(m["name"], m["version"], "promote")
    cfg = Settings.model_validate({"paths": {"registry_dir": str(tmp_path / "var" / "models")}})
    source, why = choose_signal_source(cfg)
    assert isinstance(source, PerSymbolSignalSource)
    assert set(source.sources) == {"XRPUSDT", "LTCUSDT"}
    assert why.startswith("per-symbol production models default-LTCUSDT@")
    assert source.fallback is not None  # auto: the baseline for any other symbol
    bars = [load_sample(a).slice(30_000, 31_500) for a in ("XRP", "LTC", "BTC")]
    res_bt = run_backtest(bars, cfg, source)
    by_source = {t.symbol for t in res_bt.trades}
    assert by_source, "the per-symbol models and the baseline trade"
    strict = cfg.model_copy(update={"strategy": cfg.strategy.model_copy(
        update={"kind": "model"})})
    only, why_only = choose_signal_source(strict)
    assert isinstance(only, PerSymbolSignalSource)
    assert only.fallback is None
    assert "other symbols: no signals" in why_only
    btc = load_sample("BTC").slice(30_000, 31_500)
    assert all(only.on_bar(b) is None for b in btc)  # no model for BTC: no signals
