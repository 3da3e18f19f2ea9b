"""Stored backtest runs end to end: the HTML report of a two-symbol backtest in a real
Chromium (charts drawn, no console errors, nothing fetched, one marker per entry and exit),
result.json against the ``--json`` output, ``--json`` writing no chart, ``backtest-compare``
and ``reports``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quantum_trader.analytics.performance import PerformanceReport
from quantum_trader.analytics.runs import RUN_ID, data_fingerprint
from quantum_trader.marketdata.sample import resolve_source

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
SRC = Path(__file__).resolve().parents[2] / "src"


def qt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]),
               COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "quantum_trader", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def two_symbols(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One two-symbol backtest, ``--json --report``: its directory and its stdout JSON."""
    cwd = tmp_path_factory.mktemp("two")
    res = qt("backtest", "--data", "sample:BTC", "--data", "sample:ETH", "--json", "--report",
             cwd=cwd)
    assert res.returncode == 0, res.stderr
    return cwd, json.loads(res.stdout)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: make test runs scripts/ensure-chromium.sh")
        pytest.skip(f"{CHROMIUM} is missing (bash scripts/ensure-chromium.sh)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_the_two_symbol_report_renders_in_chromium(two_symbols: tuple[Path, dict[str, Any]],
                                                   browser: Any) -> None:
    cwd, out = two_symbols
    html = cwd / out["html_report"]
    assert html == cwd / out["run_dir"] / "report.html"
    assert html.is_file()
    trades = out["report"]["trades"]
    assert trades == len(out["trades"]) > 0

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html.resolve().as_uri())
    for plot in ("qt-price", "qt-exits", "qt-durations"):
        page.wait_for_selector(f"#{plot}[data-rendered=true] .main-svg", timeout=30_000)
    assert problems == []
    assert requests
    assert all(u.startswith("file://") for u in requests), requests

    # One drawn marker per entry and one per exit, on the panel of the trade's symbol.
    drawn = page.evaluate("""() => {
        const count = (uid) => document.querySelectorAll(`g.trace${uid} path.point`).length;
        return Object.fromEntries(['BTCUSDT', 'ETHUSDT'].flatMap(s => [
            [`entries-${s}`, count(`entries-${s}`)], [`exits-${s}`, count(`exits-${s}`)]]));
    }""")
    per_pair = {p["symbol"]: p["trades"] for p in out["pairs"]}
    for sym, n in per_pair.items():
        assert drawn[f"entries-{sym}"] == drawn[f"exits-{sym}"] == n, (sym, drawn)
    assert sum(v for k, v in drawn.items() if k.startswith("entries")) == trades
    # Both candle panels, equity and drawdown are drawn.
    assert page.evaluate("document.querySelectorAll('#qt-price g.trace.boxes').length") == 2
    assert page.evaluate(
        "['equity', 'drawdown'].every(u => document.querySelector(`g.trace${u} path.js-line`))")
    # Each halt is marked: a line and a label.
    halts = len(out["state_changes"])
    assert page.evaluate(
        "document.getElementById('qt-price').layout.shapes.length") == halts
    assert page.locator("#qt-price .annotation-text", has_text="HALTED").count() == halts
    # Hovering a marker tells the trade.
    box = page.locator("g.traceentries-BTCUSDT path.point").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#qt-price .hoverlayer .hovertext", timeout=5_000)
    assert "BTCUSDT" in page.evaluate(
        "document.querySelector('#qt-price .hoverlayer').textContent")
    # Zooming the time axis fits the price axes to what is in view.
    before = page.evaluate("document.getElementById('qt-price')._fullLayout.yaxis.range")
    page.evaluate("Plotly.relayout('qt-price', {'xaxis.range': ['2018-06-01', '2018-06-20']})")
    page.wait_for_function(
        f"document.getElementById('qt-price')._fullLayout.yaxis.range[1] < {before[1]} * 0.9")
    assert problems == []
    # The tables a trader reads.
    text = page.inner_text("main")
    for heading in ("Monthly returns", "Exits by reason", "How long trades were held",
                    "Best 5 trades", "Worst 5 trades", "Per pair", "Trading state"):
        assert heading in text
    assert "shown as" in page.inner_text("#downsampling")
    page.close()


