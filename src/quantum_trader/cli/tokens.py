"""``token create|list|revoke``: API tokens.

The token is printed once, to stdout alone (so ``$(...)`` or a
redirect into a secrets file captures exactly it); only its hash is kept.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from quantum_trader.analytics.tables import FitColumn, FittedTable
from quantum_trader.cli.common import (
    ConfigOpt,
    ErrorBoundaryGroup,
    console,
    err,
    fmt_time,
    settings,
)
from quantum_trader.security.tokens import TokenStore

token_app = typer.Typer(cls=ErrorBoundaryGroup, no_args_is_help=True,
                        help="API tokens: create (shown once), list, revoke.")
FileOpt = Annotated[Path | None, typer.Option(
    "--tokens-file", help="Token file (default: security.tokens_file or <state_dir>/tokens.json)")]


def _store(config: Path | None, tokens_file: Path | None) -> TokenStore:
    if tokens_file is not None:
        return TokenStore(tokens_file)
    cfg = settings(config)
    return TokenStore(cfg.security.tokens_path(cfg.paths.state_dir))


@token_app.command("create")
def create(name: Annotated[str, typer.Option("--name", "-n", help="Who or what uses it")],
           scope: Annotated[list[str], typer.Option(
               "--scope", "-s", help="read | trade | admin (repeatable; admin includes trade, "
                                     "trade includes read)")],
           config: ConfigOpt = None, tokens_file: FileOpt = None) -> None:
    """Create a token and print it once; store only its hash."""
    store = _store(config, tokens_file)
    token, record = store.create(name, scope)
    sys.stdout.write(token + "\n")
    err.print(f"created token {record.id} ({record.name}, scopes: {', '.join(record.scopes)}) "
              f"in {store.path}. It is shown only now: store it in a secrets file.")


@token_app.command("list")
def list_tokens(config: ConfigOpt = None, tokens_file: FileOpt = None,
                show_revoked: Annotated[bool, typer.Option("--all",
                                                           help="Include revoked")] = False,
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Tokens by id, name, scopes and dates (never the token or its hash)."""
    store = _store(config, tokens_file)
    records = [r for r in store.records() if show_revoked or r.active]
    rows = [{"id": r.id, "name": r.name, "scopes": list(r.scopes),
             "created_at": fmt_time(r.created_at), "revoked_at": fmt_time(r.revoked_at)}
            for r in records]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = FittedTable([FitColumn("id"), FitColumn("name"), FitColumn("scopes", priority=1),
                         FitColumn("created", priority=2), FitColumn("revoked", priority=1)],
                        title=f"API tokens ({store.path})")
    for row in rows:
        table.add_row(str(row["id"]), str(row["name"]), ", ".join(row["scopes"]),
                      str(row["created_at"]), str(row["revoked_at"]))
    console.print(table)


@token_app.command("revoke")
def revoke(token: Annotated[str, typer.Argument(help="Token id or name")],
           config: ConfigOpt = None, tokens_file: FileOpt = None) -> None:
    """Revoke a token: every service refuses it from its next request on."""
    store = _store(config, tokens_file)
    record = store.revoke(token)
    err.print(f"revoked token {record.id} ({record.name})")
