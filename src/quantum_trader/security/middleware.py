"""The guard in front of every service's HTTP app: rate limits, then bearer-token auth.

A pure ASGI middleware, not a FastAPI dependency, so it also covers what dependencies miss:
``/openapi.json``, ``/docs``, unknown paths (401, not 404: an anonymous caller learns nothing
about which paths exist) and wrong methods. Every route is protected unless it is listed in
``PUBLIC_PATHS``; a new endpoint is protected without anyone remembering to do it.

Policy (docs/security.md):

* ``/health`` (liveness) is public;
* ``/metrics`` needs a read token, or a source address in ``security.metrics_allow``;
* other routes need the scope the route declares (``openapi_extra={"x-scope": "admin"}``),
  else admin under ``ADMIN_PREFIXES``, else read for GET/HEAD and trade for other methods;
* ``/health`` and ``/metrics`` have their own generous per-IP bucket; everything else is
  limited per client IP before authentication and per token after it. 429 + Retry-After.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from starlette.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from quantum_trader.observability.logging import get_logger
from quantum_trader.observability.metrics import REGISTRY
from quantum_trader.security.ratelimit import RateLimiter
from quantum_trader.security.settings import SecuritySection
from quantum_trader.security.tokens import Principal, TokenStore
from quantum_trader.security.tokens import Scope as TokenScope

if TYPE_CHECKING:
    from fastapi import FastAPI

    from quantum_trader.config import Settings

__all__ = ["ADMIN_PREFIXES", "PUBLIC_PATHS", "Guard", "SecurityMiddleware", "install",
           "required_scope"]

PUBLIC_PATHS = frozenset({"/health"})
MONITORING_PATHS = frozenset({"/health", "/metrics"})
ADMIN_PREFIXES = ("/control", "/admin", "/models")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REALM = 'Bearer realm="quantum-trader"'

AUTH_FAILURES = Counter("http_auth_failures", "Requests refused by authentication or scope",
                        ["service", "reason"], registry=REGISTRY)
RATE_LIMITED = Counter("http_rate_limited", "Requests refused with 429", ["service", "limit"],
                       registry=REGISTRY)

log = get_logger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(values: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def _in(addr: str, nets: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in n for n in nets)


def required_scope(method: str, path: str, route: Any | None) -> TokenScope | None:
    """The scope a request needs; None for public paths."""
    if path in PUBLIC_PATHS:
        return None
    declared = (getattr(route, "openapi_extra", None) or {}).get("x-scope")
    if declared is not None:
        return TokenScope(declared)
    if path.startswith(ADMIN_PREFIXES):
        return TokenScope.ADMIN
    return TokenScope.READ if method.upper() in _SAFE_METHODS else TokenScope.TRADE


@dataclass(frozen=True)
class Refusal:
    status: int
    detail: str
    reason: str  # metric label
    headers: dict[str, str]


class Guard:
    """Decides per request. Holds the token store and the buckets of one service."""

    def __init__(self, settings: SecuritySection, store: TokenStore, service: str) -> None:
        self.service = service
        self.store = store
        self.metrics_allow = _networks(settings.metrics_allow)
        self.trusted = _networks(settings.trusted_proxies)
        self.client_limit = RateLimiter(settings.client_limit.rate, settings.client_limit.burst)
        self.token_limit = RateLimiter(settings.token_limit.rate, settings.token_limit.burst)
        self.monitoring_limit = RateLimiter(settings.monitoring_limit.rate,
                                            settings.monitoring_limit.burst)

    def client_ip(self, scope: Scope, headers: dict[str, str]) -> str:
        """The caller's address; X-Forwarded-For only counts when the peer is our proxy."""
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        xff = headers.get("x-forwarded-for")
        if xff and _in(peer, self.trusted):
            # Rightmost address not added by a trusted proxy: the left part is client-made.
            for hop in reversed([h.strip() for h in xff.split(",") if h.strip()]):
                if not _in(hop, self.trusted):
                    return hop
        return str(peer)

    def _limited(self, limiter: RateLimiter, key: str, name: str) -> Refusal | None:
        wait = limiter.acquire(key)
        if wait <= 0:
            return None
        retry = RateLimiter.retry_after(wait)
        return Refusal(429, f"rate limit exceeded ({name}); retry after {retry}s",
                       f"rate:{name}", {"Retry-After": retry})

    def check(self, scope: Scope, route: Any | None) -> Principal | Refusal | None:
        """None: public request, go ahead; a Principal: authenticated; a Refusal: answer it."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        ip = self.client_ip(scope, headers)
        monitoring = path in MONITORING_PATHS
        refused = (self._limited(self.monitoring_limit, ip, "monitoring") if monitoring
                   else self._limited(self.client_limit, ip, "client"))
        if refused is not None:
            return refused
        needed = required_scope(method, path, route)
        if needed is None:
            return None
        if path == "/metrics" and _in(ip, self.metrics_allow):
            return None
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Refusal(401, "missing bearer token", "missing", {"WWW-Authenticate": REALM})
        principal = self.store.authenticate(token.strip())
        if principal is None:
            return Refusal(401, "invalid or revoked token", "invalid",
                           {"WWW-Authenticate": REALM + ', error="invalid_token"'})
        if not principal.allows(needed):
            return Refusal(403, f"this endpoint needs the {needed.value} scope", "scope",
                           {"WWW-Authenticate": REALM + ', error="insufficient_scope", '
                                                        f'scope="{needed.value}"'})
        if not monitoring:
            refused = self._limited(self.token_limit, principal.token_id, "token")
            if refused is not None:
                return refused
        return principal


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, guard: Guard, routes: Any) -> None:
        self.app = app
        self.guard = guard
        self.routes = routes  # the app's live route list: routes added later are covered

    def _route(self, scope: Scope) -> Any | None:
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route
            if match is Match.PARTIAL and partial is None:
                partial = route
        return partial

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route(scope)
        if route is not None:
            scope["route"] = route  # so HTTP metrics label refused requests by route too
        outcome = self.guard.check(scope, route)
        if isinstance(outcome, Refusal):
            if outcome.status == 429:
                RATE_LIMITED.labels(self.guard.service, outcome.reason[5:]).inc()
            else:
                AUTH_FAILURES.labels(self.guard.service, outcome.reason).inc()
                log.info("http_refused", status=outcome.status, reason=outcome.reason,
                         method=scope.get("method"), path=scope.get("path"))
            response = JSONResponse({"detail": outcome.detail}, status_code=outcome.status,
                                    headers=outcome.headers)
            await response(scope, receive, send)
            return
        if isinstance(outcome, Principal):
            scope.setdefault("state", {})["principal"] = outcome
        await self.app(scope, receive, send)


def install(app: FastAPI, settings: Settings, service: str) -> Guard:
    """Put the guard in front of ``app``. Call it before other middleware is added, so that
    outer middleware (HTTP metrics) also sees the requests the guard refuses."""
    path = settings.security.tokens_path(settings.paths.state_dir)
    store = TokenStore(path)
    if not store.records():
        log.warning("no_api_tokens", tokens_file=str(path),
                    hint="every endpoint but /health refuses requests; create one with "
                         "`quantum-trader token create --scope read --name NAME`")
    guard = Guard(settings.security, store, service)
    app.add_middleware(SecurityMiddleware, guard=guard, routes=app.router.routes)
    return guard
