"""``backtest-compare`` (stored runs side by side) and ``reports`` (the stored runs), and how
``backtest`` stores a run (``save_run``; the layout is in ``analytics/runs.py``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.text import Text

from quantum_trader.analytics.runs import (
    CHART_FILE,
    REPORT_FILE,
    RESULT_FILE,
    RESULT_FORMAT,
    RunError,
    StoredRun,
    code_version,
    data_fingerprint,
    load_run,
    new_run_dir,
    removed_on_error,
    resolve_run,
    run_dirs,
    run_hash,
    trading_config,
    write_json_atomic,
)
from quantum_trader.analytics.tables import (
    FitColumn,
    FittedTable,
    fmt_duration,
    fmt_num,
    fmt_pct,
)
from quantum_trader.cli.common import (
    ConfigOpt,
    JsonOpt,
    UserError,
    console,
    err,
    fmt_ts,
    settings,
    stdout_json,
)
from quantum_trader.config import Settings


# --- storing a backtest --------------------------------------------------------------------------
@dataclass(frozen=True)
class SavedRun:
    run_id: str
    path: Path
    output: dict[str, Any]  # what ``backtest --json`` prints
    chart: Path | None
    html: Path | None


def backtest_output(result: Any, *, run_id: str, run_dir: Path, chart: Path | None,
                    html: Path | None) -> dict[str, Any]:
    """What ``backtest --json`` prints (and the heart of ``result.json``)."""
    from quantum_trader.analytics.performance import (
        duration_stats,
        exit_reasons,
        monthly_returns,
        yearly_returns,
    )
    from quantum_trader.cli.trading import trade_dict

    return {
        "source": result.source, "symbols": result.symbols, "timeframe": result.timeframe,
        "bars": result.bars, "elapsed_s": round(result.elapsed_s, 4),
        "bars_per_second": round(result.bars_per_second), "orders": result.orders,
        "signals": result.signals, "rejections": result.rejections,
        "run_id": run_id, "run_dir": str(run_dir),
        "chart": None if chart is None else str(chart),
        "html_report": None if html is None else str(html),
        "report": result.report.to_dict(),
        "pairs": [p.to_dict() for p in result.pairs],
        "basket_buy_and_hold": result.basket_buy_and_hold,
        "state_changes": [{"time": fmt_ts(a.ts), **a.detail} for a in result.state_changes],
        "analysis": {
            "monthly_returns": [m.to_dict() for m in
                                monthly_returns(result.equity_ts, result.equity)],
            "yearly_returns": [y.to_dict() for y in
                               yearly_returns(result.equity_ts, result.equity)],
            "exit_reasons": [s.to_dict() for s in exit_reasons(result.trades)],
            "durations": duration_stats(result.trades).to_dict(),
        },
        "trades": [trade_dict(t) for t in result.trades]}


def save_run(cfg: Settings, specs: Sequence[str], series: Sequence[Any], result: Any, *,
             chart: Path | None, marks: Sequence[tuple[int, str]], png: bool,
             html: bool, in_sample: Sequence[str] = ()) -> SavedRun:
    """Store ``result`` as ``<reports_dir>/<run-id>/``: the chart (``equity.png`` when
    ``png``; ``chart`` when given, wherever it is), the HTML report when ``html``, and
    ``result.json`` last. A failure removes the half-written directory."""
    from quantum_trader.analytics.charts import write_equity_chart
    from quantum_trader.analytics.report_html import ReportInput, write_report_html

    fingerprint = data_fingerprint(series)
    config = trading_config(cfg.model_dump(mode="json"))
    code = code_version()
    run_id, run_dir = new_run_dir(cfg.paths.reports_dir, datetime.now(UTC),
                                  run_hash(fingerprint["sha256"], config, result.source))
    name = "-".join(result.symbols)
    title = f"{result.source} on {name} {result.timeframe}"
    with removed_on_error(run_dir):
        charts = ([run_dir / CHART_FILE] if png else []) + ([chart] if chart else [])
        for path in charts:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_equity_chart(path, result.equity_ts, result.equity, title, marks=marks)
        html_path = run_dir / REPORT_FILE if html else None
        meta = {"run_id": run_id, "source": result.source, "code": code,
                "data": fingerprint, "config": config}
        if in_sample:
            meta["IN-SAMPLE"] = list(in_sample)
        if html_path is not None:
            write_report_html(html_path, ReportInput(
                title=f"Backtest — {title}", series=series, trades=result.trades,
                equity_ts=result.equity_ts, equity=result.equity, report=result.report,
                pairs=result.pairs if len(result.pairs) > 1 else (),
                basket_buy_and_hold=result.basket_buy_and_hold,
                state_changes=result.state_changes, rejections=result.rejections, meta=meta))
        output = backtest_output(result, run_id=run_id, run_dir=run_dir,
                                 chart=chart or (charts[0] if charts else None), html=html_path)
        output["in_sample"] = list(in_sample)  # a model judged on bars it was trained on
        stored = {"format": RESULT_FORMAT, **output,
                  "saved": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "data": {"specs": list(specs), **fingerprint}, "config": config,
                  "code": code}
        write_json_atomic(run_dir / RESULT_FILE, stored)
    return SavedRun(run_id, run_dir, output, output["chart"] and Path(output["chart"]),
                    html_path)


# --- reading runs --------------------------------------------------------------------------------
def _reports_dir(cfg: Settings) -> Path:
    """The reports directory, for reading: missing is fine (no runs yet), a file is not."""
    path = cfg.paths.reports_dir
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    if p.exists() and not p.is_dir():
        raise UserError(f"reports directory (paths.reports_dir) {path}: {p} is a file, not a "
                        "directory")
    return path


def _report_of(run: StoredRun) -> Any:
    from quantum_trader.analytics.performance import PerformanceReport

    try:
        return PerformanceReport.from_dict(run.report)
    except (TypeError, ValueError) as exc:
        raise RunError(f"{run.path / RESULT_FILE}: {exc}") from None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def config_differences(runs: Sequence[StoredRun]) -> dict[str, list[Any]]:
    """Each config key whose value is not the same in every run (None where a run lacks it)."""
    flat = [_flatten(r.result.get("config") or {}) for r in runs]
    keys = sorted(set().union(*flat))
    values = {k: [f.get(k) for f in flat] for k in keys}
    return {k: v for k, v in values.items() if len({repr(x) for x in v}) > 1}


def _id_header(run_id: str) -> str:
    # Two lines (time, hash) so that three or four runs fit an 80-column terminal.
    return run_id.replace("-", "\n", 1)


@dataclass(frozen=True)
class _Metric:
    label: str
    get: Callable[[Any], float | int | None]  # from the PerformanceReport
    fmt: Callable[[Any], str]
    better: int  # +1 higher is better, -1 lower is better, 0 neither


def _pct_signed(v: float | None) -> str:
    return fmt_pct(v, signed=True)


_METRICS = (
    _Metric("Total return", lambda r: r.total_return, _pct_signed, 1),
    _Metric("CAGR", lambda r: r.cagr, _pct_signed, 1),
    _Metric("Sharpe", lambda r: r.sharpe, fmt_num, 1),
    _Metric("Sortino", lambda r: r.sortino, fmt_num, 1),
    _Metric("Volatility", lambda r: r.annual_volatility, fmt_pct, 0),
    _Metric("Max drawdown", lambda r: r.max_drawdown, lambda v: fmt_pct(-v), -1),
    _Metric("Max DD duration", lambda r: r.max_drawdown_duration_ms,
            lambda v: fmt_duration(int(v)), -1),
    _Metric("Trades", lambda r: r.trades, lambda v: f"{v:,}", 0),
    _Metric("Win rate", lambda r: r.win_rate, lambda v: fmt_pct(v, 1), 1),
    _Metric("Profit factor", lambda r: r.profit_factor, fmt_num, 1),
    _Metric("Average trade", lambda r: r.avg_trade, fmt_num, 1),
    _Metric("Exposure", lambda r: r.exposure, lambda v: fmt_pct(v, 1), 0),
    _Metric("Fees paid", lambda r: r.fees_paid, fmt_num, -1),
    _Metric("Funding paid", lambda r: r.funding_paid, fmt_num, -1),
    _Metric("Final equity", lambda r: r.final_equity, fmt_num, 1),
)


def _best(values: list[float | int | None], better: int) -> set[int]:
    """Which columns hold the best value of a row (none when all are equal or undefined)."""
    real = [(i, float(v)) for i, v in enumerate(values)
            if v is not None and not math.isnan(float(v))]
    if better == 0 or len({v for _, v in real}) < 2:
        return set()
    top = max(v * better for _, v in real)
    return {i for i, v in real if v * better == top}


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "—" if value is None else str(value)


def backtest_compare(
    runs: Annotated[list[str], typer.Argument(
        metavar="RUN...", help="Run ids (or a unique start of one), or runs' directories; "
                               "`quantum-trader reports` lists them", show_default=False)],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stored backtest runs side by side: their figures, and the settings that differ."""
    if len(runs) < 2:
        raise UserError(f"backtest-compare {' '.join(runs)}: give at least two runs to "
                        "compare (`quantum-trader reports` lists them)")
    cfg = settings(config)
    where = _reports_dir(cfg)
    stored = [resolve_run(ref, where) for ref in runs]
    reports = [_report_of(r) for r in stored]
    diffs = config_differences(stored)
    if as_json:
        import json

        stdout_json(json.dumps({
            "runs": [{"run_id": s.run_id, "path": str(s.path),
                      "saved": s.result.get("saved"), "source": s.result.get("source"),
                      "symbols": s.result.get("symbols"),
                      "timeframe": s.result.get("timeframe"), "bars": s.result.get("bars"),
                      "data_sha256": (s.result.get("data") or {}).get("sha256"),
                      "report": r.to_dict(),
                      "basket_buy_and_hold": s.result.get("basket_buy_and_hold"),
                      "halts": len(s.result.get("state_changes") or [])}
                     for s, r in zip(stored, reports, strict=True)],
            "config_differences": diffs}, indent=2))
        return
    table = FittedTable([FitColumn("Metric", wrap=True, wrap_min=14),
                         *(FitColumn(_id_header(s.run_id), "right") for s in stored)],
                        title=f"{len(stored)} backtest runs", caption="best of each row in "
                        "bold; config: only the settings that differ")

    def info(label: str, get: Callable[[StoredRun], Any]) -> None:
        table.add_row(label, *(Text(_short(get(s))) for s in stored))

    info("Source", lambda s: s.result.get("source"))
    info("Symbols", lambda s: ",".join(str(x).removesuffix("USDT")
                                       for x in s.result.get("symbols") or []))
    info("Timeframe", lambda s: s.result.get("timeframe"))
    info("Bars", lambda s: f"{s.result.get('bars', 0):,}")
    info("From", lambda s: fmt_ts(s.report.get("start_ts"))[:10])
    info("To", lambda s: fmt_ts(s.report.get("end_ts"))[:10])
    info("Data", lambda s: str((s.result.get("data") or {}).get("sha256", "—"))[:8])
    for key, values in diffs.items():
        table.add_row(f"config: {key}", *(Text(_short(v), style="yellow") for v in values))
    for m in _METRICS:
        values = [m.get(r) for r in reports]
        best = _best(values, m.better)
        table.add_row(m.label, *(Text("—" if v is None else m.fmt(v),
                                      style="bold green" if i in best else "")
                                 for i, v in enumerate(values)))
    basket = [s.result.get("basket_buy_and_hold") for s in stored]
    table.add_row("Buy & hold (basket)", *(Text(_pct_signed(b if isinstance(b, float | int)
                                                            else None)) for b in basket))
    table.add_row("Halts", *(Text(str(len(s.result.get("state_changes") or [])))
                             for s in stored))
    console.print(table)


