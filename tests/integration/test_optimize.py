"""``optimize`` end to end with real Optuna: a planted edge is found out of sample and passes
the gate; a random walk yields nothing and the gate refuses; workers sharing one study on a
real PostgreSQL complete its trials exactly once between them; a killed run resumes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from typer.testing import CliRunner

from quantum_trader.cli import app
from quantum_trader.marketdata.series import BarSeries
from quantum_trader.marketdata.synthetic import synthetic_series

pytestmark = pytest.mark.integration

ADMIN_DSN = os.environ.get("QT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
SRC = str(Path(__file__).resolve().parents[2] / "src")
STEP = 1_800_000

ECHO = '''
from collections import deque

from quantum_trader.strategies import IntParam, Signal, Strategy


class Echo(Strategy):
    """Bets that the next bar repeats the move of `lag` bars before it."""

    lag = IntParam(1, low=1, high=10)

    def setup(self):
        self.closes = deque(maxlen=self.lag + 1)

    def warmup(self):
        return self.lag + 1

    def on_bar(self, bar):
        self.closes.append(bar.close)
        if len(self.closes) <= self.lag:
            return None
        move = self.closes[1] - self.closes[0]
        if move == 0:
            return None
        return Signal.long(0.9, 0.2) if move > 0 else Signal.short(0.9, 0.2)
'''


def _csv(path: Path, s: BarSeries) -> Path:
    rows = ["timestamp,open,high,low,close,volume"]
    rows += [f"{int(t)},{float(o)!r},{float(h)!r},{float(lo)!r},{float(c)!r},{float(v)!r}"
             for t, o, h, lo, c, v in
             zip(s.ts, s.open, s.high, s.low, s.close, s.volume, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return path


def planted(n: int, lag: int = 6, seed: int = 11) -> BarSeries:
    """Log returns r_t = 0.6 r_(t-lag) + noise (1% a bar): only a strategy that looks
    exactly `lag` bars back can predict the next bar."""
    rng = np.random.default_rng(seed)
    r = np.zeros(n)
    eps = rng.normal(0.0, 0.01, n)
    for t in range(n):
        r[t] = eps[t] + (0.6 * r[t - lag] if t >= lag else 0.0)
    close = 100.0 * np.exp(np.cumsum(r))
    open_ = np.concatenate(([100.0], close[:-1]))
    high = np.maximum(open_, close) * 1.001
    low = np.minimum(open_, close) * 0.999
    ts = 1_577_836_800_000 + np.arange(n, dtype=np.int64) * STEP
    return BarSeries("XRPUSDT", "30m", ts, open_, high, low, close, np.full(n, 1e7))


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "echo.py").write_text(ECHO)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _invoke(args: list[str]) -> tuple[int, str, str]:
    env = {k: None for k in os.environ if k.startswith(("QT_", "QTRADER_"))}
    res = CliRunner().invoke(app, args, env={**env, "COLUMNS": "120"})
    return res.exit_code, res.stdout, res.stderr


def test_a_planted_edge_is_found_out_of_sample_and_passes_the_gate(work: Path) -> None:
    _csv(work / "edge.csv", planted(2400))
    code, out, errs = _invoke(["optimize", "--strategy", "echo.py", "--data", "edge.csv",
                               "--trials", "10", "--sampler", "grid", "--windows", "3",
                               "--warmup", "20", "--purge", "12", "--study", "edge", "--json"])
    assert code == 0, errs
    r = json.loads(out)
    assert all(w["best_params"]["lag"] == 6 for w in r["windows"]), r["windows"]
    assert r["oos"]["tuned"]["return"] > 0
    assert r["oos"]["tuned"]["sharpe"] > r["oos"]["defaults"]["sharpe"]
    assert r["oos"]["tuned"]["sharpe"] > r["oos"]["buy_and_hold"]["sharpe"]
    assert r["stability"]["lag"]["cv"] == 0
    assert r["pbo"]["pbo"] < 0.2
    assert r["deflated_sharpe"]["dsr"] > 0.95
    assert r["trials_total"] == 30
    assert r["data"]["sha256"]
    assert "git_commit" in r["code"]
    stored = work / "reports" / "optimize" / "edge" / "result.json"
    assert json.loads(stored.read_text())["chosen_params"] == {"lag": 6}
    cfg = work / "tuned.yaml"
    code, out, errs = _invoke(["optimize", "apply", str(stored), "--config", str(cfg)])
    assert code == 0, errs
    import yaml

    written = yaml.safe_load(cfg.read_text())
    assert written["strategy"] == {"path": "echo.py", "params": {"lag": 6}}


def test_on_a_random_walk_it_finds_nothing_and_the_gate_refuses(work: Path) -> None:
    _csv(work / "walk.csv", synthetic_series(3000, "XRPUSDT", "30m", seed=5))
    code, out, errs = _invoke(["optimize", "--data", "walk.csv", "--trials", "12",
                               "--windows", "2", "--space", "fast=2..20",
                               "--space", "slow=21..80", "--warmup", "200", "--min-trades",
                               "1", "--study", "walk", "--json"])
    assert code == 0, errs
    r = json.loads(out)
    assert r["deflated_sharpe"]["dsr"] < 0.95
    cfg = work / "cfg.yaml"
    cfg.write_text("risk:\n  max_drawdown: 0.3\n")
    before = cfg.read_text()
    code, out, errs = _invoke(["optimize", "apply", "reports/optimize/walk/result.json",
                               "--config", str(cfg)])
    assert code == 1
    assert "deflated Sharpe ratio" in errs
    assert "nothing written" in errs
    assert cfg.read_text() == before


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = f"qt_test_opt_{secrets.token_hex(5)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _cli(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    env["PYTHONPATH"] = SRC
    return subprocess.Popen([sys.executable, "-m", "quantum_trader", *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _trials(url: str, study: str) -> list[object]:
    import optuna

    from quantum_trader.research.optimize import storage_for

    return list(optuna.load_study(study_name=study, storage=storage_for(url)).trials)


def test_two_workers_on_postgresql_complete_the_trials_exactly_once(
        work: Path, pg_url: str) -> None:
    from optuna.trial import TrialState

    _csv(work / "edge.csv", planted(6000))
    args = ["optimize", "--strategy", "echo.py", "--data", "edge.csv", "--trials", "10",
            "--windows", "1", "--warmup", "20", "--storage", pg_url, "--study", "shared",
            "--json"]
    hosts = [_cli(args, work), _cli(args, work)]  # two "hosts" on one study
    outs = [p.communicate(timeout=240) for p in hosts]
    assert [p.returncode for p in hosts] == [0, 0], [e for _, e in outs]
    trials = _trials(pg_url, "shared.w1")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]  # type: ignore[attr-defined]
    assert len(complete) == 10
    workers = {t.user_attrs["worker"] for t in complete}  # type: ignore[attr-defined]
    assert len(workers) == 2, workers
    assert {json.loads(o)["trials_total"] for o, _ in outs} == {10}
    # --jobs 2 in one process: the same count on a second window study of its own.
    p = _cli([*args[:-5], "--jobs", "2", "--storage", pg_url, "--study", "local2", "--json"],
             work)
    _, errs = p.communicate(timeout=240)
    assert p.returncode == 0, errs
    done = [t for t in _trials(pg_url, "local2.w1")
            if t.state == TrialState.COMPLETE]  # type: ignore[attr-defined]
    assert len(done) == 10
    assert len({t.user_attrs["worker"] for t in done}) == 2  # type: ignore[attr-defined]


def test_a_killed_run_resumes_to_the_configured_count(work: Path, pg_url: str) -> None:
    from optuna.trial import TrialState

    _csv(work / "edge.csv", planted(8000))
    p = _cli(["optimize", "--strategy", "echo.py", "--data", "edge.csv", "--trials", "25",
              "--windows", "1", "--warmup", "20", "--storage", pg_url, "--study", "crash"],
             work)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline:
        try:
            done = sum(t.state == TrialState.COMPLETE  # type: ignore[attr-defined]
                       for t in _trials(pg_url, "crash.w1"))
        except KeyError:
            done = 0
        if done >= 3:
            break
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    assert 3 <= done < 25
    r = _cli(["optimize", "resume", "--storage", pg_url, "--study", "crash", "--json"], work)
    out, errs = r.communicate(timeout=240)
    assert r.returncode == 0, errs
    trials = _trials(pg_url, "crash.w1")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 25  # type: ignore[attr-defined]
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # type: ignore[attr-defined]
    assert json.loads(out)["trials_total"] == 25
    assert (work / "reports" / "optimize" / "crash" / "result.json").is_file()


def test_workers_that_open_a_new_database_together_all_start(pg_url: str) -> None:
    """Optuna creates its tables when a storage opens; workers racing to do it on a new
    PostgreSQL database made some fail ("pg_type_typname_nsp_index": the loser's CREATE
    meets the winner's). CI saw it with two hosts; six at once made it happen every time."""
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src),
                                                         os.environ.get("PYTHONPATH", "")])}
    code = ("import sys\nfrom quantum_trader.research.optimize import storage_for\n"
            "storage_for(sys.argv[1])\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_url], env=env, text=True,
                              stderr=subprocess.PIPE) for _ in range(6)]
    results = [(p.wait(120), p.stderr.read() if p.stderr else "") for p in procs]
    assert [rc for rc, _ in results] == [0] * 6, [err[-300:] for rc, err in results if rc]
