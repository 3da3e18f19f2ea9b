"""The ``TradeStore`` contract, the same cases on SQLite and PostgreSQL (``conftest.py``).

What every adapter must do: round-trip every ``StoreEvent`` type exactly; write a batch as one
transaction (all of it or nothing); keep the first write of a fact and the last write of a
state; claim an order once per client id; keep cursors, trades and outbox messages in the one
commit that caused them; publish the outbox in commit order; resume the trading state by
insertion order, never by ts.
"""

from __future__ import annotations

import struct
import typing
from dataclasses import fields, is_dataclass, replace
from typing import Any, TypeVar

import numpy as np
import pytest
from sqlalchemy import inspect, text, update
from sqlalchemy.engine import Connection

from quantum_trader.domain.enums import (
    Direction,
    IntentPurpose,
    Liquidity,
    OrderStatus,
    OrderType,
    Side,
    TradingState,
)
from quantum_trader.domain.models import Fill, FundingPayment, OrderIntent, RiskDecision, Signal
from quantum_trader.domain.orders import Order, client_order_id_for
from quantum_trader.domain.portfolio import EquityPoint
from quantum_trader.domain.records import (
    AuditEvent,
    Checkpoint,
    ClosedTrade,
    Cursor,
    OutboundMessage,
    PositionSnapshot,
    SeenBar,
)
from quantum_trader.domain.venue import OrderOrigin, VenueTrade
from quantum_trader.store import SqlTradeStore, StoreError
from quantum_trader.store import schema as t
from quantum_trader.store.protocol import StoreEvent, TradeStore
from quantum_trader.store.sql import DECISIONS, ORDERS
from tests.contract.conftest import Backend

E = TypeVar("E")

T0 = 1_717_200_000_000
TRACE = "trace-contract"
# Doubles that print, parse and store badly if anything on the way is not an IEEE double.
# (-0.0 is left out: SQLite stores a REAL with no fraction as an integer, and reads 0.0.)
AWKWARD = (0.1 + 0.2, 1 / 3, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
           65_000.123456789012, 2.0**53 + 2, -1e-300)


# --- sample events -----------------------------------------------------------------------------


def intent(intent_id: str = "int-1") -> OrderIntent:
    return OrderIntent(
        id=intent_id, symbol="BTCUSDT", side=Side.BUY, quantity=AWKWARD[0],
        order_type=OrderType.LIMIT, purpose=IntentPurpose.ENTRY, ts=T0 + 1,
        expires_at=T0 + 60_000, trace_id=TRACE, reduce_only=False, price=64_999.5,
        stop_price=None, signal_id="sig-1", reason="signal", reference_price=AWKWARD[1],
        stop_loss=63_000.0, take_profit=None, tag="entry",
    )


def order(intent_id: str = "int-1", **changes: Any) -> Order:
    cid = client_order_id_for(intent_id)
    o = Order(
        id=cid, client_order_id=cid, intent_id=intent_id, symbol="BTCUSDT", side=Side.BUY,
        order_type=OrderType.LIMIT, quantity=0.5, purpose=IntentPurpose.ENTRY,
        created_ts=T0 + 2, trace_id=TRACE, price=64_999.5, updated_ts=T0 + 2,
        expires_at=T0 + 60_000,
    )
    for name, value in changes.items():
        setattr(o, name, value)
    return o


def worked_order() -> Order:
    """An order with a history, partly booked, and every field away from its default."""
    o = order("int-2", reduce_only=True, stop_price=AWKWARD[2], exchange_order_id="ex-9",
              tag="sl", origin=OrderOrigin.LIQUIDATION, sent_ts=T0 + 3_000,
              venue_filled_qty=AWKWARD[0])
    o.transition(OrderStatus.SUBMITTED, T0 + 3)
    o.transition(OrderStatus.ACCEPTED, T0 + 4)
    o.book_trade(0.2, 65_000.1, AWKWARD[3], T0 + 5)
    o.reason = "partly, then the venue closed it — ünïcode"
    return o


