"""Binance USDⓈ-M's JSON, both ways: request parameters in, answers and errors out.

Numbers go out as Binance sends them, decimal strings (``"0.5"``, never ``5e-01``); ids and
times as integers, except where Binance itself sends a string (an algo order's
``actualOrderId``, an income row's ``tradeId``). An error is HTTP 4xx/5xx with
``{"code": <negative int>, "msg": <text>}``, the codes and texts Binance uses.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from quantum_trader.domain.instruments import Instrument

if TYPE_CHECKING:
    from quantum_trader.venue_sim.state import (
        IncomeRecord,
        Kline,
        PositionRecord,
        SimOrder,
        TradeRecord,
    )

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

#: Binance's rule for client order ids (and client algo ids).
CLIENT_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")


class ApiError(Exception):
    """A Binance error answer: HTTP status plus ``{"code": .., "msg": ..}``."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status


#: What Binance says for the rejections the matching core produces (its own texts are
#: more detailed, but clients match on Binance's).
REJECTION_TEXT = {
    -1111: "Precision is over the maximum defined for this asset.",
    -2019: "Margin is insufficient.",
    -2021: "Order would immediately trigger.",
    -2022: "ReduceOnly Order is rejected.",
    -4003: "Quantity less than or equal to zero.",
    -4014: "Price not increased by tick size.",
    -4116: "ClientOrderId is duplicated.",
}


def rejection(code: int, core_text: str, inst: Instrument) -> ApiError:
    if code == -4164:
        return ApiError(code, f"Order's notional must be no smaller than "
                              f"{fmt(inst.min_notional)} (unless you choose reduce only).")
    return ApiError(code, REJECTION_TEXT.get(code, core_text))


# --- parameters ----------------------------------------------------------------------------

def need(p: dict[str, str], key: str) -> str:
    v = p.get(key)
    if v is None or v == "":
        raise ApiError(-1102, f"Mandatory parameter '{key}' was not sent, was empty/null, "
                              "or malformed.")
    return v


def num(p: dict[str, str], key: str) -> float:
    v = need(p, key)
    try:
        x = float(v)
    except ValueError:
        raise ApiError(-1102, f"Parameter '{key}' was malformed: {v!r}.") from None
    if not math.isfinite(x):
        raise ApiError(-1102, f"Parameter '{key}' was malformed: {v!r}.")
    return x


def integer(p: dict[str, str], key: str) -> int:
    v = need(p, key)
    try:
        return int(v)
    except ValueError:
        raise ApiError(-1102, f"Parameter '{key}' was malformed: {v!r}.") from None


def opt_int(p: dict[str, str], key: str) -> int | None:
    return integer(p, key) if p.get(key) else None


def flag(p: dict[str, str], key: str) -> bool:
    return p.get(key, "false").lower() == "true"


def client_id(p: dict[str, str], key: str) -> str | None:
    v = p.get(key)
    if not v:
        return None
    if not CLIENT_ID.match(v):
        raise ApiError(-1100, f"Illegal characters found in parameter '{key}'; legal range is "
                              r"'^[\.A-Z\:/a-z0-9_-]{1,36}$'.")
    return v


# --- answers -------------------------------------------------------------------------------

