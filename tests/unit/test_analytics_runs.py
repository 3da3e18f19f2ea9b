"""Stored runs: the data fingerprint, run ids, finding a run by id, prefix or path, and the
code version read from git."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from quantum_trader.analytics.runs import (
    RESULT_FILE,
    RUN_ID,
    RunError,
    code_version,
    data_fingerprint,
    load_run,
    new_run_dir,
    resolve_run,
    run_dirs,
    run_hash,
    trading_config,
    write_json_atomic,
)
from quantum_trader.config import Settings
from quantum_trader.marketdata.series import BarSeries
from quantum_trader.marketdata.synthetic import synthetic_series

WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_the_fingerprint_changes_with_any_value_and_only_then() -> None:
    s = synthetic_series(500, "BTCUSDT", "30m", seed=1)
    fp = data_fingerprint([s])
    assert fp == data_fingerprint([synthetic_series(500, "BTCUSDT", "30m", seed=1)])
    (part,) = fp["series"]
    assert part["bars"] == 500
    assert part["symbol"] == "BTCUSDT"
    assert (part["first_ts"], part["last_ts"]) == (int(s.ts[0]), int(s.ts[-1]))
    close = s.close.copy()
    close[250] += 1e-9
    changed = BarSeries(s.symbol, s.timeframe, s.ts, s.open, s.high, s.low, close, s.volume)
    assert data_fingerprint([changed])["sha256"] != fp["sha256"]
    renamed = BarSeries("ETHUSDT", s.timeframe, s.ts, s.open, s.high, s.low, s.close, s.volume)
    assert data_fingerprint([renamed])["sha256"] != fp["sha256"]
    assert data_fingerprint([s, renamed])["sha256"] != data_fingerprint([renamed, s])["sha256"]


def test_the_run_hash_follows_data_config_and_source() -> None:
    config = trading_config(Settings().model_dump(mode="json"))
    assert "paths" not in config
    assert "secrets" not in config
    assert "strategy" in config
    h = run_hash("abc", config, "ema_cross")
    assert len(h) == 8
    assert h == run_hash("abc", config, "ema_cross")
    faster = trading_config(Settings.model_validate(
        {"strategy": {"fast": 5}}).model_dump(mode="json"))
    assert len({h, run_hash("abd", config, "ema_cross"), run_hash("abc", faster, "ema_cross"),
                run_hash("abc", config, "model v3")}) == 4


def test_run_ids_are_time_and_hash_and_never_reused(tmp_path: Path) -> None:
    run_id, path = new_run_dir(tmp_path / "reports", WHEN, "0123abcd")
    assert run_id == "20240506T070809Z-0123abcd"
    assert RUN_ID.match(run_id)
    assert path == tmp_path / "reports" / run_id
    assert path.is_dir()
    again, path2 = new_run_dir(tmp_path / "reports", WHEN, "0123abcd")
    assert again == "20240506T070809Z-0123abcd-2"
    assert RUN_ID.match(again)
    assert path2.is_dir()


def _store(reports: Path, run_id: str, result: object | None = None) -> Path:
    d = reports / run_id
    d.mkdir(parents=True)
    body = result if result is not None else {"run_id": run_id, "report": {"trades": 1}}
    (d / RESULT_FILE).write_text(body if isinstance(body, str) else json.dumps(body))
    return d


def test_runs_are_found_by_id_prefix_or_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.chdir(tmp_path)
    reports = tmp_path / "reports"
    a = _store(reports, "20240101T000000Z-aaaaaaaa")
    b = _store(reports, "20240102T000000Z-bbbbbbbb")
    (reports / "not-a-run").mkdir()
    assert run_dirs(reports) == [b, a]  # newest first, and only runs
    assert resolve_run("20240101T000000Z-aaaaaaaa", reports).path == a
    assert resolve_run("20240102", reports).path == b
    assert resolve_run(str(a), reports).run_id == "20240101T000000Z-aaaaaaaa"
    assert resolve_run(str(b / RESULT_FILE), reports).path == b
    with pytest.raises(RunError, match="'2024' is ambiguous"):
        resolve_run("2024", reports)
    with pytest.raises(RunError, match="no run 'nosuch' in"):
        resolve_run("nosuch", reports)
    with pytest.raises(RunError, match="not a stored run"):
        resolve_run(str(reports / "not-a-run"), reports)
    with pytest.raises(RunError, match="empty"):
        resolve_run(" ", reports)
    assert run_dirs(tmp_path / "none") == []


@pytest.mark.parametrize(("body", "fragment"), [
    ("{not json", "bad JSON at line 1"),
    ("[1, 2]", "no performance report"),
    ('{"report": 5}', "no performance report"),
])
def test_a_broken_result_is_named(tmp_path: Path, body: str, fragment: str) -> None:
    d = _store(tmp_path, "20240101T000000Z-cccccccc", body)
    with pytest.raises(RunError, match=fragment) as err:
        load_run(d)
    assert str(d / RESULT_FILE) in str(err.value)


def test_result_json_is_written_whole_and_readable(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / RESULT_FILE, {"report": {"x": 1.5}, "run_id": "r"})
    assert json.loads((tmp_path / RESULT_FILE).read_text()) == {"report": {"x": 1.5},
                                                                 "run_id": "r"}
    assert stat.S_IMODE((tmp_path / RESULT_FILE).stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [RESULT_FILE]  # no temporary left
    with pytest.raises(ValueError, match="Out of range"):
        write_json_atomic(tmp_path / "nan.json", {"x": float("nan")})
    assert [p.name for p in tmp_path.iterdir()] == [RESULT_FILE]


def test_the_code_version_names_the_checkout_commit(tmp_path: Path) -> None:
    """Read from ``.git`` directly, in a checkout and in a worktree of it (a real repository
    made here, so the test runs the same wherever the project's own copy came from)."""
    from quantum_trader.analytics.runs import _git_commit

    git = shutil.which("git")
    assert git is not None, "git is needed (apt-get install git)"

    def run(*args: str, cwd: Path) -> str:
        return subprocess.run([git, *args], cwd=cwd, capture_output=True, text=True,
                              check=True, env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                                               "GIT_COMMITTER_NAME": "t",
                                               "GIT_COMMITTER_EMAIL": "t@t",
                                               "PATH": os.environ.get("PATH", "")}).stdout
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "mod.py").write_text("x = 1\n")
    run("init", "-q", cwd=repo)
    run("add", ".", cwd=repo)
    run("commit", "-q", "-m", "one", cwd=repo)
    head = run("rev-parse", "HEAD", cwd=repo).strip()
    assert _git_commit(repo / "pkg" / "mod.py") == head
    run("worktree", "add", "-q", "--detach", str(tmp_path / "wt"), cwd=repo)
    assert _git_commit(tmp_path / "wt" / "pkg" / "mod.py") == head
    assert _git_commit(tmp_path / "elsewhere" / "x.py") is None
    # And the package itself: its commit when it runs from a checkout, else none.
    assert code_version()["git_commit"] in (None, _git_commit(Path(__file__).resolve()))
