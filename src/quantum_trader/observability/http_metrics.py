"""HTTP request metrics as a pure ASGI middleware.

Starlette's ``BaseHTTPMiddleware`` runs every request through an extra task and memory
streams (about a millisecond a request under load); this one only wraps ``send``.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quantum_trader.observability.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS


class HttpMetricsMiddleware:
    """Counts requests by route template and status, and times them (``service`` label)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # Route templates (not raw paths) keep the label set bounded.
            path = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(self.service, scope["method"], path, str(status)).inc()
            HTTP_REQUEST_SECONDS.labels(self.service, path).observe(time.perf_counter() - t0)
