"""``quantum-trader``: the front door for every job.

One module per command group; ``common`` holds what they share (consoles, options, the
error boundary, output checks, the time format). This module only assembles them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated

import typer

from quantum_trader.cli import (
    optimize,
    parity,
    reports,
    research,
    services,
    strategies,
    trading,
)
from quantum_trader.cli.backup import backup_app, restore
from quantum_trader.cli.common import ErrorBoundaryGroup, console
from quantum_trader.cli.exchange import data_app, exchange_app
from quantum_trader.cli.state import state_app
from quantum_trader.cli.tokens import token_app

app = typer.Typer(name="quantum-trader", cls=ErrorBoundaryGroup, no_args_is_help=True,
                  help="Quantum Trader: AI-driven crypto futures trading with a risk gate "
                       "in front of the exchange.")


def _version() -> str:
    try:
        return package_version("quantum-trader")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        console.print(f"quantum-trader {_version()}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option(
        "--debug", help="On an unexpected error, print the traceback")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit")] = False,
) -> None:
    """Quantum Trader: AI-driven crypto futures trading with a risk gate in front of the
    exchange."""
    ctx.obj = {"debug": debug}


trading.register(app)
reports.register(app)
strategies.register(app)
parity.register(app)
research.register(app)
optimize.register(app)
services.register(app)
app.add_typer(backup_app, name="backup")
app.command("restore")(restore)
app.add_typer(exchange_app, name="exchange-sim")
app.add_typer(data_app, name="data")
app.add_typer(token_app, name="token")
app.add_typer(state_app, name="state")


def main() -> None:  # the console script
    app()


__all__ = ["app", "main"]
