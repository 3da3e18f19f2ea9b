"""The symbol of a data file is explicit or read right: Freqtrade's names, ``FILE@SYMBOL``, and
a note when a symbol's exchange filters are not known (its sizes would be rounded to generic
steps: the same BTC bars as ``btc.csv`` and as ``BTCUSDT-30m.csv`` gave 337 and 290 trades)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantum_trader.config import Settings
from quantum_trader.marketdata.files import symbol_from_name
from quantum_trader.marketdata.sample import load_sample, resolve_source
from quantum_trader.runtime.backtest import run_backtest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("name", "symbol"), [
    ("XRP_USDT_USDT-30m-futures.parquet", "XRPUSDT"),
    ("BTC_USDT-5m.feather", "BTCUSDT"),
    ("ETH_USDT_USDT-1h-mark.parquet", "ETHUSDT"),
    ("BTCUSDT-30m.csv", "BTCUSDT"),
    ("btcusdt_1m.csv", "BTCUSDT"),
    ("btc.csv", "BTC"),
])
def test_symbol_from_a_file_name(name: str, symbol: str) -> None:
    assert symbol_from_name(name) == symbol


def _csv(path: Path, n: int = 6000) -> Path:
    s = load_sample("BTC").slice(0, n)
    rows = np.column_stack([s.ts, s.open, s.high, s.low, s.close, s.volume])
    np.savetxt(path, rows, delimiter=",", header="timestamp,open,high,low,close,volume",
               comments="", fmt=["%d", "%.10g", "%.10g", "%.10g", "%.10g", "%.10g"])
    return path


def test_the_same_bars_under_the_same_symbol_trade_the_same(tmp_path: Path) -> None:
    named = resolve_source(str(_csv(tmp_path / "BTCUSDT-30m.csv")))
    bare = resolve_source(str(_csv(tmp_path / "btc.csv")))
    told = resolve_source(f"{tmp_path / 'btc.csv'}@BTCUSDT")
    freqtrade = resolve_source(str(_csv(tmp_path / "BTC_USDT_USDT-30m-futures.csv")))
    assert (named.symbol, bare.symbol, told.symbol, freqtrade.symbol) == (
        "BTCUSDT", "BTC", "BTCUSDT", "BTCUSDT")
    settings = Settings()
    trades = {k: [(t.opened_ts, t.quantity) for t in run_backtest([s], settings).trades]
              for k, s in (("named", named), ("told", told), ("freqtrade", freqtrade))}
    assert trades["named"] == trades["told"] == trades["freqtrade"]
    assert trades["named"]


def test_a_symbol_without_known_filters_is_named_on_stderr(tmp_path: Path) -> None:
    _csv(tmp_path / "btc.csv", 800)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    src = Path(__file__).resolve().parents[2] / "src"
    env.update(PYTHONPATH=os.pathsep.join([str(src), env.get("PYTHONPATH", "")]),
               COLUMNS="200")
    cmd = [sys.executable, "-m", "quantum_trader", "backtest", "--json"]
    bare = subprocess.run([*cmd, "--data", "btc.csv"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    assert bare.returncode == 0, bare.stderr
    assert "btc.csv: no exchange filters known for BTC; using generic ones" in bare.stderr
    assert "btc.csv@SYMBOL" in bare.stderr
    told = subprocess.run([*cmd, "--data", "btc.csv@BTCUSDT"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert told.returncode == 0, told.stderr
    assert "no exchange filters" not in told.stderr


def test_freqtrade_feather_and_json_files_read_as_their_bars_and_symbol(tmp_path: Path) -> None:
    """Freqtrade writes feather (``date`` as UTC datetimes) by default, json (rows of
    ``[ms, o, h, l, c, v]``, optionally gzipped) on request: both read as the same bars."""
    import gzip
    import json

    import pandas as pd
    import pyarrow as pa
    import pyarrow.feather as feather

    s = load_sample("XRP").slice(0, 2000)
    frame = pd.DataFrame({"date": pd.to_datetime(s.ts, unit="ms", utc=True), "open": s.open,
                          "high": s.high, "low": s.low, "close": s.close, "volume": s.volume})
    feather.write_feather(pa.Table.from_pandas(frame, preserve_index=False),
                          tmp_path / "XRP_USDT_USDT-30m-futures.feather")
    rows = [[int(t), o, h, lo, c, v] for t, o, h, lo, c, v in
            zip(s.ts, s.open, s.high, s.low, s.close, s.volume, strict=True)]
    (tmp_path / "XRP_USDT_USDT-30m-futures.json").write_text(json.dumps(rows))
    (tmp_path / "XRP_USDT-30m.json.gz").write_bytes(gzip.compress(json.dumps(rows).encode()))
    for name in ("XRP_USDT_USDT-30m-futures.feather", "XRP_USDT_USDT-30m-futures.json",
                 "XRP_USDT-30m.json.gz"):
        got = resolve_source(str(tmp_path / name))
        assert got.symbol == "XRPUSDT", name
        assert got.timeframe == "30m"
        assert got.ts.tolist() == s.ts.tolist(), name
        assert np.array_equal(got.close, s.close), name
    (tmp_path / "bad.json").write_text("[[1, 2, 3]]")
    with pytest.raises(ValueError, match=r"bad\.json: JSON rows must be \[time, open"):
        resolve_source(str(tmp_path / "bad.json"))
