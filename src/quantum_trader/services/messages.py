"""Bus message shapes shared by the services (one place, so producers and consumers agree)."""

from __future__ import annotations

from typing import Any

from quantum_trader.bus.codec import from_payload, to_payload
from quantum_trader.bus.protocol import MalformedMessage, Message
from quantum_trader.domain.models import Bar

#: Who consumes what. Market data waits for all of these to catch up in lockstep replay.
PIPELINE: dict[str, tuple[str, ...]] = {
    "market.bars": ("ai-engine", "risk-safety", "execution", "exit-brain"),
    "signals": ("risk-safety", "exit-brain"),
    "exits": ("risk-safety",),
    "orders.approved": ("execution",),
    "executions": ("exit-brain",),
    "positions": ("risk-safety", "exit-brain"),
}


def bar_payload(bar: Bar) -> dict[str, Any]:
    return to_payload(bar)


class BarRefused(ValueError):
    """A bar whose time cannot be right: off the timeframe's grid, or closing in the future."""


def check_bar_time(bar: Bar, now_ms: int) -> None:
    """Refuse a bar with an implausible time: its open must be on the timeframe's grid and it
    must have closed by ``now_ms`` (a still-open kline is never a closed bar, and a bar from
    the far future would stop every later one as "older")."""
    from quantum_trader.domain.models import TIMEFRAME_MS

    tf = TIMEFRAME_MS.get(bar.timeframe)
    if tf is None:
        raise BarRefused(f"{bar.symbol} bar at {bar.ts}: unknown timeframe {bar.timeframe!r}")
    if bar.ts % tf:
        raise BarRefused(f"{bar.symbol} {bar.timeframe} bar at {bar.ts}: not on the "
                         f"{bar.timeframe} grid")
    if bar.close_ts > now_ms + 1_000:
        raise BarRefused(f"{bar.symbol} {bar.timeframe} bar at {bar.ts}: closes at "
                         f"{bar.close_ts}, after now ({now_ms}): not a closed bar")


def bar_from(msg: Message) -> Bar:
    import time

    bar = from_payload(Bar, msg.payload)
    try:
        bar.validate()
        check_bar_time(bar, int(time.time() * 1000))
    except ValueError as exc:
        raise MalformedMessage(str(exc)) from None
    return bar


def bar_id(bar: Bar) -> str:
    return f"bar-{bar.symbol}-{bar.timeframe}-{bar.ts}"


def observe_bar_published(bar: Bar) -> None:
    """Feed the staleness alert: wall time of the newest bar and the bar length."""
    import time

    from quantum_trader.domain.models import TIMEFRAME_MS
    from quantum_trader.observability.metrics import (
        MARKET_DATA_BAR_INTERVAL,
        MARKET_DATA_LAST_BAR,
    )

    MARKET_DATA_LAST_BAR.labels(bar.symbol).set(time.time())
    MARKET_DATA_BAR_INTERVAL.labels(bar.symbol).set(TIMEFRAME_MS[bar.timeframe] / 1000)