def fmt(x: float) -> str:
    """A decimal string with the float's full precision (its shortest round-trip form, never
    an exponent). Binance rounds to the symbol's precision; the simulator's fills carry
    slippage off the tick grid, and every digit is sent so a client's books and the venue's
    agree to the last bit (a backtest of the same bars too)."""
    if not math.isfinite(x):
        return "0"
    text = format(Decimal(repr(float(x))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def order_json(o: SimOrder) -> dict[str, Any]:
    """A matching-engine order (/fapi/v1/order, openOrders, allOrders)."""
    return {"orderId": o.order_id, "symbol": o.symbol, "status": o.status,
            "clientOrderId": o.client_id, "price": fmt(o.price), "avgPrice": fmt(o.avg_price),
            "origQty": fmt(o.qty), "executedQty": fmt(o.executed), "cumQty": fmt(o.executed),
            "cumQuote": fmt(o.cum_quote), "timeInForce": "GTC", "type": o.type,
            "reduceOnly": o.reduce_only, "closePosition": False, "side": o.side.value,
            "positionSide": "BOTH", "stopPrice": fmt(o.stop_price),
            "workingType": "CONTRACT_PRICE", "priceProtect": False, "origType": o.type,
            "priceMatch": "NONE", "selfTradePreventionMode": "EXPIRE_MAKER", "goodTillDate": 0,
            "time": o.time, "updateTime": o.update_time}


def algo_json(o: SimOrder, actual: SimOrder | None) -> dict[str, Any]:
    """A conditional order of the Algo Service (/fapi/v1/algoOrder). Like Binance it says
    nothing of fills: those belong to ``actualOrderId``, the order it became."""
    return {"algoId": o.order_id, "clientAlgoId": o.client_id, "algoType": "CONDITIONAL",
            "orderType": o.type, "symbol": o.symbol, "side": o.side.value,
            "positionSide": "BOTH", "timeInForce": "GTC", "quantity": fmt(o.qty),
            "algoStatus": o.status,
            "actualOrderId": str(actual.order_id) if actual is not None else "",
            "actualPrice": fmt(actual.avg_price) if actual is not None else "0",
            "triggerPrice": fmt(o.stop_price), "price": "0", "icebergQuantity": None,
            "tpTriggerPrice": "0", "tpPrice": "0", "slTriggerPrice": "0", "slPrice": "0",
            "tpOrderType": "", "selfTradePreventionMode": "EXPIRE_MAKER",
            "workingType": "CONTRACT_PRICE", "priceMatch": "NONE", "closePosition": False,
            "priceProtect": False, "reduceOnly": o.reduce_only, "createTime": o.time,
            "updateTime": o.update_time, "triggerTime": o.trigger_time, "goodTillDate": 0}


def trade_json(t: TradeRecord) -> dict[str, Any]:
    """A row of /fapi/v1/userTrades (Binance gives no client order id here)."""
    return {"symbol": t.symbol, "id": t.id, "orderId": t.order_id, "side": t.side.value,
            "price": fmt(t.price), "qty": fmt(t.qty), "realizedPnl": fmt(t.realized_pnl),
            "marginAsset": "USDT", "quoteQty": fmt(t.quote_qty), "commission": fmt(t.commission),
            "commissionAsset": "USDT", "time": t.time, "positionSide": "BOTH",
            "buyer": t.side.value == "BUY", "maker": t.maker}


def income_json(r: IncomeRecord) -> dict[str, Any]:
    return {"symbol": r.symbol, "incomeType": r.income_type, "income": fmt(r.income),
            "asset": "USDT", "info": r.info, "time": r.time, "tranId": r.tran_id,
            "tradeId": r.trade_id}


def position_json(p: PositionRecord, update_time: int) -> dict[str, Any]:
    margin = p.isolated_wallet
    upnl = p.unrealized_pnl
    return {"symbol": p.symbol, "positionSide": "BOTH", "positionAmt": fmt(p.qty),
            "entryPrice": fmt(p.entry_price), "breakEvenPrice": fmt(p.entry_price),
            "markPrice": fmt(p.mark_price), "unRealizedProfit": fmt(upnl),
            "liquidationPrice": fmt(p.liquidation_price), "isolatedMargin": fmt(margin + upnl),
            "notional": fmt(p.qty * p.mark_price), "marginAsset": "USDT",
            "isolatedWallet": fmt(margin), "initialMargin": fmt(margin),
            "maintMargin": fmt(abs(p.qty) * p.mark_price * p.maint_margin_rate),
            "positionInitialMargin": fmt(margin), "openOrderInitialMargin": "0", "adl": 0,
            "bidNotional": "0", "askNotional": "0", "leverage": str(int(p.leverage)),
            "marginType": p.margin_type, "isolated": p.margin_type == "isolated",
            "maxNotionalValue": "1000000", "updateTime": update_time}


def account_json(wallet: float, available: float, positions: list[dict[str, Any]],
                 update_time: int) -> dict[str, Any]:
    upnl = sum(float(p["unRealizedProfit"]) for p in positions)
    im = sum(float(p["initialMargin"]) for p in positions)
    asset = {"asset": "USDT", "walletBalance": fmt(wallet), "unrealizedProfit": fmt(upnl),
             "marginBalance": fmt(wallet + upnl), "maintMargin": "0", "initialMargin": fmt(im),
             "positionInitialMargin": fmt(im), "openOrderInitialMargin": "0",
             "crossWalletBalance": fmt(wallet), "crossUnPnl": "0",
             "availableBalance": fmt(available), "maxWithdrawAmount": fmt(available),
             "marginAvailable": True, "updateTime": update_time}
    return {"feeTier": 0, "canTrade": True, "canDeposit": True, "canWithdraw": True,
            "updateTime": 0, "multiAssetsMargin": False, "tradeGroupId": -1,
            "totalInitialMargin": fmt(im), "totalMaintMargin": "0",
            "totalWalletBalance": fmt(wallet), "totalUnrealizedProfit": fmt(upnl),
            "totalMarginBalance": fmt(wallet + upnl), "totalPositionInitialMargin": fmt(im),
            "totalOpenOrderInitialMargin": "0", "totalCrossWalletBalance": fmt(wallet),
            "totalCrossUnPnl": "0", "availableBalance": fmt(available),
            "maxWithdrawAmount": fmt(available), "assets": [asset], "positions": positions}


def balance_json(account: dict[str, Any]) -> list[dict[str, Any]]:
    a = account["assets"][0]
    return [{"accountAlias": "SimAlias", "asset": "USDT", "balance": a["walletBalance"],
             "crossWalletBalance": a["crossWalletBalance"], "crossUnPnl": "0",
             "availableBalance": a["availableBalance"],
             "maxWithdrawAmount": a["maxWithdrawAmount"], "marginAvailable": True,
             "updateTime": a["updateTime"]}]


def kline_row(k: Kline) -> list[Any]:
    return [k.open_time, fmt(k.open), fmt(k.high), fmt(k.low), fmt(k.close), fmt(k.volume),
            k.close_time, fmt(k.volume * k.close), 0, "0", "0", "0"]


def exchange_info_json(instruments: Iterable[Instrument], weight_limit: int,
                       server_time: int) -> dict[str, Any]:
    symbols = []
    for inst in instruments:
        sym = inst.symbol
        base = sym[:-4] if sym.endswith("USDT") else sym
        price_prec = max(0, -math.floor(math.log10(inst.tick_size) + 1e-9))
        qty_prec = max(0, -math.floor(math.log10(inst.step_size) + 1e-9))
        symbols.append({
            "symbol": sym, "pair": sym, "contractType": "PERPETUAL",
            "deliveryDate": 4133404800000, "onboardDate": 1569398400000, "status": "TRADING",
            "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000",
            "baseAsset": base, "quoteAsset": "USDT", "marginAsset": "USDT",
            "pricePrecision": price_prec, "quantityPrecision": qty_prec,
            "baseAssetPrecision": 8, "quotePrecision": 8, "underlyingType": "COIN",
            "underlyingSubType": [], "settlePlan": 0, "triggerProtect": "0.0500",
            "liquidationFee": "0.012500", "marketTakeBound": "0.05",
            "maxMoveOrderLimit": 10000,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": fmt(inst.tick_size),
                 "maxPrice": "10000000", "tickSize": fmt(inst.tick_size)},
                {"filterType": "LOT_SIZE", "minQty": fmt(inst.min_qty),
                 "maxQty": "10000000", "stepSize": fmt(inst.step_size)},
                {"filterType": "MARKET_LOT_SIZE", "minQty": fmt(inst.min_qty),
                 "maxQty": "10000000", "stepSize": fmt(inst.step_size)},
                {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
                {"filterType": "MIN_NOTIONAL", "notional": fmt(inst.min_notional)},
                {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500",
                 "multiplierDown": "0.9500", "multiplierDecimal": "4"}],
            "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT",
                           "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"],
            "timeInForce": ["GTC", "IOC", "FOK", "GTX"], "permissionSets": ["GRID"]})
    return {"timezone": "UTC", "serverTime": server_time, "futuresType": "U_MARGINED",
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                 "limit": weight_limit},
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1,
                 "limit": 1200}],
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True,
                        "autoAssetExchange": "-10000"}],
            "symbols": symbols}


# --- raw ASGI answers (outside FastAPI: limits and faults) --------------------------------

async def send_json(send: Send, status: int, body: Any, used: int,
                    retry_after: float | None = None) -> None:
    data = json.dumps(body).encode()
    await send_raw(send, status, data, used, retry_after, b"application/json")


async def send_raw(send: Send, status: int, data: bytes, used: int,
                   retry_after: float | None = None,
                   content_type: bytes | None = None) -> None:
    headers = [(b"content-length", str(len(data)).encode()),
               (b"x-mbx-used-weight-1m", str(used).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    if retry_after is not None:
        value = retry_after if retry_after < 1 else math.ceil(retry_after)
        headers.append((b"retry-after", f"{value:g}".encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
