"""Parity: replay the bars a node saw through the backtester and report every difference.

A dry run (or a paper run) records every bar it processed (``bars``: the warm-up history its
signal source saw first, then the bars it traded, each with why entries were refused on it
when it arrived late), and journals its signals, risk decisions, orders and fills. ``parity``
replays exactly those bars through ``run_backtest`` with the settings and the signal source
the run recorded (the warm-up bars warm the replay's source up the same way, late bars refuse
the same entries) and compares, record by record:

* signals (direction, confidence, price, stop distance, expiry),
* risk decisions (approved or rejected, the reason; the approved intent's side, size, type),
* orders (side, quantity, type, purpose, reduce-only, levels, final status and fill),
* fills (price, quantity, fee, time; the slippage of each against the model's price),

and reports the latency from a bar's arrival (and, on a wall-clock venue, its close) to the
node's decision. The first three are the node's decisions: any difference there means the
live path decided differently from the backtest on the same bars.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quantum_trader.config import Settings
from quantum_trader.domain.models import Fill, RiskDecision, Signal
from quantum_trader.domain.orders import Order
from quantum_trader.domain.records import AuditEvent, SeenBar
from quantum_trader.domain.strategy import SignalSource
from quantum_trader.runtime.dry_run import FeedGate, merged, percentiles, series_of
from quantum_trader.runtime.node import ListJournal
from quantum_trader.store.protocol import TradeStore

DECISION_CATEGORIES = ("signals", "risk decisions", "orders")
CATEGORIES = (*DECISION_CATEGORIES, "fills")


class ParityRefused(ValueError):
    """Nothing to compare, or no way to rebuild what the run traded with."""


@dataclass(frozen=True, slots=True)
class Difference:
    key: str  # the record's id
    what: str  # the field that differs, or "missing"
    live: Any
    replay: Any
    ts: int

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "what": self.what, "live": _plain(self.live),
                "replay": _plain(self.replay), "ts": self.ts}


@dataclass
class Category:
    name: str
    matched: int = 0
    differing: int = 0
    live_only: int = 0
    replay_only: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def different(self) -> int:
        return self.differing + self.live_only + self.replay_only

    def to_dict(self, shown: int | None = None) -> dict[str, Any]:
        diffs = self.differences if shown is None else self.differences[:shown]
        return {"matched": self.matched, "differing": self.differing,
                "live_only": self.live_only, "replay_only": self.replay_only,
                "differences": [d.to_dict() for d in diffs]}


@dataclass
class ParityReport:
    mode: str
    source: str
    symbols: list[str]
    timeframe: str
    since: int | None
    bars: int
    warmup_bars: int
    late_bars: int
    first_bar: int | None
    last_bar: int | None
    categories: dict[str, Category]
    latency_ms: dict[str, dict[str, float]]
    slippage_bps: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def decisions_differ(self) -> bool:
        return any(self.categories[c].different for c in DECISION_CATEGORIES)

    def to_dict(self, shown: int | None = None) -> dict[str, Any]:
        return {"mode": self.mode, "source": self.source, "symbols": self.symbols,
                "timeframe": self.timeframe, "since": self.since, "bars": self.bars,
                "warmup_bars": self.warmup_bars, "late_bars": self.late_bars,
                "first_bar": self.first_bar, "last_bar": self.last_bar,
                "decisions_differ": self.decisions_differ,
                "categories": {k: c.to_dict(shown) for k, c in self.categories.items()},
                "latency_ms": self.latency_ms, "slippage_bps": self.slippage_bps,
                "notes": self.notes}


def _plain(v: Any) -> Any:
    if hasattr(v, "value") and not isinstance(v, (int, float, str)):
        return v.value
    return v


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


Fields = Sequence[tuple[str, Callable[[Any], Any]]]


def compare(name: str, live: Mapping[str, Any], replay: Mapping[str, Any], fields: Fields,
            ts_of: Callable[[Any], int], since: int | None) -> Category:
    """Records by key: matched, differing (each differing field listed), on one side only.
    Differences in time order."""
    cat = Category(name)
    diffs: list[Difference] = []
    for key in sorted(set(live) | set(replay)):
        a, b = live.get(key), replay.get(key)
        ts = ts_of(a if a is not None else b)
        if since is not None and ts < since:
            continue
        if b is None:
            cat.live_only += 1
            diffs.append(Difference(key, "missing in the replay", "present", None, ts))
            continue
        if a is None:
            cat.replay_only += 1
            diffs.append(Difference(key, "missing in the run", None, "present", ts))
            continue
        differing = [(label, get(a), get(b)) for label, get in fields
                     if not _same(get(a), get(b))]
        if differing:
            cat.differing += 1
            diffs.extend(Difference(key, label, x, y, ts) for label, x, y in differing)
        else:
            cat.matched += 1
    cat.differences = sorted(diffs, key=lambda d: (d.ts, d.key))
    return cat


def _intent(d: RiskDecision, attr: str) -> Any:
    return None if d.intent is None else _plain(getattr(d.intent, attr))


SIGNAL_FIELDS: Fields = (
    ("symbol", lambda s: s.symbol), ("direction", lambda s: _plain(s.direction)),
    ("confidence", lambda s: s.confidence), ("price", lambda s: s.price),
    ("stop_distance", lambda s: s.stop_distance), ("expires_at", lambda s: s.expires_at),
    ("source", lambda s: s.source))
DECISION_FIELDS: Fields = (
    ("approved", lambda d: d.approved), ("reason", lambda d: d.reason),
    ("side", lambda d: _intent(d, "side")), ("quantity", lambda d: _intent(d, "quantity")),
    ("order_type", lambda d: _intent(d, "order_type")),
    ("purpose", lambda d: _intent(d, "purpose")),
    ("stop_price", lambda d: _intent(d, "stop_price")))
ORDER_FIELDS: Fields = (
    ("symbol", lambda o: o.symbol), ("side", lambda o: _plain(o.side)),
    ("quantity", lambda o: o.quantity), ("order_type", lambda o: _plain(o.order_type)),
    ("purpose", lambda o: _plain(o.purpose)), ("reduce_only", lambda o: o.reduce_only),
    ("price", lambda o: o.price), ("stop_price", lambda o: o.stop_price),
    ("status", lambda o: _plain(o.status)), ("filled_qty", lambda o: o.filled_qty))
FILL_FIELDS: Fields = (
    ("price", lambda f: f.price), ("quantity", lambda f: f.quantity),
    ("fee", lambda f: f.fee), ("ts", lambda f: f.ts), ("side", lambda f: _plain(f.side)))


def _fills_by_order(fills: Iterable[Fill]) -> dict[str, Fill]:
    """Fills keyed by "<client order id>#<n>": ids are the venue's, the order is ours."""
    per: dict[str, list[Fill]] = {}
    for f in fills:
        per.setdefault(f.client_order_id, []).append(f)
    return {f"{cid}#{i + 1}": f for cid, fs in per.items()
            for i, f in enumerate(sorted(fs, key=lambda f: (f.ts, f.id)))}


