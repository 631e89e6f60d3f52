"""B4: exporting and parsing a 1,000,000-row DMF package with d365ct, at 100k and 1M rows.

Ours runs in a child process (its peak RSS is its own): DmfClient exports the on-hand data
project per legal entity, polls, downloads the package streamed, and `open_package(...).rows`
parses every row, summing AvailableOnHandQuantity as Decimal. Naive parses the same packages
in another child the literal way: zip.read -> decode -> list(csv.reader).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.common import (
    RssSampler,
    SimProcess,
    d365_calls,
    mb,
    per_second,
    process_peak_mb,
    progress,
    result_line,
    run_child,
    scaled,
)

BENCH_ID = "B4"
FULL_SMALL = 100_000
FULL_LARGE = 1_000_000
PRODUCTS = 1000
PROJECT = "d365ct-onhand"
LABEL = "Inventory on-hand by warehouse V2"
QUANTITY = "AvailableOnHandQuantity"
POLL_SECONDS = 0.1
GOAL_RSS_MB = 250.0
GOAL_FLAT = 1.2
GOAL = (
    "export and parse of a 1,000,000-row DMF package: peak RSS <= 250 MB and flat"
    " (1M rows <= 1.2 x the peak of 100k rows); rows/s reported"
)
SIZES = ("small", "large")


def run(scale: float) -> dict[str, Any]:
    from d365sim.azurite import Azurite

    rows = {
        "small": scaled(FULL_SMALL, scale, minimum=100),
        "large": scaled(FULL_LARGE, scale, minimum=1000),
    }
    ours: dict[str, Any] = {}
    naive: dict[str, Any] = {}
    with Azurite() as azurite, tempfile.TemporaryDirectory(prefix="bench-b4-") as work:
        for size in SIZES:
            directory = Path(work, size)
            directory.mkdir()
            ours[size], naive[size] = _one_size(rows[size], azurite.connection_string, directory)
    small_peak = float(ours["small"]["peak_rss_mb"])
    large_peak = float(ours["large"]["peak_rss_mb"])
    naive_large_peak = float(naive["large"]["peak_rss_mb"])
    flat = round(large_peak / small_peak, 3)
    ours.update(
        peak_rss_mb=large_peak,
        large_over_small_peak=flat,
        rss_scope="the d365ct child process (VmHWM, and sampled from the parent)",
    )
    naive.update(
        method="per package: zip.read -> bytes.decode('utf-16') -> list(csv.reader)",
        peak_rss_mb=naive_large_peak,
    )
    rows_match = all(
        ours[s]["rows"] == naive[s]["rows"] == rows[s]
        and ours[s]["available_sum"] == naive[s]["available_sum"]
        for s in SIZES
    )
    ours["rows_match"] = rows_match
    met = large_peak <= GOAL_RSS_MB and large_peak <= GOAL_FLAT * small_peak and rows_match
    return result_line(
        BENCH_ID,
        ours=ours,
        naive=naive,
        ratio=round(naive_large_peak / large_peak, 2),
        goal=GOAL,
        met=met,
        scale=scale,
    )


def _one_size(
    rows: int, blob_connection_string: str, directory: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One simulator seeded with exactly `rows` on-hand rows; ours, then naive, on its export."""
    args = [
        "--seed-products",
        str(PRODUCTS),
        "--seed-onhand-rows",
        str(rows),
        "--job-seconds",
        "0",
        "--row-ms",
        "0",
    ]
    progress(f"{BENCH_ID}: starting d365sim with {rows:,} on-hand rows")
    with SimProcess(args, blob_connection_string=blob_connection_string) as sim:
        sim.reset_counters()
        argv = ["ours", "--url", sim.url, "--dir", str(directory)]
        ours, sampled = run_child("bench.bench_b4", argv, directory / "ours.json")
        ours["calls"] = d365_calls(sim.counters())
    ours["child_peak_rss_mb"] = ours["peak_rss_mb"]
    ours["sampled_peak_rss_mb"] = sampled
    ours["peak_rss_mb"] = max(float(ours["peak_rss_mb"]), sampled)
    ours["growth_mb"] = round(ours["peak_rss_mb"] - float(ours["baseline_rss_mb"]), 2)
    progress(
        f"{BENCH_ID}: ours {ours['rows']:,} rows: export {ours['export_seconds']} s, download"
        f" {ours['download_seconds']} s, parse {ours['parse_seconds']} s,"
        f" peak {ours['peak_rss_mb']} MB"
    )
    argv = ["naive", "--dir", str(directory)]
    naive, sampled = run_child("bench.bench_b4", argv, directory / "naive.json")
    naive["child_peak_rss_mb"] = naive["peak_rss_mb"]
    naive["sampled_peak_rss_mb"] = sampled
    naive["peak_rss_mb"] = max(float(naive["peak_rss_mb"]), sampled)
    naive["growth_mb"] = round(naive["peak_rss_mb"] - float(naive["baseline_rss_mb"]), 2)
    progress(
        f"{BENCH_ID}: naive {naive['rows']:,} rows: parse {naive['parse_seconds']} s,"
        f" peak {naive['peak_rss_mb']} MB"
    )
    for package in directory.glob("*.zip"):
        package.unlink()
    return ours, naive


