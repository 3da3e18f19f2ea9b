"""The ai-engine service with a real (quickly trained) production model: a bar fed through the
bus produces the same signal as ``POST /generate-signal`` for that bar; bad requests get 422."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from quantum_trader.ai.registry import ModelRegistry
from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import Message
from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.security.tokens import TokenStore
from quantum_trader.services.ai_engine import AIEngineService, signal_source_for
from quantum_trader.services.messages import bar_id, bar_payload
from tests.unit.test_ai_engine import AI
from tests.unit.test_ai_registry import register_quick


async def test_bar_through_the_service_equals_generate_signal(tmp_path: Path) -> None:
    bars = load_sample("XRP").slice(5_000, 7_000)
    registry = ModelRegistry(tmp_path / "models")
    registry.promote(register_quick(registry, bars.slice(0, 1_500), AI))
    token, _ = TokenStore(tmp_path / "tokens.json").create("test", ["trade"])
    settings = Settings.model_validate({"paths": {"registry_dir": str(tmp_path / "models"),
                                                  "state_dir": str(tmp_path)},
                                        "ai": AI.model_dump(),
                                        "security": {  # this test is not about rate limits
                                            "client_limit": {"rate": 1e4, "burst": 10_000},
                                            "token_limit": {"rate": 1e4, "burst": 10_000}},
                                        "services": {"bus": "memory"}})
    bus = InMemoryBus()
    service = AIEngineService(settings, bus, None, signal_source_for(settings))
    assert type(service.source).__name__ == "AIEngine"
    await bus.ensure_group("signals", "probe")
    await service.start()
    app = service.create_app()
    compared = 0
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://ai",
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            r = await client.post("/generate-signal", json={"symbol": "XRPUSDT",
                                                            "timeframe": "30m"})
            assert r.status_code == 422  # no bar seen yet
            for bar in bars.slice(1_500, 1_900):
                await bus.publish("market.bars", Message("bar", bar_payload(bar), 0,
                                                         bar_id(bar), bar_id(bar)))
                for _ in range(200):
                    if service.last_bar.get(bar.symbol) == bar:
                        break
                    await asyncio.sleep(0.002)
                got = await bus.read("signals", "probe", "p", count=10, block_ms=0)
                await bus.ack("signals", "probe", [d.entry_id for d in got])
                r = await client.post("/generate-signal",
                                      json={"symbol": "XRPUSDT", "timeframe": "30m"})
                if r.status_code == 503:  # the model is still warming up its features
                    assert not got
                    continue
                assert r.status_code == 200, r.text
                for d in got:
                    assert d.message is not None
                    assert d.message.payload == r.json()
                    compared += 1
            for body in ({"symbol": "NOPEUSDT", "timeframe": "30m"},
                         {"symbol": "XRPUSDT", "timeframe": "7m"},
                         {"symbol": "XRPUSDT"}, {"symbol": 3, "timeframe": "30m"}):
                r = await client.post("/generate-signal", json=body)
                assert r.status_code == 422, (body, r.text)
    finally:
        await service.stop()
    assert compared >= 10
