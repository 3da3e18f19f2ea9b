"""gateway: the operator's front door — one status view over every service's ``/health``."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import httpx
from fastapi import FastAPI, Query, Request

from quantum_trader.bus.protocol import Bus, Message
from quantum_trader.config import SERVICE_NAMES, Settings
from quantum_trader.observability.logging import new_trace_id
from quantum_trader.observability.metrics import NOTIFICATIONS
from quantum_trader.observability.notifier import (
    DailySummary,
    TelegramNotifier,
    TradeClosed,
    TradeOpened,
)
from quantum_trader.observability.telegram import (
    TelegramClient,
    TelegramCommandBot,
    control_commands,
    store_commands,
)
from quantum_trader.services.base import Service
from quantum_trader.store.protocol import TradeStore


async def fetch_health(settings: Settings, http_timeout_s: float = 2.0) -> list[dict[str, Any]]:
    """Every service's health, or DOWN with the connection error when it does not answer."""
    svc = settings.services

    async def one(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
        url = f"http://{svc.host}:{svc.ports[name]}/health"
        t0 = time.perf_counter()
        try:
            r = await client.get(url)
            body: dict[str, Any] = r.json()
            body["latency_ms"] = round((time.perf_counter() - t0) * 1000, 2)
            return body
        except (httpx.HTTPError, ValueError) as exc:
            return {"service": name, "status": "DOWN", "latency_ms": None,
                    "reasons": [f"{url}: {type(exc).__name__}: {exc}"], "dependencies": []}

    async with httpx.AsyncClient(timeout=http_timeout_s) as client:
        return list(await asyncio.gather(*(one(client, n) for n in SERVICE_NAMES)))


DAY_MS = 86_400_000


async def build_daily_summary(store: TradeStore, day: date) -> DailySummary:
    """The UTC day's closed trades, and equity, drawdown, open positions and trading state at
    its end."""
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    end = start + DAY_MS
    trades = [tr for tr in await store.trades(limit=100_000) if start <= tr.closed_ts < end]
    curve = [p for p in await store.equity_curve() if p.ts < end]
    last = curve[-1] if curve else None
    changes = [a for a in await store.audit("trading_state") if a.ts < end]
    state = str(changes[-1].detail.get("to", "ACTIVE")) if changes else "ACTIVE"
    return DailySummary(day, len(trades), sum(1 for tr in trades if tr.net_pnl > 0),
                        sum(tr.net_pnl for tr in trades), last.equity if last else 0.0,
                        last.drawdown if last else 0.0, len(await store.positions()), state)


class GatewayService(Service):
    name = "gateway"
    upstreams = ("market-data", "ai-engine", "risk-safety", "execution", "exit-brain")

    def __init__(self, settings: Settings, bus: Bus, store: TradeStore | None) -> None:
        super().__init__(settings, bus, store)
        self.notifier: TelegramNotifier | None = None
        self.consume("executions", self.on_execution)
        self.consume("control", self.on_control)

    async def on_start(self) -> None:
        """Telegram: trade and state notifications out, operator commands in (only from the
        configured chat ids). Without a bot token the gateway simply has no notifier."""
        token = self.settings.secrets.telegram_bot_token
        chats = self.settings.notify.telegram_chat_ids
        if token is None or not chats:
            return
        client = TelegramClient(token.get_secret_value(),
                                api_url=self.settings.notify.telegram_api_url)
        self.notifier = TelegramNotifier(
            client, chats, on_outcome=lambda o: NOTIFICATIONS.labels("telegram", o).inc())
        self.notifier.start()
        handlers = {**store_commands(self.store, lambda: fetch_health(self.settings)),
                    **control_commands(self.bus)} if self.store is not None \
            else control_commands(self.bus)
        self.spawn(TelegramCommandBot(client, chats, handlers).run(self._stop))
        self.spawn(self._daily_summaries())

    async def _daily_summaries(self) -> None:
        """At each UTC midnight, the day that just ended, to Telegram."""
        while not self._stop.is_set():
            now = time.time()
            wait = DAY_MS / 1000 - now % (DAY_MS / 1000) + 5  # a few seconds past midnight
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)
            if self._stop.is_set() or self.notifier is None or self.store is None:
                return
            day = datetime.fromtimestamp(time.time() - 3600, UTC).date()
            self.notifier.daily_summary(await build_daily_summary(self.store, day))

    async def on_stop(self) -> None:
        if self.notifier is not None:
            await self.notifier.stop()

    async def on_execution(self, msg: Message) -> None:
        if self.notifier is None:
            return
        if msg.type == "trade_closed":
            t = msg.payload
            self.notifier.trade_closed(TradeClosed(
                str(t["symbol"]), str(t["side"]), float(t["quantity"]),
                float(t["entry_price"]), float(t["exit_price"]),
                float(t["realized_pnl"]) - float(t["fees"]) - float(t["funding"]),
                str(t.get("exit_reason", "")), msg.trace_id))
        elif msg.type == "kill_result":
            d = msg.payload
            closing = d.get("closing") or {}
            kept = d.get("kept_stops") or []
            if d.get("mode") == "flatten":
                text = (f"KILL SWITCH done: {len(d.get('canceled') or [])} orders canceled, "
                        f"{len(closing)} positions being closed at market "
                        f"({', '.join(sorted(closing)) or 'none open'}).")
            else:
                text = (f"KILL SWITCH done: {len(d.get('canceled') or [])} entry orders "
                        f"canceled; {len(kept)} protective stops KEPT working on the venue. "
                        "Positions stay open: /kill flatten (or POST /control/kill?flatten=true) "
                        "closes them.")
            failed = d.get("cancel_failed") or []
            if failed:
                text += f" {len(failed)} cancels FAILED: check the venue."
            self.notifier.notify(text, urgent=True)
        elif msg.type == "fill" and msg.payload.get("purpose") == "ENTRY":
            f, entry = msg.payload["fill"], msg.payload.get("entry") or {}
            self.notifier.trade_opened(TradeOpened(
                str(f["symbol"]), str(f["side"]), float(f["quantity"]), float(f["price"]),
                entry.get("stop_loss"), entry.get("take_profit"), msg.trace_id))

    async def on_control(self, msg: Message) -> None:
        if self.notifier is None:
            return
        reason = str(msg.payload.get("reason", ""))
        if msg.type == "kill":
            self.notifier.kill_switch(str(msg.payload.get("by", "operator")), reason)
        else:
            new = {"pause": "REDUCING", "halt": "HALTED", "resume": "ACTIVE"}.get(msg.type)
            if new is not None:
                self.notifier.trading_state_changed("?", new, reason)

    def add_routes(self, app: FastAPI) -> None:
        @app.get("/status")
        async def status() -> dict[str, Any]:
            others = [h for h in await fetch_health(self.settings) if h["service"] != self.name]
            return {"services": [self.health.as_dict(), *others]}

        @app.post("/control/{command}", status_code=202, openapi_extra={"x-scope": "admin"})
        async def control(command: Literal["pause", "resume", "kill", "halt"],
                          request: Request, flatten: bool = False) -> dict[str, Any]:
            """Kill switch and trading-state changes (admin): risk-safety applies them.
            ``kill`` keeps the protective stops working; ``kill?flatten=true`` also closes
            every position at market. Execution reports which it did (and Telegram says)."""
            principal = getattr(request.state, "principal", None)
            by = getattr(principal, "name", "unknown")
            trace_id = new_trace_id()
            msg_id = uuid.uuid4().hex
            payload: dict[str, Any] = {"by": by, "via": "gateway"}
            if command == "kill":
                payload["flatten"] = flatten
            await self.publish("control", command, payload, trace_id, msg_id)
            self.log.warning("control_command", command=command, by=by, trace_id=trace_id)
            return {"command": command, "message_id": msg_id, "trace_id": trace_id}

        @app.get("/trades")
        async def trades(limit: Annotated[int, Query(ge=1)] = 50) -> list[dict[str, Any]]:
            if self.store is None:
                return []
            from quantum_trader.bus.codec import to_payload

            return [to_payload(t) for t in await self.store.trades(limit=min(limit, 1000))]
