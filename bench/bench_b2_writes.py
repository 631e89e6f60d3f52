"""B2W: the write side of inventory sync — 100,000 SKU × warehouse rows, 1 % of them changed.

Setup (not measured as the benchmark): d365sim seeded with the on-hand rows, the commercetools
mock with every warehouse of the seed mapped to a supply channel (`d365ct setup` creates them),
and an initial load (the first `sync_inventory` into an empty project; reported apart as
`initial_load`). Then the available quantity of a seeded random 1 % of the rows is raised in
D365 by OData PATCH, so that every changed row changes its entry's integer quantity.

Ours is the delta sync: `sync_inventory` (not --full), which compares each entry's quantity with
the one it last wrote and sends one changeQuantity per changed entry, at the stored version.
Naive writes every row: it reads and maps on-hand as ours does, looks the entries up in bulk for
their versions and POSTs a changeQuantity for each, changed or not; the writes run on a seeded
random sample and are extrapolated to all entries.

commercetools calls are counted at the HTTP layer (an httpx hook on the flow's own client) and
cross-checked against the flow's summary; d365sim counts its own calls too.
"""

from __future__ import annotations

import asyncio
import math
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from bench.bench_b1 import CallLog, CtMockProcess, bench_settings
from bench.common import (
    SimProcess,
    d365_calls,
    per_second,
    progress,
    result_line,
    scaled,
    token_calls,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

    from d365ct.config import Settings
    from d365ct.flows.inventory import InventorySyncSummary

BENCH_ID = "B2W"
FULL_ROWS = 100_000
CHANGED_SHARE = 0.01
FULL_NAIVE_SAMPLE = 2_000  # entries the naive way really rewrites at scale 1
MIN_ROWS = 100
MIN_NAIVE_SAMPLE = 20
PRODUCTS = 1000
PAGE_SIZE = 10_000  # d365sim's default, passed explicitly so the read bound is exact
RAISE_BY = 7  # units added to a changed row: its entry's floored quantity always changes
PROJECT_KEY = "bench-b2w"
ENTITY = "WarehousesOnHandV2"
ON_HAND_KEYS = (
    "dataAreaId",
    "ItemNumber",
    "ProductColorId",
    "ProductConfigurationId",
    "ProductSizeId",
    "ProductStyleId",
    "InventorySiteId",
    "InventoryWarehouseId",
)
GOAL = (
    "inventory sync of 100,000 SKU x warehouse rows after 1 % of quantities changed:"
    " commercetools writes = changed entries, 0 for unchanged; D365 reads <= ceil(rows / page"
    " size) + 2 per legal entity; naive writes every row"
)

# (sku, supply channel key)
EntryKey = tuple[str, str]


def run(scale: float) -> dict[str, Any]:
    rows = scaled(FULL_ROWS, scale, minimum=MIN_ROWS)
    sample_size = scaled(FULL_NAIVE_SAMPLE, scale, minimum=MIN_NAIVE_SAMPLE)
    args = [
        "--seed-products",
        str(PRODUCTS),
        "--seed-onhand-rows",
        str(rows),
        "--page-size",
        str(PAGE_SIZE),
    ]
    progress(f"{BENCH_ID}: starting d365sim with {rows:,} on-hand rows and the commercetools mock")
    with (
        SimProcess(args) as sim,
        CtMockProcess() as mock,
        tempfile.TemporaryDirectory(prefix="d365ct-bench-b2w-") as workdir,
    ):
        settings = _settings(sim, mock, workdir)
        from d365ct.store import make_engine, migrate

        migrate(settings.store.url)
        engine = make_engine(settings.store.url)
        try:
            initial = asyncio.run(_initial_load(sim, mock, settings, engine))
            changed = _change_rows(sim, settings, max(1, round(rows * CHANGED_SHARE)))
            ours = asyncio.run(_ours(sim, mock, settings, engine, changed))
            naive = asyncio.run(_naive(settings, sample_size))
        finally:
            engine.dispose()
    ours["initial_load"] = initial
    ours["d365_changes"] = changed.figures()
    ratio = round(float(naive["writes"]) / max(int(ours["writes"]), 1), 1)
    met = (
        ours["writes"] == changed.entries
        and ours["writes_to_unchanged"] == 0
        and ours["d365_calls"] <= ours["d365_calls_allowed"]
        and ours["calls_match_summary"] is True
        and ours["changes_arrived"] is True
        and ours["failed"] == 0
        and initial["failed"] == 0
        and initial["rows"] == rows
    )
    return result_line(
        BENCH_ID, ours=ours, naive=naive, ratio=ratio, goal=GOAL, met=met, scale=scale
    )


# ---------------------------------------------------------------------------------------------
# Settings: every warehouse of the seed mapped to its own supply channel


def _settings(sim: SimProcess, mock: CtMockProcess, workdir: str) -> Settings:
    base = bench_settings(sim.url, mock.url, PROJECT_KEY, workdir)
    with sim.client() as client:
        response = client.get(
            "/data/Warehouses",
            params={"cross-company": "true", "$select": "dataAreaId,WarehouseId"},
        )
        response.raise_for_status()
        found = sorted(
            {(str(w["dataAreaId"]), str(w["WarehouseId"])) for w in response.json()["value"]}
        )
    warehouses = [
        {"legal_entity": le, "warehouse": wh, "supply_channel": f"{le}-{wh}".lower()}
        for le, wh in found
    ]
    return base.model_validate({**base.model_dump(mode="json"), "warehouses": warehouses})


# ---------------------------------------------------------------------------------------------
# Setup: channels, the initial load, the 1 % change in D365


async def _sync(
    settings: Settings, engine: sa.Engine, log: CallLog
) -> tuple[InventorySyncSummary, float, float]:
    """One `sync_inventory` run through a client whose calls `log` counts."""
    from d365ct.flows.inventory import sync_inventory
    from d365ct.runtime import adapters

    cpu = time.process_time()
    started = time.perf_counter()
    async with adapters(settings, event_hooks=log.hooks()) as io:
        summary = await sync_inventory(settings, engine, io=io)
    return summary, time.perf_counter() - started, time.process_time() - cpu


async def _initial_load(
    sim: SimProcess, mock: CtMockProcess, settings: Settings, engine: sa.Engine
) -> dict[str, Any]:
    from d365ct.flows.setup import run_setup

    report = await run_setup(settings)
    failed = [item for item in report.items if item.outcome == "failed"]
    if failed:
        raise RuntimeError(f"d365ct setup failed: {failed}")
    progress(f"{BENCH_ID}: initial load of {len(settings.warehouses)} supply channels")
    log = CallLog(mock.url, PROJECT_KEY)
    sim.reset_counters()
    summary, seconds, cpu = await _sync(settings, engine, log)
    figures = {
        "rows": summary.rows,
        "entries": summary.entries,
        "created": summary.created,
        "failed": summary.failed,
        "calls": log.ct_total,
        "calls_by_method": dict(log.ct),
        "d365_calls": d365_calls(sim.counters()),
        "seconds": round(seconds, 3),
        "entries_per_s": per_second(summary.created, seconds),
        "cpu_seconds": round(cpu, 3),
    }
    progress(
        f"{BENCH_ID}: initial load created {summary.created:,} entries from {summary.rows:,} rows"
        f" in {log.ct_total:,} calls, {seconds:.1f} s"
    )
    return figures


@dataclass
class Changes:
    """The D365 side of the 1 % change (setup, not measured): rows, the entries they feed."""

    rows: int
    keys: set[EntryKey]
    expected: dict[EntryKey, int]  # what commercetools must hold for the changed entries
    patch_calls: int
    seconds: float

    @property
    def entries(self) -> int:
        return len(self.keys)

    def figures(self) -> dict[str, Any]:
        return {
            "changed_rows": self.rows,
            "changed_entries": self.entries,
            "patch_calls": self.patch_calls,
            "seconds": round(self.seconds, 3),
        }


def _change_rows(sim: SimProcess, settings: Settings, count: int) -> Changes:
    from d365ct.d365.odata import quote_literal
    from d365ct.mapping.inventory import WarehouseMap, parse_quantity, stock_quantity
    from d365ct.mapping.skus import sku_of

    started = time.perf_counter()
    channels = WarehouseMap(settings.warehouses)
    rows: list[dict[str, Any]] = []
    with sim.client() as client:
        url: str | None = f"/data/{ENTITY}"
        params: dict[str, str] | None = {
            "cross-company": "true",
            "$select": ",".join((*ON_HAND_KEYS, "AvailableOnHandQuantity")),
        }
        while url:
            response = client.get(url, params=params)
            response.raise_for_status()
            body = response.json()
            rows.extend(body["value"])
            url, params = body.get("@odata.nextLink"), None
        picked = random.Random(f"{BENCH_ID}/{len(rows)}").sample(range(len(rows)), count)
        sim.reset_counters()
        raised: dict[int, Decimal] = {}
        for index in sorted(picked):
            row = rows[index]
            quantity = max(parse_quantity(row["AvailableOnHandQuantity"]), Decimal(0)) + RAISE_BY
            segment = ",".join(f"{k}={quote_literal(str(row[k]))}" for k in ON_HAND_KEYS)
            response = client.patch(
                f"/data/{ENTITY}({segment})",
                params={"cross-company": "true"},
                json={"AvailableOnHandQuantity": float(quantity)},
            )
            if response.status_code != 204:
                raise RuntimeError(f"PATCH of on-hand row answered {response.status_code}")
            raised[index] = quantity
        patches = sum(n for key, n in sim.counters().items() if key.startswith("PATCH "))
    # The entries' totals after the change, summed from D365's rows (independent of d365ct's).
    totals: dict[EntryKey, Decimal] = {}
    keys: set[EntryKey] = set()
    for index, row in enumerate(rows):
        channel = channels.channel(str(row["dataAreaId"]), str(row["InventoryWarehouseId"]))
        if channel is None:
            continue
        key = (sku_of(row), channel)
        on_hand = raised.get(index, parse_quantity(row["AvailableOnHandQuantity"]))
        totals[key] = totals.get(key, Decimal(0)) + on_hand
        if index in raised:
            keys.add(key)
    expected = {key: stock_quantity(totals[key]) for key in keys}
    progress(
        f"{BENCH_ID}: raised the quantity of {count:,} on-hand rows in D365 ({patches:,} PATCHes),"
        f" feeding {len(keys):,} entries"
    )
    return Changes(count, keys, expected, patches, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# Ours: the delta sync


async def _ours(
    sim: SimProcess,
    mock: CtMockProcess,
    settings: Settings,
    engine: sa.Engine,
    changed: Changes,
) -> dict[str, Any]:
    from d365ct.flows.inventory import InventoryState
    from d365ct.mapping.inventory import state_key

    known = InventoryState(engine).get_many(sorted(state_key(*k) for k in changed.keys))
    changed_ids = {str(state.ct_id) for state in known.values()}
    log = CallLog(mock.url, PROJECT_KEY)
    sim.reset_counters()
    progress(f"{BENCH_ID}: ours, the delta sync")
    summary, seconds, cpu = await _sync(settings, engine, log)
    counters = sim.counters()
    writes = log.ct_writes
    writes_to_unchanged = sum(1 for target in log.post_targets if target not in changed_ids)
    rows_by_entity = await _rows_by_legal_entity(settings)
    allowed = sum(max(1, math.ceil(n / PAGE_SIZE)) + 2 for n in rows_by_entity.values())
    arrived = await _quantities_arrived(settings, changed)
    ours: dict[str, Any] = {
        "method": "sync_inventory (not --full): paged OData read, quantities summed per sku x"
        " channel and compared with the last written one (sync_state); one POST changeQuantity"
        " at the stored version per changed entry",
        "rows": summary.rows,
        "entries": summary.entries,
        "changed_entries": changed.entries,
        "updated": summary.updated,
        "created": summary.created,
        "zeroed": summary.zeroed,
        "unchanged": summary.unchanged,
        "failed": summary.failed,
        "calls": log.ct_total,
        "writes": writes,
        "reads": log.ct.get("GET", 0),
        "calls_by_method": dict(log.ct),
        "calls_summary": summary.ct_calls,
        "calls_match_summary": log.ct_total == summary.ct_calls,
        "writes_per_changed_entry": round(writes / max(changed.entries, 1), 4),
        "writes_to_unchanged": writes_to_unchanged,
        "ct_error_responses": dict(log.ct_errors),
        "ct_ms_per_call": log.ms_per_call(),
        "ct_token_calls": log.ct_token,
        "d365_calls": d365_calls(counters),
        "d365_calls_hook": log.d365,
        "d365_calls_summary": summary.d365_calls,
        "d365_calls_allowed": allowed,
        "d365_token_calls": token_calls(counters),
        "rows_by_legal_entity": rows_by_entity,
        "page_size": PAGE_SIZE,
        "seconds": round(seconds, 3),
        "rows_per_s": per_second(summary.rows, seconds),
        "cpu_seconds": round(cpu, 3),
        "changes_arrived": arrived,
    }
    progress(
        f"{BENCH_ID}: ours synced {summary.rows:,} rows in {log.ct_total:,} commercetools calls"
        f" ({writes:,} writes for {changed.entries:,} changed entries) and"
        f" {ours['d365_calls']} D365 calls (allowed {allowed}) in {seconds:.2f} s"
    )
    return ours


async def _rows_by_legal_entity(settings: Settings) -> dict[str, int]:
    from d365ct.runtime import adapters

    async with adapters(settings) as io:
        return {
            le.id: await io.odata.count(ENTITY, legal_entity=le.id)
            for le in settings.legal_entities
        }


async def _quantities_arrived(settings: Settings, changed: Changes) -> bool:
    """Each changed entry holds its new quantity in commercetools (read after the measurement)."""
    from d365ct.flows.inventory import channel_predicate, resolve_channels
    from d365ct.runtime import adapters

    by_channel: dict[str, list[str]] = {}
    for sku, channel in changed.keys:
        by_channel.setdefault(channel, []).append(sku)
    async with adapters(settings) as io:
        ct = io.commercetools("inventory")
        ids, _ = await resolve_channels(ct, by_channel)
        for channel, skus in by_channel.items():
            where = channel_predicate([ids[channel]])
            found = await ct.find_by_field("inventory", "sku", skus, where=where)
            for sku in skus:
                entries = found.get(sku) or []
                if len(entries) != 1:
                    return False
                if entries[0]["quantityOnStock"] != changed.expected[(sku, channel)]:
                    return False
    return True


# ---------------------------------------------------------------------------------------------
# Naive: write every row, changed or not


async def _naive(settings: Settings, sample_size: int) -> dict[str, Any]:
    from d365ct.flows.inventory import lookup_entries, resolve_channels
    from d365ct.mapping.inventory import (
        OnHandError,
        StockTotal,
        StockTotals,
        WarehouseMap,
        map_on_hand,
        on_hand_fields,
    )
    from d365ct.runtime import adapters

    ct_settings = settings.require_commercetools()
    log = CallLog(ct_settings.api_url, ct_settings.project_key)
    warehouses = WarehouseMap(settings.warehouses)
    cpu = time.process_time()
    started = time.perf_counter()
    async with adapters(settings, event_hooks=log.hooks()) as io:
        # Read and map every on-hand row, as ours does (measured in full, not sampled).
        totals = StockTotals(keep_rows=False)
        for le in settings.legal_entities:
            async for row in io.odata.rows(
                ENTITY, legal_entity=le.id, select=list(on_hand_fields())
            ):
                mapped = map_on_hand(row, warehouses, legal_entity=le.id)
                if not isinstance(mapped, OnHandError):
                    totals.add(mapped)
        read_seconds = time.perf_counter() - started
        read_cpu = time.process_time() - cpu
        d365 = log.d365
        everything = sorted(totals, key=lambda t: t.key)
        sample: Sequence[StockTotal] = (
            everything
            if sample_size >= len(everything)
            else [
                everything[i]
                for i in sorted(
                    random.Random(f"{BENCH_ID}/naive").sample(range(len(everything)), sample_size)
                )
            ]
        )
        progress(
            f"{BENCH_ID}: naive, one POST per entry regardless of change, on {len(sample):,}"
            f" of {len(everything):,} entries"
        )
        ct = io.commercetools("inventory")
        channel_ids, _ = await resolve_channels(ct, [w.supply_channel for w in settings.warehouses])
        before = dict(log.ct)
        write_started = time.perf_counter()
        write_cpu = time.process_time()
        lookup_seconds = update_seconds = 0.0
        written = 0
        batch = 500
        for first in range(0, len(sample), batch):
            chunk = list(sample[first : first + batch])
            tick = time.perf_counter()
            found = await lookup_entries(ct, chunk, channel_ids)  # the versions an update needs
            tock = time.perf_counter()
            bodies = await asyncio.gather(
                *(
                    ct.update(
                        "inventory",
                        str(found[t.key]["id"]),
                        int(found[t.key]["version"]),
                        [{"action": "changeQuantity", "quantity": t.quantity}],
                    )
                    for t in chunk
                )
            )
            lookup_seconds += tock - tick
            update_seconds += time.perf_counter() - tock
            written += len(bodies)
        write_seconds = time.perf_counter() - write_started
        write_cpu = time.process_time() - write_cpu
    measured_writes = sum(n for m, n in log.ct.items() if m != "GET") - sum(
        n for m, n in before.items() if m != "GET"
    )
    measured_lookups = log.ct.get("GET", 0) - before.get("GET", 0)
    factor = len(everything) / max(len(sample), 1)
    writes = round(measured_writes * factor)
    reads = math.ceil(len(everything) / batch)
    seconds = (
        read_seconds + lookup_seconds * reads / max(measured_lookups, 1) + update_seconds * factor
    )
    naive: dict[str, Any] = {
        "method": "read and map every row, bulk lookup of the entries for their versions (one GET"
        " per 500), one POST changeQuantity per entry whether it changed or not",
        "entries": len(everything),
        "extrapolated_from": len(sample),
        "calls": writes + reads,
        "writes": writes,
        "reads": reads,
        "seconds": round(seconds, 3),
        "phase_seconds": {
            "d365_read_and_map": round(read_seconds, 3),
            "commercetools_lookups": round(lookup_seconds * reads / max(measured_lookups, 1), 3),
            "commercetools_updates": round(update_seconds * factor, 3),
        },
        "cpu_seconds": round(read_cpu + write_cpu * factor, 3),
        "d365_calls": d365,
        "measured_writes": measured_writes,
        "measured_writes_client": written,
        "measured_lookups": measured_lookups,
        "measured_write_seconds": round(write_seconds, 3),
        "ct_ms_per_call": log.ms_per_call(),
        "ct_error_responses": dict(log.ct_errors),
    }
    progress(
        f"{BENCH_ID}: naive wrote {measured_writes:,} entries in {write_seconds:.2f} s;"
        f" extrapolated to {writes:,} writes, {naive['seconds']:,} s"
    )
    return naive
