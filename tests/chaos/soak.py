"""A seeded, bounded chaos soak of the live stack, checked from outside against the venue.

The five trading services run as real processes (market-data, ai-engine, risk-safety,
exit-brain, execution) against our Binance-compatible simulator through the real ccxt client,
on a Redis and a PostgreSQL of the soak's own (so it can restart them). For ``duration_s``:

* the venue injects faults into ``fault_rate`` of its answers (timeouts, 5xx processed or not,
  429s, clock skew, dropped connections, 408s with an empty body);
* execution, the exit brain and risk-safety are killed with SIGKILL at random moments and
  restarted (as the launcher or systemd would);
* Redis is restarted once without persistence (its data, streams and consumer groups, is lost)
  and PostgreSQL once with an immediate (crash) shutdown;
* messages are redelivered (copies of approvals, fills and bars appended to their streams);
* the venue auto-deleverages a position once, and an operator places an order by hand.

Then the faults stop, the stack settles, and the venue's own records (``SimState.records()``)
are compared with ours:

1. no intent has two venue orders;
2. every venue trade is in our books exactly once;
3. our positions, wallet, realized PnL, fees and funding equal the venue's;
4. the orders our books consider working are the ones working on the venue;
5. every open position has a working protective stop;
6. venue exposure never exceeded the risk limits (sampled through the run);
7. no entry was sent after its intent expired;
8. every service is OK again at the end.

Run alone: ``python -m tests.chaos.soak --seed 7 --duration 120`` (prints the counts and every
violation; exit 1 if any).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from quantum_trader.domain.enums import OrderType, Side
from quantum_trader.venue_sim import FaultConfig, SimServer, SimServerConfig, SimState, load_series
from tests.support.cluster import (
    PIPELINE_SERVICES,
    Cluster,
    clear_venue_keys,
    cluster,
    set_venue_keys,
)
from tests.support.pg_server import PgServer
from tests.support.redis_server import RedisServer

KILLABLE = ("execution", "exit-brain", "risk-safety")
SAMPLES = {"XRPUSDT": "sample:XRP", "BTCUSDT": "sample:BTC", "ETHUSDT": "sample:ETH",
           "LTCUSDT": "sample:LTC", "EOSUSDT": "sample:EOS"}


@dataclass
class SoakConfig:
    seed: int = 7
    duration_s: float = 60.0
    symbols: tuple[str, ...] = ("XRPUSDT", "LTCUSDT")
    fault_rate: float = 0.15
    bar_seconds: float = 0.5  # wall seconds per 30m bar: 3600x
    kills: dict[str, int] = field(default_factory=lambda: {"execution": 3, "exit-brain": 1,
                                                           "risk-safety": 1})
    redis_restart: bool = True
    pg_restart: bool = True
    redeliveries: int = 30
    adl: bool = True
    manual_order: bool = True
    max_position_notional: float = 5_000.0
    max_gross_exposure: float = 10_000.0
    # The market moves 3600x: a few bars of lag are a few percent. Entries are sized at the
    # approval's price and sent only while the market is within this band of it, so the
    # limits hold to within it (plus the slippage of one market order).
    max_price_deviation: float = 0.05
    settle_timeout_s: float = 120.0
    # On a loaded machine the stack trades less per wall second: the chaos goes on (up to
    # ``max_overrun_s`` more) until the venue has booked at least this many trades, so a
    # slow run still tests something rather than pass on nothing.
    min_trades: int = 0
    max_overrun_s: float = 120.0


@dataclass
class SoakReport:
    seed: int
    duration_s: float
    counts: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def text(self) -> str:
        lines = [f"chaos soak seed={self.seed} duration={self.duration_s:.0f}s"]
        lines += [f"  {k:<28} {v:>8}" for k, v in sorted(self.counts.items())]
        lines += [f"  event: {e}" for e in self.events]
        lines += [f"  VIOLATION: {v}" for v in self.violations] or ["  all invariants hold"]
        return "\n".join(lines)


class _ExposureMonitor(threading.Thread):
    """Samples the venue's positions through the run: the largest notional held, at the
    position's entry price (what the risk limits size against)."""

    def __init__(self, state: SimState, every_s: float = 0.1) -> None:
        super().__init__(daemon=True, name="exposure-monitor")
        self.state = state
        self.every_s = every_s
        self.stop_event = threading.Event()
        self.max_symbol: dict[str, float] = defaultdict(float)
        self.max_gross = 0.0
        self.external: set[str] = set()  # symbols whose exposure includes an operator's trade

    def run(self) -> None:
        while not self.stop_event.wait(self.every_s):
            gross = 0.0
            for p in self.state.positions():
                n = abs(p.qty) * p.entry_price
                self.max_symbol[p.symbol] = max(self.max_symbol[p.symbol], n)
                gross += n
            self.max_gross = max(self.max_gross, gross)