def reports(
    config: ConfigOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="How many (newest first)")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """The stored backtest runs in paths.reports_dir, newest first (reads only)."""
    cfg = settings(config)
    where = _reports_dir(cfg)
    dirs = run_dirs(where)
    rows: list[tuple[StoredRun, Any]] = []
    for d in dirs[:limit]:
        try:
            run = load_run(d)
            rows.append((run, _report_of(run)))
        except RunError as exc:
            err.print(f"[yellow]note:[/] skipped {escape(str(exc))}", soft_wrap=True)
    if as_json:
        import json

        stdout_json(json.dumps([{
            "run_id": s.run_id, "path": str(s.path), "saved": s.result.get("saved"),
            "source": s.result.get("source"), "symbols": s.result.get("symbols"),
            "timeframe": s.result.get("timeframe"), "bars": s.result.get("bars"),
            "total_return": r.total_return, "sharpe": r.sharpe,
            "max_drawdown": r.max_drawdown, "trades": r.trades,
            "html_report": str(s.file(REPORT_FILE)) if s.file(REPORT_FILE) else None}
            for s, r in rows], indent=2))
        return
    if not dirs:
        console.print(f"No stored runs in {where} yet: `quantum-trader backtest` stores one "
                      "per run.")
        return
    caption = f"{len(rows)} of {len(dirs)} runs in {where}" if len(dirs) > limit else \
        f"in {where}; compare with `quantum-trader backtest-compare RUN RUN`"
    table = FittedTable([
        FitColumn("Run"), FitColumn("Source", priority=2, wrap=True, wrap_min=10),
        FitColumn("Symbols", wrap=True, wrap_min=8), FitColumn("TF", priority=1),
        FitColumn("Bars", "right", priority=3), FitColumn("Return", "right"),
        FitColumn("Sharpe", "right", priority=1), FitColumn("Max DD", "right", priority=1),
        FitColumn("Trades", "right", priority=2), FitColumn("Report", priority=4)],
        title="Stored backtest runs", caption=caption)
    for s, r in rows:
        table.add_row(
            Text(s.run_id), Text(str(s.result.get("source", "—"))),
            Text(" ".join(str(x).removesuffix("USDT") for x in s.result.get("symbols") or [])),
            Text(str(s.result.get("timeframe", "—"))), f"{s.result.get('bars', 0):,}",
            Text(fmt_pct(r.total_return, signed=True),
                 style="green" if r.total_return > 0 else "red" if r.total_return < 0 else ""),
            fmt_num(r.sharpe), fmt_pct(-r.max_drawdown), f"{r.trades:,}",
            REPORT_FILE if s.file(REPORT_FILE) else "—")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("backtest-compare")(backtest_compare)
    app.command("reports")(reports)
