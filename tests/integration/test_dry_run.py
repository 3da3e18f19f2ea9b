"""``run --live`` and ``parity`` as a user runs them: the CLI in its own process, our
Binance-compatible simulator over HTTP on loopback (accelerated: a 30m bar every 0.25 s),
the real ccxt client, SQLite.

Two symbols trade as one account; the feed is cut for a few seconds (every klines request
dropped) and the run goes on: stale, no entries, then the missed bars backfilled in order.
``parity`` replays what the run saw through the backtester and finds no difference in its
decisions. A restart resumes from the checkpoint and trades no bar twice.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from quantum_trader.venue_sim import SimServer, SimServerConfig, SimState, load_series

pytestmark = pytest.mark.integration
SYMBOLS = ("LTCUSDT", "XRPUSDT")
TF = 1_800_000
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def sim() -> Iterator[SimServer]:
    state = SimState(SimServerConfig(series=load_series(["sample:XRP", "sample:LTC"]),
                                     bar_seconds=0.25, weight_limit=1_000_000))
    srv = SimServer(state).start()
    try:
        yield srv
    finally:
        srv.stop()


def write_config(tmp: Path, url: str) -> Path:
    cfg = tmp / "dry.yaml"
    cfg.write_text(f"""\
exchange:
  kind: simulated
  base_url: {url}
  symbols: [XRPUSDT, LTCUSDT]
  poll_s: 0.05
  stale_after_s: 0.75
