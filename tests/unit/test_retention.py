"""Retention: the pure keep/prune function, checked set by set against the written policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from quantum_trader.ops.retention import (
    DEFAULT_POLICY,
    RetentionPolicy,
    parse_duration,
    plan_retention,
)

H = 3600
D = 86_400


def ts(s: str) -> float:
    return datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()


def name(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def sets(times: list[float]) -> dict[str, float]:
    return {name(t): t for t in times}


def test_default_policy_text() -> None:
    assert str(DEFAULT_POLICY) == "6h:7d,1d:30d,1w:12w"
    assert RetentionPolicy.parse("6h:7d, 1d:30d, 1w:12w") == DEFAULT_POLICY


@pytest.mark.parametrize("bad", ["", "6h", "6x:7d", "0h:7d", "6h:"])
def test_bad_policies_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"bad|positive"):
        RetentionPolicy.parse(bad)


def test_parse_duration() -> None:
    assert [parse_duration(x) for x in ("30m", "6h", "7d", "12w")] == \
        [1800, 6 * H, 7 * D, 84 * D]


def test_hourly_backups_for_100_days_keep_exactly_the_policy() -> None:
    # Hourly sets, the newest exactly at "now" (Tuesday 2026-11-24 12:00 UTC), 100 days back.
    now = ts("2026-11-24T12:00:00")
    times = [now - h * H for h in range(100 * 24)]
    plan = plan_retention(sets(times), now)
    kept = {plan_t for n, plan_t in sets(times).items() if n in plan.keep}

    # 6h tier: ages in [0, 7d) -> the newest set of each 6-hour bucket (the hh:00 just before
    # the next bucket starts: 05:00, 11:00, 17:00, 23:00) plus the current partial bucket.
    six = {t for t in times if now - t < 7 * D and
           (datetime.fromtimestamp(t, UTC).hour % 6 == 5 or t == now)}
    # daily tier: ages in [0, 30d) -> 23:00 of each day, plus today's newest (now).
    daily = {t for t in times if now - t < 30 * D and
             (datetime.fromtimestamp(t, UTC).hour == 23 or t == now)}
    # weekly tier: ages in [0, 84d) -> Sunday 23:00 of each ISO week, plus this week's newest.
    weekly = {t for t in times if now - t < 84 * D and
              ((datetime.fromtimestamp(t, UTC).weekday() == 6 and
                datetime.fromtimestamp(t, UTC).hour == 23) or t == now)}
    assert kept == six | daily | weekly
    # 6h: 28 bucket ends from 11-17 17:00 to 11-24 11:00, plus "now"; daily: 23:00 of 10-25
    # .. 11-23 plus now; weekly: Sundays 09-06 .. 11-22 plus now.
    assert (len(six), len(daily), len(weekly)) == (29, 31, 13)
    # Overlaps: 7 daily (and now) are 6h ones; 5 Sundays (and now) are daily ones.
    assert len(kept) == 29 + (31 - 8) + (13 - 6) == 59
    assert set(plan.prune) == set(sets(times)) - set(plan.keep)
    assert plan.keep[name(now)] == ("newest", "6h:7d", "1d:30d", "1w:12w")


def test_tier_window_is_half_open_at_keep_for() -> None:
    now = ts("2026-11-24T12:00:00")
    just_inside = now - 7 * D + 1
    exactly = now - 7 * D
    policy = RetentionPolicy.parse("6h:7d")
    plan = plan_retention(sets([now, just_inside, exactly]), now, policy)
    assert name(just_inside) in plan.keep
    assert plan.prune == [name(exactly)]


def test_newest_is_kept_however_old_and_future_sets_are_kept() -> None:
    now = ts("2026-11-24T12:00:00")
    old = [now - 400 * D, now - 401 * D]
    future = now + 3 * H
    plan = plan_retention(sets([*old, future]), now)
    assert plan.keep == {name(old[0]): ("newest",), name(future): ("future",)}
    assert plan.prune == [name(old[1])]


def test_weekly_buckets_start_on_monday() -> None:
    # Sunday 23:59 and Monday 00:01 are different weeks; Monday and Sunday-after the same.
    now = ts("2026-11-30T12:00:00")  # a Monday
    sun, mon = ts("2026-11-22T23:59:00"), ts("2026-11-23T00:01:00")
    later_sun = ts("2026-11-29T23:00:00")
    plan = plan_retention(sets([sun, mon, later_sun, now]), now, RetentionPolicy.parse("1w:12w"))
    assert name(sun) in plan.keep  # newest of its week
    assert name(later_sun) in plan.keep  # newest of the week starting Monday the 23rd
    assert plan.prune == [name(mon)]


def test_several_sets_per_bucket_keep_the_newest() -> None:
    now = ts("2026-11-24T12:00:00")
    day = [ts("2026-11-20T00:30:00"), ts("2026-11-20T13:00:00"), ts("2026-11-20T23:59:59")]
    plan = plan_retention(sets([*day, now]), now, RetentionPolicy.parse("1d:30d"))
    assert sorted(plan.keep) == [name(day[2]), name(now)]
    assert plan.prune == [name(day[0]), name(day[1])]


def test_pure_and_order_independent() -> None:
    now = ts("2026-11-24T12:00:00")
    times = [now - k * 5 * H for k in range(200)]
    a = plan_retention(sets(times), now)
    b = plan_retention(dict(reversed(list(sets(times).items()))), now)
    assert a == b
    assert plan_retention({}, now).keep == {}


def test_steady_state_count_under_six_hourly_backups() -> None:
    # A set every 6 hours for a year: the policy converges on 28 + 23 + 8 = 59 sets at most.
    start = ts("2025-11-24T00:00:00")
    times = [start + k * 6 * H for k in range(365 * 4)]
    now = times[-1] + timedelta(minutes=5).total_seconds()
    plan = plan_retention(sets(times), now)
    assert len(plan.keep) <= 59
    assert len(plan.keep) + len(plan.prune) == len(times)
