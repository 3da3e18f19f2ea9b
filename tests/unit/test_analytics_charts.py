"""Equity charts: PNG / SVG / self-contained HTML, min-max downsampling, big curves."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from quantum_trader.analytics.charts import drawdown_pct, minmax_indices, write_equity_chart
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.marketdata.synthetic import synthetic_series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def curve(n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    s = synthetic_series(n, timeframe="1h", seed=9)
    return s.ts, 10_000.0 * s.close / s.close[0]


def test_png(tmp_path: Path) -> None:
    ts, eq = curve()
    path = write_equity_chart(tmp_path / "out" / "equity.png", ts, eq, "Test run")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000


def test_html_is_self_contained(tmp_path: Path) -> None:
    ts, eq = curve()
    path = write_equity_chart(tmp_path / "equity.html", ts, eq, "A <b>run</b>")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page
    assert "<title>A &lt;b&gt;run&lt;/b&gt;</title>" in page
    # Nothing fetched from the network: no scripts, stylesheets or remote images.
    assert "<script" not in page
    assert "<link" not in page
    assert not re.search(r"(src|href)=\"https?:", page)
    assert "<?xml" not in page
    assert "<!DOCTYPE svg" not in page


def test_svg(tmp_path: Path) -> None:
    ts, eq = curve(50)
    text = write_equity_chart(tmp_path / "e.svg", ts, eq).read_text(encoding="utf-8")
    assert text.startswith("<svg")


def test_bad_arguments(tmp_path: Path) -> None:
    ts, eq = curve(10)
    with pytest.raises(ValueError, match="must end in"):
        write_equity_chart(tmp_path / "e.jpg", ts, eq)
    with pytest.raises(ValueError, match="non-empty"):
        write_equity_chart(tmp_path / "e.png", ts[:0], eq[:0])
    with pytest.raises(ValueError, match="non-empty"):
        write_equity_chart(tmp_path / "e.png", ts, eq[:5])


def test_single_point_curve(tmp_path: Path) -> None:
    ts, eq = curve(1)
    assert write_equity_chart(tmp_path / "one.png", ts, eq).read_bytes()[:8] == PNG_MAGIC


def test_minmax_downsampling_keeps_extremes_and_ends() -> None:
    rng = np.random.default_rng(0)
    values = np.cumsum(rng.standard_normal(1_000_003))
    idx = minmax_indices(values, target=5000)
    assert len(idx) <= 5004
    assert (np.diff(idx) > 0).all()
    assert idx[0] == 0
    assert idx[-1] == len(values) - 1
    assert int(np.argmax(values)) in idx
    assert int(np.argmin(values)) in idx
    short = np.arange(10.0)
    np.testing.assert_array_equal(minmax_indices(short), np.arange(10))


def test_drawdown_pct() -> None:
    np.testing.assert_allclose(drawdown_pct(np.array([100.0, 120.0, 90.0, 130.0])),
                               [0.0, 0.0, -25.0, 0.0])


def test_a_million_points_is_quick(tmp_path: Path) -> None:
    s = synthetic_series(1_000_000, seed=1)
    started = time.perf_counter()
    write_equity_chart(tmp_path / "big.png", s.ts, s.close, "1M bars")
    write_equity_chart(tmp_path / "big.html", s.ts, s.close, "1M bars")
    assert time.perf_counter() - started < 10.0  # about 0.5 s; loose for busy CI
    assert (tmp_path / "big.html").stat().st_size < 2_000_000


def test_chart_of_the_xrp_sample(tmp_path: Path) -> None:
    s = load_sample("XRP")
    path = write_equity_chart(tmp_path / "xrp.png", s.ts, 10_000.0 * s.close / s.close[0],
                              "XRP buy and hold")
    assert path.read_bytes()[:8] == PNG_MAGIC
