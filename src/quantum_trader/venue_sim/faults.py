"""Injected faults: the ways a venue's answer goes wrong, with or without the request done.

Each request to a faulted path draws at most one fault (``FaultConfig.probabilities``, from a
seeded generator so a run can be repeated), or takes the one a test forced on the next request
to that path. What the client sees, and whether the venue acted:

=============  =====================================================  =========
kind           answer                                                 processed
=============  =====================================================  =========
timeout        held ``timeout_s``, then 504 -1007 (the client gave    yes
               up long before)
timeout_408    408 with an empty body (Binance's gateway does this)   yes
error_5xx      503 -1000                                              with
                                                                      p_5xx_processed
rate_limit     429 -1003, ``Retry-After: retry_after_s``              no
clock_skew     400 -1021 timestamp outside the recvWindow             no
drop           the connection closed, no answer                       yes
=============  =====================================================  =========

Every "yes" is an unknown outcome for the client: the order may well be on the book.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from quantum_trader.venue_sim.wire import send_json, send_raw

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

FAULT_KINDS = ("timeout", "timeout_408", "error_5xx", "rate_limit", "clock_skew", "drop")


@dataclass(slots=True)
class FaultConfig:
    """Probability per request of each fault (they are exclusive; total <= 1)."""

    probabilities: dict[str, float] = field(default_factory=dict)
    timeout_s: float = 2.0
    p_5xx_processed: float = 0.5
    retry_after_s: float = 1.0  # Binance sends whole seconds; tests may use fractions
    paths: tuple[str, ...] = ("/fapi",)  # path prefixes faults apply to
    seed: int | None = None

    def __post_init__(self) -> None:
        unknown = set(self.probabilities) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; use {FAULT_KINDS}")
        if sum(self.probabilities.values()) > 1.0 + 1e-9:
            raise ValueError("fault probabilities add up to more than 1")


class FaultInjector:
    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)  # reproducible faults; nothing secret
        self._lock = threading.Lock()
        self._forced: list[tuple[str, str, str]] = []
        self.injected: Counter[str] = Counter()

    def force(self, kind: str, path: str, method: str = "POST") -> None:
        """Inject ``kind`` into the next ``method path`` request (deterministic tests)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use {FAULT_KINDS}")
        with self._lock:
            self._forced.append((method.upper(), path, kind))

    def pick(self, path: str, method: str) -> str | None:
        with self._lock:
            for i, (m, p, kind) in enumerate(self._forced):
                if m == method and p == path:
                    del self._forced[i]
                    self.injected[kind] += 1
                    return kind
            fc = self.config
            if not fc.probabilities or not path.startswith(fc.paths):
                return None
            x = self._rng.random()
            for kind in FAULT_KINDS:
                x -= fc.probabilities.get(kind, 0.0)
                if x < 0:
                    self.injected[kind] += 1
                    return kind
            return None

    async def inject(self, kind: str, app: App, scope: Scope, receive: Receive, send: Send,
                     used: int, status_counts: Counter[int]) -> None:
        """Answer one request with fault ``kind`` (``app`` processes it where the table says)."""
        fc = self.config
        if kind == "rate_limit":
            status_counts[429] += 1
            await send_json(send, 429, {"code": -1003, "msg": "Too many requests (injected)."},
                            used, fc.retry_after_s)
            return
        if kind == "clock_skew":
            status_counts[400] += 1
            await send_json(send, 400, {"code": -1021, "msg": "Timestamp for this request is "
                                        "outside of the recvWindow."}, used)
            return
        if kind == "error_5xx":
            with self._lock:
                processed = self._rng.random() < fc.p_5xx_processed
            if not processed:
                status_counts[503] += 1
                await send_json(send, 503, {"code": -1000, "msg": "Service Unavailable."},
                                used)
                return

        async def swallow(_msg: Message) -> None:
            return None

        await app(scope, receive, swallow)  # done on the venue; the answer is lost
        if kind == "error_5xx":
            status_counts[503] += 1
            await send_json(send, 503, {"code": -1000, "msg": "Unknown error, please check "
                                        "your request or try again later."}, used)
        elif kind == "timeout_408":
            status_counts[408] += 1
            await send_raw(send, 408, b"", used)
        elif kind == "timeout":
            await asyncio.sleep(fc.timeout_s)
            await send_json(send, 504, {"code": -1007, "msg": "Timeout waiting for response "
                                        "from backend server."}, used)
        else:  # drop: close the socket under the client
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if transport is not None:
                transport.close()
                await asyncio.sleep(0)  # let the server see the disconnect
            else:
                await asyncio.sleep(fc.timeout_s)
            # Written to a closed socket (dropped); keeps the server from logging an error.
            await send_json(send, 500, {}, used)


__all__ = ["FAULT_KINDS", "FaultConfig", "FaultInjector"]
