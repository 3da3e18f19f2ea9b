"""Plugin strategies through the front doors: ``--strategy`` and ``strategy.path`` on
``backtest`` and ``run``, an installed strategy by name, the ai-engine service, refusals of a
strategy that raises, returns garbage or looks ahead, and ``new-strategy``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from quantum_trader.bus.memory import InMemoryBus
from quantum_trader.bus.protocol import Message
from quantum_trader.cli import app
from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.services.ai_engine import AIEngineService, signal_source_for
from quantum_trader.services.messages import bar_id, bar_payload
from quantum_trader.strategies.adapter import StrategySource
from quantum_trader.strategies.checks import signals
from quantum_trader.strategies.loader import load_strategy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "strategies"

RAISES = '''\
from quantum_trader.strategies import Bar, Signal, Strategy


class Raises(Strategy):
    def setup(self) -> None:
        self.seen = 0

    def on_bar(self, bar: Bar) -> Signal | None:
        self.seen += 1
        return Signal.long(0.7) if 1 / (10 - self.seen) else None
'''

GARBAGE = '''\
from quantum_trader.strategies import Bar, Signal, Strategy


class Garbage(Strategy):
    def on_bar(self, bar: Bar) -> Signal | None:
        if bar.ts == 1_506_900_600_000:  # 2017-10-01T23:30:00Z
            return Signal.long(float("nan"))
        return None


class WrongType(Strategy):
    def on_bar(self, bar: Bar) -> Signal | None:
        return {"direction": "long", "confidence": 0.8}
'''

PEEKS = '''\
from typing import ClassVar

from quantum_trader.strategies import Bar, Signal, Strategy


class Peeks(Strategy):
    """Remembers every bar in a class-level dict, shared by every instance (so by every run
    in the process), and trades on the next bar's close when it finds it there."""

    seen: ClassVar[dict[int, float]] = {}

    def on_bar(self, bar: Bar) -> Signal | None:
        self.seen[bar.ts] = bar.close
        nxt = self.seen.get(bar.ts + 1_800_000)
        if nxt is None:
            return None
        return Signal.long(0.9) if nxt > bar.close else Signal.short(0.9)
