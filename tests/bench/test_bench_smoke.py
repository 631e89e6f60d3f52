"""Smoke test of `make bench`: the SIM benchmark at a tiny scale through `python -m bench`.

It checks the shape of the one JSON line SPEC §8 asks for, not the figures' size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
SCALE = 0.01

# Figures that must be measured, hence positive, even at the smallest scale.
OURS_POSITIVE = (
    "rows",
    "seed_seconds",
    "seed_rows_per_s",
    "exported_rows",
    "export_seconds",
    "export_rows_per_s",
    "end_to_end_rows_per_s",
    "package_mb",
    "calls",
    "peak_rss_mb",
    "export_peak_rss_mb",
)
NAIVE_POSITIVE = ("exported_rows", "seconds", "rows_per_s", "package_mb", "peak_rss_mb")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.slow
def test_sim_bench_prints_one_result_line() -> None:
    env = {**os.environ, "BENCH": "SIM", "BENCH_SCALE": str(SCALE)}
    done = subprocess.run(
        [sys.executable, "-m", "bench"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    result = json.loads(lines[0])

    assert list(result) == ["bench", "ours", "naive", "ratio", "goal", "met", "scale"]
    assert result["bench"] == "SIM"
    assert result["scale"] == SCALE
    assert isinstance(result["goal"], str) and "250 MB" in result["goal"]
    assert isinstance(result["met"], bool)
    assert _is_number(result["ratio"]) and result["ratio"] > 0

    ours, naive = result["ours"], result["naive"]
    for figures, positive in ((ours, OURS_POSITIVE), (naive, NAIVE_POSITIVE)):
        for name in positive:
            assert _is_number(figures[name]) and figures[name] > 0, (name, figures)
        for name, value in figures.items():
            if _is_number(value):
                assert value >= 0, (name, figures)

    rows = round(1_000_000 * SCALE)
    assert ours["rows"] == ours["exported_rows"] == naive["exported_rows"] == rows
    assert ours["rows_match"] is True
    assert ours["exports"] == naive["exports"] == 2  # usmf and demf
    assert naive["capped"] is False
    assert result["ratio"] == round(naive["peak_rss_mb"] / ours["peak_rss_mb"], 2)


def test_unknown_benchmark_and_bad_scale_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main({"BENCH": "nope", "BENCH_SCALE": "1"}) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert main({"BENCH": "SIM", "BENCH_SCALE": "-1"}) == 2
    assert "BENCH_SCALE must be positive" in capsys.readouterr().err
