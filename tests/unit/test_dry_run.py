"""The dry run's parts that need no venue: how the feed says a bar arrived late, the time
merge across symbols, the late-bar gate (the same in the run and in its replay), the latency
figures and the parity comparison. The whole path over HTTP is
tests/integration/test_dry_run.py."""

from __future__ import annotations

from dataclasses import replace

from quantum_trader.config import Settings
from quantum_trader.domain.enums import Direction
from quantum_trader.domain.models import Bar, RiskDecision, Signal
from quantum_trader.domain.records import SeenBar
from quantum_trader.marketdata.live import LiveKlineFeed
from quantum_trader.marketdata.replay import ReplayFeed
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.runtime.dry_run import (
    FeedGate,
    TimeMerge,
    bar_clock,
    late_reason,
    merged,
    series_of,
)
from quantum_trader.runtime.node import ListJournal
from quantum_trader.runtime.parity import SIGNAL_FIELDS, compare, latency
from quantum_trader.runtime.wiring import build_node

TF = 1_800_000


def bar(sym: str, i: int, price: float = 1.0) -> Bar:
    return Bar(sym, "30m", i * TF, price, price, price, price, 1.0)


class Venue:
    def __init__(self, closed: int) -> None:
        self.closed = closed

    async def bars(self, symbol: str, timeframe: str, since: int | None = None,
                   limit: int = 500) -> list[Bar]:
        start = max(0, self.closed - limit) if since is None else since // TF
        return [bar(symbol, i) for i in range(start, min(self.closed, start + limit))]


