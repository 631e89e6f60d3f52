"""SIM: d365sim seeds 1,000,000 on-hand rows and exports them as DMF packages over HTTP.

Ours is the simulator's streamed export; naive loads every row into a list, then builds the zip.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from bench.common import (
    RssSampler,
    SimProcess,
    count_package_rows,
    d365_calls,
    dmf_action,
    download,
    mb,
    measure_block,
    per_second,
    process_peak_mb,
    progress,
    result_line,
    run_export,
    scaled,
)

BENCH_ID = "SIM"
FULL_ROWS = 1_000_000
PRODUCTS = 1000
PROJECT = "d365ct-onhand"
ENTITY = "WarehousesOnHandV2"
GOAL_RSS_MB = 250.0
GOAL = "export of 1,000,000 rows streams: simulator peak RSS <= 250 MB, and rows/s reported"
# The naive export may use at most this much; beyond it, it exports fewer rows and says so.
NAIVE_BUDGET_MB = 4096.0
# Rows the naive child loads before it first checks its memory against the budget.
_NAIVE_PROBE_ROWS = 20_000


def run(scale: float) -> dict[str, Any]:
    rows = scaled(FULL_ROWS, scale, minimum=100)
    from d365sim.azurite import Azurite

    with (
        Azurite() as azurite,
        tempfile.TemporaryDirectory(prefix="bench-sim-") as work,
    ):
        data_dir = Path(work, "data")
        data_dir.mkdir()
        ours = _ours(rows, azurite.connection_string, data_dir, Path(work))
        # The simulator has stopped; the naive export reads the same SQLite file it left.
        naive = _naive(data_dir / "entities.sqlite", list(ours.pop("companies")), Path(work))
    ours_peak = float(ours["peak_rss_mb"])
    naive_peak = float(naive["peak_rss_mb"])
    met = (
        ours_peak <= GOAL_RSS_MB
        and bool(ours["rows_match"])
        and float(ours["export_rows_per_s"]) > 0
    )
    return result_line(
        BENCH_ID,
        ours=ours,
        naive=naive,
        ratio=round(naive_peak / ours_peak, 2),
        goal=GOAL,
        met=met,
        scale=scale,
    )


# ---------------------------------------------------------------------------------------------
# Ours: the simulator's own seeding and DMF export, driven over HTTP like a client


def _ours(rows: int, blob_connection_string: str, data_dir: Path, work: Path) -> dict[str, Any]:
    args = [
        "--seed-products",
        str(PRODUCTS),
        "--seed-onhand-rows",
        str(rows),
        "--job-seconds",
        "0",
        "--row-ms",
        "0",
        "--data-dir",
        str(data_dir),
    ]
    progress(f"SIM: starting d365sim with {rows:,} on-hand rows")
    with SimProcess(args, blob_connection_string=blob_connection_string) as sim:
        assert sim.sampler is not None
        sampler = sim.sampler
        sampler.phase("idle")
        seed_seconds = float(sim.ready["seed_seconds"])
        seeded_rows = int(sim.ready["seeded_rows"])
        progress(f"SIM: seeded {seeded_rows:,} rows in {seed_seconds:g} s; exporting")
        with sim.client(timeout=600) as client:
            companies = [
                str(item["LegalEntityId"]).lower()
                for item in client.get(
                    "/data/LegalEntities", params={"$select": "LegalEntityId"}
                ).json()["value"]
            ]
            count_response = client.get(f"/data/{ENTITY}/$count", params={"cross-company": "true"})
            count_response.raise_for_status()
            onhand_rows = int(count_response.text)
            idle_mb = sampler.current_mb()
            sampler.phase("export")
            export_seconds = download_seconds = parse_seconds = 0.0
            package_bytes = exported = polls = 0
            started = time.perf_counter()
            for company in companies:
                export = run_export(client, PROJECT, company)
                if export.status != "Succeeded":
                    raise RuntimeError(f"export for {company} ended {export.status}")
                export_seconds += export.seconds
                polls += export.polls
                url = str(
                    dmf_action(
                        client, "GetExportedPackageUrl", {"executionId": export.execution_id}
                    )
                )
                package = work / f"onhand-{company}.zip"
                began = time.perf_counter()
                package_bytes += download(url, package)
                download_seconds += time.perf_counter() - began
                began = time.perf_counter()
                exported += sum(count_package_rows(package).values())
                parse_seconds += time.perf_counter() - began
                package.unlink()
            total_seconds = time.perf_counter() - started
        counters = sim.counters()
        peak = sampler.peak_mb()
        result: dict[str, Any] = {
            "rows": onhand_rows,
            "seeded_rows_all_entities": seeded_rows,
            "seed_seconds": seed_seconds,
            "seed_rows_per_s": per_second(seeded_rows, seed_seconds),
            "startup_seconds": sim.startup_seconds,
            "exports": len(companies),
            "exported_rows": exported,
            "rows_match": exported == onhand_rows == rows,
            "export_seconds": round(export_seconds, 3),
            "export_rows_per_s": per_second(exported, export_seconds),
            "download_seconds": round(download_seconds, 3),
            "parse_seconds": round(parse_seconds, 3),
            "end_to_end_seconds": round(total_seconds, 3),
            "end_to_end_rows_per_s": per_second(exported, total_seconds),
            "package_mb": mb(package_bytes),
            "calls": d365_calls(counters),
            "status_polls": polls,
            "peak_rss_mb": peak,
            "seed_peak_rss_mb": sampler.phase_peak_mb("startup"),
            "export_peak_rss_mb": sampler.phase_peak_mb("export"),
            "idle_rss_mb": idle_mb,
            "export_rss_growth_mb": round(max(0.0, sampler.phase_peak_mb("export") - idle_mb), 2),
            "rss_scope": "the d365sim serve process; Azurite runs as a separate process",
            "rss_samples": sampler.samples,
            "companies": companies,
        }
    progress(f"SIM: ours exported {exported:,} rows in {export_seconds:.1f} s, peak {peak} MB")
    return result


# ---------------------------------------------------------------------------------------------
# Naive: load everything, then write — in a child process so its peak RSS is its own


def _naive(db: Path, companies: list[str], work: Path) -> dict[str, Any]:
    progress("SIM: naive export (load all rows, build the package in memory)")
    out = work / "naive.json"
    command = [
        sys.executable,
        "-m",
        "bench.bench_sim",
        "--db",
        str(db),
        "--out",
        str(out),
        "--budget-mb",
        str(NAIVE_BUDGET_MB),
        *companies,
    ]
    env = dict(os.environ)
    # The child imports `bench` the way this process did, wherever it was started from.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    with RssSampler(process.pid) as sampler:
        code = process.wait()
        sampled = sampler.peak_mb()
    if code != 0:
        raise RuntimeError(f"the naive export exited with code {code}")
    figures: dict[str, Any] = json.loads(out.read_text())
    figures["peak_rss_mb"] = max(float(figures["peak_rss_mb"]), sampled)
    progress(
        f"SIM: naive exported {figures['exported_rows']:,} rows in {figures['seconds']} s,"
        f" peak {figures['peak_rss_mb']} MB"
    )
    return figures


def _naive_export(
    db: Path, companies: list[str], out_dir: Path, budget_mb: float
) -> dict[str, Any]:
    """One package per company, each built the literal way: all rows in a list, then the CSV
    text, then its UTF-16 bytes, then the zip, all in memory, then written to disk."""
    from d365sim.entities import BY_NAME
    from d365sim.packages import data_file_name, format_value
    from d365sim.store import EntityStore

    entity = BY_NAME[ENTITY]
    fields = entity.fields
    store = EntityStore(db)
    exported = package_bytes = 0
    capped_at: int | None = None
    try:
        with measure_block() as block:
            for company in companies:
                rows: list[dict[str, Any]] = []
                limit: int | None = None
                for row, _ in store.query(entity, where='"dataAreaId" = ?', params=[company]):
                    rows.append(row)
                    if len(rows) == _NAIVE_PROBE_ROWS and limit is None:
                        limit = _row_limit(block.baseline_mb, len(rows), budget_mb)
                    if limit is not None and len(rows) >= limit:
                        capped_at = limit
                        break
                text = io.StringIO()
                writer = csv.writer(text, lineterminator="\r\n")
                writer.writerow([f.name.upper() for f in fields])
                for row in rows:
                    writer.writerow([format_value(f, row.get(f.name)) for f in fields])
                data = ("\ufeff" + text.getvalue()).encode("utf-16-le")
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                    archive.writestr(data_file_name(entity), data)
                package = buffer.getvalue()
                (out_dir / f"naive-{company}.zip").write_bytes(package)
                exported += len(rows)
                package_bytes += len(package)
                del rows, text, data, buffer, package
    finally:
        store.close()
    figures: dict[str, Any] = {
        "method": "per company: list(all rows) -> CSV str -> UTF-16 bytes -> zip bytes -> file",
        "exports": len(companies),
        "exported_rows": exported,
        "seconds": block.seconds,
        "rows_per_s": per_second(exported, block.seconds),
        "package_mb": mb(package_bytes),
        "peak_rss_mb": max(block.peak_mb, process_peak_mb()),  # VmHWM: not the parent's peak
        "baseline_rss_mb": block.baseline_mb,
        "growth_mb": block.growth_mb,
        "capped": capped_at is not None,
    }
    if capped_at is not None:
        figures["cap_rows_per_company"] = capped_at
        figures["cap_reason"] = f"the full export was projected above {budget_mb:g} MB"
    return figures


def _row_limit(baseline_mb: float, loaded: int, budget_mb: float) -> int:
    """Rows per company that keep the naive export inside the budget (at least `loaded`).

    Projects from the memory the first rows took; the CSV text, its bytes and the zip add about
    half the list's size again while the list is still alive.
    """
    now = RssSampler(os.getpid()).current_mb()
    per_row_mb = max(now - baseline_mb, 1e-3) / loaded * 1.5
    room = budget_mb - baseline_mb
    limit = int(room / per_row_mb)
    return limit if limit > loaded else loaded


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="The naive SIM export (run by the benchmark).")
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-mb", type=float, default=NAIVE_BUDGET_MB)
    parser.add_argument("companies", nargs="+")
    options = parser.parse_args(argv)
    figures = _naive_export(options.db, options.companies, options.out.parent, options.budget_mb)
    options.out.write_text(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
