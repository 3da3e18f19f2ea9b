"""Circuit breaker: repeated errors reduce, then halt; bans halt at once; quiet + success heals."""

from __future__ import annotations

from quantum_trader.domain.enums import TradingState
from quantum_trader.exchange.reliable import CircuitBreaker


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_escalation_and_recovery() -> None:
    clock = Clock()
    seen: list[TradingState] = []
    b = CircuitBreaker(reduce_after=3, halt_after=5, cooldown_s=10, clock=clock,
                       on_state=lambda s, _r: seen.append(s))
    for _ in range(2):
        b.record_failure("timeout")
    assert b.state is TradingState.ACTIVE
    b.record_failure("timeout")
    assert b.state is TradingState.REDUCING
    assert not b.allows(reduce_only=False)
    assert b.allows(reduce_only=True)
    b.record_failure("5xx")
    b.record_failure("5xx")
    assert b.state is TradingState.HALTED
    assert b.allows(reduce_only=True)
    b.record_success()  # too early: still inside the cooldown
    assert b.state is TradingState.HALTED
    assert not b.probe_due()
    clock.t = 11
    assert b.probe_due()
    b.record_success()
    assert b.state is TradingState.ACTIVE
    assert seen == [TradingState.REDUCING, TradingState.HALTED, TradingState.ACTIVE]


def test_success_resets_the_count() -> None:
    b = CircuitBreaker(reduce_after=3, halt_after=5, clock=Clock())
    for _ in range(10):
        b.record_failure("x")
        b.record_failure("x")
        b.record_success()
    assert b.state is TradingState.ACTIVE
    assert b.errors_total == 20


def test_ban_halts_until_it_ends_and_trip_needs_an_operator() -> None:
    clock = Clock()
    b = CircuitBreaker(cooldown_s=0, clock=clock)
    b.record_ban(5)
    assert b.state is TradingState.HALTED
    clock.t = 4
    b.record_success()
    assert b.state is TradingState.HALTED
    clock.t = 5
    b.record_success()
    assert b.state is TradingState.ACTIVE
    b.trip("kill switch")
    clock.t = 1e9
    b.record_success()
    assert b.state is TradingState.HALTED
    b.reset()
    assert b.state is TradingState.ACTIVE