def _slippage(live: Mapping[str, Fill], replay: Mapping[str, Fill],
              since: int | None) -> dict[str, float]:
    """Each fill of the run against the model's (the replay's) price for it, in basis points,
    positive when the run's price was worse for us."""
    bps = []
    for key, f in live.items():
        m = replay.get(key)
        if m is None or m.price <= 0 or (since is not None and f.ts < since):
            continue
        sign = 1.0 if _plain(f.side) == "BUY" else -1.0
        bps.append(sign * (f.price - m.price) / m.price * 1e4)
    if not bps:
        return {"n": 0.0}
    return {"n": float(len(bps)), "mean": sum(bps) / len(bps),
            "max_abs": max(abs(b) for b in bps)}


def latency(bars: Sequence[SeenBar], wall_clock: bool) -> dict[str, dict[str, float]]:
    """From a bar's arrival (and, on a wall-clock venue, its close) to the node's decision."""
    out: dict[str, dict[str, float]] = {}
    got = [float(b.decided_ms - b.received_ms) for b in bars if b.received_ms and b.decided_ms]
    if got:
        out["arrival_to_decision"] = percentiles(got)
    if wall_clock:
        from quantum_trader.domain.models import timeframe_ms

        close = [float(b.decided_ms - (b.ts + timeframe_ms(b.timeframe)))
                 for b in bars if b.decided_ms and not b.late]
        if close:
            out["close_to_decision"] = percentiles(close)
    return out


def replay_settings(config: Settings, recorded: Mapping[str, Any] | None) -> Settings:
    """The run's own trading settings over ``config`` (paths, the registry: where to find
    things now)."""
    from pydantic import ValidationError

    if not recorded:
        return config
    base = config.model_dump()
    base.update(recorded)
    try:
        return Settings.model_validate(base)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ParityRefused(f"the settings the run recorded do not load here ({where}: "
                            f"{first['msg']}): was it made by another release?") from None


