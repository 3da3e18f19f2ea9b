"""The CLI's promises beyond bad input: exit codes that mean the same in table and JSON
output, one run per state directory, a store that remembers its data, --fresh that keeps the
old account, --version, completion, and flags shown as flags."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantum_trader.cli import app

pytestmark = pytest.mark.integration

SRC = Path(__file__).resolve().parents[2] / "src"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "QTRADER_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "120"
    return env


def qt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quantum_trader", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=_env())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_exits_1_when_a_service_is_down_in_json_as_in_the_table(tmp_path: Path) -> None:
    cfg = tmp_path / "qt.yaml"
    cfg.write_text("services:\n  ports:\n" + "".join(
        f"    {n}: {_free_port()}\n" for n in ("gateway", "execution")))
    runner = CliRunner()
    table = runner.invoke(app, ["status", "--config", str(cfg)], env={"COLUMNS": "160"})
    as_json = runner.invoke(app, ["status", "--json", "--config", str(cfg)])
    assert table.exit_code == as_json.exit_code == 1
    rows = json.loads(as_json.stdout)
    assert {r["status"] for r in rows} == {"DOWN"}
    assert len(rows) == 6  # the two ports given, and the four defaults kept beside them
    assert "DOWN" in table.stdout


def test_a_second_run_on_one_state_directory_is_refused_and_names_the_holder(
        tmp_path: Path) -> None:
    first = subprocess.Popen([sys.executable, "-m", "quantum_trader", "run", "--data",
                              "sample:XRP", "--speed", "20"], cwd=tmp_path, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / "var" / "run.lock"
        deadline = time.monotonic() + 60
        db = tmp_path / "var" / "quantum_trader.db"
        # Both held and written: the first run has made its store before we look.
        while time.monotonic() < deadline and not (lock.exists() and lock.read_text()
                                                   and db.exists()):
            time.sleep(0.2)
        assert json.loads(lock.read_text())["pid"] == first.pid
        before = sorted(p.name for p in (tmp_path / "var").iterdir())
        second = qt("run", "--data", "sample:XRP", "--max-bars", "10", cwd=tmp_path)
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr
        assert "in use by another run" in second.stderr
        after = sorted(p.name for p in (tmp_path / "var").iterdir())
        # Nothing of the second run's: only the first run's own WAL files may have appeared.
        assert set(after) - set(before) <= {"quantum_trader.db-wal", "quantum_trader.db-shm"}
    finally:
        first.terminate()
        first.wait(30)
    # The lock dies with its holder: the next run goes ahead.
    again = qt("run", "--data", "sample:XRP", "--max-bars", "10", cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_a_store_resumes_only_on_its_own_data_and_fresh_keeps_the_old_account(
        tmp_path: Path) -> None:
    res = qt("run", "--data", "sample:XRP", "--max-bars", "300", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    db = tmp_path / "var" / "quantum_trader.db"
    stamp = db.stat().st_mtime_ns

    other = qt("run", "--data", "sample:BTC", "--max-bars", "300", cwd=tmp_path)
    assert other.returncode == 2
    line = other.stderr.strip()
    assert "\n" not in line
    assert "started on sample:XRP (XRPUSDT 30m)" in line
    assert "sample:BTC (BTCUSDT 30m)" in line
    assert "--fresh" in line
    assert db.stat().st_mtime_ns == stamp  # refused before anything was written

    same = qt("run", "--data", "sample:XRP", "--max-bars", "300", cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    assert any("resumed from checkpoint" in ln and "yes" in ln for ln in same.stdout.splitlines())

    unasked = qt("run", "--data", "sample:BTC", "--max-bars", "300", "--fresh", cwd=tmp_path)
    assert unasked.returncode == 2  # no terminal to ask on: it needs --yes
    assert "--yes" in unasked.stderr
    assert db.exists()  # still where it was: nothing set aside
    assert not (tmp_path / "var" / "backups").exists()
    fresh = qt("run", "--data", "sample:BTC", "--max-bars", "300", "--fresh", "--yes",
               cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    kept = list((tmp_path / "var" / "backups").glob("quantum_trader-*/quantum_trader.db"))
    assert len(kept) == 1  # the XRP account, set aside, not deleted
    trades = qt("trades", "--json", cwd=tmp_path)
    assert trades.returncode == 0, trades.stderr
    assert {t["symbol"] for t in json.loads(trades.stdout)} <= {"BTCUSDT"}


def test_version_completion_and_flags_shown_as_flags() -> None:
    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0
    assert version.stdout.startswith("quantum-trader ")
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--install-completion" in top.stdout
    assert "--debug" in top.stdout
    for cmd in (["backtest"], ["trades"], ["run"], ["models", "list"], ["backup", "list"],
                ["reports"], ["backtest-compare"]):
        shown = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0
        assert "<bool>" not in shown.stdout, cmd


def test_an_unexpected_error_is_one_line_and_debug_gives_the_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import quantum_trader.cli.services as services

    def broken(*_: object, **__: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(services, "stdout_json", broken)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    plain = runner.invoke(app, ["config"])
    assert plain.exit_code == 2
    assert plain.stderr.strip().splitlines() == [
        "error: unexpected KeyError: 'a bug' (rerun with --debug for the traceback, and "
        "please report it)"]
    debug = runner.invoke(app, ["--debug", "config"])
    assert debug.exit_code == 2
    assert "Traceback" in debug.stderr
    assert "a bug" in debug.stderr


@pytest.mark.parametrize(("argv", "code"), [
    (["models", "list"], 0), (["models", "list", "--json"], 0), (["token", "list"], 0),
    (["backup", "list"], 0), (["config"], 0), (["trades"], 2), (["status", "--json"], 1),
    (["reports"], 0), (["reports", "--json"], 0)])
def test_read_only_commands_create_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           argv: list[str], code: int) -> None:
    cfg = tmp_path / "qt.yaml"
    cfg.write_text("services:\n  ports:\n" + "".join(
        f"    {n}: {_free_port()}\n" for n in ("gateway", "execution")))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, [*argv, "--config", str(cfg)], env={"COLUMNS": "160"})
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qt.yaml"], argv
