"""`d365ct demo --exit` end to end: both peers, setup, the syncs and a reconciliation; exits 0
only when the outcome matches what was seeded."""

from __future__ import annotations

import subprocess
import sys


def test_demo_settles_as_seeded() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "d365ct.cli", "demo", "--products", "30", "--exit"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "demo: settled as seeded" in result.stdout
    assert "sync catalog again" in result.stdout and "unchanged 30" in result.stdout
    assert "reconcile inventory" in result.stdout and "completed" in result.stdout
