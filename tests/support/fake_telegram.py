"""A local fake of the Telegram Bot API for tests: ``sendMessage``, ``getUpdates``, ``getMe``.

It records every message sent (by our notifier or by Alertmanager's telegram receiver, which
POSTs JSON to ``<api_url>/bot<token>/sendMessage``), lets a test queue incoming updates
(commands typed by an operator), and can play an outage: answer 500 (``fail_status``) or stall.
It runs a real uvicorn server on a free port in a background thread, so real HTTP clients,
including the Alertmanager binary, talk to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class SentMessage:
    token: str
    chat_id: str
    text: str
    parse_mode: str | None
    at: float


class FakeTelegram:
    def __init__(self, token: str = "123456:TEST-TOKEN") -> None:
        self.token = token
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.messages: list[SentMessage] = []
        self.requests: list[tuple[str, str]] = []  # (token, method) of every call
        self.fail_status: int | None = None  # answer every call with this status
        self.stall_s: float = 0.0  # delay every answer (a hanging API)
        self._updates: list[dict[str, Any]] = []
        self._next_update = 1
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = self._build()

    # --- what a test does ----------------------------------------------------------------------
    def push_command(self, chat_id: int, text: str, username: str = "operator",
                     date: float | None = None) -> int:
        with self._lock:
            uid = self._next_update
            self._next_update += 1
            self._updates.append({"update_id": uid, "message": {
                "message_id": uid, "date": int(time.time() if date is None else date),
                "chat": {"id": chat_id, "type": "private"},
                "from": {"id": chat_id, "is_bot": False, "username": username},
                "text": text}})
        return uid

    def texts(self, chat_id: int | str | None = None) -> list[str]:
        with self._lock:
            return [m.text for m in self.messages
                    if chat_id is None or m.chat_id == str(chat_id)]

    def wait_for(self, predicate: Any, timeout: float, what: str) -> list[str]:
        """Poll until ``predicate(texts)`` is true; fails with every message received."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            texts = self.texts()
            if predicate(texts):
                return texts
            time.sleep(0.1)
        raise AssertionError(f"fake Telegram: timed out after {timeout}s waiting for {what}; "
                             f"received {self.texts()!r}")

    # --- the API ---------------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI()

        async def params(request: Request) -> dict[str, Any]:
            if request.headers.get("content-type", "").startswith("application/json"):
                body = await request.json()
                return body if isinstance(body, dict) else {}
            form = await request.form()
            return dict(form.items())

        async def gate(token: str, method: str) -> JSONResponse | None:
            with self._lock:
                self.requests.append((token, method))
            if self.stall_s:
                await asyncio.sleep(self.stall_s)
            if self.fail_status is not None:
                return JSONResponse({"ok": False, "error_code": self.fail_status,
                                     "description": "Internal Server Error (fake outage)"},
                                    status_code=self.fail_status)
            if token != self.token:
                return JSONResponse({"ok": False, "error_code": 401,
                                     "description": "Unauthorized"}, status_code=401)
            return None

        @app.post("/bot{token}/sendMessage")
        async def send_message(token: str, request: Request) -> JSONResponse:
            if (err := await gate(token, "sendMessage")) is not None:
                return err
            p = await params(request)
            if not p.get("text") or p.get("chat_id") in (None, ""):
                return JSONResponse({"ok": False, "error_code": 400,
                                     "description": "Bad Request: text or chat_id empty"},
                                    status_code=400)
            with self._lock:
                self.messages.append(SentMessage(token, str(p["chat_id"]), str(p["text"]),
                                                 p.get("parse_mode"), time.time()))
                mid = len(self.messages)
            return JSONResponse({"ok": True, "result": {
                "message_id": mid, "date": int(time.time()), "text": p["text"],
                "chat": {"id": int(str(p["chat_id"])), "type": "private"}}})

        @app.post("/bot{token}/getUpdates")
        @app.get("/bot{token}/getUpdates")
        async def get_updates(token: str, request: Request) -> JSONResponse:
            if (err := await gate(token, "getUpdates")) is not None:
                return err
            p = await params(request) if request.method == "POST" else dict(request.query_params)
            offset = int(p.get("offset") or 0)
            # A short long-poll: enough for a client loop, never holds a test up for long.
            deadline = time.monotonic() + min(float(p.get("timeout") or 0), 0.5)
            while True:
                with self._lock:
                    # Like Telegram: asking for offset N confirms (forgets) everything below N.
                    self._updates = [u for u in self._updates if u["update_id"] >= offset]
                    ready = list(self._updates)
                if ready or time.monotonic() >= deadline:
                    return JSONResponse({"ok": True, "result": ready})
                await asyncio.sleep(0.05)

        @app.post("/bot{token}/getMe")
        @app.get("/bot{token}/getMe")
        async def get_me(token: str) -> JSONResponse:
            if (err := await gate(token, "getMe")) is not None:
                return err
            return JSONResponse({"ok": True, "result": {"id": 1, "is_bot": True,
                                                        "first_name": "qt", "username": "qt_bot"}})

        return app

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FakeTelegram:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake Telegram did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Shut the server down (a test can also use this to play 'Telegram unreachable')."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeTelegram:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()


def alertmanager_config_for_fake(source: Path, fake: FakeTelegram, dest: Path, *,
                                 chat_id: int, token_file: Path, templates_dir: Path,
                                 timings: dict[str, str] | None = None,
                                 inline_token: bool = False) -> Path:
    """The production ``alertmanager.yml`` pointed at ``fake``: its ``api_url``, a test chat
    id, the templates directory, and (for a test that must not wait) shorter route timings.

    ``inline_token``: Alertmanager < 0.26 (Debian bookworm ships 0.25) has no ``bot_token_file``;
    the token is read from ``token_file`` and written as ``bot_token`` instead, which is what
    ``bot_token_file`` does at run time on a newer Alertmanager.
    """
    cfg = yaml.safe_load(source.read_text())
    cfg["templates"] = [str(templates_dir / "*.tmpl")]
    for receiver in cfg["receivers"]:
        for tg in receiver.get("telegram_configs", []):
            tg["api_url"] = fake.url
            tg["chat_id"] = chat_id
            if inline_token:
                tg.pop("bot_token_file", None)
                tg["bot_token"] = token_file.read_text().strip()
            else:
                tg["bot_token_file"] = str(token_file)
    if timings:
        routes = [cfg["route"], *cfg["route"].get("routes", [])]
        for route in routes:
            for key, value in timings.items():
                if key in route or route is cfg["route"]:
                    route[key] = value
    dest.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest
