"""Builds the configured bus adapter."""

from __future__ import annotations

from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import Bus
from quantum_trader.bus.topics import DEFAULT_POLICY
from quantum_trader.config import Settings


def make_bus(settings: Settings) -> Bus:
    svc = settings.services
    if svc.bus == "memory":
        # The embedded services node runs like production: loss-tolerant topics keep the newest.
        return InMemoryBus(policy=DEFAULT_POLICY)
    import importlib

    # Imported lazily: embedded mode never needs redis.
    redis_streams = importlib.import_module("quantum_trader.bus.redis_streams")
    bus: Bus = redis_streams.RedisStreamBus(svc.redis_url, namespace=svc.bus_namespace)
    return bus
