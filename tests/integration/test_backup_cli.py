"""The backup commands end to end on an embedded (SQLite) deployment: backup, list, verify,
prune, and restore into a fresh state directory; a refused restore exits 2 and says why."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantum_trader.cli import app
from quantum_trader.config import Settings
from quantum_trader.marketdata.sample import load_sample
from quantum_trader.observability.metrics import BACKUP_LAST_SUCCESS
from quantum_trader.ops.manifest import list_sets
from quantum_trader.ops.service import prune_sets
from quantum_trader.runtime.paper import run_paper
from quantum_trader.store.sql import SqlTradeStore
from quantum_trader.store.urls import sqlite_url

pytestmark = pytest.mark.integration

def _env(state: Path) -> dict[str, str]:
    return {"QTRADER_PATHS__STATE_DIR": str(state),
            "QTRADER_PATHS__REGISTRY_DIR": str(state / "models"),
            "QTBACKUP_DIR": str(state.parent / "backups"), "COLUMNS": "200"}


async def _trade(db: Path) -> dict[str, int]:
    async with SqlTradeStore(sqlite_url(db), create=True) as store:
        await run_paper(Settings(), [load_sample("XRP").slice(0, 800)], store, batch=100)
        return await store.counts()


def test_backup_list_verify_restore_cli(tmp_path: Path) -> None:
    state = tmp_path / "var"
    counts = asyncio.run(_trade(state / "quantum_trader.db"))
    (state / "models" / "default").mkdir(parents=True)
    (state / "models" / "default" / "model.bin").write_bytes(b"\x00weights" * 1000)
    runner = CliRunner()
    env = _env(state)

    res = runner.invoke(app, ["backup", "--json"], env=env)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["components"] == ["config", "database", "registry"]
    assert BACKUP_LAST_SUCCESS._value.get() > 0  # type: ignore[attr-defined]
    assert (tmp_path / "backups" / "last-success").is_file()

    res = runner.invoke(app, ["backup", "list", "--json"], env=env)
    assert res.exit_code == 0, res.output
    assert [s["name"] for s in json.loads(res.stdout)] == [out["name"]]

    res = runner.invoke(app, ["backup", "verify"], env=env)
    assert res.exit_code == 0, res.output
    assert "PASS restore drill" in res.stdout
    assert "FAIL" not in res.stdout

    # Restore into the live deployment is refused: it is not empty.
    res = runner.invoke(app, ["restore", "latest"], env=env)
    assert res.exit_code == 2
    assert "not empty" in res.output
    assert "--force" in res.output

    # A fresh machine: new state dir, the set copied over.
    new_state = tmp_path / "new" / "var"
    shutil.copytree(tmp_path / "backups", tmp_path / "new" / "backups")
    res = runner.invoke(app, ["restore", "latest", "--config-out", str(tmp_path / "c.yaml")],
                        env=_env(new_state))
    assert res.exit_code == 0, res.output
    assert "restored" in res.stdout

    async def count() -> dict[str, int]:
        async with SqlTradeStore(sqlite_url(new_state / "quantum_trader.db")) as s:
            return await s.counts()

    assert asyncio.run(count()) == counts
    assert (new_state / "models" / "default" / "model.bin").read_bytes() == \
        b"\x00weights" * 1000

    # Tamper, then verify says FAIL (exit 1) and restore refuses (exit 2).
    set_dir = list_sets(tmp_path / "backups")[-1].path
    (set_dir / "config.yaml").write_text("tampered: true\n")
    res = runner.invoke(app, ["backup", "verify"], env=env)
    assert res.exit_code == 1
    assert "config.yaml: size" in res.stdout or "config.yaml: sha256" in res.stdout
    res = runner.invoke(app, ["restore", "latest", "--force"], env=env)
    assert res.exit_code == 2
    assert "refused" in res.output


def test_prune_removes_what_the_policy_says(tmp_path: Path) -> None:
    """Real sets on disk with back-dated manifests; prune deletes exactly the plan's sets."""
    from quantum_trader.ops.backup import BackupOptions, create_backup

    dest = tmp_path / "backups"
    cfg = {"k": 1}
    now = 1_795_000_000.0
    made = []
    for hours_ago in (0, 3, 7, 30, 31, 24 * 10, 24 * 10 + 2, 24 * 200):
        t = now - hours_ago * 3600
        made.append(create_backup(BackupOptions(dest=dest, config=cfg), clock=lambda t=t: t))
    partial = dest / ".partial-qt-backup-20200101T000000Z"
    partial.mkdir()
    plan = prune_sets(dest, now=now, dry_run=True)
    assert len(list_sets(dest)) == 9  # dry run deletes nothing
    plan = prune_sets(dest, now=now)
    left = {s.name for s in list_sets(dest)}
    assert left == set(plan.keep)
    assert set(plan.prune) == {m.name for m in made} - left | {partial.name}
    # 0h, 7h (6h buckets) ; 30h newest of its day; 10d and 200d-old: only the 10d+... check:
    kept_ages = sorted(round((now - m.manifest["created_ts"]) / 3600) for m in made
                       if m.name in left)
    assert kept_ages == [0, 7, 30, 240]


async def test_in_process_scheduler_takes_real_backups(tmp_path: Path) -> None:
    """Embedded mode's option: the scheduler runs the same job as the timer, off the loop."""
    from quantum_trader.ops.scheduler import BackupScheduler, embedded_job

    settings = Settings.model_validate({"paths": {"state_dir": str(tmp_path / "var"),
                                                  "registry_dir": str(tmp_path / "models")}})
    async with SqlTradeStore(settings.store_url(), create=True) as store:
        await store.counts()
    dest = tmp_path / "backups"
    sched = BackupScheduler(embedded_job(settings, dest), every_s=3600, first_after_s=0)
    assert await sched.run_once()
    assert await sched.run_once()
    assert sched.runs == 2
    # Both fell in the same 6-hour bucket, so the job's pruning kept only the newer one.
    sets = [s for s in list_sets(dest) if s.complete]
    assert [s.name.endswith("-2") for s in sets] == [True]
    assert sets[0].components == ("config", "database", "registry")  # registry: absent