def _faults(rate: float, seed: int) -> FaultConfig:
    kinds = ("timeout", "error_5xx", "rate_limit", "clock_skew", "drop", "timeout_408")
    return FaultConfig(probabilities={k: rate / len(kinds) for k in kinds}, timeout_s=1.0,
                       retry_after_s=0.2, seed=seed)


def _supervise(c: Cluster, stop: threading.Event, restarts: Counter[str]) -> None:
    """What the launcher does: a service that died is started again after a short backoff."""
    while not stop.wait(0.3):
        for name in PIPELINE_SERVICES:
            proc = c.procs.get(name)
            if proc is None or proc.poll() is not None:
                if proc is not None:
                    c.procs.pop(name, None)
                c.start(name)
                restarts[name] += 1


def _redeliver(r: redis.Redis, ns: str, rng: random.Random, n: int) -> int:
    """Append copies of existing entries to their streams: an at-least-once bus delivers some
    messages twice (a consumer that died before its ack, a producer that retried)."""
    done = 0
    for topic in ("orders.approved", "executions", "market.bars", "exits", "signals"):
        key = f"{ns}qt:{topic}"
        try:
            entries = r.xrange(key, count=500)
        except redis.RedisError:
            continue
        for _entry_id, fields in rng.sample(entries, k=min(len(entries), n // 5 + 1)):
            if b"d" in fields:
                r.xadd(key, {"d": fields[b"d"]})
                done += 1
    return done


def run_soak(cfg: SoakConfig, workdir: Path | None = None) -> SoakReport:
    rng = random.Random(cfg.seed)
    report = SoakReport(cfg.seed, cfg.duration_s)
    root = Path(workdir or tempfile.mkdtemp(prefix="qt-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # the database server runs as its own user and must reach its directory
    redis_srv = RedisServer(root / "redis", persist=False)
    pg = PgServer(root / "pg")
    redis_srv.start()
    pg.init()
    pg.start()
    series = load_series([SAMPLES[s] for s in cfg.symbols])
    state = SimState(SimServerConfig(series=series, bar_seconds=cfg.bar_seconds, start_bar=600,
                                     weight_limit=60_000, faults=_faults(cfg.fault_rate,
                                                                         cfg.seed)))
    srv = SimServer(state).start()
    set_venue_keys(root, state.config.api_key, state.config.api_secret)
    monitor = _ExposureMonitor(state)
    stop_supervisor = threading.Event()
    restarts: Counter[str] = Counter()
    kills: Counter[str] = Counter()
    (root / "stack").mkdir(exist_ok=True)
    try:
        with cluster(root / "stack", redis_url=redis_srv.url, pg_admin=pg.admin_dsn, **{
                "exchange.kind": "binance-live", "exchange.base_url": srv.url,
                "exchange.symbols": list(cfg.symbols), "exchange.poll_s": 0.05,
                "exchange.stale_after_s": 8.0, "exchange.reconcile_s": 0.7,
                "exchange.protection_grace_s": 1.0, "exchange.recv_window_ms": 1_000,
                "data.source": SAMPLES[cfg.symbols[0]],
                "strategy.fast": 3, "strategy.slow": 8,
                "risk.cooldown_after_stop_ms": 0,
                "risk.max_price_deviation": cfg.max_price_deviation,
                "risk.max_position_notional": cfg.max_position_notional,
                "risk.max_gross_exposure": cfg.max_gross_exposure,
                "risk.max_open_positions": len(cfg.symbols),
                # Ten bars (5 s of wall time) for a signal to become an order; stale after.
                "exits.intent_ttl_ms": 18_000_000, "strategy.signal_ttl_ms": 18_000_000,
                "services.signal_max_age_ms": 20_000, "services.store_retry_s": 20.0,
                "services.heartbeat_interval_s": 0.25, "services.view_wait_s": 5.0,
                "services.heartbeat_stale_s": 2.0}) as c:
            for name in PIPELINE_SERVICES:
                c.start(name)
            monitor.start()
            sup = threading.Thread(target=_supervise, args=(c, stop_supervisor, restarts),
                                   daemon=True)
            sup.start()
            try:
                _chaos(cfg, c, state, srv, redis_srv, pg, rng, kills, monitor, report)
            finally:
                stop_supervisor.set()  # before the stack goes: nothing may restart it
                sup.join(5)
            report.counts.update({f"kills {k}": v for k, v in kills.items()})
            report.counts["restarts"] = sum(restarts.values())
            report.counts["faults injected"] = sum(state.faults_injected.values())
            report.counts["venue requests"] = sum(state.requests.values())
    finally:
        stop_supervisor.set()
        monitor.stop_event.set()
        srv.stop()
        redis_srv.stop()
        pg.remove()
        clear_venue_keys()
        if workdir is None and report.ok:
            shutil.rmtree(root, ignore_errors=True)
        elif workdir is None:  # a violation (or a crash) is worth its logs: keep them
            shutil.rmtree(root / "pg", ignore_errors=True)
            report.events.append(f"logs kept in {root}")
    return report


def _chaos(cfg: SoakConfig, c: Cluster, state: SimState, srv: SimServer,
           redis_srv: RedisServer, pg: PgServer, rng: random.Random, kills: Counter[str],
           monitor: _ExposureMonitor, report: SoakReport) -> None:
    """The run: the schedule of faults and kills, then the settle and the checks."""
    r = redis.Redis.from_url(redis_srv.url)
    schedule = _schedule(cfg, rng)
    t0 = time.monotonic()
    for at, what in schedule:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        report.events.append(f"{at:6.1f}s {what}")
        _do(what, c, state, srv, redis_srv, pg, r, rng, cfg, kills)
    remaining = t0 + cfg.duration_s - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    overrun_until = time.monotonic() + cfg.max_overrun_s
    if len(state.records().trades) < cfg.min_trades:
        # A loaded machine cannot keep up with the market's pace (signals expire before risk
        # sees them): the chaos goes on, on a market half as fast.
        state.set_pace(cfg.bar_seconds * 2)
    while len(state.records().trades) < cfg.min_trades and time.monotonic() < overrun_until:
        time.sleep(1.0)
    overrun = time.monotonic() - (t0 + cfg.duration_s)
    if overrun > 1.0:
        report.events.append(f"{cfg.duration_s + overrun:6.1f}s ran {overrun:.0f}s over, at "
                             f"half the pace, to reach {cfg.min_trades} venue trades")
    # The end: faults off, the market stops, the stack settles.
    state.config.faults.probabilities = {}
    state.set_pace(2.0)  # the market slows down to a bar every 2 s: books can settle
    unsettled = _settle(c, state, cfg.settle_timeout_s)
    if unsettled is not None:
        report.violations.append(f"did not settle in {cfg.settle_timeout_s:.0f}s: "
                                 f"{unsettled}")
    # The checks read the venue, then our tables: a market still moving between the two
    # (a stop that triggers meanwhile) would be a difference of the check's own making.
    # Standing still for long, the feed would go stale: the services' health is judged
    # once the market moves again.
    state.freeze()
    unsettled = _settle(c, state, 20.0, health=False)
    if unsettled is not None:
        report.violations.append(f"did not settle with the market still: {unsettled}")
    monitor.stop_event.set()
    _check(c, state, monitor, cfg, report)
    state.set_pace(2.0)
    sick = _settle(c, state, 30.0)
    if sick is not None:
        report.violations.append(f"not every service is OK at the end: {sick}")
    if report.violations:
        _dump(c, state, report)


def _dump(c: Cluster, state: SimState, report: SoakReport) -> None:
    """Keep what a violation needs explaining: our tables and the venue's records, as JSON
    beside the services' logs (the databases go with the run)."""
    out = c.root / "forensics"
    out.mkdir(exist_ok=True)
    for table in ("orders", "fills", "venue_trades", "positions", "audit_events",
                  "checkpoints", "cursors"):
        try:
            rows = [dict(r) for r in c.query(f"select * from {table}")]
        except Exception as exc:  # forensics must not hide the report
            rows = [{"error": str(exc)}]
        (out / f"{table}.json").write_text(json.dumps(rows, default=str, indent=1))
    rec = state.records()
    venue = {"orders": rec.orders, "trades": rec.trades, "income": rec.income,
             "positions": rec.positions, "wallet": rec.wallet}
    (out / "venue.json").write_text(json.dumps(venue, default=_plain, indent=1))
    report.events.append(f"forensics kept in {out}")


def _plain(o: Any) -> Any:
    if hasattr(o, "__dataclass_fields__"):
        return {k: getattr(o, k) for k in o.__dataclass_fields__}
    return str(o)


def _schedule(cfg: SoakConfig, rng: random.Random) -> list[tuple[float, str]]:
    d = cfg.duration_s
    events: list[tuple[float, str]] = []
    for name, n in cfg.kills.items():
        events += [(rng.uniform(0.15 * d, 0.85 * d), f"kill {name}") for _ in range(n)]
    if cfg.redis_restart:
        events.append((rng.uniform(0.3 * d, 0.6 * d), "restart redis"))
    if cfg.pg_restart:
        events.append((rng.uniform(0.4 * d, 0.7 * d), "restart postgres"))
    if cfg.adl:
        events.append((rng.uniform(0.2 * d, 0.8 * d), "adl"))
    if cfg.manual_order:
        events.append((rng.uniform(0.2 * d, 0.5 * d), "manual order"))
    for _ in range(3):
        events.append((rng.uniform(0.2 * d, 0.9 * d), "redeliver"))
    return sorted(events)


def _do(what: str, c: Cluster, state: SimState, srv: SimServer, redis_srv: RedisServer,
        pg: PgServer, r: redis.Redis, rng: random.Random, cfg: SoakConfig,
        kills: Counter[str]) -> None:
    if what.startswith("kill "):
        name = what.split(" ", 1)[1]
        proc = c.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills[name] += 1
    elif what == "restart redis":
        redis_srv.restart(hard=True)  # no persistence: every stream and group is gone
    elif what == "restart postgres":
        pg.restart("immediate")
    elif what == "adl":
        held = [p for p in state.positions() if p.qty]
        if held:
            state.adl(rng.choice(held).symbol, 0.5)
    elif what == "manual order":
        sym = cfg.symbols[0]
        price = state.price_now(sym) or 1.0
        inst = state.config.instruments(sym)
        qty = inst.round_qty_down(max(inst.min_notional * 2 / (price * 0.5), inst.min_qty))
        # A resting limit an operator left on the account, far from the market.
        state.place(sym, Side.BUY, OrderType.LIMIT, qty,
                    price=inst.round_price(price * 0.5), client_id="manual-soak-1")
    elif what == "redeliver":
        _redeliver(r, c.namespace, rng, cfg.redeliveries)


def _healthy(c: Cluster) -> bool:
    return all(c.health(n)["status"] == "OK" for n in PIPELINE_SERVICES)


def _settle(c: Cluster, state: SimState, timeout_s: float, health: bool = True) -> str | None:
    """Wait for the books to match the venue and (with ``health``) every service to be OK;
    None when they do, else what still differed at the deadline."""
    def mismatch() -> str | None:
        ours = {row["symbol"]: row["qty"] for row in
                c.query("select symbol, qty from positions where qty <> 0")}
        theirs = {p.symbol: p.qty for p in state.positions() if p.qty}
        if set(ours) != set(theirs) or any(abs(ours[s] - theirs[s]) > 1e-9 for s in ours):
            return f"positions: ours {ours} venue {theirs}"
        booked = int(c.query("select count(*) from venue_trades")[0][0])
        if booked != len(state.records().trades):
            return f"trades: {booked} booked of the venue's {len(state.records().trades)}"
        if not health:
            return None
        sick = {n: h.get("reasons") for n in PIPELINE_SERVICES
                if (h := c.health(n))["status"] != "OK"}
        return f"services not OK: {sick}" if sick else None

    deadline = time.monotonic() + timeout_s
    why = mismatch()
    while why is not None and time.monotonic() < deadline:
        time.sleep(0.5)
        why = mismatch()
    if why is None:
        time.sleep(3.0)  # a few more reconciliation rounds with nothing moving
    return why


def _check(c: Cluster, state: SimState, monitor: _ExposureMonitor, cfg: SoakConfig,
           report: SoakReport) -> None:
    rec = state.records()
    v = report.violations
    ours_orders = c.query("select * from orders")
    ours_trades = c.query("select symbol, trade_id from venue_trades")
    fills = c.query("select id, client_order_id, fee, realized_pnl from fills")
    funding = c.query("select amount from funding_payments")
    cp = c.query("select wallet from checkpoints where node = 'execution'")

    # 1. no intent has two venue orders
    by_cid = Counter(o.client_id for o in rec.orders if o.source.value == "API")
    ours_cids = {o["client_order_id"] for o in ours_orders if o["origin"] == "OURS"}
    doubles = [cid for cid, n in by_cid.items() if n > 1 and cid in ours_cids]
    if doubles:
        v.append(f"{len(doubles)} intents have more than one venue order: {doubles[:5]}")
    # 2. every venue trade booked exactly once
    venue_keys = Counter((t.symbol, str(t.id)) for t in rec.trades)
    our_keys = Counter((row["symbol"], row["trade_id"]) for row in ours_trades)
    missing = set(venue_keys) - set(our_keys)
    extra = set(our_keys) - set(venue_keys)
    if missing:
        v.append(f"{len(missing)} venue trades missing from our books: {sorted(missing)[:5]}")
    if extra:
        v.append(f"{len(extra)} trades in our books the venue never made: {sorted(extra)[:5]}")
    per_trade = Counter(row["id"].rsplit(":", 1)[-1] for row in fills)
    twice = [k for k, n in per_trade.items() if n > 1]
    if twice or len(fills) != len(ours_trades):
        v.append(f"fills booked twice: {twice[:5]} ({len(fills)} fills for "
                 f"{len(ours_trades)} trades)")
    # 3. positions, wallet, realized PnL, fees, funding
    ours_pos = {row["symbol"]: row["qty"] for row in
                c.query("select symbol, qty from positions where qty <> 0")}
    venue_pos = {p.symbol: p.qty for p in rec.positions if p.qty}
    if set(ours_pos) != set(venue_pos) or any(abs(ours_pos[s] - venue_pos[s]) > 1e-9
                                              for s in ours_pos):
        v.append(f"positions differ: ours {ours_pos} venue {venue_pos}")
    wallet = cp[0]["wallet"] if cp else float("nan")
    if not abs(wallet - rec.wallet) <= 1e-6 * max(1.0, abs(rec.wallet)):
        v.append(f"wallet differs: ours {wallet} venue {rec.wallet}")
    _close(v, "fees", sum(r["fee"] for r in fills), sum(t.commission for t in rec.trades))
    _close(v, "realized PnL", sum(r["realized_pnl"] for r in fills),
           sum(t.realized_pnl for t in rec.trades))
    _close(v, "funding", sum(r["amount"] for r in funding),
           -sum(i.income for i in rec.income if i.income_type == "FUNDING_FEE"))
    # 4. working orders: ours = the venue's
    venue_working = set()
    for o in rec.orders:
        if o.is_open:
            venue_working.add(_our_cid(o, rec))
    # NEW: held back by us (an entry waiting for the opposite exit), never sent: not on
    # the venue by design. Everything sent and not finished must be working there.
    ours_working = {o["client_order_id"] for o in ours_orders
                    if o["status"] in ("SUBMITTED", "ACCEPTED", "PARTIALLY_FILLED")}
    if ours_working != venue_working:
        v.append(f"working orders differ: only ours {sorted(ours_working - venue_working)[:5]}"
                 f", only the venue's {sorted(venue_working - ours_working)[:5]}")
    # 5. every open position protected on the venue
    for p in rec.positions:
        closing = "SELL" if p.qty > 0 else "BUY"
        stops = [o for o in rec.orders if o.symbol == p.symbol and o.is_open and o.algo
                 and o.type == "STOP_MARKET" and o.side.value == closing and o.reduce_only]
        if not stops:
            v.append(f"{p.symbol} position {p.qty} has no working stop on the venue")
    # 6. exposure: sized at the approval's price, sent only within the price band of it
    band = 1.0 + cfg.max_price_deviation + 0.01
    for sym, n in monitor.max_symbol.items():
        if n > cfg.max_position_notional * band:
            v.append(f"{sym} exposure reached {n:.2f} (limit {cfg.max_position_notional})")
    if monitor.max_gross > cfg.max_gross_exposure * band:
        v.append(f"gross exposure reached {monitor.max_gross:.2f} "
                 f"(limit {cfg.max_gross_exposure})")
    # 7. no expired entry sent
    venue_time = {o.client_id: o.time for o in rec.orders if o.source.value == "API"}
    late = [o["client_order_id"] for o in ours_orders if o["purpose"] == "ENTRY"
            and o["client_order_id"] in venue_time and o["expires_at"]
            and venue_time[o["client_order_id"]] > o["expires_at"]]
    if late:
        detail = [(o["client_order_id"][:10], o["expires_at"], venue_time[o["client_order_id"]],
                   o["created_ts"], o["status"]) for o in ours_orders
                  if o["client_order_id"] in late]
        v.append(f"{len(late)} entries reached the venue after their intent expired "
                 f"(id, expires, arrived, created, status): {detail}")
    # 8. every service OK: judged by the caller once the market moves again
    for row in c.query("select reason, count(*) as n from risk_decisions group by reason"):
        report.counts[f"decisions {row['reason']}"] = int(row["n"])
    report.counts["signals"] = int(c.query("select count(*) from signals")[0][0])
    for row in c.query("select purpose, status, count(*) as n from orders group by 1, 2"):
        report.counts[f"orders {row['purpose']} {row['status']}"] = int(row["n"])
    for row in c.query("select reason, count(*) as n from orders where status in "
                       "('EXPIRED', 'REJECTED') group by 1"):
        report.events.append(f"refused: {row['n']} x {row['reason'][:100]}")
    report.counts.update({
        "intents (orders of ours)": len(ours_cids),
        "venue orders": len(rec.orders),
        "venue trades": len(rec.trades),
        "fills booked": len(fills),
        "funding payments": len(funding),
        "closed trades": int(c.query("select count(*) from closed_trades")[0][0]),
        "max notional (USDT)": int(max(monitor.max_symbol.values(), default=0)),
    })


def _our_cid(o: Any, rec: Any) -> str:
    """The client id our books know a venue order by: a triggered stop's regular order is
    the stop (our client id), every other order its own."""
    if o.parent is not None:
        parent = next((p for p in rec.orders if p.algo and p.order_id == o.parent), None)
        if parent is not None:
            return str(parent.client_id)
    return str(o.client_id)


def _close(v: list[str], what: str, ours: float, venue: float) -> None:
    if abs(ours - venue) > 1e-6 * max(1.0, abs(venue)):
        v.append(f"{what} differs: ours {ours:.8f} venue {venue:.8f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--symbols", default="XRPUSDT,LTCUSDT")
    ap.add_argument("--min-trades", type=int, default=0,
                    help="run over (up to 120 s) until the venue has made this many trades")
    ap.add_argument("--workdir", type=Path, default=None, help="keep logs here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cfg = SoakConfig(seed=args.seed, duration_s=args.duration,
                     symbols=tuple(args.symbols.split(",")), min_trades=args.min_trades)
    report = run_soak(cfg, args.workdir)
    if args.json:
        print(json.dumps({"seed": report.seed, "counts": report.counts,
                          "events": report.events, "violations": report.violations}))
    else:
        print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
