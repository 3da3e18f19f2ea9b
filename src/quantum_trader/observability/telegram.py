"""Telegram Bot API adapter: a small async client and the operator's command handler.

The client only knows two methods (``sendMessage``, ``getUpdates``) and a configurable base URL,
so tests point it at a local fake of the Bot API. The bot token is part of every request URL,
so it is registered with the log redactor and never put in an exception message or a log line.

The command handler long-polls ``getUpdates`` and answers ``/status``, ``/positions``,
``/pnl``, ``/pause``, ``/resume`` and ``/kill`` from allowed chat ids only; everything else is
ignored (and logged). What a command does is a callback, so the handler knows nothing of the
bus or the store (``control_commands`` builds the bus-publishing ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from html import escape
from typing import Any

import httpx

from quantum_trader.bus.protocol import Bus, Message
from quantum_trader.observability.logging import get_logger, register_secret
from quantum_trader.store.protocol import TradeStore

DEFAULT_API_URL = "https://api.telegram.org"
MAX_MESSAGE_CHARS = 4096  # Telegram refuses longer texts

# httpx logs every request URL at INFO, and a Bot API URL contains the token.
logging.getLogger("httpx").setLevel(logging.WARNING)


class TelegramError(Exception):
    """A failed Bot API call. ``status`` is None when Telegram was not reached at all."""

    def __init__(self, message: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Transport failures, 429 and 5xx are worth retrying; 400/401/403 never get better."""
        return self.status is None or self.status == 429 or self.status >= 500