# ---------------------------------------------------------------------------------------------
# Ours, in the child: d365ct's DMF client and package reader


async def _ours(url: str, directory: Path, sampler: RssSampler) -> dict[str, Any]:
    from bench.common import d365_http, sim_d365_settings
    from d365ct.d365.dmf import DmfClient, ExecutionStatus
    from d365ct.d365.entities import INVENTORY_ON_HAND_V2
    from d365ct.d365.odata import ODataReader
    from d365ct.d365.packages import open_package

    export_seconds = download_seconds = parse_seconds = 0.0
    rows = package_bytes = polls = 0
    available = Decimal(0)
    started = time.perf_counter()
    async with d365_http(sim_d365_settings(url)) as http:
        dmf = DmfClient(http)
        companies = [
            str(row["LegalEntityId"]).lower()
            async for row in ODataReader(http).rows("LegalEntities", select=["LegalEntityId"])
        ]
        for company in companies:
            sampler.phase("export")
            began = time.perf_counter()
            execution_id = await dmf.export_to_package(
                definition_group=PROJECT, legal_entity=company
            )
            while True:
                polls += 1
                status = await dmf.status(execution_id)
                if status is not None and status.final:
                    break
                await asyncio.sleep(POLL_SECONDS)
            if status is not ExecutionStatus.SUCCEEDED:
                raise RuntimeError(f"export for {company} ended {status}")
            while not (package_url := await dmf.exported_package_url(execution_id)):
                await asyncio.sleep(POLL_SECONDS)
            export_seconds += time.perf_counter() - began

            sampler.phase("download")
            began = time.perf_counter()
            path = directory / f"onhand-{company}.zip"
            package_bytes += await dmf.download(package_url, path)
            download_seconds += time.perf_counter() - began

            sampler.phase("parse")
            began = time.perf_counter()
            with open_package(path) as package:
                for row in package.rows(LABEL, definition=INVENTORY_ON_HAND_V2):
                    available += Decimal(row[QUANTITY])
                    rows += 1
            parse_seconds += time.perf_counter() - began
    total = time.perf_counter() - started
    return {
        "rows": rows,
        "exports": len(companies),
        "package_mb": mb(package_bytes),
        "export_seconds": round(export_seconds, 3),
        "download_seconds": round(download_seconds, 3),
        "parse_seconds": round(parse_seconds, 3),
        "end_to_end_seconds": round(total, 3),
        "parse_rows_per_s": per_second(rows, parse_seconds),
        "end_to_end_rows_per_s": per_second(rows, total),
        "status_polls": polls,
        "available_sum": str(available),
    }


# ---------------------------------------------------------------------------------------------
# Naive, in the child: the whole data file in memory


def _naive(directory: Path, sampler: RssSampler) -> dict[str, Any]:
    rows = 0
    available = Decimal(0)
    sampler.phase("parse")
    started = time.perf_counter()
    for path in sorted(directory.glob("*.zip")):
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.lower().endswith(".csv"))
            data = archive.read(name)
        text = data.decode("utf-16")
        records = list(csv.reader(io.StringIO(text, newline="")))
        index = records[0].index(QUANTITY.upper())
        for record in records[1:]:
            if record:
                available += Decimal(record[index])
                rows += 1
        del data, text, records
    seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "parse_seconds": round(seconds, 3),
        "parse_rows_per_s": per_second(rows, seconds),
        "available_sum": str(available),
    }


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="One side of B4 (run by the benchmark).")
    parser.add_argument("side", choices=("ours", "naive"))
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--url", default="")
    options = parser.parse_args(argv)
    if options.side == "ours":
        # Imported before the baseline, so the baseline is the interpreter with d365ct loaded.
        import d365ct.d365.dmf
        import d365ct.d365.packages  # noqa: F401
    phases = ("export", "download", "parse") if options.side == "ours" else ("parse",)
    with RssSampler(os.getpid(), 0.05) as sampler:
        baseline = sampler.current_mb()
        if options.side == "ours":
            figures = asyncio.run(_ours(options.url, options.dir, sampler))
        else:
            figures = _naive(options.dir, sampler)
        figures["baseline_rss_mb"] = baseline
        for phase in phases:
            figures[f"{phase}_peak_rss_mb"] = sampler.phase_peak_mb(phase)
        figures["peak_rss_mb"] = max(process_peak_mb(), sampler.peak_mb())
    options.out.write_text(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