async def test_the_feed_says_which_bars_came_with_a_newer_one_behind_them() -> None:
    venue = Venue(closed=10)
    seen: list[tuple[int, bool]] = []
    feed: LiveKlineFeed

    async def publish(b: Bar) -> None:
        seen.append((b.ts // TF, feed.backfilling))

    feed = LiveKlineFeed(venue, ["XRPUSDT"], "30m", publish, start_after={"XRPUSDT": 9 * TF})
    venue.closed = 11
    await feed.poll_once()  # one new bar: the newest, on time
    venue.closed = 15
    await feed.poll_once()  # four: three of them had a newer one behind them
    venue.closed = 250
    await feed.poll_once()  # a long gap: pages of backfill, only the last bar on time
    assert seen[:5] == [(10, False), (11, True), (12, True), (13, True), (14, False)]
    assert [b for b, late in seen[5:] if not late] == [249]
    assert not feed.backfilling


def test_late_reasons() -> None:
    assert late_reason(False, False, "") == ""
    assert "backfilled" in late_reason(False, True, "")
    assert "stale" in late_reason(True, True, "no new bar for 3s")
    assert "no new bar for 3s" in late_reason(True, False, "no new bar for 3s")


def test_the_merge_releases_a_time_step_once_every_symbol_has_it_in_backtest_order() -> None:
    merge = TimeMerge(["XRPUSDT", "LTCUSDT"], {"XRPUSDT": 4 * TF, "LTCUSDT": 4 * TF})
    assert merge.add(bar("XRPUSDT", 5), 1, "") == []
    assert merge.add(bar("XRPUSDT", 6), 2, "") == []
    assert merge.waiting_for() == ["LTCUSDT"]
    out = merge.add(bar("LTCUSDT", 5), 3, "late")
    assert [(b.symbol, b.ts // TF, r, why) for b, r, why in out] == [
        ("LTCUSDT", 5, 3, "late"), ("XRPUSDT", 5, 1, "")]
    out = merge.add(bar("LTCUSDT", 6), 4, "")
    assert [(b.symbol, b.ts // TF) for b, _, _ in out] == [("LTCUSDT", 6), ("XRPUSDT", 6)]
    # A restart that stopped inside a time step: the symbol behind catches up first.
    merge = TimeMerge(["XRPUSDT", "LTCUSDT"], {"LTCUSDT": 7 * TF, "XRPUSDT": 6 * TF})
    assert [b.symbol for b, _, _ in merge.add(bar("XRPUSDT", 7), 0, "")] == ["XRPUSDT"]


def test_series_and_merged_order_are_the_replay_feeds() -> None:
    bars = [bar("XRPUSDT", 2), bar("LTCUSDT", 1), bar("XRPUSDT", 1), bar("LTCUSDT", 2),
            bar("XRPUSDT", 1)]  # a duplicate: once
    series = series_of(bars)
    assert [(s.symbol, list(s.ts // TF)) for s in series] == [("LTCUSDT", [1, 2]),
                                                              ("XRPUSDT", [1, 2])]
    assert [(b.symbol, b.ts // TF) for b in merged(bars)] == \
        [(b.symbol, b.ts // TF) for b in ReplayFeed(series)]
    seen = [SeenBar.of(b, "warmup", 1, 2, "why") for b in bars]
    assert seen[0].bar() == bars[0]
    assert [(s.symbol, len(s)) for s in series_of(seen)] == [("LTCUSDT", 2), ("XRPUSDT", 2)]


def test_bar_clock_tells_a_wall_clock_venue_from_a_replaying_one() -> None:
    now = 1_750_000_000_000
    last = now - now % TF - TF  # closed at the last boundary
    assert bar_clock({"X": [bar("X", last // TF)]}, now) == "wall"
    assert bar_clock({"X": [bar("X", 100)]}, now) == "replay"


class Always:
    """A signal source that wants a long on every bar."""

    name = "always"

    def on_bar(self, b: Bar) -> Signal:
        sid = f"{b.symbol}-{b.close_ts}"
        return Signal(sid, b.symbol, Direction.LONG, 0.9, b.close_ts, b.close_ts + 60_000,
                      b.close, self.name, sid, b.timeframe, 0.02)


def test_the_gate_refuses_entries_on_late_bars_only() -> None:
    bars = list(load_sample("XRP").slice(0, 2))
    gate = FeedGate({("XRPUSDT", bars[0].ts): "backfilled: the venue had a newer bar"})
    journal = ListJournal()
    node = build_node(Settings(), Always(), journal)
    gate.install(node)
    assert node.source.name == "always"  # the source keeps its name (parity checks it)
    for b in bars:
        node.on_bar(b)
    first, second = (e for e in journal.events if isinstance(e, RiskDecision))
    assert (first.approved, first.reason) == (False, "STALE_MARKET_DATA")
    assert "no entry on a late bar: backfilled" in first.detail
    assert second.approved, second.detail


def test_latency_figures() -> None:
    b = SeenBar("X", "30m", 0, 1, 1, 1, 1, 1, "trade", received_ms=TF + 10, decided_ms=TF + 13)
    late = replace(b, ts=TF, received_ms=5 * TF, decided_ms=5 * TF + 1, late="stale")
    got = latency([b, late], wall_clock=True)
    assert got["arrival_to_decision"]["n"] == 2
    assert got["arrival_to_decision"]["max"] == 3
    # From the close only for bars on time (a late bar's wait is the outage, not the node).
    assert got["close_to_decision"] == {"n": 1.0, "p50": 13.0, "p95": 13.0, "max": 13.0}
    assert "close_to_decision" not in latency([b], wall_clock=False)


def test_compare_lists_every_differing_field_and_each_side_alone() -> None:
    a = Always().on_bar(bar("XRPUSDT", 1))
    b = Always().on_bar(bar("XRPUSDT", 2))
    c = Always().on_bar(bar("XRPUSDT", 3))
    changed = replace(a, confidence=0.5, direction=Direction.SHORT)
    cat = compare("signals", {a.id: a, b.id: b}, {a.id: changed, c.id: c}, SIGNAL_FIELDS,
                  lambda s: s.ts, None)
    assert (cat.matched, cat.differing, cat.live_only, cat.replay_only) == (0, 1, 1, 1)
    assert {d.what for d in cat.differences if d.key == a.id} == {"confidence", "direction"}
    since = compare("signals", {a.id: a, b.id: b}, {a.id: a, b.id: b}, SIGNAL_FIELDS,
                    lambda s: s.ts, b.ts)
    assert (since.matched, since.different) == (1, 0)
