"""kill -9 of execution between sending an order and its acknowledgement, against the
Binance-compatible simulator through real ccxt: after restart the order is found by client id
and adopted; no second order."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantum_trader.venue_sim import SimServer, SimServerConfig, SimState, load_series
from tests.support.cluster import (
    PIPELINE_SERVICES,
    clear_venue_keys,
    cluster,
    set_venue_keys,
)

pytestmark = pytest.mark.integration


def test_kill_9_between_send_and_ack_adopts_the_order(tmp_path: Path) -> None:
    # The clock runs ~6000x fast: a venue limit scaled to match (the clients budget for
    # what the venue advertises; the limits themselves are tested in test_exchange_faults).
    state = SimState(SimServerConfig(series=load_series(["sample:XRP"]), bar_seconds=0.3,
                                     start_bar=600, weight_limit=24_000))
    state.config.faults.timeout_s = 30.0  # the held answer outlives the process
    srv = SimServer(state).start()
    set_venue_keys(tmp_path, state.config.api_key, state.config.api_secret)
    try:
        with cluster(tmp_path, **{
                "exchange.kind": "binance-live", "exchange.base_url": srv.url,
                "exchange.poll_s": 0.05, "exchange.stale_after_s": 5.0,
                "strategy.fast": 3, "strategy.slow": 8, "risk.cooldown_after_stop_ms": 0,
                "risk.max_price_deviation": 0.2, "exits.intent_ttl_ms": 43_200_000,
                "strategy.signal_ttl_ms": 43_200_000,
                "services.signal_max_age_ms": 600_000}) as c:
            for name in PIPELINE_SERVICES:
                c.start(name)
            c.wait_for(lambda: c.health("execution")["status"] in ("OK", "DEGRADED"), 30,
                       "execution up")
            # The next order POST is processed by the venue but its answer is held back.
            state.force_fault("timeout", "/fapi/v1/order", "POST")
            row = c.wait_for(lambda: (rows := c.query(
                "select client_order_id from orders where status in ('NEW','SUBMITTED') "
                "and purpose = 'ENTRY'")) and rows[0], 90, "an entry sent and unanswered")
            cid = row["client_order_id"]
            c.wait_for(lambda: state.order_count(cid) == 1, 10, "the venue to have it")
            assert c.kill("execution") == -9  # dies waiting for the acknowledgement
            c.start("execution")
            c.wait_for(lambda: c.query(f"select status from orders where client_order_id = "
                                       f"'{cid}'")[0]["status"] in
                       ("ACCEPTED", "PARTIALLY_FILLED", "FILLED"), 30,
                       "the order found by client id and adopted")
            assert state.order_count(cid) == 1  # no second order
            assert c.query("select count(*) from orders where client_order_id = "
                           f"'{cid}'")[0][0] == 1
    finally:
        srv.stop()
        clear_venue_keys()
