"""`d365ct demo --exit` on the real simulator: starts it, checks it answers, exits 0."""

from __future__ import annotations

import subprocess
import sys


def test_demo_exit_reports_the_seeded_sandbox() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "d365ct.cli", "demo", "--products", "20", "--port", "0", "--exit"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "d365sim at http://127.0.0.1:" in result.stdout
    assert "ReleasedProductsV2" in result.stdout and "40" in result.stdout
