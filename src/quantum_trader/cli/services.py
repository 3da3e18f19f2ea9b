"""Distributed mode and its plumbing: ``serve``, ``up``, ``status``, ``config``, ``db``."""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from typing import Annotated

import typer

from quantum_trader.analytics.tables import FitColumn, FittedTable
from quantum_trader.cli.common import (
    EXIT_NO,
    ConfigOpt,
    ErrorBoundaryGroup,
    JsonOpt,
    UserError,
    check_writable_dir,
    console,
    err,
    settings,
    stdout_json,
)
from quantum_trader.config import SERVICE_NAMES

db_app = typer.Typer(cls=ErrorBoundaryGroup, no_args_is_help=True, help="Database migrations.")

PortOpt = Annotated[int | None, typer.Option(min=1, max=65_535,
                                             help="HTTP port (default from config)")]


def check_port_free(host: str, port: int, what: str) -> None:
    """Refuse before starting rather than crash (or crash-loop) on a port in use."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"{what}: port {port} on {host} is already in use (another "
                                "process listens there: stop it, or choose another port)"
                                ) from None
            raise UserError(f"{what}: cannot listen on {host}:{port}: {exc.strerror}") from None


def serve(
    service: Annotated[str, typer.Argument(help=" | ".join(SERVICE_NAMES))],
    config: ConfigOpt = None,
    port: PortOpt = None,
) -> None:
    """Run one service: its bus consumers and its HTTP app (/health, /ready, /metrics)."""
    from quantum_trader.observability.logging import configure_logging
    from quantum_trader.services.runner import build_service, run_process

    if service not in SERVICE_NAMES:
        raise UserError(f"service {service!r}: use one of {', '.join(SERVICE_NAMES)}")
    cfg = settings(config)
    listen = port or cfg.services.ports[service]
    check_port_free(cfg.services.host, listen, "--port" if port else f"services.ports.{service}")
    configure_logging(json=True, service=service)
    run_process(build_service(service, cfg), cfg.services.host, listen)


def up(config: ConfigOpt = None,
       only: Annotated[list[str] | None, typer.Option(
           metavar="SERVICE", help="Start only these services (repeat)")] = None) -> None:
    """Start every service as its own process; restart crashed ones with backoff; Ctrl-C or
    SIGTERM drains them and exits."""
    from quantum_trader.runtime.launcher import Launcher
    from quantum_trader.store.migrate import upgrade

    unknown = sorted(set(only or ()) - set(SERVICE_NAMES))
    if unknown:
        raise UserError(f"--only {', '.join(unknown)}: use one of {', '.join(SERVICE_NAMES)}")
    cfg = settings(config)
    launcher = Launcher(list(only) if only else None, config)
    for name in launcher.names:
        check_port_free(cfg.services.host, cfg.services.ports[name], f"services.ports.{name}")
    upgrade(cfg.store_url())
    err.print(f"starting {', '.join(launcher.names)} (Ctrl-C to stop)")
    raise typer.Exit(asyncio.run(launcher.run()))


def status(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Every service's health as a table; exit 1 when any is not OK (table and JSON alike)."""
    from quantum_trader.services.gateway import fetch_health

    rows = asyncio.run(fetch_health(settings(config)))
    all_ok = all(r.get("status") == "OK" for r in rows)
    if as_json:
        stdout_json(json.dumps(rows, indent=2))
    else:
        table = FittedTable([FitColumn("service"), FitColumn("status"),
                             FitColumn("latency ms", "right", priority=1),
                             FitColumn("why", priority=2, wrap=True)],
                            title="Quantum Trader — service health")
        colors = {"OK": "green", "DEGRADED": "yellow", "DOWN": "red"}
        for r in rows:
            st = str(r.get("status"))
            table.add_row(str(r.get("service")), f"[{colors.get(st, 'white')}]{st}[/]",
                          str(r.get("latency_ms")), "; ".join(r.get("reasons", [])) or "-")
        console.print(table)
    if not all_ok:
        raise typer.Exit(EXIT_NO)


def show_config(config: ConfigOpt = None) -> None:
    """Validate the configuration and print it (secrets masked)."""
    stdout_json(json.dumps(settings(config).model_dump(mode="json"), indent=2))


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None,
               url: Annotated[str | None, typer.Option(help="Database URL (default from "
                                                      "config)")] = None) -> None:
    """Apply Alembic migrations up to the latest."""
    from quantum_trader.store.migrate import current_revision, upgrade
    from quantum_trader.store.urls import sqlite_file

    try:
        target = url or settings(config).store_url()
        db_file = sqlite_file(target)
    except ValueError as exc:  # sqlalchemy's ArgumentError: not a URL at all
        raise UserError(f"--url: invalid database URL ({exc})") from None
    if db_file is not None:
        check_writable_dir(db_file.parent, "--url" if url else "store")
    upgrade(target)
    console.print(f"database at revision [bold]{current_revision(target)}[/]")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(up)
    app.command()(status)
    app.command("config")(show_config)
    app.add_typer(db_app, name="db")
