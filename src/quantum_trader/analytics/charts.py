"""Equity and drawdown charts as PNG, SVG or a self-contained HTML page (inline SVG, no network).

Matplotlib is driven through ``Figure`` and the Agg canvas directly (no pyplot), so charts can be
written from any thread or server without a display and without touching global state. Curves
longer than a few thousand points are downsampled keeping each bucket's minimum and maximum, so
peaks and troughs (the drawdown's depth above all) survive while a million points plot in well
under a second.
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

PLOT_POINTS = 5_000
_SUFFIXES = (".png", ".svg", ".html", ".htm")
# None for every key drops matplotlib's RDF metadata block (creator URL, date) from the SVG.
_SVG_METADATA = ("Creator", "Date", "Format", "Type")


def minmax_indices(values: npt.NDArray[np.float64],
                   target: int = PLOT_POINTS) -> npt.NDArray[np.int64]:
    """Sorted indices of at most about ``target`` points: the first and last, and the minimum
    and maximum of each of ``target / 2`` equal buckets."""
    n = len(values)
    if n <= target:
        return np.arange(n, dtype=np.int64)
    size = -(-n // max(1, target // 2))  # ceil, so the buckets cover everything
    full = n // size
    body = values[: full * size].reshape(full, size)
    base = np.arange(full, dtype=np.int64) * size
    parts = [np.array([0, n - 1], dtype=np.int64), base + body.argmin(axis=1),
             base + body.argmax(axis=1)]
    if full * size < n:
        tail = values[full * size:]
        parts.append(np.array([full * size + tail.argmin(), full * size + tail.argmax()],
                              dtype=np.int64))
    return np.unique(np.concatenate(parts))


def drawdown_pct(equity: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Distance below the running peak in percent (0 at a peak, -25 at 25 % below)."""
    peak = np.maximum.accumulate(equity)
    return (equity / peak - 1.0) * 100.0


def write_equity_chart(path: str | os.PathLike[str], equity_ts: npt.NDArray[np.int64],
                       equity: npt.NDArray[np.float64], title: str = "Equity",
                       marks: Sequence[tuple[int, str]] = ()) -> Path:
    """Two panels (equity; drawdown filled, in %) over dates. The format follows the suffix:
    ``.png``, ``.svg`` or ``.html`` / ``.htm`` (a standalone page embedding the SVG).
    ``marks``: (epoch ms, label) drawn as vertical lines, e.g. when trading halted."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"{target}: chart files must end in {', '.join(_SUFFIXES)}")
    ts = np.asarray(equity_ts, dtype=np.int64)
    eq = np.asarray(equity, dtype=np.float64)
    if len(eq) == 0 or eq.shape != ts.shape:
        raise ValueError(f"need a non-empty equity curve with one time per point, got "
                         f"{ts.shape} times and {eq.shape} values")
    if not (eq[0] > 0 and np.isfinite(eq).all()):
        raise ValueError("equity must be finite and start positive")

    fig = _figure(ts, eq, title, marks)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        fig.savefig(target, format="png", dpi=110)
    else:
        svg = _svg(fig)
        if suffix == ".svg":
            target.write_text(svg, encoding="utf-8")
        else:
            target.write_text(_html_page(title, svg), encoding="utf-8")
    return target


def _figure(ts: npt.NDArray[np.int64], eq: npt.NDArray[np.float64], title: str,
            marks: Sequence[tuple[int, str]] = ()) -> Any:
    # Imported here: matplotlib costs a noticeable import time that most commands never need.
    import matplotlib.dates as mdates
    import matplotlib.ticker as mticker
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dd = drawdown_pct(eq)
    eq_i = minmax_indices(eq)
    dd_i = minmax_indices(dd)
    dates = ts.astype("datetime64[ms]")

    fig = Figure(figsize=(11, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_eq, ax_dd = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax_eq.plot(dates[eq_i], eq[eq_i], color="#1f5fa8", linewidth=1.1)
    ax_eq.set_ylabel("Equity")
    ax_eq.yaxis.set_major_formatter(mticker.StrMethodFormatter("{x:,.0f}"))
    ax_eq.grid(True, alpha=0.3)
    total = (eq[-1] / eq[0] - 1.0) * 100.0
    ax_eq.set_title(f"{title}\nreturn {total:+.1f}%   max drawdown {dd.min():.1f}%",
                    loc="left", fontsize=11)

    ax_dd.fill_between(dates[dd_i], dd[dd_i], 0.0, color="#c0392b", alpha=0.45, linewidth=0)
    ax_dd.plot(dates[dd_i], dd[dd_i], color="#c0392b", linewidth=0.6)
    ax_dd.set_ylabel("Drawdown")
    ax_dd.yaxis.set_major_formatter(mticker.PercentFormatter(xmax=100, decimals=0))
    ax_dd.set_ylim(top=0.0)
    ax_dd.grid(True, alpha=0.3)
    for when, label in marks:
        at = np.datetime64(int(when), "ms")
        for ax in (ax_eq, ax_dd):
            ax.axvline(at, color="#7f3fbf", linewidth=1.0, linestyle="--")
        ax_eq.annotate(label, xy=(at, 1.0), xycoords=("data", "axes fraction"),
                       xytext=(3, -12), textcoords="offset points", fontsize=8,
                       color="#7f3fbf")
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    ax_dd.xaxis.set_major_locator(locator)
    ax_dd.xaxis.set_major_formatter(
        mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    if len(dates) > 1:
        ax_dd.set_xlim(dates[0], dates[-1])
    return fig


def _svg(fig: Any) -> str:
    import matplotlib

    buf = io.StringIO()
    # Text as paths: the SVG needs no fonts; a fixed salt makes the output reproducible.
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "quantum-trader"}):
        fig.savefig(buf, format="svg", metadata=dict.fromkeys(_SVG_METADATA))
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE for inline use


def _html_page(title: str, svg: str) -> str:
    t = html.escape(title)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{t}</title>\n"
        "<style>body{font-family:system-ui,sans-serif;margin:24px;background:#fff;color:#222}"
        "svg{max-width:100%;height:auto}</style>\n</head>\n<body>\n"
        f"<h1>{t}</h1>\n{svg}\n</body>\n</html>\n"
    )
