"""``quantum-trader``: the front door for every job."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from quantum_trader.cli_exchange import data_app, exchange_app
from quantum_trader.cli_ops import backup_app
from quantum_trader.cli_ops import restore as restore_cmd
from quantum_trader.cli_security import token_app
from quantum_trader.config import ConfigError, Settings, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Quantum Trader: AI-driven crypto futures trading with a risk gate "
                       "in front of the exchange.")
db_app = typer.Typer(no_args_is_help=True, help="Database migrations.")
app.add_typer(db_app, name="db")
app.add_typer(backup_app, name="backup")
app.add_typer(exchange_app, name="exchange-sim")
app.add_typer(data_app, name="data")
app.add_typer(token_app, name="token")
app.command("restore")(restore_cmd)
console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="YAML config file (default: $QTRADER_CONFIG or ./quantum-trader.yaml)")]
DataOpt = Annotated[str | None, typer.Option("--data", "-d", help="FILE (CSV/parquet) or "
                                             "sample:XRP|BTC|ETH|EOS|LTC; repeat for more")]


@contextmanager
def _friendly_errors() -> Iterator[None]:
    from quantum_trader.marketdata.files import DataError
    from quantum_trader.store.errors import StoreError

    try:
        yield
    except (ConfigError, DataError, StoreError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _settings(config: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    return load_settings(config, overrides=overrides)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, transient=False)


def _load_series(specs: list[str], timeframe: str | None) -> list[Any]:
    from quantum_trader.marketdata.sample import resolve_source

    return [resolve_source(spec, timeframe=timeframe) for spec in specs]


def _fmt_ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


# --- backtest -------------------------------------------------------------------------------------
@app.command()
def backtest(
    data: Annotated[list[str] | None, typer.Option("--data", "-d", help="FILE (CSV/parquet) or "
                                                   "sample:XRP; repeat for more symbols")] = None,
    timeframe: Annotated[str | None, typer.Option(help="Timeframe of FILE data "
                                                  "(inferred if omitted)")] = None,
    config: ConfigOpt = None,
    chart: Annotated[Path | None, typer.Option(help="Equity/drawdown chart (.png or .html); "
                                               "default reports/backtest-<data>.png")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    trades_shown: Annotated[int, typer.Option("--trades", help="Trades to list")] = 20,
) -> None:
    """Backtest on historical bars: simulated clock, simulated exchange, full risk gate."""
    from quantum_trader.analytics.charts import write_equity_chart
    from quantum_trader.analytics.tables import report_table, trades_table
    from quantum_trader.runtime.backtest import run_backtest

    with _friendly_errors():
        settings = _settings(config)
        specs = data or [settings.data.source]
        series = _load_series(specs, timeframe)
        total = sum(len(s) for s in series)
        source = _signal_source(settings, quiet=as_json)
        if as_json:
            result = run_backtest(series, settings, source)
        else:
            with _progress() as prog:
                task = prog.add_task("backtest", total=total, rate="")
                result = run_backtest(series, settings, source,
                                      progress=lambda n: prog.update(task, advance=n))
        name = "-".join(s.symbol for s in series)
        chart_path = chart or settings.paths.reports_dir / f"backtest-{name}.png"
        chart_path.parent.mkdir(parents=True, exist_ok=True)
        write_equity_chart(chart_path, result.equity_ts, result.equity,
                           f"{result.source} on {name} {result.timeframe}")
        if as_json:
            out = {"source": result.source, "symbols": result.symbols,
                   "timeframe": result.timeframe, "bars": result.bars,
                   "elapsed_s": round(result.elapsed_s, 4),
                   "bars_per_second": round(result.bars_per_second),
                   "orders": result.orders, "signals": result.signals,
                   "rejections": result.rejections, "chart": str(chart_path),
                   "report": result.report.to_dict(),
                   "trades": [_trade_dict(t) for t in result.trades]}
            sys.stdout.write(json.dumps(out, indent=2) + "\n")
            return
        console.print(report_table(result.report, title=f"Backtest — {result.source} on {name} "
                                                         f"{result.timeframe}"))
        console.print(trades_table(result.trades[-trades_shown:],
                                   title=f"Last {min(trades_shown, len(result.trades))} of "
                                         f"{len(result.trades)} trades"))
        if result.rejections:
            console.print("Risk rejections: " + ", ".join(
                f"{k}={v}" for k, v in sorted(result.rejections.items())))
        console.print(f"{result.bars:,} bars in {result.elapsed_s:.2f}s "
                      f"({result.bars_per_second:,.0f} bars/s). Chart: {chart_path}")


def _trade_dict(t: Any) -> dict[str, Any]:
    return {"symbol": t.symbol, "side": t.side.value, "quantity": t.quantity,
            "entry_price": t.entry_price, "exit_price": t.exit_price,
            "opened": _fmt_ts(t.opened_ts), "closed": _fmt_ts(t.closed_ts),
            "net_pnl": round(t.net_pnl, 6), "fees": round(t.fees, 6),
            "funding": round(t.funding, 6), "exit_reason": t.exit_reason}


def _signal_source(settings: Settings, quiet: bool = False) -> Any:
    """The configured signal source; says which on stderr."""
    from quantum_trader.ai.production import choose_signal_source

    source, why = choose_signal_source(settings)
    if not quiet:
        err.print(f"signal source: {why}")
    return source


# --- run (paper, embedded) --------------------------------------------------------------------
@app.command()
def run(
    data: DataOpt = None,
    config: ConfigOpt = None,
    state_dir: Annotated[Path | None, typer.Option(help="Where the SQLite store lives")] = None,
    max_bars: Annotated[int | None, typer.Option(help="Stop after this many bars")] = None,
    speed: Annotated[float | None, typer.Option(help="Bars per second (default: as fast as "
                                                "possible)")] = None,
    fresh: Annotated[bool, typer.Option(help="Delete the store first instead of "
                                        "resuming")] = False,
) -> None:
    """Paper trading on real historical bars, embedded: one process, in-memory bus, SQLite.
    Re-running resumes where the last run stopped."""
    from quantum_trader.runtime.paper import run_paper
    from quantum_trader.store.sql import SqlTradeStore

    with _friendly_errors():
        overrides = {"paths.state_dir": str(state_dir)} if state_dir else None
        settings = _settings(config, overrides)
        series = _load_series([data or settings.data.source], None)
        url = settings.store_url()
        if fresh and url.startswith("sqlite"):
            db = Path(url.split("///", 1)[1])
            for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                p.unlink(missing_ok=True)
        source = _signal_source(settings)

        async def go() -> Any:
            store = SqlTradeStore(url, create=True)
            await store.open()
            try:
                with _progress() as prog:
                    task = prog.add_task("paper trading", total=None, rate="")
                    summary = await run_paper(settings, series, store, source,
                                              progress=lambda n: prog.update(task, advance=n),
                                              max_bars=max_bars, bars_per_second=speed)
                    prog.update(task, total=summary.bars_processed + summary.bars_skipped)
                counts = await store.counts()
            finally:
                await store.close()
            return summary, counts

        summary, counts = asyncio.run(go())
        table = Table(title="Paper trading — summary", show_header=False)
        table.add_column(style="bold")
        table.add_column(justify="right")
        table.add_row("store", url.split("///")[-1])
        table.add_row("resumed from checkpoint", "yes" if summary.resumed else "no")
        table.add_row("bars processed", f"{summary.bars_processed:,}")
        table.add_row("signals", f"{summary.signals:,}")
        table.add_row("trades closed (this run)", f"{summary.trades_closed:,}")
        table.add_row("open positions", ", ".join(
            f"{p.symbol} {p.qty:+g} @ {p.avg_entry:.5g}" for p in summary.open_positions) or "none")
        table.add_row("equity", f"{summary.equity:,.2f}")
        table.add_row("max drawdown", f"{summary.max_drawdown:.2%}")
        table.add_row("trading state", summary.trading_state)
        table.add_row("risk rejections", ", ".join(
            f"{k}={v}" for k, v in sorted(summary.rejections.items())) or "none")
        table.add_row("rows in store", ", ".join(f"{k}={v}" for k, v in counts.items()))
        console.print(table)


# --- trades ---------------------------------------------------------------------------------------
@app.command()
def trades(
    config: ConfigOpt = None,
    state_dir: Annotated[Path | None, typer.Option(help="Where the SQLite store lives")] = None,
    limit: Annotated[int, typer.Option(help="How many (newest first)")] = 50,
    symbol: Annotated[str | None, typer.Option(help="Only this symbol")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List closed trades from the store."""
    from quantum_trader.analytics.tables import trades_table
    from quantum_trader.store.sql import SqlTradeStore

    with _friendly_errors():
        overrides = {"paths.state_dir": str(state_dir)} if state_dir else None
        settings = _settings(config, overrides)

        async def go() -> Any:
            store = SqlTradeStore(settings.store_url())
            await store.open()
            try:
                return await store.trades(limit=limit, symbol=symbol)
            finally:
                await store.close()

        rows = asyncio.run(go())
        if as_json:
            sys.stdout.write(json.dumps([_trade_dict(t) for t in rows], indent=2) + "\n")
            return
        console.print(trades_table(rows, title=f"{len(rows)} most recent trades"))