def test_result_json_is_the_json_output_and_more(two_symbols: tuple[Path, dict[str, Any]]
                                                 ) -> None:
    cwd, out = two_symbols
    run_dir = cwd / out["run_dir"]
    assert RUN_ID.match(out["run_id"])
    assert run_dir.name == out["run_id"]
    assert run_dir.parent == cwd / "reports"
    stored = json.loads((run_dir / "result.json").read_text())
    assert {k: stored[k] for k in out} == out
    assert set(stored) - set(out) == {"format", "saved", "config", "data", "code"}
    assert stored["config"]["strategy"]["fast"] == 12
    assert "secrets" not in stored["config"]
    assert "paths" not in stored["config"]
    series = [resolve_source(s) for s in ("sample:BTC", "sample:ETH")]
    assert stored["data"]["sha256"] == data_fingerprint(series)["sha256"]
    assert stored["data"]["specs"] == ["sample:BTC", "sample:ETH"]
    assert stored["code"]["quantum_trader"]
    rep = PerformanceReport.from_dict(stored["report"])
    assert rep.to_dict() == out["report"]
    assert rep.trades == len(stored["trades"])
    months = stored["analysis"]["monthly_returns"]
    product = 1.0
    for m in months:
        product *= 1 + m["ret"]
    assert product == pytest.approx(1 + rep.total_return)
    assert sum(r["trades"] for r in stored["analysis"]["exit_reasons"]) == rep.trades
    # --json without --chart drew no chart.
    assert out["chart"] is None
    assert sorted(p.name for p in run_dir.iterdir()) == ["report.html", "result.json"]


def test_json_writes_no_chart_unless_asked(tmp_path: Path) -> None:
    res = qt("backtest", "--data", "sample:XRP", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["chart"] is None
    assert out["html_report"] is None
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == [f"reports/{out['run_id']}/result.json"]
    res = qt("backtest", "--data", "sample:XRP", "--json", "--chart", "eq.png", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out2 = json.loads(res.stdout)
    assert out2["chart"] == "eq.png"
    assert (tmp_path / "eq.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / out2["run_dir"]).iterdir()) == ["result.json"]


def test_a_table_run_stores_report_chart_and_result_and_says_where(tmp_path: Path) -> None:
    res = qt("backtest", "--data", "sample:XRP", "--trades", "0", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("Run ")
    assert " saved in reports/" in last
    run_id = last.split()[1]
    assert last.endswith(f"reports/{run_id}/ (equity.png, report.html, result.json)")
    run_dir = tmp_path / "reports" / run_id
    assert (run_dir / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert json.loads((run_dir / "result.json").read_text())["chart"] == str(
        Path("reports") / run_id / "equity.png")
    res = qt("backtest", "--data", "sample:XRP", "--no-report", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("(equity.png, result.json)")


def test_compare_two_runs_side_by_side(tmp_path: Path) -> None:
    ids = []
    for fast in (5, 12):
        (tmp_path / f"fast{fast}.yaml").write_text(
            f"strategy:\n  kind: ema_cross\n  fast: {fast}\n")
        res = qt("backtest", "--data", "sample:XRP", "--config", f"fast{fast}.yaml", "--json",
                 cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        ids.append(json.loads(res.stdout)["run_id"])
    assert ids[0] != ids[1]
    assert ids[0].split("-")[1] != ids[1].split("-")[1]

    res = qt("backtest-compare", *ids, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    cmp = json.loads(res.stdout)
    assert [r["run_id"] for r in cmp["runs"]] == ids
    assert cmp["config_differences"] == {"strategy.fast": [5, 12]}
    a, b = (r["report"] for r in cmp["runs"])
    assert a["trades"] != b["trades"]
    assert a["total_return"] != b["total_return"]

    table = qt("backtest-compare", *ids, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    for run_id in ids:  # a column each, its header the id's time over its hash
        time_part, hash_part = run_id.split("-", 1)
        assert time_part in table.stdout
        assert hash_part in table.stdout
    def cells(label: str) -> list[str]:
        row = next(ln for ln in table.stdout.splitlines() if ln.startswith(f"│ {label} "))
        return [c.strip() for c in row.strip().strip("│").split("│")]

    assert cells("config: strategy.fast") == ["config: strategy.fast", "5", "12"]
    assert cells("Trades") == ["Trades", f"{a['trades']:,}", f"{b['trades']:,}"]
    # By directory and by a unique start of the id, too.
    assert qt("backtest-compare", f"reports/{ids[0]}", ids[1][:20], "--json",
              cwd=tmp_path).returncode == 0

    listed = qt("reports", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [r["run_id"] for r in json.loads(listed.stdout)] == ids[::-1]  # newest first
    text = qt("reports", cwd=tmp_path)
    assert text.returncode == 0
    assert all(i in text.stdout for i in ids)

    missing = qt("backtest-compare", ids[0], "20990101T000000Z-deadbeef", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "error: no run '20990101T000000Z-deadbeef' in reports (`quantum-trader reports` "
        "lists the stored runs; a path to a run's directory works too)"]


def test_reports_with_no_runs_says_so(tmp_path: Path) -> None:
    res = qt("reports", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "No stored runs in reports yet" in res.stdout
    assert json.loads(qt("reports", "--json", cwd=tmp_path).stdout) == []
    assert not (tmp_path / "reports").exists()
