"""B2R: the read side of inventory sync — 100,000 SKU × warehouse on-hand rows from D365.

Ours reads every legal entity's on-hand rows with d365ct's ODataReader, page by page.
Naive sends one filtered GET per SKU (per legal entity, as a sync runs), each returning that
SKU's warehouse rows; it runs on an evenly spread sample of the SKUs and is extrapolated to all.
Calls are counted twice: by d365sim (/_sim/counters) and by an httpx request hook.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from decimal import Decimal
from typing import Any

from bench.common import (
    HttpCallCounter,
    SimProcess,
    d365_calls,
    d365_http,
    per_second,
    progress,
    result_line,
    scaled,
    sim_d365_settings,
    token_calls,
)

BENCH_ID = "B2R"
FULL_ROWS = 100_000
PAGE_SIZE = 10_000  # d365sim's default, passed explicitly so the formula below is exact
FULL_SAMPLE = 500  # SKUs the naive way reads at scale 1; extrapolated to every SKU
MIN_SAMPLE = 20
PRODUCTS = 1000
ENTITY = "WarehousesOnHandV2"
DIMENSIONS = ("ProductColorId", "ProductSizeId", "ProductStyleId", "ProductConfigurationId")
SELECT = ("ItemNumber", *DIMENSIONS, "InventoryWarehouseId", "AvailableOnHandQuantity")
GOAL_RATIO = 1000.0
GOAL = (
    "inventory read of 100,000 SKU x warehouse rows: D365 reads <= ceil(rows / page size) + 2"
    " calls per legal entity, against one call per SKU naively (>= 1,000x fewer)"
)

# (legal entity, ItemNumber, colour, size, style, configuration)
Sku = tuple[str, str, str, str, str, str]


def run(scale: float) -> dict[str, Any]:
    rows = scaled(FULL_ROWS, scale, minimum=100)
    args = [
        "--seed-products",
        str(PRODUCTS),
        "--seed-onhand-rows",
        str(rows),
        "--page-size",
        str(PAGE_SIZE),
    ]
    progress(f"{BENCH_ID}: starting d365sim with {rows:,} on-hand rows")
    with SimProcess(args) as sim:
        ours, skus = asyncio.run(_ours(sim))
        sample = _sample(sorted(skus), scaled(FULL_SAMPLE, scale, minimum=MIN_SAMPLE))
        naive = asyncio.run(_naive(sim, skus, sample))
    ours_calls = int(ours["calls"])
    ratio = round(float(naive["calls"]) / max(ours_calls, 1), 1)
    met = (
        ours_calls <= int(ours["calls_allowed"])
        and ratio >= GOAL_RATIO
        and ours["rows"] == rows
        and bool(naive["rows_match"])
    )
    return result_line(
        BENCH_ID, ours=ours, naive=naive, ratio=ratio, goal=GOAL, met=met, scale=scale
    )


# ---------------------------------------------------------------------------------------------
# Ours: paged OData per legal entity


async def _ours(sim: SimProcess) -> tuple[dict[str, Any], Counter[Sku]]:
    from d365ct.d365.odata import ODataReader

    settings = sim_d365_settings(sim.url)
    hook = HttpCallCounter()
    skus: Counter[Sku] = Counter()  # rows per SKU, for the naive sample and its check
    rows_by_entity: dict[str, int] = {}
    available = Decimal(0)
    sim.reset_counters()
    started = time.perf_counter()
    async with d365_http(settings, counter=hook) as http:
        reader = ODataReader(http)
        companies = [
            str(row["LegalEntityId"]).lower()
            async for row in reader.rows("LegalEntities", select=["LegalEntityId"])
        ]
        for company in companies:
            count = 0
            async for row in reader.rows(ENTITY, legal_entity=company, select=list(SELECT)):
                count += 1
                skus[_sku(company, row)] += 1
                available += Decimal(row["AvailableOnHandQuantity"])
            rows_by_entity[company] = count
    seconds = time.perf_counter() - started
    counters = sim.counters()
    total = sum(rows_by_entity.values())
    pages = {le: max(1, math.ceil(n / PAGE_SIZE)) for le, n in rows_by_entity.items()}
    ours: dict[str, Any] = {
        "rows": total,
        "rows_by_legal_entity": rows_by_entity,
        "legal_entities": len(companies),
        "skus": len(skus),
        "page_size": PAGE_SIZE,
        "calls": d365_calls(counters),
        "calls_hook": hook.d365,
        "calls_reader": reader.calls,
        "calls_allowed": sum(p + 2 for p in pages.values()),
        "pages": sum(pages.values()),
        "token_calls": token_calls(counters),
        "token_calls_hook": hook.token,
        "calls_by_route": counters,
        "seconds": round(seconds, 3),
        "rows_per_s": per_second(total, seconds),
        "available_sum": str(available),
    }
    progress(
        f"{BENCH_ID}: ours read {total:,} rows in {ours['calls']} calls"
        f" (allowed {ours['calls_allowed']}) in {seconds:.2f} s"
    )
    return ours, skus


def _sku(company: str, row: dict[str, Any]) -> Sku:
    return (
        company,
        str(row["ItemNumber"]),
        str(row["ProductColorId"]),
        str(row["ProductSizeId"]),
        str(row["ProductStyleId"]),
        str(row["ProductConfigurationId"]),
    )


# ---------------------------------------------------------------------------------------------
# Naive: one filtered GET per SKU


def _sample(skus: list[Sku], size: int) -> list[Sku]:
    """`size` SKUs spread evenly over the sorted list (both legal entities, every product)."""
    if size >= len(skus):
        return skus
    return [skus[i * len(skus) // size] for i in range(size)]


def _sku_filter(sku: Sku) -> str:
    from d365ct.d365.odata import quote_literal

    names = ("ItemNumber", *DIMENSIONS)
    return " and ".join(
        f"{name} eq {quote_literal(value)}" for name, value in zip(names, sku[1:], strict=True)
    )


async def _naive(sim: SimProcess, skus: Counter[Sku], sample: list[Sku]) -> dict[str, Any]:
    from d365ct.d365.odata import ODataReader

    progress(f"{BENCH_ID}: naive, one GET per SKU, on {len(sample):,} of {len(skus):,} SKUs")
    settings = sim_d365_settings(sim.url)
    hook = HttpCallCounter()
    returned = expected = 0
    mismatched = 0
    sim.reset_counters()
    started = time.perf_counter()
    async with d365_http(settings, counter=hook) as http:
        reader = ODataReader(http)
        for sku in sample:
            found = 0
            async for _row in reader.rows(
                ENTITY, legal_entity=sku[0], filter=_sku_filter(sku), select=list(SELECT)
            ):
                found += 1
            returned += found
            expected += skus[sku]
            mismatched += found != skus[sku]
    seconds = time.perf_counter() - started
    counters = sim.counters()
    measured_calls = d365_calls(counters)
    factor = len(skus) / len(sample)
    naive: dict[str, Any] = {
        "method": "sequentially per legal entity and SKU: GET WarehousesOnHandV2 with"
        " $filter=dataAreaId, ItemNumber and the four product dimensions",
        "skus": len(skus),
        "extrapolated_from": len(sample),
        "calls": round(measured_calls * factor),
        "seconds": round(seconds * factor, 3),
        "rows_per_s": per_second(returned, seconds),
        "measured_calls": measured_calls,
        "measured_calls_hook": hook.d365,
        "measured_seconds": round(seconds, 3),
        "measured_rows": returned,
        "calls_per_sku": round(measured_calls / len(sample), 3),
        "ms_per_call": round(1000 * seconds / max(measured_calls, 1), 2),
        "rows_match": returned == expected and mismatched == 0,
        "token_calls": token_calls(counters),
    }
    progress(
        f"{BENCH_ID}: naive read {returned:,} rows in {measured_calls:,} calls in"
        f" {seconds:.2f} s; extrapolated to {naive['calls']:,} calls, {naive['seconds']:,} s"
    )
    return naive