# --- db -------------------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None,
               url: Annotated[str | None, typer.Option(help="Database URL (default from "
                                                      "config)")] = None) -> None:
    """Apply Alembic migrations up to the latest."""
    from quantum_trader.store.migrate import current_revision, upgrade

    with _friendly_errors():
        target = url or _settings(config).store_url()
        upgrade(target)
        console.print(f"database at revision [bold]{current_revision(target)}[/]")


@app.command("config")
def show_config(config: ConfigOpt = None) -> None:
    """Validate the configuration and print it (secrets masked)."""
    with _friendly_errors():
        settings = _settings(config)
        sys.stdout.write(json.dumps(settings.model_dump(mode="json"), indent=2) + "\n")

# --- AI: train, model registry --------------------------------------------------------------------
models_app = typer.Typer(no_args_is_help=True,
                         help="Model registry: list, show, promote (through the gate), rollback.")
app.add_typer(models_app, name="models")

ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Registry model name "
                                              "(default: ai.model_name)")]


def _ai_settings(settings: Settings, **changes: Any) -> Any:
    """``settings.ai`` with CLI overrides applied and validated."""
    ai = settings.ai
    raw = ai.model_dump()
    for dotted, value in changes.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
    return type(ai).model_validate(raw)


def _registry(settings: Settings) -> Any:
    from quantum_trader.ai.production import registry_for

    return registry_for(settings)


