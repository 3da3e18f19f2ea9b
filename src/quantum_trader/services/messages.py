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


def bar_from(msg: Message) -> Bar:
    bar = from_payload(Bar, msg.payload)
    try:
        bar.validate()
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