def replay_source(settings: Settings, recorded: str) -> SignalSource:
    """The signal source the run traded with: what the settings give, or the recorded model
    version from the registry."""
    from quantum_trader.ai.production import choose_signal_source, registry_for

    source, _why = choose_signal_source(settings)
    if not recorded or source.name == recorded:
        return source
    if "@" in recorded:
        from quantum_trader.ai.signals import ModelSignalSource

        name, version = recorded.rsplit("@", 1)
        try:
            return ModelSignalSource(registry_for(settings).load(name, version))
        except (OSError, ValueError) as exc:
            raise ParityRefused(f"the run traded with model {recorded}, which the registry "
                                f"({settings.paths.registry_dir}) cannot give: {exc}") from None
    raise ParityRefused(f"the run traded with {recorded}, but its settings now give "
                        f"{source.name}: cannot rebuild its signal source")


def _first_difference(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> str:
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            found = _first_difference(x, y, f"{prefix}{k}.")
            if found:
                return found
        elif x != y:
            return f"{prefix}{k}: {x!r} -> {y!r}"
    return ""


async def parity(store: TradeStore, config: Settings, since: int | None = None,
                 source: SignalSource | None = None) -> ParityReport:
    """Replay what the store's run saw and compare (``since``: only records from then on;
    the replay still starts at the first bar, so its state is the run's)."""
    from quantum_trader.runtime.backtest import run_backtest

    seen = await store.bars()
    trade = [b for b in seen if b.role == "trade"]
    warm = [b for b in seen if b.role == "warmup"]
    if not trade:
        raise ParityRefused("the store has no bars traded on record: nothing to replay (run "
                            "`quantum-trader run --live` or `run` first; runs before this "
                            "release did not record their bars)")
    if len({b.timeframe for b in trade}) > 1:
        raise ParityRefused("the store's bars are of several timeframes; one run trades one")
    starts: list[AuditEvent] = await store.audit("run_started")
    resumes: list[AuditEvent] = await store.audit("run_resumed")
    started = starts[0].detail if starts else {}
    notes: list[str] = []
    recorded = started.get("settings")
    if recorded is None:
        notes.append("the run did not record its settings: the replay uses this config's")
    for ev in resumes:
        other = ev.detail.get("settings")
        if recorded is not None and other is not None and other != recorded:
            notes.append("a resume ran with other settings (" +
                         _first_difference(recorded, other) + "): the replay uses the first")
            break
    settings = replay_settings(config, recorded)
    src = source or replay_source(settings, str(started.get("source", "")))
    for bar in merged(warm):  # the warm-up the run's source had
        src.on_bar(bar)
    mode = str(started.get("mode", "paper"))
    late = {(b.symbol, b.ts): b.late for b in trade if b.late}
    gate = FeedGate(late)
    journal = ListJournal()
    run_backtest(series_of(trade), settings, src, journal=journal,
                 setup=gate.install if mode == "dry-run" or late else None)
    events = journal.events

    def last_by(items: Iterable[Any], key: Callable[[Any], str]) -> dict[str, Any]:
        return {key(x): x for x in items}

    rep_signals = last_by((e for e in events if isinstance(e, Signal)), lambda s: s.id)
    rep_decisions = last_by((e for e in events if isinstance(e, RiskDecision)), lambda d: d.id)
    rep_orders = last_by((e for e in events if isinstance(e, Order)),
                         lambda o: o.client_order_id)
    rep_fills = _fills_by_order(e for e in events if isinstance(e, Fill))
    live_signals = last_by(await store.signals(), lambda s: s.id)
    live_decisions = last_by(await store.decisions(), lambda d: d.id)
    live_orders = last_by(await store.orders(), lambda o: o.client_order_id)
    live_fills = _fills_by_order(await store.fills())
    categories = {
        "signals": compare("signals", live_signals, rep_signals, SIGNAL_FIELDS,
                           lambda s: s.ts, since),
        "risk decisions": compare("risk decisions", live_decisions, rep_decisions,
                                  DECISION_FIELDS, lambda d: d.ts, since),
        "orders": compare("orders", live_orders, rep_orders, ORDER_FIELDS,
                          lambda o: o.created_ts, since),
        "fills": compare("fills", live_fills, rep_fills, FILL_FIELDS, lambda f: f.ts, since),
    }
    clocks = {str(ev.detail.get("bar_clock", "")) for ev in [*starts, *resumes]}
    in_window = [b for b in trade if since is None or b.ts >= since]
    return ParityReport(
        mode, src.name, sorted({b.symbol for b in trade}), trade[0].timeframe, since,
        len(trade), len(warm), len(late), trade[0].ts, trade[-1].ts, categories,
        latency(in_window, clocks == {"wall"}), _slippage(live_fills, rep_fills, since), notes)


__all__ = ["CATEGORIES", "DECISION_CATEGORIES", "Category", "Difference", "ParityRefused",
           "ParityReport", "compare", "latency", "parity", "replay_settings", "replay_source"]
