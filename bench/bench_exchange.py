"""Exchange connectivity benchmarks: real ccxt against the Binance-compatible simulator on
loopback.

* order round trip (ccxt ``create_order`` → simulator → our ``ExecutionReport``), p50/p99;
* query-by-client-id round trip, p50/p99;
* intents per second sustained through ``ReliablePlacer`` + the weighted limiter at Binance's
  rate (2400 weight/min, scaled to a 5 s window), with the count of 429s (must be 0);
* the same without a limit (the simulator's and client's own ceiling).

Run: .venv/bin/python bench/bench_exchange.py [--quick]
"""

from __future__ import annotations

import asyncio
import sys
import time

import numpy as np
from pydantic import SecretStr

from quantum_trader.domain.enums import OrderType, Side
from quantum_trader.domain.orders import client_order_id_for
from quantum_trader.exchange.ccxt_binance import BinanceSettings, CcxtBinanceExchange
from quantum_trader.exchange.protocol import OrderRequest
from quantum_trader.exchange.reliable import CircuitBreaker, ReliablePlacer
from quantum_trader.exchange.simulated import SimExchangeSettings
from quantum_trader.venue_sim import SimServer, SimServerConfig, SimState, load_series

SYM = "XRPUSDT"


def server(limit: int, window: float) -> SimServer:
    cfg = SimServerConfig(series=load_series(["sample:XRP"]), bar_seconds=0,
                          weight_limit=limit, weight_window_s=window,
                          exchange=SimExchangeSettings(initial_balance=1e9))
    return SimServer(SimState(cfg)).start()


def venue(srv: SimServer, limit: int, window: float) -> CcxtBinanceExchange:
    c = srv.state.config
    return CcxtBinanceExchange(BinanceSettings(
        mode="live", base_url=srv.url, api_key=SecretStr(c.api_key),
        api_secret=SecretStr(c.api_secret), weight_limit=limit, weight_window_s=window))


def pct(xs: list[float]) -> str:
    a = np.array(xs) * 1000
    return (f"p50 {np.percentile(a, 50):.2f} ms  p99 {np.percentile(a, 99):.2f} ms  "
            f"max {a.max():.2f} ms  (n={len(a)})")


async def round_trip(n: int) -> None:
    srv = server(10**9, 60)
    v = venue(srv, 10**9, 60)
    try:
        await v.connect()
        mark = srv.state.core.last_price(SYM) or 1.0
        px = round(mark / 2, 4)
        for i in range(20):  # warm up connections
            await v.submit(OrderRequest(f"w{i}", SYM, Side.BUY, OrderType.LIMIT, 100, price=px))
        submit, query = [], []
        for i in range(n):
            req = OrderRequest(client_order_id_for(f"rt-{i}"), SYM, Side.BUY, OrderType.LIMIT,
                               100.0, price=px)
            t0 = time.perf_counter()
            await v.submit(req)
            t1 = time.perf_counter()
            await v.query(SYM, req.client_order_id)
            t2 = time.perf_counter()
            submit.append(t1 - t0)
            query.append(t2 - t1)
        print(f"order round trip (ccxt create_order -> simulator -> report): {pct(submit)}")
        print(f"query by client id round trip:                            {pct(query)}")
    finally:
        await v.close()
        srv.stop()


async def sustained(limit: int, window: float, seconds: float, concurrency: int,
                    label: str) -> None:
    srv = server(limit, window)
    v = venue(srv, limit, window)
    placer = ReliablePlacer(v, _persist, CircuitBreaker())
    try:
        await v.connect()
        mark = srv.state.core.last_price(SYM) or 1.0
        px = round(mark / 2, 4)
        done = 0
        i = 0
        stop = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done, i
            while time.monotonic() < stop:
                i += 1
                req = OrderRequest(client_order_id_for(f"s-{i}"), SYM, Side.BUY,
                                   OrderType.LIMIT, 100.0, price=px)
                await placer.place(req)
                done += 1

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        dt = time.monotonic() - t0
        st = srv.state
        print(f"{label}: {done / dt:.1f} intents/s over {dt:.1f}s ({done} orders, "
              f"{concurrency} concurrent); 429s: {st.status_counts[429]}, 418s: "
              f"{st.status_counts[418]}; exchange orders = intents: "
              f"{st.order_count() == done}")
    finally:
        await v.close()
        srv.stop()


async def _persist(_req: OrderRequest) -> None:
    return None


async def main() -> None:
    quick = "--quick" in sys.argv
    await round_trip(300 if quick else 2000)
    # Binance's 2400 weight/minute, in 5 s windows (200 per window) so the run is short.
    await sustained(200, 5.0, 10 if quick else 30, 8,
                    "sustained at Binance's rate (2400/min, limiter headroom 90%)")
    await sustained(10**9, 60.0, 5 if quick else 10, 16, "unlimited (simulator + ccxt ceiling)")


if __name__ == "__main__":
    asyncio.run(main())
