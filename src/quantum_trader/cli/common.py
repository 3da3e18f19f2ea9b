"""What every command group shares: the consoles, the common options, settings loading,
checks of what a command will write (made before the work starts), one time format, and the
error boundary.

The error boundary is the model of how a command fails (``ErrorBoundaryGroup``):

- an *expected* failure (bad input, bad config, a file that cannot be read or written, a
  store or venue that refuses) is one line ``error: …`` on stderr naming the input, exit 2;
- an *unexpected* one (a bug) is one line naming the exception and a hint to rerun with
  ``--debug``, which prints the traceback instead; also exit 2;
- exit 1 is kept for answers that are "no" (a service not OK, a promotion refused, a restore
  drill that fails), the same in table and JSON output.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer._click import exceptions as click_errors  # typer 0.29 vendors its own click
from typer._click.core import Context
from typer.core import TyperGroup, TyperOption

from quantum_trader.analytics.tables import fmt_time as fmt_time  # the one time format
from quantum_trader.analytics.tables import fmt_ts as fmt_ts
from quantum_trader.config import EnvPrefixWarning, Settings, load_settings

console = Console()
err = Console(stderr=True, highlight=False)

EXIT_NO = 1  # the command worked and the answer is "no"
EXIT_ERROR = 2  # the command could not do what was asked


class UserError(ValueError):
    """An input the command refuses; the message names the input and what to do instead."""


# --- common options -------------------------------------------------------------------------------
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="YAML config file (default: ./quantum-trader.yaml or $QTRADER_CONFIG)")]
DataOpt = Annotated[list[str] | None, typer.Option(
    "--data", "-d", metavar="SPEC",
    help="FILE (CSV/parquet) or sample:XRP|BTC|ETH|EOS|LTC; repeat for more symbols")]
StateDirOpt = Annotated[Path | None, typer.Option(
    help="Where the SQLite store lives (default: paths.state_dir)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def settings(config: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    """The settings, with each deprecation (an old ``QT_`` variable) as one ``note:`` line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EnvPrefixWarning)
        loaded = load_settings(config, overrides=overrides)
    for w in caught:
        if issubclass(w.category, EnvPrefixWarning):
            err.print(f"[yellow]note:[/] {escape(str(w.message))}", soft_wrap=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return loaded


def state_overrides(state_dir: Path | None) -> dict[str, Any] | None:
    return {"paths.state_dir": str(state_dir)} if state_dir is not None else None


# --- what a command writes, checked before it works -----------------------------------------------
def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(directory: Path) -> bool:
    """Whether a file can be created in ``directory`` (tried, not guessed: root ignores
    permission bits and read-only mounts ignore them too)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".qt-probe-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def check_writable_dir(path: Path, what: str) -> Path:
    """``path`` is, or can be made, a directory we can write in. Creates nothing."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path}: exists and is not a directory")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise UserError(f"{what} {path}: {base} is a file, not a directory")
    if not _probe_writable(base):
        raise UserError(f"{what} {path}: {base} is not writable")
    return path


def check_writable_file(path: Path, what: str, suffixes: Iterable[str] = ()) -> Path:
    """``path`` can be (over)written as a file with one of ``suffixes``. Creates nothing."""
    allowed = tuple(suffixes)
    if allowed and path.suffix.lower() not in allowed:
        raise UserError(f"{what} {path}: use a {' or '.join(allowed)} file")
    if path.is_dir():
        raise UserError(f"{what} {path}: is a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path}: not writable")
    check_writable_dir(path.parent, what)
    return path


# --- progress -------------------------------------------------------------------------------------
@contextmanager
def holding_state_dir(state: Path, what_to_do: str) -> Iterator[None]:
    """Hold the state directory (one run per store) for the block; a second one is told who
    holds it and ``what_to_do``."""
    from quantum_trader.runtime.state_lock import StateDirInUse, StateDirLock

    try:
        with StateDirLock(state):  # only entering can raise StateDirInUse
            yield
    except StateDirInUse as exc:
        raise UserError(f"{exc}: {what_to_do}") from None


