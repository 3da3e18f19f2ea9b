"""CSV / parquet import: accepted formats, and a clear error (file, row, column) for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantum_trader.marketdata.files import (
    DataError,
    load_file,
    load_file_with_quality,
    write_csv,
    write_parquet,
)
from quantum_trader.marketdata.synthetic import synthetic_series

T0 = 1_577_836_800_000  # 2020-01-01T00:00Z
MIN = 60_000
HEADER = "timestamp,open,high,low,close,volume"
GOOD_ROWS = [
    f"{T0},100,101,99,100.5,10",
    f"{T0 + MIN},100.5,102,100,101,12",
    f"{T0 + 2 * MIN},101,101.5,100.2,100.8,8",
    f"{T0 + 3 * MIN},100.8,101,100,100.1,9.5",
]


def write(tmp_path: Path, lines: list[str], name: str = "btcusdt_1m.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- accepted input --------------------------------------------------------------------------


def test_epoch_ms_csv(tmp_path: Path) -> None:
    s = load_file(write(tmp_path, [HEADER, *GOOD_ROWS]))
    assert s.symbol == "BTCUSDT"  # from the file name
    assert s.timeframe == "1m"  # from the median spacing
    assert s.ts.tolist() == [T0 + i * MIN for i in range(4)]
    assert s.close.tolist() == [100.5, 101.0, 100.8, 100.1]
    assert s.high.dtype == np.float64
    assert s.ts.dtype == np.int64


def test_epoch_seconds_are_detected(tmp_path: Path) -> None:
    rows = [f"{(T0 + i * 3_600_000) // 1000},1,2,0.5,1.5,3" for i in range(3)]
    s = load_file(write(tmp_path, ["time,open,high,low,close,volume", *rows]))
    assert s.ts.tolist() == [T0, T0 + 3_600_000, T0 + 7_200_000]
    assert s.timeframe == "1h"


def test_iso_dates_and_case_insensitive_columns(tmp_path: Path) -> None:
    lines = ["Date,Open,HIGH,low,Close,Volume",
             "2020-01-01,1,2,0.5,1.5,3", "2020-01-02,1.5,2,1,1.8,4", "2020-01-03,1.8,2,1,1.2,5"]
    s = load_file(write(tmp_path, lines, "eth.csv"), symbol="ETHUSDT")
    assert s.symbol == "ETHUSDT"
    assert s.timeframe == "1d"
    assert s.ts.tolist() == [T0, T0 + 86_400_000, T0 + 2 * 86_400_000]


def test_iso_datetimes_with_offsets_become_utc(tmp_path: Path) -> None:
    lines = ["open_time,open,high,low,close,volume",
             "2020-01-01T00:00:00Z,1,2,0.5,1.5,3",
             "2020-01-01T02:15:00+02:00,1,2,0.5,1.5,3",  # 00:15 UTC
             "2020-01-01 00:30:00,1,2,0.5,1.5,3"]  # naive means UTC
    s = load_file(write(tmp_path, lines))
    assert s.ts.tolist() == [T0, T0 + 15 * MIN, T0 + 30 * MIN]
    assert s.timeframe == "15m"


def test_prefixed_columns_in_any_order(tmp_path: Path) -> None:
    lines = ["Date,XRP.open,XRP.close,XRP.high,XRP.low,XRP.volume",
             "2017-10-01 00:00:00,0.19995,0.2006,0.2006,0.1996,16558.2",
             "2017-10-01 00:30:00,0.2006,0.20145,0.2022,0.20033,281237.3"]
    s = load_file(write(tmp_path, lines, "XRP.csv"), symbol="XRPUSDT")
    assert s.high.tolist() == [0.2006, 0.2022]
    assert s.close.tolist() == [0.2006, 0.20145]
    assert s.timeframe == "30m"


def test_csv_round_trip_is_exact(tmp_path: Path) -> None:
    src = synthetic_series(500, symbol="SOLUSDT", timeframe="5m", seed=3)
    back = load_file(write_csv(src, tmp_path / "SOLUSDT-5m.csv"))
    assert back.symbol == "SOLUSDT"
    assert back.timeframe == "5m"
    for col in ("ts", "open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(back, col), getattr(src, col))


def test_parquet_round_trip_keeps_symbol_and_timeframe(tmp_path: Path) -> None:
    src = synthetic_series(300, symbol="ADAUSDT", timeframe="4h", seed=4)
    path = write_parquet(src, tmp_path / "anything.parquet")
    assert path.read_bytes()[:4] == b"PAR1"
    back = load_file(path)
    assert (back.symbol, back.timeframe) == ("ADAUSDT", "4h")
    np.testing.assert_array_equal(back.ts, src.ts)
    np.testing.assert_array_equal(back.close, src.close)


def test_parquet_with_datetime_column(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "Timestamp": pd.date_range("2020-01-01", periods=5, freq="15min", tz="UTC"),
        "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 3.0,
    })
    path = tmp_path / "dot.parquet"
    frame.to_parquet(path)
    s = load_file(path, symbol="DOTUSDT")
    assert s.ts.tolist() == [T0 + i * 15 * MIN for i in range(5)]
    assert s.timeframe == "15m"


def test_blank_lines_are_skipped_and_gaps_reported(tmp_path: Path) -> None:
    lines = [HEADER, GOOD_ROWS[0], "", GOOD_ROWS[1], GOOD_ROWS[2], f"{T0 + 6 * MIN},1,2,0.5,1.5,3"]
    s, q = load_file_with_quality(write(tmp_path, lines))
    assert len(s) == 4
    assert s.timeframe == "1m"
    assert q.rows_read == 4
    assert q.rows_loaded == 4
    assert [(g.after_ts, g.next_ts, g.missing_bars) for g in q.gaps] == [
        (T0 + 2 * MIN, T0 + 6 * MIN, 3)]


def test_exact_duplicates_dropped_only_when_asked(tmp_path: Path) -> None:
    path = write(tmp_path, [HEADER, GOOD_ROWS[0], GOOD_ROWS[1], GOOD_ROWS[1], GOOD_ROWS[2]])
    with pytest.raises(DataError, match="row 4, column 'timestamp': duplicate timestamp"):
        load_file(path)
    s, q = load_file_with_quality(path, drop_exact_duplicates=True)
    assert len(s) == 3
    assert q.exact_duplicates_dropped == 1
    assert q.rows_read == 4


def test_conflicting_duplicate_is_an_error_even_when_dropping_duplicates(tmp_path: Path) -> None:
    clash = GOOD_ROWS[1].replace(",12", ",13")
    path = write(tmp_path, [HEADER, GOOD_ROWS[0], GOOD_ROWS[1], clash])
    with pytest.raises(DataError, match="row 4, column 'timestamp': duplicate timestamp"):
        load_file_with_quality(path, drop_exact_duplicates=True)


# --- rejected input --------------------------------------------------------------------------

# (replacement for data row 3, i.e. file row 4; column named in the error; message fragment)
BAD_ROWS = [
    (f"{T0 + 2 * MIN},101,abc,100.2,100.8,8", "high", "cannot parse 'abc' as a number"),
    (f"{T0 + 2 * MIN},101,101.5,100.2,,8", "close", "missing or NaN value"),
    (f"{T0 + 2 * MIN},NaN,101.5,100.2,100.8,8", "open", "missing or NaN value"),
    (f"{T0 + 2 * MIN},101,inf,100.2,100.8,8", "high", "inf is not a finite number"),
    (f"{T0 + 2 * MIN},0,101.5,100.2,100.8,8", "open", "price must be positive, got 0.0"),
    (f"{T0 + 2 * MIN},101,101.5,-1,100.8,8", "low", "price must be positive, got -1.0"),
    (f"{T0 + 2 * MIN},101,99,100.2,100.8,8", "high", "high 99.0 is below low 100.2"),
    (f"{T0 + 2 * MIN},101,100.9,100.2,100.8,8", "high", "high 100.9 is below open/close 101.0"),
    (f"{T0 + 2 * MIN},101,101.5,100.9,100.8,8", "low", "low 100.9 is above open/close 100.8"),
    (f"{T0 + 2 * MIN},101,101.5,100.2,100.8,-8", "volume", "volume must not be negative"),
    (f"{T0 + MIN},101,101.5,100.2,100.8,8", "timestamp", "duplicate timestamp"),
    (f"{T0 - MIN},101,101.5,100.2,100.8,8", "timestamp", "is before the previous row's"),
    ("yesterday,101,101.5,100.2,100.8,8", "timestamp", "cannot parse 'yesterday'"),
    (",101,101.5,100.2,100.8,8", "timestamp", "missing timestamp"),
    (f"{T0 * 1000},101,101.5,100.2,100.8,8", "timestamp", "outside 1990..2100"),
]


@pytest.mark.parametrize(("row", "column", "fragment"), BAD_ROWS,
                         ids=[f[2][:30] for f in BAD_ROWS])
def test_bad_csv_row_names_file_row_and_column(tmp_path: Path, row: str, column: str,
                                               fragment: str) -> None:
    rows = [*GOOD_ROWS]
    rows[2] = row
    path = write(tmp_path, [HEADER, *rows])
    with pytest.raises(DataError) as info:
        load_file(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: row 4, column '{column}': ")
    assert fragment in msg
    assert (info.value.row, info.value.column, info.value.path) == (4, column, str(path))


def test_row_numbers_count_blank_lines_as_the_file_shows_them(tmp_path: Path) -> None:
    path = write(tmp_path, [HEADER, GOOD_ROWS[0], "", "", GOOD_ROWS[1].replace(",12", ",-1")])
    with pytest.raises(DataError, match="row 5, column 'volume'"):
        load_file(path)


def test_first_bad_row_is_reported_and_the_rest_counted(tmp_path: Path) -> None:
    rows = [GOOD_ROWS[0], GOOD_ROWS[1].replace("102", "x"), GOOD_ROWS[2].replace(",8", ",-8")]
    with pytest.raises(DataError, match=r"row 3, column 'high'.*\(1 more problem in this file\)"):
        load_file(write(tmp_path, [HEADER, *rows]))


def test_missing_columns_are_listed(tmp_path: Path) -> None:
    path = write(tmp_path, ["timestamp,open,high,close", f"{T0},1,2,1.5"])
    with pytest.raises(DataError, match=r"missing column\(s\): low, volume; the file has: "
                                        "timestamp, open, high, close") as info:
        load_file(path)
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match=r"missing column\(s\): timestamp \(or date"):
        load_file(write(tmp_path, ["open,high,low,close,volume", "1,2,0.5,1.5,3"]))


def test_unknown_spacing_needs_an_explicit_timeframe(tmp_path: Path) -> None:
    rows = [f"{T0 + i * 45_000},1,2,0.5,1.5,3" for i in range(4)]
    path = write(tmp_path, [HEADER, *rows])
    with pytest.raises(DataError, match="median bar spacing is 45000 ms"):
        load_file(path)


def test_bars_closer_than_the_given_timeframe_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, [HEADER, *GOOD_ROWS])
    assert load_file(path, timeframe="1m").timeframe == "1m"
    with pytest.raises(DataError, match="the bars are 1m apart, not 5m"):
        load_file(path, timeframe="5m")
    with pytest.raises(DataError, match="unknown timeframe '7m'"):
        load_file(path, timeframe="7m")


def test_bad_parquet_row_is_numbered_from_one(tmp_path: Path) -> None:
    frame = pd.DataFrame({"timestamp": [T0, T0 + MIN, T0 + 2 * MIN],
                          "open": [1.0, 1.0, 1.0], "high": [2.0, 2.0, 2.0],
                          "low": [0.5, 0.5, 0.5], "close": [1.5, np.nan, 1.5],
                          "volume": [1.0, 1.0, 1.0]})
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    with pytest.raises(DataError, match=r"bad\.parquet: row 2, column 'close': missing or NaN"):
        load_file(path)


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("empty.csv", "", "the file is empty"),
    ("header.csv", HEADER + "\n", "no data rows"),
    ("ragged.csv", f"{HEADER}\n{GOOD_ROWS[0]},7,8\n", "row 2 has more fields than the header"),
    ("ragged2.csv", f"{HEADER}\n{GOOD_ROWS[0]}\n{GOOD_ROWS[1]},7\n", "Expected 6 fields in line 3"),
    ("data.xlsx", "{}", "unknown file type"),
    ("data.json", "{}", "not a JSON klines file: expected a list of rows"),
    ("rows.json", "[[1, 2]]", r"JSON rows must be \[time, open, high, low, close, volume\]"),
    ("mixed.json", '[[1, 2, 3, 4, 5, 6], {"a": 1}]', "rows must all be lists or all be objects"),
    ("broken.json", "[[1, 2", "not a JSON klines file"),
    ("junk.feather", "not arrow", "cannot read feather file"),
    ("junk.parquet", "not parquet", "cannot read parquet file"),
])
def test_unreadable_files(tmp_path: Path, name: str, content: str, fragment: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=fragment):
        load_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_file(tmp_path / "gone.csv")


def test_timestamp_column_preferred_over_date(tmp_path: Path) -> None:
    lines = ["date,timestamp,open,high,low,close,volume",
             *(f"1999-01-01,{T0 + i * MIN},1,2,0.5,1.5,3" for i in range(3))]
    assert load_file(write(tmp_path, lines)).ts[0] == T0


def test_ambiguous_columns_are_an_error(tmp_path: Path) -> None:
    lines = ["timestamp,open,A.open,high,low,close,volume", f"{T0},1,1,2,0.5,1.5,3"]
    with pytest.raises(DataError, match="all look like 'open'"):
        load_file(write(tmp_path, lines))
