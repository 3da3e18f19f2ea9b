"""Every protected endpoint of every service refuses unauthenticated, wrong-scope and revoked
tokens; rate limits answer 429 with Retry-After; the admin control route reaches the bus.

Routes are enumerated from each app, so an endpoint added later is checked without anyone
editing this file. The helpers here are shared with the other ``test_security*`` modules.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import Message
from quantum_trader.config import SERVICE_NAMES, Settings
from quantum_trader.security.middleware import PUBLIC_PATHS, Guard, required_scope
from quantum_trader.security.tokens import Scope, TokenStore
from quantum_trader.services.base import Service
from quantum_trader.services.runner import build_service
from quantum_trader.store.sql import SqlTradeStore

UNLIMITED = {"rate": 1e6, "burst": 1_000_000}


def make_settings(tmp_path: Path, **extra: Any) -> Settings:
    raw: dict[str, Any] = {
        "data": {"source": "sample:XRP"},
        "paths": {"state_dir": str(tmp_path), "registry_dir": str(tmp_path / "models"),
                  "reports_dir": str(tmp_path / "reports")},
        "services": {"bus": "memory", "replay_max_bars": 60, "heartbeat_interval_s": 0.2},
        "secrets": {"approval_hmac_key": "hmac-" + "k" * 32},
        "security": {"client_limit": UNLIMITED, "token_limit": UNLIMITED,
                     "monitoring_limit": UNLIMITED},
    }
    for section, values in extra.items():
        raw.setdefault(section, {}).update(values)
    return Settings.model_validate(raw)


async def build_services(settings: Settings, names: tuple[str, ...] = SERVICE_NAMES,
                         bus: InMemoryBus | None = None) -> dict[str, Service]:
    settings.paths.state_dir.mkdir(parents=True, exist_ok=True)
    url = settings.store_url()
    bootstrap = SqlTradeStore(url, create=True)
    await bootstrap.open()
    await bootstrap.close()
    shared = bus if bus is not None else InMemoryBus()
    services = {n: build_service(n, settings, shared, SqlTradeStore(url)) for n in names}
    for svc in services.values():  # routes work without start() (open() is idempotent)
        assert svc.store is not None
        await svc.store.open()
    return services


@dataclass
class Tokens:
    read: str
    trade: str
    admin: str
    revoked: str  # was admin

    def for_scope(self, scope: Scope) -> str:
        return {Scope.READ: self.read, Scope.TRADE: self.trade, Scope.ADMIN: self.admin}[scope]

    def below(self, scope: Scope) -> str | None:
        """A valid token that lacks ``scope`` (None for read: every token has read)."""
        return {Scope.READ: None, Scope.TRADE: self.read, Scope.ADMIN: self.trade}[scope]

    def all(self) -> list[str]:
        return [self.read, self.trade, self.admin, self.revoked]


def issue_tokens(settings: Settings) -> Tokens:
    store = TokenStore(settings.security.tokens_path(settings.paths.state_dir))
    read, _ = store.create("reader", ["read"])
    trade, _ = store.create("trader", ["trade"])
    admin, _ = store.create("ops", ["admin"])
    revoked, _ = store.create("former-ops", ["admin"])
    store.revoke("former-ops")
    return Tokens(read, trade, admin, revoked)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def endpoints(app: FastAPI) -> list[tuple[str, str, Any]]:
    """(method, concrete path, route) for every route and method the app serves."""
    out: list[tuple[str, str, Any]] = []
    for route in app.routes:
        path = getattr(route, "path", None)
        methods = getattr(route, "methods", None)
        if path is None or not methods:
            continue
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        out.extend((m, concrete, route) for m in sorted(methods))
    return out


def client(app: FastAPI, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def guard_of(app: FastAPI) -> Guard:
    for mw in app.user_middleware:
        guard = mw.kwargs.get("guard")
        if isinstance(guard, Guard):
            return guard
    raise AssertionError("no security middleware installed")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Settings, dict[str, Service], Tokens]]:
    settings = make_settings(tmp_path)
    tokens = issue_tokens(settings)
    services = await build_services(settings)
    yield settings, services, tokens
    for svc in services.values():
        if svc.store is not None:
            await svc.store.close()


# -- the matrix --------------------------------------------------------------------------------


async def test_every_protected_endpoint_refuses_bad_tokens(
        world: tuple[Settings, dict[str, Service], Tokens]) -> None:
    _, services, tokens = world
    checked: dict[str, list[str]] = {}
    for name, svc in services.items():
        app = svc.create_app()
        async with client(app) as http:
            for method, path, route in endpoints(app):
                needed = required_scope(method, path, route)
                label = f"{name} {method} {path}"
                if needed is None:
                    assert path in PUBLIC_PATHS, label
                    continue
                checked.setdefault(name, []).append(f"{method} {path}")
                for headers, why in (({}, "no token"),
                                     ({"Authorization": "Basic b3BzOm9wcw=="}, "not bearer"),
                                     ({"Authorization": "Bearer"}, "empty bearer"),
                                     (bearer("qt_000000000000_" + "A" * 43), "unknown token"),
                                     (bearer(tokens.admin + "x"), "mangled token"),
                                     (bearer(tokens.revoked), "revoked token")):
                    r = await http.request(method, path, headers=headers)
                    assert r.status_code == 401, f"{label}: {why} -> {r.status_code}"
                    assert r.headers["www-authenticate"].startswith("Bearer")
                lower = tokens.below(needed)
                if lower is not None:
                    r = await http.request(method, path, headers=bearer(lower))
                    assert r.status_code == 403, f"{label}: wrong scope -> {r.status_code}"
                    assert f'scope="{needed.value}"' in r.headers["www-authenticate"]
                # The right token gets past the guard (so the path above really is the route).
                r = await http.request(method, path, headers=bearer(tokens.for_scope(needed)))
                assert r.status_code not in (401, 403, 429), f"{label}: {r.status_code}"
            # Unknown paths: 401 for strangers (no map of what exists), 404 for token holders.
            assert (await http.get("/no-such-path")).status_code == 401
            r = await http.get("/no-such-path", headers=bearer(tokens.read))
            assert r.status_code == 404
            assert (await http.get("/health")).status_code in (200, 503)
    assert set(checked) == set(SERVICE_NAMES)
    for name in SERVICE_NAMES:  # the shared routes, and the docs FastAPI adds, are covered
        assert {"GET /ready", "GET /metrics", "GET /openapi.json"} <= set(checked[name])
    assert "POST /generate-signal" in checked["ai-engine"]
    assert {"GET /status", "GET /trades", "POST /control/x"} <= set(checked["gateway"])


async def test_control_needs_admin_and_reaches_the_bus(
        world: tuple[Settings, dict[str, Service], Tokens]) -> None:
    _, services, tokens = world
    gateway = services["gateway"]
    bus = gateway.bus
    assert isinstance(bus, InMemoryBus)
    async with client(gateway.create_app()) as http:
        for token in (tokens.read, tokens.trade):
            assert (await http.post("/control/kill", headers=bearer(token))).status_code == 403
        r = await http.post("/control/reboot", headers=bearer(tokens.admin))
        assert r.status_code == 422  # validated: only the commands risk-safety knows
        for command in ("pause", "resume", "kill", "halt"):
            r = await http.post(f"/control/{command}", headers=bearer(tokens.admin))
            assert r.status_code == 202, r.text
            assert r.json()["command"] == command
    sent = [Message.decode(raw) for _, raw in await bus.entries("control")]
    assert [m.type for m in sent] == ["pause", "resume", "kill", "halt"]
    assert all(m.payload["by"] == "ops" for m in sent)


async def test_kill_switch_from_the_gateway_halts_risk_safety(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    tokens = issue_tokens(settings)
    services = await build_services(settings, ("gateway", "risk-safety"))
    risk = services["risk-safety"]
    await risk.start()
    try:
        async with client(services["gateway"].create_app()) as http:
            r = await http.post("/control/kill", headers=bearer(tokens.admin))
            assert r.status_code == 202
        await risk.catch_up("control")
        assert risk.engine.trading_state.name == "HALTED"  # type: ignore[attr-defined]
    finally:
        await risk.stop()
        assert services["gateway"].store is not None
        await services["gateway"].store.close()


async def test_metrics_allowlist_lets_the_scraper_in_without_a_token(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, security={"metrics_allow": ["10.9.0.0/24"]})
    services = await build_services(settings, ("gateway",))
    app = services["gateway"].create_app()
    async with client(app, ip="10.9.0.7") as http:
        r = await http.get("/metrics")
        assert r.status_code == 200
        assert "http_requests_total" in r.text
        assert (await http.get("/status")).status_code == 401  # only /metrics is allowlisted
    async with client(app, ip="10.9.1.7") as http:
        assert (await http.get("/metrics")).status_code == 401
    assert services["gateway"].store is not None
    await services["gateway"].store.close()


# -- rate limits -------------------------------------------------------------------------------


async def test_rate_limits_per_client_and_per_token_with_retry_after(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, security={
        "client_limit": {"rate": 0.5, "burst": 5},
        "token_limit": {"rate": 0.25, "burst": 3},
        "monitoring_limit": {"rate": 1, "burst": 20}})
    tokens = issue_tokens(settings)
    services = await build_services(settings, ("gateway",))
    app = services["gateway"].create_app()
    guard = guard_of(app)
    now = [1000.0]
    for limiter in (guard.client_limit, guard.token_limit, guard.monitoring_limit):
        limiter.clock = lambda: now[0]
    async with client(app, ip="192.0.2.1") as a, client(app, ip="192.0.2.2") as b:
        # per token: 3 in a burst, the 4th is refused whatever address it comes from
        for _ in range(3):
            assert (await a.get("/trades", headers=bearer(tokens.read))).status_code == 200
        r = await b.get("/trades", headers=bearer(tokens.read))
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) == 4  # 1 token at 0.25/s
        assert (await b.get("/trades", headers=bearer(tokens.trade))).status_code == 200
        # per client: A has used 3 of 5; unauthenticated requests count too (guessing)
        assert (await a.get("/trades")).status_code == 401
        assert (await a.get("/trades", headers=bearer(tokens.admin))).status_code == 200
        r = await a.get("/trades", headers=bearer(tokens.admin))
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) == 2  # 1 token at 0.5/s
        # monitoring has its own bucket: a throttled client can still be health-checked
        assert (await a.get("/health")).status_code in (200, 503)
        assert (await a.get("/metrics", headers=bearer(tokens.read))).status_code == 200
        # time heals
        now[0] += 2
        assert (await a.get("/trades", headers=bearer(tokens.admin))).status_code == 200
        # the monitoring bucket is generous but finite
        codes = [(await b.get("/health")).status_code for _ in range(25)]
        assert 429 in codes
        assert codes.count(429) <= 6
        r = await b.get("/health")
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        # refusals are counted
        metrics = (await a.get("/metrics", headers=bearer(tokens.read))).text
        assert 'http_rate_limited_total{limit="token",service="gateway"}' in metrics
    assert services["gateway"].store is not None
    await services["gateway"].store.close()


async def test_forwarded_for_is_believed_only_from_trusted_proxies(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, security={"client_limit": {"rate": 0.01, "burst": 1},
                                                 "trusted_proxies": ["10.0.0.2"]})
    services = await build_services(settings, ("gateway",))
    app = services["gateway"].create_app()
    async with client(app, ip="10.0.0.2") as proxy, client(app, ip="198.51.100.9") as direct:
        # Through the proxy, each real client has its own bucket.
        for ip in ("203.0.113.1", "203.0.113.2"):
            r = await proxy.get("/trades", headers={"X-Forwarded-For": f"{ip}, 10.0.0.2"})
            assert r.status_code == 401
        # A direct caller cannot dodge its bucket by forging the header.
        assert (await direct.get("/trades")).status_code == 401
        r = await direct.get("/trades", headers={"X-Forwarded-For": "203.0.113.77"})
        assert r.status_code == 429
    assert services["gateway"].store is not None
    await services["gateway"].store.close()


async def test_without_any_token_everything_but_health_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    services = await build_services(settings, ("gateway",))
    async with client(services["gateway"].create_app()) as http:
        assert (await http.get("/health")).status_code in (200, 503)
        assert (await http.get("/metrics")).status_code == 401
    assert services["gateway"].store is not None
    await services["gateway"].store.close()
