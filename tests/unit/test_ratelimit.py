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


async def test_routine_requests_are_paced_and_leave_a_reserve_for_orders() -> None:
    clock = FakeClock(1_020.0)
    lim = limiter(clock)  # budget 90 of 100; routine may use 67 of it, at 67/60 per second
    assert lim.routine_budget == 67
    for _ in range(5):  # a short burst goes at once
        await lim.acquire(1, urgent=False)
    assert clock.slept == []
    await lim.acquire(1, urgent=False)  # then at the pace, not all of the window at once
    assert clock.slept == [pytest.approx((1 - (67 / 60 * 5.0 - 5)) / (67 / 60))]
    clock.slept.clear()
    for _ in range(61):  # the rest of the routine share: paced over the window, not blocked
        await lim.acquire(1, urgent=False)
    assert lim.used == 67
    assert max(clock.slept) < 1.0
    before = clock.t
    for _ in range(23):  # orders still get the reserve at once
        await lim.acquire(1)
    assert clock.t == before
    assert lim.used == 90
    await lim.acquire(1, urgent=False)  # and the window is spent: wait for the next one
    assert clock.slept[-1] > 1.0
    assert lim.used == 1


def test_reserve_and_burst_are_checked() -> None:
    with pytest.raises(ValueError, match="reserve"):
        WeightLimiter(reserve=1.0)
    with pytest.raises(ValueError, match="burst_s"):
        WeightLimiter(burst_s=0)


async def test_a_share_caps_our_own_spend_and_the_ip_count_caps_everyone() -> None:
    clock = FakeClock(1_020.0)
    lim = limiter(clock, headroom=0.3)  # our share: 30 of 100; the IP as a whole: 90
    lim.observe(50)  # the other process on our IP has spent 50
    for _ in range(30):
        await lim.acquire(1)
    assert clock.slept == []  # our share was ours to spend: the others' use does not eat it
    assert (lim.own_used, lim.used) == (30, 80)
    await lim.acquire(1)  # our share is spent: wait for the next window
    assert clock.slept == [pytest.approx(60.005)]

    lim.observe(89)  # a new window in which the others come close to the IP's limit
    await lim.acquire(1)
    await lim.acquire(1)  # 91 > 90: even with our share unspent, the IP's count holds us
    assert len(clock.slept) == 2