strategy: {{kind: ema_cross, fast: 5, slow: 13}}
risk: {{max_drawdown: 0.9, daily_loss_limit: 0.5, min_confidence: 0.5}}
paths: {{state_dir: {tmp / "var"}, registry_dir: {tmp / "models"}, reports_dir: {tmp}}}
""")
    return cfg


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    out["PYTHONPATH"] = os.pathsep.join([str(SRC), out.get("PYTHONPATH", "")])
    out["COLUMNS"] = "200"
    return out


def cli(tmp: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "quantum_trader", *args], cwd=tmp,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(p: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        try:
            return list(conn.execute(sql, params))
        except sqlite3.OperationalError:  # not migrated yet
            return []


def wait_for(cond: Callable[[], bool], within_s: float, what: str,
             proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"{what}: not within {within_s}s"
        time.sleep(0.05)


def traded(db: Path) -> list[tuple[str, int, int, str]]:
    """(symbol, ts, decided_ms, late) of every traded bar."""
    return [(r[0], int(r[1]), int(r[2]), str(r[3])) for r in query(
        db, "select symbol, ts, decided_ms, late from bars where role = 'trade' "
            "order by ts, symbol")]


def market_data_events(db: Path) -> list[dict[str, Any]]:
    return [json.loads(r[0]) for r in query(
        db, "select detail from audit_events where kind = 'market_data' order by seq")]


def parity_json(tmp: Path, cfg: Path) -> tuple[int, dict[str, Any]]:
    code, out, err = finish(cli(tmp, "parity", "--config", str(cfg), "--json"))
    assert code in (0, 1), err
    return code, json.loads(out)


def assert_no_decision_differs(report: dict[str, Any]) -> None:
    for name, c in report["categories"].items():
        assert (c["differing"], c["live_only"], c["replay_only"]) == (0, 0, 0), (
            name, c["differences"][:8])
    assert report["decisions_differ"] is False


@pytest.mark.timeout(300)
def test_dry_run_of_two_symbols_through_a_feed_cut_then_parity_and_a_restart(
        tmp_path: Path, sim: SimServer) -> None:
    cfg = write_config(tmp_path, sim.url)
    db = tmp_path / "var" / "quantum_trader.db"
    faults = sim.state.config.faults

    # --- a run: trade, lose the feed, get it back, stop with Ctrl-C ---------------------------
    run = cli(tmp_path, "run", "--live", "--config", str(cfg), "--duration", "120")
    wait_for(lambda: len(traded(db)) >= 20, 60, "20 bars traded", run)
    faults.paths = ("/fapi/v1/klines",)
    faults.probabilities = {"drop": 1.0}  # the venue unreachable for market data
    time.sleep(0.3)  # a poll in flight may still land
    cut_at = max(ts for _, ts, _, _ in traded(db))
    wait_for(lambda: any(not e["fresh"] for e in market_data_events(db)), 20,
             "the feed reported stale", run)
    time.sleep(1.5)  # bars keep closing on the venue meanwhile
    assert max(ts for _, ts, _, _ in traded(db)) == cut_at  # nothing traded while cut
    faults.probabilities = {}
    wait_for(lambda: any(e["fresh"] for e in market_data_events(db)), 20,
             "the feed back", run)
    wait_for(lambda: max(ts for _, ts, _, _ in traded(db)) >= cut_at + 20 * TF, 30,
             "trading after the cut", run)
    run.send_signal(signal.SIGINT)
    code, out, err = finish(run)
    assert code == 0, err
    assert "Dry run — summary" in out
    assert "fills are simulated locally" in err
    assert "never sends an order" in err
    assert "market data STALE" in err
    assert "market data is back" in err
    assert "stopped (signal)" in out

    bars = traded(db)
    # Every bar of both symbols from the first traded to the last, once each (the primary
    # key makes twice impossible on record): the bars missed while cut were backfilled ...
    for sym in SYMBOLS:
        got = [ts for s, ts, _, _ in bars if s == sym]
        series = sim.state.series[sym]
        want = [int(t) for t in series.ts if got[0] <= t <= got[-1]]
        assert got == want, sym
    # ... in order: one account, the bars of a time together, in time order.
    by_decision = sorted(bars, key=lambda b: (b[2], b[1], b[0]))
    assert [(ts, s) for s, ts, _, _ in by_decision] == [(ts, s) for s, ts, _, _ in bars]
    after_cut = [b for b in bars if b[1] > cut_at]
    late = [b for b in after_cut if b[3]]
    assert late, "the backfilled bars are late: no entries on them"
    assert "stale" in late[0][3]
    assert not after_cut[-1][3], "trading resumed: the newest bars are not late"
    warm = query(db, "select symbol, count(*) from bars where role = 'warmup' group by symbol")
    assert dict(warm) == dict.fromkeys(SYMBOLS, 500)
    assert query(db, "select count(*) from orders")[0][0] > 0, "the run must have traded"

    # --- parity: the same bars through the backtester decide the same ------------------------
    code, report = parity_json(tmp_path, cfg)
    assert_no_decision_differs(report)
    assert code == 0
    assert report["late_bars"] == sum(1 for b in bars if b[3]) > 0
    assert report["warmup_bars"] == 1000
    assert report["categories"]["orders"]["matched"] > 0
    assert report["latency_ms"]["arrival_to_decision"]["n"] == len(bars)

    # --- a restart resumes from the checkpoint and trades no bar twice ------------------------
    (cp,) = query(db, "select last_bar_ts from checkpoints where node = 'embedded'")
    stopped_at = json.loads(cp[0])
    before = len(bars)
    started = int(time.time() * 1000)
    code, out, err = finish(cli(tmp_path, "run", "--live", "--config", str(cfg),
                                "--symbol", "LTCUSDT", "--symbol", "XRPUSDT",
                                "--max-bars", "30"))
    assert code == 0, err
    assert "resumed from the checkpoint" in err
    assert "--max-bars 30 reached" in out
    bars = traded(db)
    new = [b for b in bars if b[2] >= started]
    assert len(bars) == before + 30 == before + len(new)
    assert all(ts > stopped_at[s] for s, ts, _, _ in new)
    # The bars that closed while it was down came first, late: no entries on them.
    assert "backfilled" in new[0][3]

    # ... and SIGTERM stops it as gracefully as Ctrl-C.
    run = cli(tmp_path, "run", "--live", "--config", str(cfg))
    count = len(bars)
    wait_for(lambda: len(traded(db)) >= count + 10, 60, "10 more bars", run)
    run.send_signal(signal.SIGTERM)
    code, out, err = finish(run)
    assert code == 0, err
    assert "Dry run — summary" in out

    code, report = parity_json(tmp_path, cfg)
    assert_no_decision_differs(report)
    assert code == 0


def test_parity_reports_a_decision_that_differs(tmp_path: Path, sim: SimServer) -> None:
    """A decision on record that the backtest does not make is listed, and exit 1."""
    cfg = write_config(tmp_path, sim.url)
    db = tmp_path / "var" / "quantum_trader.db"
    code, _, err = finish(cli(tmp_path, "run", "--live", "--config", str(cfg),
                              "--max-bars", "60"))
    assert code == 0, err
    code, report = parity_json(tmp_path, cfg)
    assert code == 0
    assert report["categories"]["risk decisions"]["matched"] > 0, report
    with sqlite3.connect(db) as conn:
        (rid,) = conn.execute("select id from risk_decisions order by ts limit 1").fetchone()
        conn.execute("update risk_decisions set reason = 'TAMPERED', approved = 0 "
                     "where id = ?", (rid,))
    code, report = parity_json(tmp_path, cfg)
    assert code == 1
    assert report["decisions_differ"] is True
    diffs = report["categories"]["risk decisions"]["differences"]
    assert {d["what"] for d in diffs if d["key"] == rid} >= {"reason"}
    table = finish(cli(tmp_path, "parity", "--config", str(cfg)))
    assert table[0] == 1
    assert "TAMPERED" in table[1]
    assert "decided differently" in table[1]


def test_a_volume_ranked_pair_list_is_chosen_at_the_start_and_kept_on_resume(
        tmp_path: Path) -> None:
    """``exchange.pairlist: volume``: the venue's most traded USDT perpetuals (its 24 h
    quote volume) when the account starts; a resume keeps that list."""
    state = SimState(SimServerConfig(
        series=load_series(["sample:XRP", "sample:LTC", "sample:BTC"]), bar_seconds=0.25,
        weight_limit=1_000_000, start_bar=2000))
    srv = SimServer(state).start()
    try:
        day = {}
        for sym in ("XRPUSDT", "LTCUSDT", "BTCUSDT"):
            s = state.closed_bars(sym)
            last = s.ts >= s.ts[-1] + TF - 86_400_000
            day[sym] = float((s.volume[last] * s.close[last]).sum())
        top2 = sorted(day, key=lambda k: -day[k])[:2]
        cfg = write_config(tmp_path, srv.url)
        cfg.write_text(cfg.read_text().replace(
            "  symbols: [XRPUSDT, LTCUSDT]\n",
            "  symbols: []\n  pairlist: volume\n  pairlist_top: 2\n"))
        code, _out, err = finish(cli(tmp_path, "run", "--live", "-c", str(cfg), "--max-bars",
                                    "4"), timeout=120)
        assert code == 0, err
        assert "pair list: " + top2[0] in " ".join(err.split())
        db = tmp_path / "var" / "quantum_trader.db"
        traded = {r[0] for r in query(db, "select symbol from bars where role = 'trade'")}
        assert traded == set(top2)
        code, _out, err = finish(cli(tmp_path, "run", "--live", "-c", str(cfg), "--max-bars",
                                     "2"), timeout=120)
        assert code == 0, err
        assert "the account's, from its start" in " ".join(err.split())
    finally:
        srv.stop()
