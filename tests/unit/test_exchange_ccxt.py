"""The ccxt adapter's offline parts: venue switch, secrets, pre-send checks."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from quantum_trader.domain.enums import OrderType, Side
from quantum_trader.domain.instruments import Instrument
from quantum_trader.exchange.ccxt_binance import BinanceSettings, CcxtBinanceExchange
from quantum_trader.exchange.errors import OrderRefused
from quantum_trader.exchange.protocol import OrderRequest

KEY, SECRET = "k3y-abcdef123456", "s3cret-zyxw987654"


def make(**kw: object) -> CcxtBinanceExchange:
    return CcxtBinanceExchange(BinanceSettings(api_key=SecretStr(KEY),
                                               api_secret=SecretStr(SECRET),
                                               **kw))  # type: ignore[arg-type]


def fapi_url(x: CcxtBinanceExchange) -> str:
    return str(x._x.urls["api"]["fapiPrivate"])


async def test_venue_switch() -> None:
    live, testnet, demo = make(mode="live"), make(mode="testnet"), make(mode="demo")
    sim = make(mode="live", base_url="http://127.0.0.1:8900/")
    try:
        assert fapi_url(live).startswith("https://fapi.binance.com/fapi")
        assert fapi_url(testnet).startswith("https://testnet.binancefuture.com/fapi")
        assert "demo" in fapi_url(demo)
        assert fapi_url(sim) == "http://127.0.0.1:8900/fapi/v1"
        assert all(u.startswith("http://127.0.0.1:8900/") for u in sim._x.urls["api"].values()
                   if isinstance(u, str) and u.startswith("http"))
    finally:
        for x in (live, testnet, demo, sim):
            await x.close()


async def test_secrets_do_not_leak_into_reprs() -> None:
    x = make(mode="live")
    try:
        for text in (repr(x), str(x), repr(x.settings), str(x.settings)):
            assert KEY not in text
            assert SECRET not in text
    finally:
        await x.close()


async def test_filters_are_checked_before_sending() -> None:
    x = make(mode="live")
    try:
        x.instruments["XRPUSDT"] = Instrument("XRPUSDT", tick_size=0.0001, step_size=0.1,
                                              min_qty=0.1, min_notional=5.0)
        x._ccxt_symbol["XRPUSDT"] = "XRP/USDT:USDT"
        x.update_mark("XRPUSDT", 0.5)

        def order(qty: float, **kw: object) -> OrderRequest:
            return OrderRequest("c1", "XRPUSDT", Side.BUY, OrderType.MARKET, qty,
                                **kw)  # type: ignore[arg-type]

        x.check(order(10.0))  # 5 USDT: exactly the minimum
        with pytest.raises(OrderRefused, match=r"minimum notional 5\.0"):
            x.check(order(9.9))
        x.check(order(1.0, reduce_only=True))  # exits are exempt from min notional
        with pytest.raises(OrderRefused, match="step size"):
            x.check(order(10.05))
        with pytest.raises(OrderRefused, match="a limit order needs a price"):
            x.check(OrderRequest("c", "XRPUSDT", Side.BUY, OrderType.LIMIT, 20.0))
        with pytest.raises(OrderRefused, match="unknown symbol 'XRPUSD'"):
            x.check(OrderRequest("c", "XRPUSD", Side.BUY, OrderType.MARKET, 20.0))
        assert x.requests_sent == 0
    finally:
        await x.close()


def test_keys_come_from_the_config_secrets() -> None:
    from quantum_trader.config import Settings

    cfg = Settings.model_validate({"leverage": 4, "secrets": {
        "exchange_api_key": KEY, "exchange_api_secret": SECRET}})
    bs = BinanceSettings.from_config(cfg, "demo", symbols=("XRPUSDT",))
    assert bs.api_key is not None
    assert bs.api_key.get_secret_value() == KEY
    assert bs.leverage == {"XRPUSDT": 4}
    assert SECRET not in repr(bs)
