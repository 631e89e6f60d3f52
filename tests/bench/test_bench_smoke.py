"""Smoke tests of `make bench`: each benchmark at a tiny scale through `python -m bench`.

They check the shape of the one JSON line SPEC §8 asks for, not the figures' size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _run_bench(name: str) -> dict[str, Any]:
    """`python -m bench` with BENCH=name at SCALE: its one result line, checked for shape."""
    env = {**os.environ, "BENCH": name, "BENCH_SCALE": str(SCALE)}
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
    result: dict[str, Any] = json.loads(lines[0])
    assert list(result) == ["bench", "ours", "naive", "ratio", "goal", "met", "scale"]
    assert result["bench"] == name
    assert result["scale"] == SCALE
    assert isinstance(result["met"], bool)
    assert _is_number(result["ratio"]) and result["ratio"] > 0
    return result


def _no_negative_numbers(figures: dict[str, Any]) -> None:
    for name, value in figures.items():
        if isinstance(value, dict):
            _no_negative_numbers(value)
        elif _is_number(value):
            assert value >= 0, (name, figures)


@pytest.mark.slow
def test_sim_bench_prints_one_result_line() -> None:
    result = _run_bench("SIM")
    assert isinstance(result["goal"], str) and "250 MB" in result["goal"]

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


@pytest.mark.slow
def test_b2r_bench_counts_reads_both_ways() -> None:
    result = _run_bench("B2R")
    assert "ceil(rows / page size) + 2" in result["goal"]
    ours, naive = result["ours"], result["naive"]
    _no_negative_numbers(ours)
    _no_negative_numbers(naive)

    rows = round(100_000 * SCALE)
    assert ours["rows"] == sum(ours["rows_by_legal_entity"].values()) == rows
    assert ours["legal_entities"] == 2  # usmf and demf
    # At this size each legal entity fits one page: LegalEntities plus one page each.
    assert ours["calls"] == ours["calls_hook"] == ours["calls_reader"] == 3
    assert ours["calls_allowed"] == 6
    assert ours["token_calls"] == ours["token_calls_hook"] == 1
    assert ours["seconds"] > 0 and ours["rows_per_s"] > 0

    assert 0 < naive["extrapolated_from"] < naive["skus"] == ours["skus"]
    assert naive["measured_calls"] == naive["measured_calls_hook"] == naive["extrapolated_from"]
    assert naive["calls"] == naive["skus"]  # one call per SKU, exactly
    assert naive["rows_match"] is True and naive["measured_rows"] > 0
    assert naive["seconds"] > naive["measured_seconds"] > 0
    assert result["ratio"] == round(naive["calls"] / ours["calls"], 1)
    # Far too few rows per page at this scale for the 1,000x goal.
    assert result["met"] is False


@pytest.mark.slow
def test_b4_bench_measures_both_sizes_in_child_processes() -> None:
    result = _run_bench("B4")
    assert "250 MB" in result["goal"] and "1.2" in result["goal"]
    ours, naive = result["ours"], result["naive"]
    _no_negative_numbers(ours)
    _no_negative_numbers(naive)

    sizes = {"small": round(100_000 * SCALE), "large": round(1_000_000 * SCALE)}
    for size, rows in sizes.items():
        mine, theirs = ours[size], naive[size]
        assert mine["rows"] == theirs["rows"] == rows
        assert mine["available_sum"] == theirs["available_sum"]
        assert mine["exports"] == 2
        for name in (
            "export_seconds",
            "parse_seconds",
            "end_to_end_seconds",
            "parse_rows_per_s",
            "end_to_end_rows_per_s",
            "package_mb",
            "calls",
            "status_polls",
        ):
            assert _is_number(mine[name]) and mine[name] > 0, (size, name, mine)
        for figures in (mine, theirs):
            assert 0 < figures["baseline_rss_mb"] <= figures["peak_rss_mb"]
    assert ours["rows_match"] is True
    assert ours["peak_rss_mb"] == ours["large"]["peak_rss_mb"]
    assert naive["peak_rss_mb"] == naive["large"]["peak_rss_mb"]
    assert ours["large_over_small_peak"] == round(
        ours["large"]["peak_rss_mb"] / ours["small"]["peak_rss_mb"], 3
    )
    assert result["ratio"] == round(naive["peak_rss_mb"] / ours["peak_rss_mb"], 2)
    # A few thousand rows stream in far less than the goal's memory.
    assert result["met"] is True


@pytest.mark.slow
def test_b5_bench_accepts_on_sqlite_and_postgresql() -> None:
    result = _run_bench("B5")
    assert "messages/s" in result["goal"] and "round trips" in result["goal"]
    ours, naive = result["ours"], result["naive"]
    _no_negative_numbers(ours)
    _no_negative_numbers(naive)

    messages = round(20_000 * SCALE)
    duplicates = round(messages * 0.1)
    assert (ours["messages"], ours["duplicates_injected"]) == (messages, duplicates)
    assert ours["deliveries"] == messages + duplicates
    assert ours["order_created"] + ours["customer_created"] == messages
    assert 2000 <= ours["message_bytes_avg"] <= 4000
    for backend in ("sqlite", "postgresql"):
        for way in ("batched", "http"):
            figures = ours[backend][way]
            assert figures["deliveries"] == messages + duplicates, (backend, way)
            assert figures["duplicates_detected"] == duplicates, (backend, way)
            assert figures["accepted"] == figures["rows_stored"] == messages, (backend, way)
            assert figures["deliveries_stored"] == messages + duplicates, (backend, way)
            # Batches of 10 in one transaction: BEGIN + 10 statements + COMMIT.
            assert figures["round_trips_per_message"] == 1.2, (backend, way)
            assert figures["msgs_per_s"] > 0 and figures["batch_p95_ms"] > 0, (backend, way)
        assert ours[backend]["http"]["answered_duplicate"] == duplicates
        # One transaction per message: BEGIN, SELECT, INSERT, COMMIT (no INSERT for a duplicate).
        theirs = naive[backend]
        assert theirs["round_trips"] == 4 * messages + 3 * duplicates
        assert (theirs["inserted"], theirs["duplicates_detected"]) == (messages, duplicates)
        assert theirs["msgs_per_s"] > 0

        started = ours["workflow_start"][backend]
        workflows = started["messages"]
        assert workflows == round(2_000 * SCALE)
        assert started["starts"] == workflows + started["repeated_starts"]
        assert started["executions"] == started["workflow_rows"] == workflows
        assert started["msgs_per_s"] > 0
    assert ours["workflow_start_in_accept"] is False
    assert ours["postgresql"]["batched"]["pool_pre_pings"] == (messages + duplicates) // 10
    assert ours["msgs_per_s"] == ours["sqlite"]["batched"]["msgs_per_s"]
    assert naive["msgs_per_s"] == naive["sqlite"]["msgs_per_s"]
    assert result["ratio"] == round(ours["msgs_per_s"] / naive["msgs_per_s"], 2)
    assert result["met"] is True


def test_unknown_benchmark_and_bad_scale_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main({"BENCH": "nope", "BENCH_SCALE": "1"}) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert main({"BENCH": "SIM", "BENCH_SCALE": "-1"}) == 2
    assert "BENCH_SCALE must be positive" in capsys.readouterr().err


@pytest.mark.slow
def test_b1_bench_counts_catalog_resync_calls_at_the_http_layer() -> None:
    result = _run_bench("B1")
    assert "1.05" in result["goal"] and "50x" in result["goal"]
    ours, naive = result["ours"], result["naive"]
    _no_negative_numbers(ours)
    _no_negative_numbers(naive)

    items = round(100_000 * SCALE)
    changed = round(items * 0.01)
    assert ours["source_items"] == items
    # Every 485th item is a master over the 100-variant limit, split into two products.
    assert ours["records"] >= items and ours["records"] == naive["records"]
    initial = ours["initial_load"]
    assert initial["created"] == initial["records"] == ours["records"]
    assert initial["failed"] == 0 and initial["calls"] == initial["calls_summary"]
    assert ours["d365_changes"]["changed_items"] == ours["changed_records"] == changed
    assert ours["d365_changes"]["patch_calls"] == changed

    # The re-sync: one update per changed product, none for the rest, counted by the hook.
    assert ours["calls_match_summary"] is True
    assert ours["writes"] == ours["updated"] == ours["changed_products"] >= changed
    assert ours["unchanged"] == ours["records"] - ours["updated"]
    assert ours["writes_to_unchanged"] == 0 and ours["failed"] == 0
    assert ours["reads"] == ours["calls"] - ours["writes"] >= 1
    assert ours["changes_arrived"] is True
    assert ours["d365_calls"] == ours["d365_calls_hook"] == ours["d365_calls_summary"] > 0
    assert ours["seconds"] > 0 and ours["cpu_seconds"] > 0 and ours["cpu_ms_per_record"] > 0

    assert 0 < naive["extrapolated_from"] < naive["records"]
    assert naive["measured_writes"] == naive["extrapolated_from"]
    assert naive["measured_calls"] == naive["measured_calls_client"]
    assert naive["writes"] == naive["records"]  # one POST per product, changed or not
    assert naive["calls"] == naive["writes"] + naive["reads"]
    assert naive["seconds"] > naive["measured_write_seconds"] > 0
    assert set(naive["ct_ms_per_call"]) == {"GET", "POST"}
    assert result["ratio"] == round(naive["calls"] / ours["calls"], 1)
    assert result["met"] is True


@pytest.mark.slow
def test_b2w_bench_writes_exactly_the_changed_entries() -> None:
    result = _run_bench("B2W")
    assert "writes = changed entries" in result["goal"]
    ours, naive = result["ours"], result["naive"]
    _no_negative_numbers(ours)
    _no_negative_numbers(naive)

    rows = max(100, round(100_000 * SCALE))
    changed = ours["d365_changes"]
    assert changed["changed_rows"] == changed["patch_calls"] == max(1, round(rows * 0.01))
    assert ours["initial_load"]["created"] == ours["entries"] == naive["entries"] > 0
    assert ours["rows"] == ours["initial_load"]["rows"] == rows
    # counted at the HTTP layer: one POST per changed entry, none to an unchanged one
    assert ours["writes"] == ours["changed_entries"] == changed["changed_entries"] > 0
    assert ours["calls_by_method"]["POST"] == ours["writes"] == ours["updated"]
    assert ours["writes_to_unchanged"] == 0 and ours["calls_match_summary"] is True
    assert ours["unchanged"] == ours["entries"] - ours["changed_entries"]
    assert ours["changes_arrived"] is True
    assert ours["d365_calls"] == ours["d365_calls_hook"] <= ours["d365_calls_allowed"]

    assert naive["writes"] == naive["entries"]  # every row written, changed or not
    assert naive["measured_writes"] == naive["measured_writes_client"] == naive["extrapolated_from"]
    assert result["ratio"] == round(naive["writes"] / ours["writes"], 1)
    assert result["met"] is True


@pytest.mark.slow
def test_b3_bench_posts_real_orders_both_ways() -> None:
    result = _run_bench("B3")
    assert "100x" in result["goal"] and "p95" in result["goal"]
    ours, naive = result["ours"], result["naive"]
    _no_negative_numbers(ours)
    _no_negative_numbers(naive)
    orders = round(10_000 * SCALE)
    # every order of every phase reached D365 (the benchmark itself fails when D365 holds fewer)
    assert ours["orders"] == ours["orders_posted"] == orders and ours["orders_failed"] == 0
    assert ours["statuses"] == ["Succeeded"] and naive["statuses"] == ["Succeeded"]
    # micro-batched: one import per legal entity at this size; naive: one per order
    assert ours["d365_imports"] == 2
    assert naive["d365_imports"] == naive["sample_orders"] == naive["orders_posted"] > 0
    assert ours["orders_per_s"] > naive["orders_per_s"] > 0
    assert result["ratio"] == round(ours["orders_per_s"] / naive["orders_per_s"], 1)
    latency = ours["latency"]
    assert 0 < latency["p50_seconds"] <= latency["p95_seconds"] <= latency["max_seconds"]
    assert latency["bound_seconds"] == round(
        latency["window_seconds"] + 2 * latency["job_seconds"], 3
    )
    assert ours["model"]["job_seconds"] > 0 and ours["model"]["row_ms"] > 0
    assert naive["extrapolated_seconds"] > ours["seconds"]