def trade(trade_id: str = "t-1", symbol: str = "BTCUSDT", ts: int = T0 + 5,
          **changes: Any) -> VenueTrade:
    base = VenueTrade(symbol, trade_id, "ex-9", client_order_id_for("int-2"), Side.SELL,
                      AWKWARD[0], AWKWARD[5], AWKWARD[3], Liquidity.MAKER, ts)
    return replace(base, **changes)


def message(n: int, **changes: Any) -> OutboundMessage:
    base = OutboundMessage("executions", f"msg-{n}", "fill",
                           {"n": n, "price": AWKWARD[1], "nested": {"a": [1, None, "x"]}},
                           T0 + n, TRACE)
    return replace(base, **changes)


def one_of_each() -> list[StoreEvent]:
    """Every StoreEvent type, every field away from its default where it has one."""
    worked = worked_order()
    return [
        Signal("sig-1", "BTCUSDT", Direction.LONG, AWKWARD[1], T0, T0 + 60_000, AWKWARD[5],
               "lgbm-v3", TRACE, "1h", AWKWARD[2]),
        RiskDecision("dec-1", "sig-1", True, "APPROVED", "détail", T0 + 1, TRACE, intent(),
                     ("stale", "exposure")),
        worked,
        Fill("fill-1", worked.id, worked.client_order_id, "BTCUSDT", Side.SELL, 0.2,
             65_000.1, AWKWARD[3], Liquidity.TAKER, T0 + 5, TRACE, realized_pnl=AWKWARD[7],
             is_liquidation=True),
        PositionSnapshot("BTCUSDT", -AWKWARD[0], AWKWARD[5], AWKWARD[7], AWKWARD[3], 0.01,
                         T0 + 5, 65_100.0, 3.0, T0 + 6, TRACE, 70_000.0, 60_000.0),
        EquityPoint(T0 + 6, AWKWARD[5], AWKWARD[6], AWKWARD[7], AWKWARD[1], AWKWARD[4]),
        ClosedTrade("ct-1", "ETHUSDT", Side.SELL, 2.0, 3_500.0, AWKWARD[1], T0 - 100, T0 - 5,
                    AWKWARD[7], 1.0, 0.1, "take_profit", "trace-0"),
        AuditEvent("trading_state", T0 + 7,
                   {"from": "ACTIVE", "to": "REDUCING", "why": {"dd": AWKWARD[0],
                                                               "limits": [1, 2.5, None]}},
                   TRACE),
        Checkpoint("node-a", {"BTCUSDT": T0 - 1_800_000, "ETHUSDT": T0}, AWKWARD[5],
                   AWKWARD[6], AWKWARD[1], T0 // 86_400_000, AWKWARD[0],
                   int(TradingState.HALTED), AWKWARD[3], AWKWARD[7], T0 + 7,
                   {"open_trades": {"BTCUSDT": {"entry_side": "BUY", "max_qty": AWKWARD[0]}}}),
        trade(),
        FundingPayment("BTCUSDT", T0 + 8, -AWKWARD[2], AWKWARD[5], -AWKWARD[0], AWKWARD[7],
                       id="8812345"),
        Cursor("trades:BTCUSDT", "t-1", T0 + 9),
        message(1),
        SeenBar("BTCUSDT", "30m", T0 - 1_800_000, AWKWARD[5], AWKWARD[4], AWKWARD[2],
                AWKWARD[1], AWKWARD[0], "warmup", T0 + 10, T0 + 11, "stale — ünïcode"),
    ]


