"""Serving the simulator: ``SimApp`` (the ASGI application: weight limits and faults around the
routes) and ``SimServer`` (uvicorn on a loopback port in a background thread, for tests,
benchmarks and the ``exchange-sim`` command).

Per request, in order: count it, charge its weight to the client's IP (429/418 answered here,
never reaching the venue), draw a fault, then run the route. Every answer carries
``X-MBX-USED-WEIGHT-1M``. Admin paths (``/sim/...``) skip all of it.
"""

from __future__ import annotations

import math
import threading
import time
from urllib.parse import parse_qsl

from quantum_trader.exchange.ratelimit import binance_weight
from quantum_trader.marketdata.series import BarSeries
from quantum_trader.venue_sim.faults import Message, Receive, Scope, Send
from quantum_trader.venue_sim.routes import build_api
from quantum_trader.venue_sim.state import SimState
from quantum_trader.venue_sim.wire import ApiError, send_json


class SimApp:
    def __init__(self, state: SimState) -> None:
        self.state = state
        self.api = build_api(state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/sim/"):
            await self.api(scope, receive, send)
            return
        st = self.state
        method: str = scope["method"]
        st.requests[f"{method} {path}"] += 1
        ip = (scope.get("client") or ("?", 0))[0]
        query = dict(parse_qsl(scope.get("query_string", b"").decode()))
        try:
            used = st.charge(ip, binance_weight(path, query))
        except ApiError as exc:
            st.status_counts[exc.status] += 1
            await send_json(send, exc.status, {"code": exc.code, "msg": exc.msg},
                            st.used_weight(ip), max(1, math.ceil(st.retry_after(ip))))
            return
        extra = [(b"x-mbx-used-weight-1m", str(used).encode())]

        async def send_with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                msg = dict(msg)
                msg["headers"] = list(msg.get("headers", [])) + extra
                st.status_counts[int(msg["status"])] += 1
            await send(msg)

        fault = st.pick_fault(path, method)
        if fault is None:
            await self.api(scope, receive, send_with_headers)
        else:
            await st.faults.inject(fault, self.api, scope, receive, send, used,
                                   st.status_counts)


class SimServer:
    """The simulator on a loopback port in a background thread."""

    def __init__(self, state: SimState, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.state = state
        self.host = host
        cfg = uvicorn.Config(SimApp(state), host=host, port=port, log_level="warning",
                             lifespan="off", access_log=False, timeout_keep_alive=30)
        self._server = uvicorn.Server(cfg)
        self._thread: threading.Thread | None = None
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SimServer:
        self._thread = threading.Thread(target=self._server.run, name="exchange-sim",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the exchange simulator did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def load_series(specs: list[str]) -> list[BarSeries]:
    """Bar series from source specs (``sample:XRP``, a CSV or parquet file)."""
    from quantum_trader.marketdata.sample import resolve_source

    return [resolve_source(s) for s in specs]


__all__ = ["SimApp", "SimServer", "load_series"]
