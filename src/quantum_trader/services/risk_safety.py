"""risk-safety: the only door to the exchange. Signals and exit intents in; signed approvals
(``orders.approved``) or typed rejections (``orders.rejected``) out."""

from __future__ import annotations

from typing import Any

from quantum_trader.bus.codec import from_payload, to_payload
from quantum_trader.bus.protocol import Bus, MalformedMessage, Message
from quantum_trader.config import Settings
from quantum_trader.domain.enums import TradingState
from quantum_trader.domain.models import OrderIntent, RiskDecision, Signal
from quantum_trader.domain.portfolio import Portfolio
from quantum_trader.domain.records import AccountSnapshot
from quantum_trader.domain.risk.engine import RiskEngine
from quantum_trader.domain.risk.rules import RejectReason
from quantum_trader.observability.metrics import (
    RISK_LIMIT_RATIO,
    RISK_REJECTIONS,
    TRADING_STATE,
)
from quantum_trader.runtime.clock import wall_ms
from quantum_trader.services.base import Service
from quantum_trader.services.messages import bar_from
from quantum_trader.services.signing import sign
from quantum_trader.store.protocol import TradeStore

_DECIDED_MAX = 50_000


class RiskSafetyService(Service):
    name = "risk-safety"
    upstreams = ("execution",)

    def __init__(self, settings: Settings, bus: Bus, store: TradeStore | None,
                 key: bytes) -> None:
        super().__init__(settings, bus, store)
        if not key:
            raise ValueError("risk-safety needs an approval HMAC key: set "
                             "QTRADER_SECRETS__APPROVAL_HMAC_KEY_FILE")
        self.key = key
        exits = settings.exits.settings()
        self.engine = RiskEngine(settings.risk.limits(), settings.instrument_lookup(),
                                 exit_rr=exits.take_profit_rr or 2.0,
                                 intent_ttl_ms=exits.intent_ttl_ms)
        self.portfolio = Portfolio(settings.initial_balance)
        self.engine.sync(self.portfolio)
        RISK_LIMIT_RATIO.labels("daily_loss").set(settings.risk.daily_loss_limit)
        RISK_LIMIT_RATIO.labels("max_drawdown").set(settings.risk.max_drawdown)
        self.market_now = 0
        self.view_ts = -1  # market time of the newest account snapshot applied
        self._view_wait_s = settings.account_wait_s()
        self._view_wall = 0
        # Decisions made by this process, newest last: redeliveries are answered from here
        # without a database round trip (the store answers for earlier incarnations).
        self._decided: dict[str, RiskDecision] = {}
        # Entries approved here that execution has not reported handling yet: intent id ->
        # (symbol, signed notional, expires_at). With the working entries execution reports,
        # they count against the limits as if filled, so a burst of signals cannot approve
        # one entry after another before the first has reached the venue.
        self._approved: dict[str, tuple[str, float, int]] = {}
        self._pending_view: dict[str, float] = {}
        self.consume("market.bars", self.on_bar)
        self.consume("signals", self.on_signal)
        self.consume("exits", self.on_exit)
        self.consume("positions", self.on_account)
        self.consume("control", self.on_control)

    async def on_start(self) -> None:
        if self.store is None:
            return
        # The newest state change by insertion order: audit times mix market and wall time,
        # so sorting by time could resurrect an older state (and lose a drawdown HALT).
        last = await self.store.trading_state()
        if last is not None:
            self.engine.ctx.trading_state = TradingState[str(last.detail["to"])]
        self.portfolio.replace_positions([s.to_position() for s in await self.store.positions()])
        self.engine.sync(self.portfolio)

    async def on_bar(self, msg: Message) -> None:
        bar = bar_from(msg)
        self.market_now = max(self.market_now, bar.close_ts)
        self.engine.on_price(bar.symbol, bar.close)

    async def on_account(self, msg: Message) -> None:
        snap = from_payload(AccountSnapshot, msg.payload)
        if (snap.ts, msg.ts) < (self.view_ts, self._view_wall):
            return  # an older snapshot delivered late: never step the view back
        self.view_ts, self._view_wall = snap.ts, msg.ts
        pf = self.portfolio
        pf.wallet, pf.peak_equity, pf.day_start_equity = (snap.wallet, snap.peak_equity,
                                                         snap.day_start_equity)
        pf.replace_positions([p.to_position() for p in snap.positions])
        self.engine.sync(pf)
        ctx = self.engine.ctx
        ctx.stop_outs.update(snap.stop_outs)
        ctx.equity = snap.equity
        ctx.unprotected = frozenset(snap.unprotected)
        self._pending_view = dict(snap.pending)
        for intent_id in snap.recent_intents:
            self._approved.pop(intent_id, None)
        self._refresh_pending()
        audit = self.engine.check_breakers(snap.ts)
        if audit is not None and self.store is not None:
            await self.store.write([audit])
        TRADING_STATE.set(int(self.engine.trading_state))

    async def on_signal(self, msg: Message) -> None:
        signal = from_payload(Signal, msg.payload)
        # Judge the signal at the newest market time we can know of, so a signal that waited
        # while this service was down dies of old age instead of being traded late.
        await self.catch_up("market.bars")
        prior = self._decided.get(f"{signal.id}:risk")
        if prior is not None:  # a redelivery: publish the same answer again, decide nothing
            await self._publish(prior)
            return
        if signal.direction.sign == 0:
            return  # FLAT signals are for the exit brain
        age = wall_ms() - msg.ts
        fresh = await self._fresh_view(signal.ts)
        now = max(self.market_now, self.view_ts, signal.ts)
        if self.peer_status.get("market-data") == "DEGRADED":
            decision = RiskDecision(f"{signal.id}:risk", signal.id, False,
                                    RejectReason.STALE_MARKET_DATA.value,
                                    "market data is stale: no new entries until the feed is "
                                    "back", now, signal.trace_id)
        elif not fresh:
            decision = RiskDecision(f"{signal.id}:risk", signal.id, False,
                                    RejectReason.ACCOUNT_STALE.value,
                                    f"no account update from execution up to {signal.ts}; "
                                    "entries fail closed", now, signal.trace_id)
        elif age > self.settings.services.signal_max_age_ms:
            decision = RiskDecision(f"{signal.id}:risk", signal.id, False,
                                    RejectReason.SIGNAL_EXPIRED.value,
                                    f"signal waited {age} ms on the bus (limit "
                                    f"{self.settings.services.signal_max_age_ms} ms)",
                                    now, signal.trace_id)
        else:
            self._refresh_pending(now)
            decision = self.engine.evaluate_signal(signal, now)
            if decision.approved and decision.intent is not None:
                i = decision.intent
                self._approved[i.id] = (i.symbol, i.side.sign * i.quantity * signal.price,
                                        i.expires_at)
        await self._commit(decision)

    def _refresh_pending(self, now: int | None = None) -> None:
        """Pending entries = what execution reports working + what was approved here and
        has not reached execution yet (an approval can only become an order before it
        expires, so expired ones stop counting)."""
        t = self.market_now if now is None else now
        for intent_id, (_sym, _n, expires) in list(self._approved.items()):
            if expires < t:
                self._approved.pop(intent_id)
        pending = dict(self._pending_view)
        for sym, notional, _exp in self._approved.values():
            pending[sym] = pending.get(sym, 0.0) + notional
        self.engine.ctx.pending = pending

    async def on_exit(self, msg: Message) -> None:
        if msg.type == "cancel":
            payload = {"intent_id": str(msg.payload.get("intent_id", "")),
                       "symbol": str(msg.payload.get("symbol", "")),
                       "expires_at": self.market_now + 60_000, "kind": "cancel"}
            await self.publish("orders.approved", "cancel",
                               {"intent": payload, "signature": sign(payload, self.key)},
                               msg.trace_id, f"{msg.id}:approved")
            return
        if msg.type != "exit":
            raise MalformedMessage(f"unknown exits message type {msg.type!r}")
        intent = from_payload(OrderIntent, msg.payload)
        prior = self._decided.get(f"{intent.id}:risk")
        if prior is not None:
            await self._publish(prior)
            return
        await self._fresh_view(intent.ts)  # the account that includes the fill it reacts to
        decision = self.engine.evaluate_exit(intent, max(self.market_now, intent.ts))
        await self._commit(decision)

    async def on_control(self, msg: Message) -> None:
        target = {"pause": TradingState.REDUCING, "halt": TradingState.HALTED,
                  "kill": TradingState.HALTED, "resume": TradingState.ACTIVE}.get(msg.type)
        if target is None:
            raise MalformedMessage(f"unknown control command {msg.type!r}")
        audit = self.engine.set_trading_state(target, f"operator: {msg.type}", wall_ms(),
                                              msg.trace_id)
        if audit is not None and self.store is not None:
            await self.store.write([audit])
        TRADING_STATE.set(int(self.engine.trading_state))

    async def _fresh_view(self, min_ts: int) -> bool:
        """Wait until the account view covers market time ``min_ts`` (execution has matched
        that bar), so entries are sized on the account as it is, not as it was."""
        return await self.catch_up_until("positions", lambda: self.view_ts >= min_ts,
                                         self._view_wait_s)

    async def _commit(self, decision: RiskDecision) -> None:
        # The decision is on record before it is sent. One decided by an earlier incarnation
        # of this service (a redelivery after a crash) wins: the same answer goes out again.
        on_record = decision
        if self.store is not None:
            on_record = await self.store.record_decision(decision)
        self._decided[on_record.id] = on_record
        if len(self._decided) > _DECIDED_MAX:
            self._decided.pop(next(iter(self._decided)))
        if not on_record.approved and on_record is decision:
            RISK_REJECTIONS.labels(on_record.reason).inc()
        await self._publish(on_record)

    async def _publish(self, decision: RiskDecision) -> None:
        if decision.approved and decision.intent is not None:
            payload: dict[str, Any] = to_payload(decision.intent)
            payload["kind"] = "order"
            await self.publish("orders.approved", "intent",
                               {"intent": payload, "signature": sign(payload, self.key)},
                               decision.trace_id, f"{decision.id}:approved")
        else:
            await self.publish("orders.rejected", "rejection", to_payload(decision),
                               decision.trace_id, f"{decision.id}:rejected")
