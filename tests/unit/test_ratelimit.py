"""The weighted rate limiter on a fake clock."""

from __future__ import annotations

import pytest

from quantum_trader.exchange.ratelimit import WeightLimiter, binance_weight


class FakeClock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def limiter(clock: FakeClock, limit: int = 100, headroom: float = 0.9) -> WeightLimiter:
    return WeightLimiter(limit, 60.0, headroom, clock=clock, sleep=clock.sleep)


async def test_spends_up_to_the_budget_then_waits_for_the_next_window() -> None:
    clock = FakeClock(1_020.0)  # 60 s windows: this one ends at 1_080
    lim = limiter(clock)
    for _ in range(90):
        await lim.acquire(1)
    assert clock.slept == []
    assert lim.used == 90
    await lim.acquire(1)
    assert clock.slept == [pytest.approx(60.005)]
    assert lim.used == 1


async def test_the_venue_count_is_taken_when_higher() -> None:
    clock = FakeClock(1_020.0)
    lim = limiter(clock)
    await lim.acquire(5)
    lim.observe(88)  # another process on our IP
    lim.observe(3)  # stale, lower: ignored
    assert lim.used == 88
    await lim.acquire(2)
    assert clock.slept == []
    await lim.acquire(1)
    assert len(clock.slept) == 1


async def test_retry_after_blocks_everything() -> None:
    clock = FakeClock(1_020.0)
    lim = limiter(clock)
    lim.block_for(2.5)
    assert lim.blocked_for == pytest.approx(2.5)
    await lim.acquire(1)
    assert clock.slept == [pytest.approx(2.5)]


async def test_a_request_heavier_than_the_budget_still_goes_through() -> None:
    clock = FakeClock(1_000.0)
    lim = limiter(clock, limit=10)
    await lim.acquire(40)
    assert lim.used == 9


def test_weights_match_binance() -> None:
    assert binance_weight("/fapi/v1/klines", {"limit": "1500"}) == 10
    assert binance_weight("/fapi/v1/klines", {"limit": "99"}) == 1
    assert binance_weight("/fapi/v1/openOrders", {}) == 40
    assert binance_weight("/fapi/v1/openOrders", {"symbol": "XRPUSDT"}) == 1
    assert binance_weight("/fapi/v3/account", {}) == 5
    assert binance_weight("/fapi/v1/income", {}) == 30


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="headroom"):
        WeightLimiter(100, 60, headroom=1.5)
