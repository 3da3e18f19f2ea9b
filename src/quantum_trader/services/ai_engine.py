"""ai-engine: bars in, signals out. It never calls risk-safety: when risk-safety is down it
says DEGRADED (naming it) and keeps publishing; stale signals die at the gate.

Its source is the one ``choose_signal_source`` picks (a plugin from ``strategy.path``, the
production model, or the baseline). A plugin strategy that is refused (it raised, or returned
something that is not a signal: ``StrategyError``) publishes nothing more: the service says
DEGRADED with the refusal and keeps acking bars, so no entry is made on a broken strategy and
the bus does not dead-letter every bar after it."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict

from quantum_trader.bus.codec import to_payload
from quantum_trader.bus.protocol import Bus, Message
from quantum_trader.config import Settings
from quantum_trader.domain.models import TIMEFRAME_MS, Bar, Signal
from quantum_trader.domain.records import Checkpoint
from quantum_trader.domain.strategy import SignalSource
from quantum_trader.observability.metrics import (
    MODEL_ACCURACY,
    MODEL_INFERENCE_SECONDS,
    SIGNALS_GENERATED,
)
from quantum_trader.services.base import Service
from quantum_trader.services.messages import bar_from
from quantum_trader.store.protocol import TradeStore
from quantum_trader.strategies.adapter import StrategyError


class GenerateSignalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    symbol: str
    timeframe: str


def signal_source_for(settings: Settings) -> SignalSource:
    """The configured source; a production model is followed across promotions."""
    from quantum_trader.ai.production import choose_signal_source

    return choose_signal_source(settings, hot_reload=True)[0]


class AIEngineService(Service):
    name = "ai-engine"
    upstreams = ("market-data", "risk-safety")

    def __init__(self, settings: Settings, bus: Bus, store: TradeStore | None,
                 source: SignalSource) -> None:
        super().__init__(settings, bus, store)
        self.source = source
        self.last_bar: dict[str, Bar] = {}
        self.last_signal: dict[str, Signal] = {}
        self.refused: StrategyError | None = None
        self.health.add("model", self._check_model, critical=False)
        self.consume("market.bars", self.on_bar)

    async def on_start(self) -> None:
        """Signal sources are stateful: after a restart, warm the source up on the bars it had
        already seen (replayed history here; exchange klines in live mode) so the signals it
        produces next are the ones it would have produced without the restart."""
        if self.store is None:
            return
        cp = await self.store.checkpoint(self.name)
        if cp is None:
            return
        from quantum_trader.marketdata.sample import resolve_source

        series = resolve_source(self.settings.data.source)
        last = cp.last_bar_ts.get(series.symbol)
        if last is None:
            return
        n = int((series.ts <= last).sum())
        for bar in series.slice(0, n):
            self._ask(bar)
            self.last_bar[bar.symbol] = bar

    async def _check_model(self) -> str | None:
        if self.refused is not None:
            return f"signal source refused: {self.refused}"
        return None if self.source is not None else "no signal source loaded"

    def _ask(self, bar: Bar) -> Signal | None:
        """The source's signal for ``bar``; nothing ever again once it has been refused."""
        if self.refused is not None:
            return None
        try:
            return self.source.on_bar(bar)
        except StrategyError as exc:
            self.refused = exc
            self.log.error("strategy.refused", source=self.source.name, reason=str(exc))
            return None

    async def on_bar(self, msg: Message) -> None:
        bar = bar_from(msg)
        last = self.last_bar.get(bar.symbol)
        if last is not None and bar.ts <= last.ts:
            return  # a redelivered bar: the source has seen it (idempotent on the bar)
        t0 = time.perf_counter()
        signal = self._ask(bar)
        MODEL_INFERENCE_SECONDS.observe(time.perf_counter() - t0)
        accuracy = getattr(self.source, "model_accuracy", None)
        if callable(accuracy):
            value = accuracy()
            if value is not None:
                MODEL_ACCURACY.labels(self.settings.ai.model_name).set(value)
        self.last_bar[bar.symbol] = bar
        progress = Checkpoint.progress(self.name, {s: b.ts for s, b in self.last_bar.items()},
                                       bar.close_ts)
        if signal is None:
            if self.store is not None:
                await self.store.write([progress])
            return
        self.last_signal[bar.symbol] = signal
        # Publish first, then record, then ack (the consumer acks when we return). A crash in
        # between redelivers the bar; the source is deterministic, so the same signal id is
        # published again and every consumer is idempotent on it.
        await self.publish("signals", "signal", to_payload(signal), signal.trace_id, signal.id)
        if self.store is not None:
            await self.store.write([signal, progress])
        SIGNALS_GENERATED.labels(signal.symbol, signal.direction.value).inc()

    def generate_signal(self, symbol: str, timeframe: str) -> dict[str, Any]:
        if timeframe not in TIMEFRAME_MS:
            raise HTTPException(422, f"unknown timeframe {timeframe!r}")
        bar = self.last_bar.get(symbol)
        if bar is None:
            raise HTTPException(422, f"unknown symbol {symbol!r}: no bars seen for it")
        if bar.timeframe != timeframe:
            raise HTTPException(422, f"{symbol} trades on {bar.timeframe}, not {timeframe}")
        generate = getattr(self.source, "generate_signal", None)
        if callable(generate):
            try:
                return to_payload(generate(symbol, timeframe))
            except LookupError as exc:  # unknown symbol/timeframe, or warming up
                code = 503 if type(exc).__name__ == "NotReady" else 422
                raise HTTPException(code, str(exc)) from None
        sig = self.last_signal.get(symbol)
        if sig is None or sig.ts < bar.close_ts:
            return {"symbol": symbol, "timeframe": timeframe, "direction": None,
                    "bar_ts": bar.ts, "source": self.source.name,
                    "detail": "the latest bar produced no signal"}
        return to_payload(sig)

    def add_routes(self, app: FastAPI) -> None:
        @app.post("/generate-signal")
        async def generate_signal(req: GenerateSignalRequest) -> dict[str, Any]:
            return self.generate_signal(req.symbol, req.timeframe)