class TelegramClient:
    """``sendMessage`` and ``getUpdates`` over httpx. Errors never contain the token."""

    def __init__(self, token: str, *, api_url: str = DEFAULT_API_URL, timeout_s: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not token:
            raise ValueError("a Telegram bot token is required")
        register_secret(token)
        self._base = f"{api_url.rstrip('/')}/bot{token}"
        self._http = httpx.AsyncClient(timeout=timeout_s, transport=transport)

    async def _call(self, method: str, payload: dict[str, Any],
                    timeout_s: float | None = None) -> Any:
        try:
            kwargs: dict[str, Any] = {"json": payload}
            if timeout_s is not None:
                kwargs["timeout"] = timeout_s
            r = await self._http.post(f"{self._base}/{method}", **kwargs)
        except httpx.HTTPError as exc:
            # str(exc) may quote the URL, and so the token: keep the type only.
            raise TelegramError(f"{method}: Telegram unreachable ({type(exc).__name__})") from None
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code != 200 or not isinstance(body, dict) or not body.get("ok"):
            desc = str(body.get("description", "")) if isinstance(body, dict) else ""
            params = body.get("parameters") if isinstance(body, dict) else None
            retry_after = None
            if isinstance(params, dict) and isinstance(params.get("retry_after"), int | float):
                retry_after = float(params["retry_after"])
            raise TelegramError(f"{method}: HTTP {r.status_code} {desc[:200]}".rstrip(),
                                r.status_code, retry_after)
        return body.get("result")

    async def send_message(self, chat_id: int | str, text: str,
                           parse_mode: str | None = "HTML") -> dict[str, Any]:
        payload: dict[str, Any] = {"chat_id": chat_id, "text": text[:MAX_MESSAGE_CHARS],
                                   "disable_web_page_preview": True}
        if parse_mode:
            payload["parse_mode"] = parse_mode
        result = await self._call("sendMessage", payload)
        return result if isinstance(result, dict) else {}

    async def get_updates(self, offset: int | None, timeout_s: int = 25) -> list[dict[str, Any]]:
        payload: dict[str, Any] = {"timeout": timeout_s, "allowed_updates": ["message"]}
        if offset is not None:
            payload["offset"] = offset
        # The HTTP timeout must outlast the long poll.
        result = await self._call("getUpdates", payload, timeout_s=timeout_s + 10.0)
        return [u for u in result if isinstance(u, dict)] if isinstance(result, list) else []

    async def aclose(self) -> None:
        await self._http.aclose()


# --- commands --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # without the slash and without a @botname suffix: "status"
    args: tuple[str, ...]
    chat_id: int
    user: str  # who sent it, for the audit trail ("@alice" or the numeric user id)


CommandHandler = Callable[[Command], Awaitable[str]]
COMMANDS = ("status", "positions", "pnl", "pause", "resume", "kill")


def parse_command(text: str) -> tuple[str, tuple[str, ...]] | None:
    """``"/pause@qt_bot now"`` -> ``("pause", ("now",))``; None when it is not a command."""
    parts = text.strip().split()
    if not parts or not parts[0].startswith("/") or len(parts[0]) < 2:
        return None
    return parts[0][1:].split("@", 1)[0].lower(), tuple(parts[1:])


def help_text(available: Iterable[str]) -> str:
    return "Commands: " + " ".join(f"/{c}" for c in available)


class TelegramCommandBot:
    """Long-polls ``getUpdates`` and dispatches commands from ``allowed_chat_ids``.

    Updates older than ``max_age_s`` are skipped: Telegram keeps unconfirmed updates for a day,
    and a ``/kill`` typed before a restart must not fire hours later.
    """

    def __init__(self, client: TelegramClient, allowed_chat_ids: Iterable[int],
                 handlers: Mapping[str, CommandHandler], *, poll_timeout_s: int = 25,
                 max_age_s: float = 120.0, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.allowed = frozenset(int(c) for c in allowed_chat_ids)
        self.handlers = dict(handlers)
        self.poll_timeout_s = poll_timeout_s
        self.max_age_s = max_age_s
        self._clock = clock
        self.offset: int | None = None
        self.ignored = 0  # updates from chats not on the list
        self.handled = 0
        self.log = get_logger("quantum_trader.telegram")

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; a Telegram outage backs off, never ends the loop."""
        backoff = 1.0
        while not stop.is_set():
            try:
                updates = await self.client.get_updates(self.offset, self.poll_timeout_s)
                backoff = 1.0
            except TelegramError as exc:
                self.log.warning("telegram_poll_failed", error=str(exc), retry_in_s=backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            for update in updates:
                await self.handle_update(update)

    async def handle_update(self, update: Mapping[str, Any]) -> str | None:
        """Dispatch one update; returns the reply sent (None when nothing was answered)."""
        uid = update.get("update_id")
        if isinstance(uid, int):
            self.offset = max(self.offset or 0, uid + 1)  # confirms it on the next poll
        msg = update.get("message")
        if not isinstance(msg, Mapping):
            return None
        chat = msg.get("chat")
        chat_id = chat.get("id") if isinstance(chat, Mapping) else None
        text = msg.get("text")
        if not isinstance(chat_id, int) or not isinstance(text, str):
            return None
        if chat_id not in self.allowed:
            self.ignored += 1
            # No reply: an unknown chat must not even learn that the bot is alive.
            self.log.warning("telegram_command_ignored", chat_id=chat_id,
                             reason="chat id not allowed", text=text[:40])
            return None
        date = msg.get("date")
        if isinstance(date, int | float) and self._clock() - date > self.max_age_s:
            self.log.warning("telegram_command_stale", chat_id=chat_id, text=text[:40],
                             age_s=round(self._clock() - date))
            return None
        parsed = parse_command(text)
        if parsed is None:
            return None
        name, args = parsed
        sender = msg.get("from")
        user = "unknown"
        if isinstance(sender, Mapping):
            user = f"@{sender['username']}" if sender.get("username") else str(sender.get("id"))
        handler = self.handlers.get(name)
        if handler is None:
            reply = help_text(c for c in COMMANDS if c in self.handlers)
        else:
            self.log.warning("telegram_command", command=name, chat_id=chat_id, user=user)
            try:
                reply = await handler(Command(name, args, chat_id, user))
            except Exception as exc:
                self.log.error("telegram_command_failed", command=name,
                               error=f"{type(exc).__name__}: {exc}")
                reply = f"/{name} failed: {type(exc).__name__}"
            self.handled += 1
        try:
            await self.client.send_message(chat_id, reply)
        except TelegramError as exc:
            self.log.warning("telegram_reply_failed", command=name, error=str(exc))
        return reply


def control_commands(bus: Bus, *, topic: str = "control",
                     clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
                     ) -> dict[str, CommandHandler]:
    """``/pause``, ``/resume`` and ``/kill`` as ``control`` bus messages (risk-safety applies
    them: pause -> REDUCING, kill -> HALTED, resume -> ACTIVE), the same message the gateway's
    ``POST /control/{command}`` sends."""

    def make(kind: str, done: str) -> CommandHandler:
        async def handler(cmd: Command) -> str:
            payload: dict[str, Any] = {"by": f"telegram:{cmd.user}", "via": "telegram",
                                       "chat_id": cmd.chat_id}
            text = done
            if kind == "kill":
                # "/kill" keeps the protective stops; "/kill flatten" also closes every position
                if cmd.args not in ((), ("flatten",)):
                    return (f"/kill {' '.join(cmd.args)}: unknown argument, nothing sent. "
                            "Use /kill (stops stay) or /kill flatten (close every position).")
                payload["flatten"] = cmd.args == ("flatten",)
                text += (", closing every position at market" if payload["flatten"]
                         else ", protective stops stay working")
            elif cmd.args:
                return f"/{kind} takes no arguments, nothing sent."
            trace_id = uuid.uuid4().hex
            await bus.publish(topic, Message(kind, payload, clock_ms(), trace_id))
            return f"{text} (sent to risk-safety, trace {trace_id[:8]})"

        return handler

    return {
        "pause": make("pause", "Pausing: exits only, no new entries"),
        "resume": make("resume", "Resuming trading"),
        "kill": make("kill", "KILL SWITCH: trading halted, no new entries"),
    }


DAY_MS = 86_400_000
HealthSource = Callable[[], Awaitable[list[dict[str, Any]]]]
_HEALTH_ICON = {"OK": "✅", "DEGRADED": "⚠️", "DOWN": "🔴"}


def store_commands(store: TradeStore, health: HealthSource | None = None, *,
                   clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
                   ) -> dict[str, CommandHandler]:
    """``/positions`` and ``/pnl`` from the SQL store (the source of truth), and ``/status``
    from ``health`` (e.g. the gateway's ``fetch_health``), read-only."""

    async def status(cmd: Command) -> str:
        if health is None:
            return "status is not available here"
        lines = ["<b>Services</b>"]
        for h in await health():
            st = str(h.get("status", "?"))
            reasons = h.get("reasons") or []
            why = f": {escape(str(reasons[0]))[:120]}" if reasons and st != "OK" else ""
            lines.append(f"{_HEALTH_ICON.get(st, '❔')} {escape(str(h.get('service')))} {st}{why}")
        return "\n".join(lines)

    async def positions(cmd: Command) -> str:
        open_ = [p for p in await store.positions() if p.qty != 0]
        if not open_:
            return "No open positions."
        lines = ["<b>Open positions</b>"]
        for p in open_:
            side = "LONG" if p.qty > 0 else "SHORT"
            upnl = (p.last_price - p.avg_entry) * p.qty
            lines.append(f"{escape(p.symbol)} {side} {abs(p.qty):g} @ {p.avg_entry:,.5g} · "
                         f"last {p.last_price:,.5g} · uPnL {upnl:+,.2f}")
        return "\n".join(lines)

    async def pnl(cmd: Command) -> str:
        day_start = clock_ms() // DAY_MS * DAY_MS
        today = [t for t in await store.trades(limit=1000) if t.closed_ts >= day_start]
        realized = sum(t.net_pnl for t in today)
        wins = sum(1 for t in today if t.net_pnl > 0)
        unrealized = sum((p.last_price - p.avg_entry) * p.qty for p in await store.positions())
        return (f"<b>PnL today (UTC)</b>\nrealized {realized:+,.2f} over {len(today)} trade(s)"
                f" ({wins} won)\nunrealized {unrealized:+,.2f}")

    return {"status": status, "positions": positions, "pnl": pnl}


__all__ = [
    "COMMANDS",
    "DEFAULT_API_URL",
    "Command",
    "CommandHandler",
    "TelegramClient",
    "TelegramCommandBot",
    "TelegramError",
    "control_commands",
    "help_text",
    "parse_command",
    "store_commands",
]
