"""The full cycle against the Binance-compatible simulator through the real ccxt client, as on
testnet: live bars from the simulator's accelerated clock → signal → risk → order → fill →
exit, with the market-data feed cut and restored in the middle."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from quantum_trader.domain.enums import OrderType, Side
from quantum_trader.exchange.ccxt_binance import BinanceSettings, CcxtBinanceExchange
from quantum_trader.exchange.protocol import OrderRequest
from quantum_trader.venue_sim import SimServer, SimServerConfig, SimState, load_series
from tests.support.cluster import (
    PIPELINE_SERVICES,
    clear_venue_keys,
    cluster,
    set_venue_keys,
)

pytestmark = pytest.mark.integration
TF = 1_800_000


def _bars(r: redis.Redis, ns: str) -> list[int]:
    out = []
    for _id, fields in r.xrange(f"{ns}qt:market.bars"):
        msg = json.loads(fields[b"d"])
        out.append(int(msg["payload"]["ts"]))
    return out


def test_live_cycle_on_the_simulator_with_a_feed_cut(tmp_path: Path) -> None:
    # The clock runs 9,000x fast and the services poll at 20 Hz: a venue limit scaled up to
    # match (the clients budget for whatever the venue advertises). The limits themselves
    # are tested at Binance's 2,400 in test_exchange_faults.py.
    state = SimState(SimServerConfig(series=load_series(["sample:XRP"]), bar_seconds=0.2,
                                     start_bar=600, weight_limit=24_000))
    srv = SimServer(state).start()
    set_venue_keys(tmp_path, state.config.api_key, state.config.api_secret)
    try:
        with cluster(tmp_path, **{
                "exchange.kind": "binance-live", "exchange.base_url": srv.url,
                "exchange.poll_s": 0.05, "exchange.stale_after_s": 1.0,
                "strategy.fast": 3, "strategy.slow": 8,
                "risk.cooldown_after_stop_ms": 0, "risk.max_price_deviation": 0.2,
                "exits.intent_ttl_ms": 43_200_000, "strategy.signal_ttl_ms": 43_200_000,
                "services.signal_max_age_ms": 60_000, "exchange.reconcile_s": 0.5}) as c:
            for name in PIPELINE_SERVICES:
                c.start(name)
            c.wait_for(lambda: c.query("select count(*) from closed_trades")[0][0] >= 1, 90,
                       "a round trip on the simulator")
            entry = c.query("select * from orders where purpose = 'ENTRY' and "
                            "status = 'FILLED' limit 1")[0]
            assert c.query(f"select count(*) from fills where order_id = '{entry['id']}'"
                           )[0][0] >= 1
            assert state.order_count(entry["client_order_id"]) == 1

            # An order placed on the venue behind our back is found and adopted as EXTERNAL.
            price = state.core.last_price("XRPUSDT")
            assert price is not None

            async def place_by_hand() -> None:
                hand = CcxtBinanceExchange(BinanceSettings(
                    mode="live", base_url=srv.url, api_key=SecretStr(state.config.api_key),
                    api_secret=SecretStr(state.config.api_secret)))
                try:
                    await hand.connect()
                    await hand.submit(OrderRequest("manual-1", "XRPUSDT", Side.BUY,
                                                   OrderType.LIMIT, 100.0,
                                                   price=round(price * 0.5, 4)))
                finally:
                    await hand.close()

            asyncio.run(place_by_hand())
            c.wait_for(lambda: c.query("select count(*) from orders where client_order_id = "
                                       "'manual-1' and reason like 'EXTERNAL%'")[0][0] == 1,
                       45, "the external order adopted by reconciliation")

            r = redis.Redis()
            # Cut the feed: every klines request is dropped.
            state.config.faults.paths = ("/fapi/v1/klines",)
            state.config.faults.probabilities = {"drop": 1.0}
            degraded = c.wait_for(
                lambda: (h := c.health("market-data"))["status"] == "DEGRADED" and h, 15,
                "market-data DEGRADED on a stale feed")
            assert any("stale" in x for x in degraded["reasons"])
            entries_at_cut = c.query("select count(*) from orders where purpose='ENTRY'")[0][0]
            time.sleep(2.0)  # ~10 bars close on the simulator meanwhile
            assert c.query("select count(*) from orders where purpose='ENTRY'"
                           )[0][0] == entries_at_cut  # no trade on stale data
            state.config.faults.probabilities = {}  # restored
            c.wait_for(lambda: c.health("market-data")["status"] == "OK", 45,
                       "market-data OK after the feed is back")
            c.wait_for(lambda: c.query("select count(*) from closed_trades")[0][0] >= 2, 150,
                       "another round trip after the cut")
            ts = _bars(r, c.namespace)
            assert ts == sorted(set(ts)), "a bar published twice or out of order"
            assert all(b - a == TF for a, b in itertools.pairwise(ts)), \
                "a gap was not backfilled"
            # Every position in our store matches the venue (once in-flight fills are read).
            def ours() -> dict[str, float]:
                return {row["symbol"]: row["qty"] for row in
                        c.query("select symbol, qty from positions where qty <> 0")}

            def venue() -> dict[str, float]:
                return {p.symbol: p.qty for p in state.core.positions()}

            c.wait_for(lambda: ours() == venue(), 10, "our positions to match the venue")
    finally:
        srv.stop()
        clear_venue_keys()