@app.command()
def train(
    data: DataOpt = None,
    timeframe: Annotated[str | None, typer.Option(help="Timeframe of FILE data "
                                                  "(sample data is 30m)")] = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    kind: Annotated[str | None, typer.Option(help="lightgbm (default) or logistic")] = None,
    folds: Annotated[int | None, typer.Option(help="Walk-forward test folds")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same model)")] = None,
    promote: Annotated[bool, typer.Option(help="Promote to production if it passes the "
                                          "promotion gate")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON")] = False,
) -> None:
    """Walk-forward train a model, check it for leakage, and store it in the registry."""
    from quantum_trader.ai.registry import PromotionRefused
    from quantum_trader.ai.training import train as train_model

    with _friendly_errors():
        settings = _settings(config)
        ai = _ai_settings(settings, model_name=model, seed=seed, **{"model.kind": kind,
                                                                   "walkforward.folds": folds})
        spec = data or settings.data.source
        tf = timeframe or (None if data else settings.data.timeframe)
        series = _load_series([spec], tf)[0]
        registry = _registry(settings)
        err.print(f"training [bold]{ai.model_name}[/] ({ai.model.kind}) on {series.symbol} "
                  f"{series.timeframe}: {len(series):,} bars → {registry.root}")
        report = train_model(series, settings, ai, registry,
                             progress=lambda msg: err.print(f"[dim]  {msg}[/]"))
        if as_json:
            sys.stdout.write(json.dumps(report.manifest, indent=2) + "\n")
        else:
            console.print(report.render())
            if report.chart_path is not None:
                console.print(f"chart: {report.chart_path}")
        if promote:
            try:
                registry.promote(report.version, ai.model_name)
            except PromotionRefused as exc:
                err.print(f"[bold yellow]not promoted:[/] {exc}")
                raise typer.Exit(1) from None
            err.print(f"[bold green]promoted[/] {ai.model_name}@{report.version} to production")


@models_app.command("list")
def models_list(config: ConfigOpt = None, model: ModelOpt = None,
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every stored version (production marked with *)."""
    import dataclasses

    with _friendly_errors():
        registry = _registry(_settings(config))
        infos = registry.list_versions(model)
        if as_json:
            sys.stdout.write(json.dumps([dataclasses.asdict(i) for i in infos], indent=2) + "\n")
            return
        table = Table(title=f"models in {registry.root}")
        for col in ("", "model", "version", "created", "kind", "OOS AUC", "OOS Sharpe",
                    "manifest hash"):
            table.add_column(col)
        for i in infos:
            table.add_row("*" if i.production else "", i.name, i.version, i.created_at, i.kind,
                          "-" if i.auc is None else f"{i.auc:.4f}",
                          "-" if i.sharpe is None else f"{i.sharpe:.2f}",
                          i.manifest_hash[:12])
        console.print(table)


@models_app.command("show")
def models_show(version: Annotated[str | None, typer.Argument(help="Version (default: "
                                                              "production)")] = None,
                config: ConfigOpt = None, model: ModelOpt = None) -> None:
    """A version's manifest (hashes verified), and what the promotion gate says about it."""
    from quantum_trader.ai.registry import gate_reasons

    with _friendly_errors():
        settings = _settings(config)
        name = _ai_settings(settings, model_name=model).model_name
        registry = _registry(settings)
        manifest = registry.show(name, version)
        registry.verify(name, str(manifest["version"]))
        sys.stdout.write(json.dumps(manifest, indent=2) + "\n")
        reasons = gate_reasons(manifest, registry.gate)
        err.print("promotion gate: " + ("[green]passes[/]" if not reasons
                                         else "[yellow]refuses[/] — " + "; ".join(reasons)))


@models_app.command("promote")
def models_promote(version: Annotated[str, typer.Argument(help="Version to make production")],
                   config: ConfigOpt = None, model: ModelOpt = None) -> None:
    """Make a version production, if it passes the promotion gate."""
    from quantum_trader.ai.registry import PromotionRefused

    with _friendly_errors():
        settings = _settings(config)
        name = _ai_settings(settings, model_name=model).model_name
        try:
            _registry(settings).promote(version, name)
        except PromotionRefused as exc:
            err.print("[bold yellow]promotion refused:[/]")
            for reason in exc.reasons:
                err.print(f"  - {reason}")
            raise typer.Exit(1) from None
        console.print(f"{name}@{version} is now production")


@models_app.command("rollback")
def models_rollback(config: ConfigOpt = None, model: ModelOpt = None) -> None:
    """Back to the version that was production before the current one."""
    with _friendly_errors():
        settings = _settings(config)
        name = _ai_settings(settings, model_name=model).model_name
        previous = _registry(settings).rollback(name)
        console.print(f"{name}: production rolled back to {previous}")


# --- distributed mode -----------------------------------------------------------------------------
@app.command()
def serve(
    service: Annotated[str, typer.Argument(help="gateway | ai-engine | risk-safety | "
                                           "execution | exit-brain | market-data")],
    config: ConfigOpt = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default from config)")] = None,
) -> None:
    """Run one service: its bus consumers and its HTTP app (/health, /ready, /metrics)."""
    from quantum_trader.observability.logging import configure_logging
    from quantum_trader.services.runner import build_service, run_process

    with _friendly_errors():
        settings = _settings(config)
        configure_logging(json=True, service=service)
        svc = build_service(service, settings)
        run_process(svc, settings.services.host, port or settings.services.ports[service])


@app.command()
def up(config: ConfigOpt = None,
       only: Annotated[list[str] | None, typer.Option(help="Start only these services")] = None,
       ) -> None:
    """Start every service as its own process; restart crashed ones with backoff; Ctrl-C or
    SIGTERM drains them and exits."""
    from quantum_trader.runtime.launcher import Launcher

    with _friendly_errors():
        settings = _settings(config)
        from quantum_trader.store.migrate import upgrade

        upgrade(settings.store_url())
        launcher = Launcher(list(only) if only else None, config)
        err.print(f"starting {', '.join(launcher.names)} (Ctrl-C to stop)")
        raise typer.Exit(asyncio.run(launcher.run()))


@app.command()
def status(config: ConfigOpt = None,
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every service's health as a table."""
    from quantum_trader.services.gateway import fetch_health

    with _friendly_errors():
        settings = _settings(config)
        rows = asyncio.run(fetch_health(settings))
        if as_json:
            sys.stdout.write(json.dumps(rows, indent=2) + "\n")
            return
        table = Table(title="Quantum Trader — service health")
        for col in ("service", "status", "latency ms", "why"):
            table.add_column(col)
        colors = {"OK": "green", "DEGRADED": "yellow", "DOWN": "red"}
        for r in rows:
            st = str(r.get("status"))
            table.add_row(str(r.get("service")), f"[{colors.get(st, 'white')}]{st}[/]",
                          str(r.get("latency_ms")), "; ".join(r.get("reasons", [])) or "-")
        console.print(table)
        if any(r.get("status") != "OK" for r in rows):
            raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    app()
