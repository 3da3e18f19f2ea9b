"""``state``: an embedded account's trading state and its history; ``state resume``.

A halt (the drawdown breaker, a kill) is sticky: only an operator moves trading back to
ACTIVE, and that is an audited act. For an embedded store (``run``) this command is that
operator: it writes the new state into the store's checkpoint with an audit event, while no
run holds the state directory. A deployment resumes through its gateway or Telegram instead
(risk-safety owns the state there).

Resuming starts the drawdown breaker's measure again from the equity the account has now
(the peak is reset to it): with the old peak the next bar would halt it again. ``--keep-peak``
keeps the old peak, for when the limit itself was raised.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import replace
from typing import Annotated, Any

import typer

from quantum_trader.analytics.tables import FitColumn, FittedTable
from quantum_trader.cli.common import (
    ConfigOpt,
    ErrorBoundaryGroup,
    JsonOpt,
    StateDirOpt,
    UserError,
    console,
    fmt_ts,
    holding_state_dir,
    settings,
    state_overrides,
    stdout_json,
)
from quantum_trader.config import Settings

NODE = "embedded"
state_app = typer.Typer(cls=ErrorBoundaryGroup, invoke_without_command=True,
                        help="An embedded account's trading state and its history; "
                             "`state resume` moves it back to ACTIVE (audited).")


def _store_url(cfg: Settings, what: str) -> str:
    db = cfg.sqlite_path()
    if db is None:
        raise UserError(f"{what} reads an embedded store; this config uses store.url (a "
                        "deployment): see `quantum-trader status`, or the gateway's /status")
    if not db.is_file():
        raise UserError(f"no store at {db}: nothing has run in this state directory yet "
                        "(run `quantum-trader run` first, or pass --state-dir)")
    return cfg.store_url()


async def _read(url: str) -> dict[str, Any]:
    from quantum_trader.domain.enums import TradingState
    from quantum_trader.domain.portfolio import Portfolio
    from quantum_trader.store.sql import SqlTradeStore

    store = SqlTradeStore(url)
    await store.open()
    try:
        cp = await store.checkpoint(NODE)
        history = await store.audit("trading_state")
        snaps = await store.positions()
    finally:
        await store.close()
    if cp is None:
        raise UserError("the store has no checkpoint yet: a run has not finished a bar in it")
    pf = Portfolio(cp.wallet)
    pf.replace_positions([s.to_position() for s in snaps])
    for s in snaps:
        pf.mark(s.symbol, s.last_price, cp.ts)
    equity = pf.equity
    dd = 1.0 - equity / cp.peak_equity if cp.peak_equity > 0 else 0.0
    return {"checkpoint": cp, "history": history, "state": TradingState(cp.trading_state).name,
            "equity": equity, "drawdown": dd}


def _view(info: dict[str, Any]) -> dict[str, Any]:
    cp = info["checkpoint"]
    last = info["history"][-1] if info["history"] else None
    return {
        "state": info["state"],
        "since": fmt_ts(last.ts) if last is not None else None,
        "reason": last.detail.get("reason") if last is not None else None,
        "market_time": fmt_ts(cp.ts), "equity": round(info["equity"], 6),
        "peak_equity": round(cp.peak_equity, 6), "drawdown": round(info["drawdown"], 6),
        "max_drawdown": round(cp.max_drawdown, 6),
        "history": [{"time": fmt_ts(a.ts), "from": a.detail.get("from"),
                     "to": a.detail.get("to"), "reason": a.detail.get("reason"),
                     "by": a.detail.get("by", "risk gate")} for a in info["history"]],
    }


def _print(view: dict[str, Any]) -> None:
    table = FittedTable([FitColumn("what"), FitColumn("value", "right", wrap=True)],
                        title="Trading state")
    table.add_row("state", view["state"] if view["since"] is None else
                  f"{view['state']} since {view['since']}")
    if view["reason"]:
        table.add_row("why", view["reason"])
    table.add_row("market time", view["market_time"])
    table.add_row("equity", f"{view['equity']:,.2f}")
    table.add_row("drawdown from peak", f"{view['drawdown']:.2%} (peak "
                                        f"{view['peak_equity']:,.2f})")
    table.add_row("max drawdown so far", f"{view['max_drawdown']:.2%}")
    console.print(table)
    hist = FittedTable([FitColumn("time"), FitColumn("from"), FitColumn("to"),
                        FitColumn("reason", wrap=True), FitColumn("by")],
                       title=f"History ({len(view['history'])} changes)")
    for h in view["history"]:
        hist.add_row(h["time"], str(h["from"]), str(h["to"]), str(h["reason"]), str(h["by"]))
    console.print(hist)


@state_app.callback()
def state(
    ctx: typer.Context,
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """An embedded account's trading state, why it is that, and every change (reads only)."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = settings(config, state_overrides(state_dir))
    view = _view(asyncio.run(_read(_store_url(cfg, "state"))))
    if as_json:
        stdout_json(json.dumps(view, indent=2))
    else:
        _print(view)


@state_app.command()
def resume(
    config: ConfigOpt = None,
    state_dir: StateDirOpt = None,
    reason: Annotated[str, typer.Option(
        help="Why (kept in the audit trail)")] = "operator resumed",
    keep_peak: Annotated[bool, typer.Option(
        "--keep-peak", help="Keep the drawdown peak (default: measure drawdown from the "
                            "equity now, or the next bar halts it again)")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Move a HALTED or REDUCING embedded account back to ACTIVE: new entries are allowed
    again. Audited; refused while a run holds the state directory."""
    from quantum_trader.domain.enums import TradingState
    from quantum_trader.domain.records import AuditEvent
    from quantum_trader.store.sql import SqlTradeStore

    if not reason.strip():
        raise UserError("--reason: say why (it is kept in the audit trail)")
    cfg = settings(config, state_overrides(state_dir))
    url = _store_url(cfg, "state resume")
    with holding_state_dir(cfg.paths.state_dir, "stop it first (a run writes the state on "
                                                "every bar)"):
        info = asyncio.run(_read(url))
        cp = info["checkpoint"]
        if info["state"] == TradingState.ACTIVE.name:
            if as_json:
                stdout_json(json.dumps({"changed": False, **_view(info)}, indent=2))
            else:
                console.print("trading is ACTIVE already: nothing changed")
            return
        if not yes:
            if not sys.stdin.isatty():
                raise UserError("state resume allows new entries again: confirm with --yes")
            why = info["history"][-1].detail.get("reason") if info["history"] else None
            typer.confirm(f"Trading is {info['state']}{f' ({why})' if why else ''}. Resume, "
                          "allowing new entries?", abort=True)
        peak = cp.peak_equity if keep_peak else info["equity"]
        audit = AuditEvent("trading_state", cp.ts, {
            "from": info["state"], "to": TradingState.ACTIVE.name,
            "reason": reason.strip(), "by": "operator (state resume)",
            "wall": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "peak_equity": {"before": cp.peak_equity, "after": peak}})

        async def write() -> None:
            store = SqlTradeStore(url)
            await store.open()
            try:
                await store.write([replace(cp, trading_state=int(TradingState.ACTIVE),
                                           peak_equity=peak), audit])
            finally:
                await store.close()

        asyncio.run(write())
        view = _view(asyncio.run(_read(url)))
    if as_json:
        stdout_json(json.dumps({"changed": True, **view}, indent=2))
        return
    _print(view)
    console.print("trading is ACTIVE: the next `quantum-trader run` opens new entries again"
                  + ("" if keep_peak else f"; drawdown is measured from {peak:,.2f}"))