def of(events: list[StoreEvent], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def assert_identical(got: Any, want: Any, where: str = "") -> None:
    """``got == want`` and more: the same types all the way down (enums are enums, tuples
    are tuples) and floats equal bit for bit."""
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, float):
        assert struct.pack("<d", got) == struct.pack("<d", want), f"{where}: {got!r} != {want!r}"
    elif is_dataclass(want):
        for f in fields(want):
            assert_identical(getattr(got, f.name), getattr(want, f.name), f"{where}.{f.name}")
    elif isinstance(want, dict):
        assert list(got) == list(want) or set(got) == set(want), f"{where}: keys differ"
        for k in want:
            assert_identical(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_identical(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


async def read_back(store: TradeStore) -> list[StoreEvent]:
    """Everything on record, one list in ``one_of_each`` order."""
    cursors = await store.cursors()
    checkpoint = await store.checkpoint("node-a")
    assert checkpoint is not None
    return [
        *await store.signals(), *await store.decisions(), *await store.orders(),
        *await store.fills(), *await store.positions(), *await store.equity_curve(),
        *await store.trades(), *await store.audit(), checkpoint,
        *await store.venue_trades(), *await store.funding_payments(), *cursors.values(),
        *(m for _, m in await store.outbox_pending()), *await store.bars(),
    ]


# --- round trips -------------------------------------------------------------------------------


def test_the_samples_cover_every_store_event_type() -> None:
    assert {type(e) for e in one_of_each()} == set(typing.get_args(StoreEvent))


async def test_every_event_type_round_trips_exactly(store: SqlTradeStore) -> None:
    events = one_of_each()
    await store.write(events)
    assert_identical(await read_back(store), events, "store")


async def test_round_trip_survives_reopening(store: SqlTradeStore, backend: Backend) -> None:
    events = one_of_each()
    await store.write(events)
    await store.close()
    async with SqlTradeStore(backend.url) as reopened:
        assert_identical(await read_back(reopened), events, "reopened")


async def test_numpy_scalars_are_stored_as_python_numbers(store: SqlTradeStore) -> None:
    # What a model or a pandas column hands over: np.int64 is not an int to asyncpg.
    fill = of(one_of_each(), Fill)[0]
    numpy_fill = replace(fill, quantity=np.float64(0.25),
                         ts=np.int64(T0 + 5),  # type: ignore[arg-type]
                         is_liquidation=np.bool_(True))  # type: ignore[arg-type]
    numpy_audit = AuditEvent("model", np.int64(T0),  # type: ignore[arg-type]
                             {"auc": np.float32(0.5), "n": np.int64(3)})
    await store.write([numpy_fill, numpy_audit])
    [got] = await store.fills()
    assert_identical(got, replace(fill, quantity=0.25, ts=T0 + 5, is_liquidation=True))
    [audit] = await store.audit("model")
    assert_identical(audit, AuditEvent("model", T0, {"auc": 0.5, "n": 3}))


async def test_a_funding_payment_without_an_id_is_keyed_by_symbol_and_ts(
        store: SqlTradeStore) -> None:
    anonymous = FundingPayment("ETHUSDT", T0, 0.0001, 3_400.0, 1.0, 0.34)
    await store.write([anonymous, anonymous, replace(anonymous, amount=9.0)])
    assert await store.funding_payments("ETHUSDT") == [replace(anonymous, id=f"ETHUSDT:{T0}")]
    assert await store.funding_ids() == [f"ETHUSDT:{T0}"]


async def test_rows_from_other_releases_still_load(store: SqlTradeStore) -> None:
    """A nested intent written by a newer release (an unknown key) or an older one (a key
    missing) loads: unknown keys are dropped, missing ones take their defaults."""
    decision = of(one_of_each(), RiskDecision)[0]
    await store.write([decision])
    assert decision.intent is not None
    raw = {**DECISIONS.to_row(decision)["intent"], "future_field": {"x": 1}}
    del raw["tag"], raw["take_profit"]
    async with store.engine.begin() as conn:
        await conn.execute(update(t.risk_decisions).values(intent=raw))
    [got] = await store.decisions()
    assert_identical(got, replace(decision, intent=replace(decision.intent, tag="")))


# --- idempotency -------------------------------------------------------------------------------


async def test_writing_everything_twice_changes_nothing(store: SqlTradeStore) -> None:
    events = one_of_each()
    await store.write(events)
    first = await store.counts()
    await store.write(events)
    await store.write(events + events)  # duplicates inside one batch too
    assert await store.counts() == first
    assert_identical(await read_back(store), events, "store")


async def test_facts_keep_the_first_write(store: SqlTradeStore) -> None:
    events = one_of_each()
    await store.write(events)
    # Every insert-or-ignore type, written again with its key and different content.
    replays: list[StoreEvent] = [
        replace(of(events, Signal)[0], confidence=0.0),
        replace(of(events, RiskDecision)[0], approved=False, intent=None),
        replace(of(events, Fill)[0], price=1.0),
        replace(of(events, ClosedTrade)[0], realized_pnl=0.0),
        replace(of(events, VenueTrade)[0], quantity=99.0, price=1.0),
        replace(of(events, FundingPayment)[0], amount=123.0),
        replace(of(events, OutboundMessage)[0], payload={"other": True}),
    ]
    await store.write(replays)
    assert_identical(await read_back(store), events, "store")


async def test_states_keep_the_last_write(store: SqlTradeStore) -> None:
    events = one_of_each()
    await store.write(events)
    o = of(events, Order)[0]
    newer_order = replace(o, history=list(o.history), venue_filled_qty=0.5)
    newer_order.transition(OrderStatus.CANCELED, T0 + 20, "operator")
    newer: list[StoreEvent] = [
        newer_order,
        replace(of(events, PositionSnapshot)[0], qty=-0.25, ts=T0 + 21),
        replace(of(events, EquityPoint)[0], equity=1.0),
        replace(of(events, Checkpoint)[0], wallet=2.0, ts=T0 + 22, extra={}),
        Cursor("trades:BTCUSDT", "t-2", T0 + 23),
    ]
    await store.write(newer)
    assert_identical(await store.orders(), [newer_order])
    assert_identical(await store.positions(), of(newer, PositionSnapshot))
    assert_identical(await store.equity_curve(), of(newer, EquityPoint))
    assert_identical(await store.checkpoint("node-a"), of(newer, Checkpoint)[0])
    assert_identical(await store.cursor("trades:BTCUSDT"), of(newer, Cursor)[0])


async def test_within_one_batch_the_last_upsert_and_the_first_fact_win(
        store: SqlTradeStore) -> None:
    a, b = order("int-5"), order("int-5", status=OrderStatus.SUBMITTED, sent_ts=T0 + 1)
    c1, c2 = Cursor("trades:XRPUSDT", "100", T0), Cursor("trades:XRPUSDT", "101", T0 + 1)
    t1, t2 = trade("t-7"), trade("t-7", price=1.0)
    m1, m2 = message(1), message(1, payload={"second": True})
    await store.write([a, c1, t1, m1, b, c2, t2, m2])
    assert_identical(await store.orders(), [b])
    assert_identical(await store.cursors(), {"trades:XRPUSDT": c2})
    assert_identical(await store.venue_trades(), [t1])
    assert [m for _, m in await store.outbox_pending()] == [m1]


# --- atomicity ---------------------------------------------------------------------------------


async def test_a_malformed_event_fails_the_batch_before_writing(store: SqlTradeStore) -> None:
    bad = trade("t-bad", quantity="not a number")
    with pytest.raises(StoreError, match="bad VenueTrade"):
        await store.write([*one_of_each(), bad])
    assert set((await store.counts()).values()) == {0}


async def test_a_row_the_database_refuses_rolls_back_the_whole_batch(
        store: SqlTradeStore) -> None:
    # Passes the mapping, refused by the database (NOT NULL), after every other table is
    # written in the same transaction.
    bad = trade("t-bad", venue_order_id=None)
    with pytest.raises(StoreError, match="rolled back"):
        await store.write([*one_of_each(), bad])
    assert set((await store.counts()).values()) == {0}


async def test_a_cursor_commits_with_the_trades_it_read_or_not_at_all(
        store: SqlTradeStore) -> None:
    await store.write([trade("t-1"), Cursor("trades:BTCUSDT", "t-1", T0)])
    batch: list[StoreEvent] = [trade("t-2", ts=T0 + 6), Cursor("trades:BTCUSDT", "t-2", T0 + 1)]
    refused = trade("t-3", ts=T0 + 7, client_order_id=None)  # NOT NULL: the database says no
    with pytest.raises(StoreError, match="rolled back"):
        await store.write([*batch, refused])
    # Neither the trade nor the cursor moved: a restart re-reads t-2 and books it once.
    assert [tr.trade_id for tr in await store.venue_trades()] == ["t-1"]
    assert await store.cursor("trades:BTCUSDT") == Cursor("trades:BTCUSDT", "t-1", T0)
    await store.write(batch)
    assert [tr.trade_id for tr in await store.venue_trades()] == ["t-1", "t-2"]
    assert await store.cursor("trades:BTCUSDT") == batch[1]


# --- orders ------------------------------------------------------------------------------------


async def test_claim_order_records_a_new_order(store: SqlTradeStore) -> None:
    new = order("int-1")
    assert await store.claim_order(new) is new
    assert_identical(await store.order_by_client_id(new.client_order_id), new)
    assert await store.order_by_client_id("qt-unknown") is None


async def test_claim_order_returns_the_order_on_record(store: SqlTradeStore) -> None:
    first = worked_order()
    await store.write([first])
    # A restarted or redelivered intent makes its order afresh: same client id, new state.
    again = order("int-2")
    assert again.client_order_id == first.client_order_id
    assert_identical(await store.claim_order(again), first)
    assert_identical(await store.orders(), [first])  # never overwritten


async def test_claim_order_refuses_a_malformed_order(store: SqlTradeStore) -> None:
    with pytest.raises(StoreError, match="bad Order"):
        await store.claim_order(order("int-1", quantity="half"))
    assert await store.orders() == []


async def test_an_order_written_before_0002_reads_with_the_defaults(
        store: SqlTradeStore) -> None:
    """The server defaults of the columns 0002 added mean what the domain defaults mean."""
    o = order("int-old")
    columns = [c for c in t.orders.c if c.name not in
               ("expires_at", "origin", "sent_ts", "venue_filled_qty")]
    row = {k: v for k, v in ORDERS.to_row(o).items() if k in {c.name for c in columns}}
    async with store.engine.begin() as conn:
        await conn.execute(t.orders.insert().values(row))
    assert_identical(await store.order_by_client_id(o.client_order_id),
                     replace(o, expires_at=0))


# --- queries -----------------------------------------------------------------------------------


async def test_cursors_by_prefix(store: SqlTradeStore) -> None:
    cs = [Cursor("trades:BTCUSDT", "1", T0), Cursor("trades:ETHUSDT", "2", T0),
          Cursor("trades_x", "3", T0), Cursor("funding:BTCUSDT", "4", T0)]
    await store.write(cs)
    assert list(await store.cursors("trades:")) == ["trades:BTCUSDT", "trades:ETHUSDT"]
    assert list(await store.cursors("trades_")) == ["trades_x"]  # "_" is no wildcard
    assert list(await store.cursors()) == sorted(c.name for c in cs)
    assert await store.cursors("nothing") == {}
    assert await store.cursor("trades:ETHUSDT") == cs[1]
    assert await store.cursor("trades") is None


async def test_venue_trades_and_recent_keys(store: SqlTradeStore) -> None:
    trades = [trade(f"t-{i}", symbol=sym, ts=T0 + ts)
              for i, (sym, ts) in enumerate([("BTCUSDT", 30), ("ETHUSDT", 10),
                                             ("BTCUSDT", 20), ("ETHUSDT", 40)])]
    await store.write(trades)
    assert [tr.trade_id for tr in await store.venue_trades()] == ["t-1", "t-2", "t-0", "t-3"]
    assert [tr.trade_id for tr in await store.venue_trades("BTCUSDT")] == ["t-2", "t-0"]
    assert await store.recent_trade_keys(limit=2) == [("BTCUSDT", "t-0"), ("ETHUSDT", "t-3")]
    assert len(await store.recent_trade_keys()) == 4


async def test_funding_payments_and_ids(store: SqlTradeStore) -> None:
    pays = [FundingPayment(sym, T0 + ts, 0.0001, 100.0, 1.0, 0.01, id=pid)
            for sym, ts, pid in [("BTCUSDT", 20, "b"), ("ETHUSDT", 10, "a"),
                                 ("BTCUSDT", 30, "c")]]
    await store.write(pays)
    assert [p.id for p in await store.funding_payments()] == ["a", "b", "c"]
    assert [p.id for p in await store.funding_payments("BTCUSDT")] == ["b", "c"]
    assert await store.funding_ids(limit=2) == ["b", "c"]


# --- outbox ------------------------------------------------------------------------------------


async def test_outbox_is_published_in_commit_order(store: SqlTradeStore) -> None:
    await store.write([message(3), message(1)])
    await store.write([message(2), message(1, payload={"dup": True})])  # msg-1 again: no-op
    pending = await store.outbox_pending()
    assert [m.id for _, m in pending] == ["msg-3", "msg-1", "msg-2"]
    seqs = [s for s, _ in pending]
    assert seqs == sorted(set(seqs))  # increasing, no two alike
    assert [m.id for _, m in await store.outbox_pending(limit=2)] == ["msg-3", "msg-1"]

    await store.outbox_done(seqs[:2])
    assert [(s, m.id) for s, m in await store.outbox_pending()] == [(seqs[2], "msg-2")]
    await store.outbox_done([])
    await store.outbox_done(seqs)  # done twice: harmless
    assert await store.outbox_pending() == []
    # A seq once handed out is never reused, even after the outbox was emptied: a publisher
    # still holding an old one must not be able to delete a new message.
    await store.write([message(4)])
    [(seq, _)] = await store.outbox_pending()
    assert seq > max(seqs)
    assert (await store.counts())["outbox"] == 1


# --- trading state -----------------------------------------------------------------------------


def state(to: TradingState, ts: int) -> AuditEvent:
    return AuditEvent("trading_state", ts, {"to": to.name})


async def test_trading_state_is_the_last_written_whatever_its_ts(store: SqlTradeStore) -> None:
    assert await store.trading_state() is None
    # A wall-time HALT, then a replay's market-time events stamped a year earlier.
    halt = state(TradingState.HALTED, T0 + 365 * 86_400_000)
    await store.write([state(TradingState.REDUCING, T0 + 10), halt])
    await store.write([AuditEvent("run_started", T0 - 5)])
    assert await store.trading_state() == halt
    resumed = state(TradingState.ACTIVE, T0)  # an operator resume, in market time
    await store.write([resumed, AuditEvent("kill_switch", T0 - 10)])
    assert await store.trading_state() == resumed
    assert [a.detail["to"] for a in await store.audit("trading_state")] == [
        "REDUCING", "HALTED", "ACTIVE"]
    assert [a.kind for a in await store.audit()] == [
        "trading_state", "trading_state", "run_started", "trading_state", "kill_switch"]


# --- counts ------------------------------------------------------------------------------------


async def test_counts_cover_every_table(store: SqlTradeStore) -> None:
    def tables(conn: Connection) -> set[str]:
        return set(inspect(conn).get_table_names()) - {"alembic_version"}

    async with store.engine.connect() as conn:
        in_database = await conn.run_sync(tables)
    assert set(await store.counts()) == in_database == {tb.name for tb in t.TABLES}
    await store.write(one_of_each())
    # Every table is some StoreEvent's: one of each puts one row in each.
    assert await store.counts() == {tb.name: 1 for tb in t.TABLES}


async def test_counts_count_rows(store: SqlTradeStore) -> None:
    await store.write([trade(f"t-{i}") for i in range(3)] + [message(i) for i in range(2)])
    async with store.engine.connect() as conn:
        n = (await conn.execute(text("SELECT count(*) FROM venue_trades"))).scalar_one()
    counts = await store.counts()
    assert (counts["venue_trades"], counts["outbox"], n) == (3, 2, 3)
    assert sum(counts.values()) == 5