def account_rows(table: Any, summary: Any, state_events: list[Any]) -> None:
    """The rows every embedded run's summary ends with (paper and dry run alike): trades,
    positions, equity, drawdown, the trading state with its time and reason, rejections."""
    s = summary
    table.add_row("trades closed (this run)", f"{s.trades_closed:,}")
    table.add_row("open positions", ", ".join(
        f"{p.symbol} {p.qty:+g} @ {p.avg_entry:.5g}" for p in s.open_positions) or "none")
    table.add_row("equity", f"{s.equity:,.2f}")
    table.add_row("max drawdown", f"{s.max_drawdown:.2%}")
    last_change = state_events[-1] if state_events else None
    table.add_row("trading state", s.trading_state if last_change is None else
                  f"{s.trading_state} since {fmt_ts(last_change.ts)}: "
                  f"{last_change.detail.get('reason', '?')}")
    table.add_row("risk rejections", ", ".join(
        f"{k}={v}" for k, v in sorted(s.rejections.items())) or "none")


def say_if_halted(trading_state: str) -> None:
    if trading_state != "ACTIVE":
        err.print(f"[yellow]trading is {trading_state}[/]: the risk gate refuses new "
                  "entries in this account. `quantum-trader state` says why; `quantum-trader "
                  "state resume` lets it trade again, --fresh starts a new one (docs/runbook.md"
                  ", TradingHalted).", soft_wrap=True)


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, transient=False)


# --- the error boundary ---------------------------------------------------------------------------
def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` on stderr and exit."""
    # Escaped: a path or a value may hold brackets rich would read as markup, and colons it
    # would read as an emoji code (``file.py:X: no such file`` is not ``file.py❌ ...``).
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, emoji=False)
    raise typer.Exit(code)


def _expected() -> tuple[type[BaseException], ...]:
    from quantum_trader.exchange.errors import ExchangeError
    from quantum_trader.ops.errors import BackupError
    from quantum_trader.store.errors import StoreError

    # ValueError covers ConfigError, UserError, TokenError, RegistryError and DataError.
    return (ValueError, BackupError, StoreError, ExchangeError)


def _os_error_line(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        return f"{reason} (another process listens there: stop it or choose another --port)"
    return f"{where}{reason}"


def _debug(ctx: Context | None) -> bool:
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and isinstance(root.obj, dict) and root.obj.get("debug"))


def handle(exc: BaseException, debug: bool) -> NoReturn:
    """Turn an exception from a command into the one-line message and the exit code."""
    if debug:
        err.print_exception(show_locals=False)
        raise typer.Exit(EXIT_ERROR)
    if isinstance(exc, OSError):
        fail(_os_error_line(exc))
    if isinstance(exc, _expected()):
        fail(" ".join(str(exc).split()) if isinstance(exc, UserError) else str(exc))
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    fail(f"unexpected {type(exc).__name__}{': ' + first if first else ''} "
         "(rerun with --debug for the traceback, and please report it)")


def _usage(exc: click_errors.UsageError) -> NoReturn:
    """click's usage errors (unknown option, value out of range, missing argument) as one
    line that names the input and where the help is."""
    path = exc.ctx.command_path if exc.ctx is not None else "quantum-trader"
    fail(f"{exc.format_message()} (see `{path} --help`)")


class ErrorBoundaryGroup(TyperGroup):
    """The root group and every command group: a failure below it goes through ``handle``
    (the innermost group handles it; the groups above see only the exit)."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: Context | None = None, **extra: Any) -> Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click_errors.NoArgsIsHelpError:
            raise
        except click_errors.UsageError as exc:  # the root's own options, or no such command
            _usage(exc)

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except click_errors.NoArgsIsHelpError:
            raise
        except click_errors.UsageError as exc:
            _usage(exc)
        except (typer.Exit, typer.Abort, click_errors.ClickException):
            raise
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:  # the boundary: nothing reaches the user as a traceback
            handle(exc, _debug(ctx))


def _flag_display_type(original: Callable[[TyperOption, Context], str | None]
                       ) -> Callable[[TyperOption, Context], str | None]:
    def display(self: TyperOption, ctx: Context) -> str | None:
        return None if self.is_flag else original(self, ctx)
    return display


# typer 0.29 shows every flag as `--json <bool>` in help, which invites `--json true`
# (refused as an extra argument): a flag takes no value, so its help shows none.
TyperOption.display_type_rich = _flag_display_type(  # type: ignore[method-assign,assignment]
    TyperOption.display_type_rich)


def stdout_json(text: str) -> None:
    sys.stdout.write(text + "\n")
