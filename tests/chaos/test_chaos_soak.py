"""The chaos soak in CI: a fixed seed and a short duration (the invariants are the soak's;
see tests/chaos/soak.py, which also runs alone with any seed and duration)."""

from __future__ import annotations

import pytest

from tests.chaos.soak import SoakConfig, run_soak

pytestmark = pytest.mark.integration


@pytest.mark.timeout(900)
def test_chaos_soak_keeps_every_money_invariant() -> None:
    report = run_soak(SoakConfig(seed=7, duration_s=60.0, min_trades=4))
    print(report.text())
    assert report.counts["venue trades"] >= 4, "the soak must actually trade"
    assert report.counts["faults injected"] > 50, "and actually inject faults"
    assert sum(v for k, v in report.counts.items() if k.startswith("kills ")) >= 4
    assert report.ok, report.text()