'''


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith(("QT_", "QTRADER_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def qt(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def _last_error(res: Result) -> str:
    return [ln for ln in res.stderr.splitlines() if ln.strip()][-1]


def test_backtest_with_a_strategy_file_trades_as_the_builtin_baseline(workdir: Path) -> None:
    ours = qt("backtest", "--strategy", f"{EXAMPLES}/ema_cross.py:EmaCross", "--data",
              "sample:XRP", "--json", "--chart", "ours.png")
    assert ours.exit_code == 0, ours.stderr
    base = qt("backtest", "--data", "sample:XRP", "--json", "--chart", "base.png")
    assert base.exit_code == 0, base.stderr
    a, b = json.loads(ours.stdout), json.loads(base.stdout)
    assert (a["source"], b["source"]) == ("EmaCross", "ema_cross_12_26")
    assert a["report"]["trades"] == b["report"]["trades"] > 20
    assert a["report"]["total_return"] == pytest.approx(b["report"]["total_return"])
    assert a["rejections"] == b["rejections"]
    assert not (EXAMPLES / "__pycache__").exists()


def test_backtest_and_run_take_the_strategy_and_its_params_from_the_config(
        workdir: Path) -> None:
    (workdir / "strats").mkdir()
    shutil.copy(EXAMPLES / "rsi_mean_reversion.py", workdir / "strats" / "rsi.py")
    (workdir / "quantum-trader.yaml").write_text(
        "strategy:\n  path: strats/rsi.py\n  params: {period: 10, oversold: 25}\n")
    res = qt("backtest", "--data", "sample:BTC", "--chart", "c.png")
    assert res.exit_code == 0, res.stderr
    assert ("signal source: strategy RsiMeanReversion(period=10, oversold=25, overbought=70, "
            "exit_level=50, atr_mult=2.5) from strats/rsi.py (strategy.path)") in res.stderr
    assert "Backtest — RsiMeanReversion on BTCUSDT 30m" in res.stdout
    res = qt("run", "--data", "sample:BTC", "--max-bars", "3000", "--param", "period=12")
    assert res.exit_code == 0, res.stderr
    assert "RsiMeanReversion(period=12, oversold=25," in res.stderr  # the command line wins
    with sqlite3.connect(workdir / "var" / "quantum_trader.db") as db:
        sources = db.execute("select distinct source from signals").fetchall()
        n = db.execute("select count(*) from signals").fetchone()[0]
    assert sources == [("RsiMeanReversion",)]
    assert n > 50
    assert sorted(p.name for p in (workdir / "strats").iterdir()) == ["rsi.py"]
    res = qt("backtest", "--data", "sample:BTC", "--param", "period=1")
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: --param period=1: 1 is not an integer in [2, 100]"


def test_entries_below_the_confidence_floor_are_rejected_and_said_so(workdir: Path) -> None:
    (workdir / "timid.py").write_text(
        "from quantum_trader.strategies import Bar, Signal, Strategy\n\n\n"
        "class Timid(Strategy):\n"
        "    def on_bar(self, bar: Bar) -> Signal | None:\n"
        "        return Signal.long(0.5) if bar.ts % 86_400_000 == 0 else None\n")
    res = qt("backtest", "--strategy", "timid.py", "--data", "sample:XRP", "--chart", "c.png")
    assert res.exit_code == 0, res.stderr
    assert "note: 731 of 731 signals were rejected with LOW_CONFIDENCE: their confidence was " \
           "below risk.min_confidence (0.55); see docs/strategies.md" in res.stderr
    assert "LOW_CONFIDENCE=731" in res.stdout
    res = qt("backtest", "--strategy", "timid.py", "--data", "sample:XRP", "--json")
    assert json.loads(res.stdout)["rejections"] == {"LOW_CONFIDENCE": 731}


def test_an_installed_strategy_runs_by_name_in_a_real_process(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "turtles").mkdir(parents=True)
    (site / "turtles" / "__init__.py").write_text("")
    shutil.copy(EXAMPLES / "donchian_breakout.py", site / "turtles" / "breakout.py")
    dist = site / "turtles-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: turtles\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[quantum_trader.strategies]\nturtle = turtles.breakout:DonchianBreakout\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(site)])
    env["COLUMNS"] = "200"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "quantum_trader", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, env=env)

    res = run("backtest", "--strategy", "turtle", "--param", "entry=40", "--data",
              "sample:ETH", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["source"] == "DonchianBreakout"
    assert out["report"]["trades"] > 20
    res = run("backtest", "--strategy", "turtel")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "error: --strategy turtel: no installed strategy of that name (installed: turtle); a "
        "file is FILE.py[:Class], a module package.module:Class")


def test_a_strategy_that_raises_is_refused_naming_the_bar_and_its_line(workdir: Path) -> None:
    (workdir / "raises.py").write_text(RAISES)
    want = ("error: strategy Raises raised ZeroDivisionError: division by zero on XRPUSDT bar "
            "2017-10-01T04:30:00Z (raises.py:10)")
    for command in ("backtest", "run"):
        res = qt(command, "--strategy", "raises.py", "--data", "sample:XRP")
        assert res.exit_code == 2, (command, res.stderr)
        assert "Traceback" not in res.output
        assert _last_error(res) == want


@pytest.mark.parametrize(("cls", "message"), [
    ("Garbage", "error: strategy Garbage returned confidence nan on XRPUSDT bar "
                "2017-10-01T23:30:00Z: confidence must be a number in [0, 1]"),
    ("WrongType", "error: strategy WrongType returned dict {'direction': 'long', "
                  "'confidence': 0.8} on XRPUSDT bar 2017-10-01T00:00:00Z: return a "
                  "quantum_trader.strategies.Signal, or None for no signal"),
])
def test_a_strategy_that_returns_garbage_is_refused(workdir: Path, cls: str,
                                                    message: str) -> None:
    (workdir / "garbage.py").write_text(GARBAGE)
    for command in ("backtest", "run", "lookahead"):
        res = qt(command, "--strategy", f"garbage.py:{cls}", "--data", "sample:XRP")
        assert res.exit_code == 2, (command, res.stderr)
        assert _last_error(res) == message


def test_lookahead_reports_a_strategy_that_sees_the_future(workdir: Path) -> None:
    (workdir / "peeks.py").write_text(PEEKS)
    res = qt("lookahead", "--strategy", "peeks.py", "--data", "sample:XRP")
    assert res.exit_code == 1, res.stderr
    assert ("Peeks looks ahead: with only the bars from 2018-04-01T08:00:00Z on changed, its "
            "signal on XRPUSDT bar 2017-10-01T00:00:00Z changed from none to long 0.9"
            ) in res.stdout.splitlines()
    res = qt("lookahead", "--strategy", "peeks.py", "--data", "sample:XRP", "--json")
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert out["passed"] is False
    assert out["checks"][0]["first_difference"] == {
        "bar": "2017-10-01T00:00:00Z", "expected": "none", "got": "long 0.9"}
    res = qt("lookahead", "--strategy", f"{EXAMPLES}/ema_cross.py", "--data", "sample:XRP")
    assert res.exit_code == 0, res.stdout
    assert ("EmaCross: no lookahead found, the signals forget where the history started after "
            "260 bars, and it is deterministic") in res.stdout


def test_new_strategy_writes_a_template_that_runs_as_it_is(workdir: Path) -> None:
    res = qt("new-strategy", "MeanCross", "--dir", "strats")
    assert res.exit_code == 0, res.stderr
    path = workdir / "strats" / "mean_cross.py"
    assert "class MeanCross(Strategy):" in path.read_text()
    res = qt("backtest", "--strategy", "strats/mean_cross.py:MeanCross", "--data",
             "sample:XRP", "--json", "--chart", "c.png")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["source"] == "MeanCross"
    assert out["report"]["trades"] > 20
    res = qt("lookahead", "--strategy", "strats/mean_cross.py", "--data", "sample:ETH")
    assert res.exit_code == 0, res.stdout
    before = path.read_text()
    res = qt("new-strategy", "mean_cross", "--dir", "strats")
    assert res.exit_code == 2
    assert res.stderr.strip() == ("error: strats/mean_cross.py: exists; choose another NAME or "
                                  "--dir (new-strategy never overwrites a file)")
    assert path.read_text() == before
    assert sorted(p.name for p in (workdir / "strats").iterdir()) == ["mean_cross.py"]


async def test_the_ai_engine_service_runs_the_configured_strategy(tmp_path: Path) -> None:
    bars = load_sample("XRP").slice(0, 600)
    spec = str(EXAMPLES / "donchian_breakout.py")
    settings = Settings.model_validate({"strategy": {"path": spec, "params": {"entry": 15}},
                                        "paths": {"state_dir": str(tmp_path)},
                                        "services": {"bus": "memory"}})
    expected = [k for k in signals(lambda: load_strategy(spec, {"entry": 15}).source(1), bars)
                if k is not None]
    bus = InMemoryBus()
    service = AIEngineService(settings, bus, None, signal_source_for(settings))
    assert isinstance(service.source, StrategySource)
    await bus.ensure_group("signals", "probe")
    await service.start()
    try:
        for bar in bars:
            await bus.publish("market.bars", Message("bar", bar_payload(bar), 0, bar_id(bar),
                                                     bar_id(bar)))
        for _ in range(500):
            if service.last_bar.get("XRPUSDT") == bars.bar(len(bars) - 1):
                break
            await asyncio.sleep(0.01)
        got = await bus.read("signals", "probe", "p", count=1_000, block_ms=0)
    finally:
        await service.stop()
    published = [d.message.payload for d in got if d.message is not None]
    assert len(published) == len(expected) > 5
    assert [(p["direction"].lower(), p["confidence"], p["stop_distance"]) for p in published
            ] == expected
    assert {p["source"] for p in published} == {"DonchianBreakout"}


async def test_the_ai_engine_service_says_degraded_for_a_refused_strategy(
        tmp_path: Path) -> None:
    (tmp_path / "garbage.py").write_text(GARBAGE)
    bars = load_sample("XRP").slice(0, 60)
    settings = Settings.model_validate({
        "strategy": {"path": f"{tmp_path}/garbage.py:Garbage"},
        "paths": {"state_dir": str(tmp_path)}, "services": {"bus": "memory"}})
    bus = InMemoryBus()
    service = AIEngineService(settings, bus, None, signal_source_for(settings))
    await bus.ensure_group("signals", "probe")
    await service.start()
    try:
        for bar in bars:
            await bus.publish("market.bars", Message("bar", bar_payload(bar), 0, bar_id(bar),
                                                     bar_id(bar)))
        for _ in range(500):  # it keeps taking bars after the refusal
            if service.last_bar.get("XRPUSDT") == bars.bar(len(bars) - 1):
                break
            await asyncio.sleep(0.01)
        assert service.last_bar["XRPUSDT"] == bars.bar(len(bars) - 1)
        await service.health.refresh()
        state = service.health.states["model"]
        got = await bus.read("signals", "probe", "p", count=100, block_ms=0)
    finally:
        await service.stop()
    assert not got
    assert not state.ok
    assert state.detail == ("signal source refused: strategy Garbage returned confidence nan "
                            "on XRPUSDT bar 2017-10-01T23:30:00Z: confidence must be a number "
                            "in [0, 1]")
