"""bandit over our code (scripts/audit.sh bandit): every finding is fixed or explained in
docs/security.md and listed in the script; a new one fails this test. pip-audit needs the
vulnerability database online, so it runs from the script / CI, not here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bandit_has_no_unexplained_findings() -> None:
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "bandit").exists():
        pytest.fail("bandit is not installed: pip install -e '.[dev]'")
    bash = shutil.which("bash")
    assert bash is not None
    r = subprocess.run([bash, str(ROOT / "scripts" / "audit.sh"), "bandit"], cwd=ROOT,
                       env={"BIN": str(bin_dir), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 new" in r.stdout


def test_every_accepted_finding_is_explained_in_the_docs() -> None:
    script = (ROOT / "scripts" / "audit.sh").read_text()
    docs = (ROOT / "docs" / "security.md").read_text()
    accepted = [line.split()[:2] for line in script.split("ACCEPTED=(")[1].split(")")[0]
                .splitlines() if line.strip().startswith('"B')]
    assert accepted
    for test_id, path in accepted:
        test_id = test_id.strip('"')
        assert test_id in docs, f"{test_id} ({path}) is not explained in docs/security.md"
        assert Path(path).name in docs, f"{path} is not named in docs/security.md"
