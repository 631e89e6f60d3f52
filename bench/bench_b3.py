"""B3: posting 10,000 commercetools orders to D365 with d365sim's job latency model.

d365sim runs every DMF job for a fixed cost plus a cost per row (JOB_SECONDS, ROW_MS: D365's
"tens of seconds per job" shrunk ten-fold so the benchmark fits a coffee break) on
BATCH_THREADS batch threads. The orders really exist in the commercetools mock (created through
``/orders/import``, half routed to usmf, half to demf, guest orders, shipping posted as a header
charge) and OrderCreated messages carrying them are accepted into the real inbox (SQLite store,
DBOS on SQLite).

Ours is d365ct's real path: ``process_inbox`` → ``post_order_messages`` → micro-batches of up to
``orders.max_orders`` per legal entity → one DMF package each → status written back to each order,
drained by CONSUMERS consumer loops as that many ``d365ct orders process`` workers would (the
latency phase by one collector).

* **throughput**: the whole backlog of 10,000 messages in the inbox, drained; orders/s =
  orders posted / seconds from the first claim to the last write-back.
* **latency**: a storefront at a steady rate (STEADY_LOAD × the measured throughput) while the
  consumer runs with the batch window ``orders.max_wait_seconds``; latency = the inbox's
  ``processed_at − received_at`` of each message (settled only after the write-back, so it
  covers message → posted in D365 → written back). Goal: p95 ≤ window + 2 job durations, the
  job duration being the longest D365 execution (started → finished) of that phase.

Naive is one package per order: the same path with ``orders.max_orders = 1``, on a sample of
NAIVE_SAMPLE orders (one package each would take hours for 10,000); its throughput is measured
on the sample and the time for all orders extrapolated from it, labelled as such.

At the end the sales order headers in d365sim are counted over OData: each phase must have
posted every one of its orders exactly once, or the benchmark fails.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
import sqlalchemy as sa

from bench.bench_b1 import CtMockProcess, bench_settings
from bench.common import SimProcess, per_second, progress, result_line, scaled

if TYPE_CHECKING:
    from d365ct.commercetools import CommercetoolsClient
    from d365ct.config import Settings
    from d365ct.flows.orders import CommerceFlows
    from d365ct.intake import Inbox

BENCH_ID = "B3"
FULL_ORDERS = 10_000
FULL_STEADY = 2_000  # orders of the latency phase at scale 1
NAIVE_SAMPLE = 12  # orders posted one package each (both legal entities, in parallel)
MIN_ORDERS = 40
MIN_STEADY = 20
MIN_NAIVE_SAMPLE = 4
MAX_ORDERS = 500  # orders.max_orders: the micro-batch size per legal entity
WINDOW_SECONDS = 5.0  # orders.max_wait_seconds: the batch window
STEADY_LOAD = 0.5  # the latency phase's arrival rate as a share of the measured throughput
MAX_STEADY_RATE = 200.0  # orders/s: a busy storefront; never more, whatever ours could do
JOB_SECONDS = 4.0  # d365sim: fixed cost of every DMF job
ROW_MS = 2.0  # d365sim: plus this much per row
BATCH_THREADS = 2  # d365sim: DMF jobs at once (D365 batch capacity)
POLL_SECONDS = 0.5  # d365.poll_interval_seconds (30 s in production; C6)
# Consumers (process_inbox loops) draining the backlog, as two `d365ct orders process` workers
# would: one writes a round back while the other's import runs (imports stay serialised per
# legal entity, C4). The naive way drains with the same two. The latency phase has one
# collector: two would split each window's orders into twice the packages.
CONSUMERS = 2
SEED_PRODUCTS = 40
PROJECT_KEY = "bench-b3"
PREFIX = "B3"  # order numbers: B3-T… (throughput), B3-S… (steady), B3-N… (naive)
ENTITIES = (("usmf", "us-store", "US", "USD"), ("demf", "de-store", "DE", "EUR"))
GOAL_RATIO = 100.0
GOAL = (
    "posting 10,000 orders with d365sim's job latency model: >= 100x the throughput of one "
    "package per order; p95 latency message -> posted <= batch window + 2 job durations"
)


def run(scale: float) -> dict[str, Any]:
    orders = scaled(FULL_ORDERS, scale, minimum=MIN_ORDERS)
    steady = scaled(FULL_STEADY, scale, minimum=MIN_STEADY)
    # one package per order costs a whole job each: a sample, smaller still at small scales
    naive_sample = min(NAIVE_SAMPLE, scaled(NAIVE_SAMPLE, scale, minimum=MIN_NAIVE_SAMPLE))
    model = {
        "job_seconds": JOB_SECONDS,
        "row_ms": ROW_MS,
        "batch_threads": BATCH_THREADS,
        "poll_interval_seconds": POLL_SECONDS,
        "max_orders": MAX_ORDERS,
        "max_wait_seconds": WINDOW_SECONDS,
        "consumers_draining": CONSUMERS,
        "consumers_latency_phase": 1,
    }
    progress(f"{BENCH_ID}: d365sim latency model and batching: {json.dumps(model)}")
    args = [
        "--seed-products",
        str(SEED_PRODUCTS),
        "--job-seconds",
        str(JOB_SECONDS),
        "--row-ms",
        str(ROW_MS),
        "--batch-threads",
        str(BATCH_THREADS),
    ]
    with (
        SimProcess(args) as sim,
        CtMockProcess() as mock,
        tempfile.TemporaryDirectory(prefix="d365ct-bench-b3-") as workdir,
    ):
        settings = _settings(sim.url, mock.url, workdir)
        from d365ct.engine import launch_engine, shutdown_engine
        from d365ct.flows.orders import commerce_flows
        from d365ct.store import make_engine, migrate

        migrate(settings.store.url)
        engine = make_engine(settings.store.url)
        flows = commerce_flows(settings, engine)
        launch_engine(settings.store.url, polling_interval_sec=0.1)
        try:
            figures = asyncio.run(_main(sim, flows, engine, orders, steady, naive_sample))
        finally:
            shutdown_engine(workflow_completion_timeout_sec=5)
            engine.dispose()
    ours, naive = figures
    ours["model"] = model
    ratio = round(ours["orders_per_s"] / max(naive["orders_per_s"], 1e-9), 1)  # 3 decimals each
    bound = ours["latency"]["bound_seconds"]
    met = ratio >= GOAL_RATIO and ours["latency"]["p95_seconds"] <= bound
    return result_line(
        BENCH_ID, ours=ours, naive=naive, ratio=ratio, goal=GOAL, met=met, scale=scale
    )


def _settings(sim_url: str, ct_url: str, workdir: str) -> Settings:
    base = bench_settings(sim_url, ct_url, PROJECT_KEY, workdir)
    data = base.model_dump(mode="json")
    data["d365"]["poll_interval_seconds"] = POLL_SECONDS
    data["legal_entities"] = [
        {
            "id": entity,
            "currency": currency,
            "stores": [store],
            "countries": [country],
            # guest orders: no customer import mixes into the figures
            "guest_customer_account": f"{country}-000002",
        }
        for entity, store, country, currency in ENTITIES
    ]
    data["orders"] = {
        "max_orders": MAX_ORDERS,
        "max_wait_seconds": WINDOW_SECONDS,
        "shipping_as": "charge",
    }
    from d365ct.config import Settings

    return Settings.model_validate(data)


# ---------------------------------------------------------------------------------------------
# The storefront: orders in the commercetools mock, and their OrderCreated messages


def _items(sim: SimProcess) -> dict[str, list[str]]:
    """Plain released products (no variants) of each legal entity, to order."""
    subtype = "Microsoft.Dynamics.DataEntities.EcoResProductSubtype'Product'"
    out: dict[str, list[str]] = {}
    with sim.client() as client:
        for entity, *_ in ENTITIES:
            rows = client.get(
                "/data/ReleasedProductsV2",
                params={
                    "cross-company": "true",
                    "$filter": f"dataAreaId eq '{entity}' and ProductSubType eq {subtype}",
                    "$select": "ItemNumber",
                    "$top": "10",
                },
            ).json()["value"]
            out[entity] = [str(r["ItemNumber"]) for r in rows]
            if not out[entity]:
                raise RuntimeError(f"d365sim has no plain released products in {entity}")
    return out


async def _publish_products(ct: CommercetoolsClient, skus: Sequence[str]) -> None:
    """The storefront sells the D365 items: a product per item, its SKU the item number."""
    from d365ct.mapping.catalog import product_type_draft

    product_type = await ct.create("product-types", product_type_draft("b3-product"))
    for sku in skus:
        await ct.create(
            "products",
            {
                "key": sku.lower(),
                "productType": {"typeId": "product-type", "id": product_type["id"]},
                "name": {"en": f"Product {sku}"},
                "slug": {"en": f"p-{sku.lower()}"},
                "masterVariant": {"sku": sku},
                "publish": True,
            },
        )


async def _shipping_method(ct: CommercetoolsClient) -> None:
    """A shipping method per country: imported orders keep shippingInfo only with one."""
    await ct.create(
        "tax-categories",
        {
            "key": "standard",
            "name": "Standard",
            "rates": [
                {"name": country, "amount": 0, "includedInPrice": True, "country": country}
                for _, _, country, _ in ENTITIES
            ],
        },
    )
    for _, _, country, _ in ENTITIES:
        await ct.create(
            "zones", {"key": country.lower(), "name": country, "locations": [{"country": country}]}
        )
    await ct.create(
        "shipping-methods",
        {
            "key": "standard",
            "name": "Standard",
            "isDefault": False,
            "taxCategory": {"typeId": "tax-category", "key": "standard"},
            "zoneRates": [
                {
                    "zone": {"typeId": "zone", "key": country.lower()},
                    "shippingRates": [{"price": {"currencyCode": currency, "centAmount": 500}}],
                }
                for _, _, country, currency in ENTITIES
            ],
        },
    )


def _draft(number: str, n: int, items: dict[str, list[str]]) -> dict[str, Any]:
    entity, store, country, currency = ENTITIES[n % len(ENTITIES)]
    catalog = items[entity]
    lines = [(catalog[(n + k) % len(catalog)], 1 + (n + k) % 3, 1000 + 7 * k) for k in (0, 1)]
    lines = lines[: 1 + n % 2]  # one or two lines
    shipping = 500
    total = sum(quantity * cents for _, quantity, cents in lines) + shipping
    price = {"currencyCode": currency, "centAmount": shipping}
    return {
        "orderNumber": number,
        "store": {"typeId": "store", "key": store},
        "customerEmail": f"shopper{n}@example.com",
        "totalPrice": {"currencyCode": currency, "centAmount": total},
        "shippingAddress": {"firstName": "Grace", "lastName": "Hopper", "country": country},
        "lineItems": [
            {
                "name": {"en": f"Product {sku}"},
                "variant": {"sku": sku},
                "price": {"value": {"currencyCode": currency, "centAmount": cents}},
                "quantity": quantity,
            }
            for sku, quantity, cents in lines
        ],
        "shippingInfo": {
            "shippingMethodName": "Standard",
            "price": price,
            "shippingRate": {"price": price},
            "shippingMethod": {"typeId": "shipping-method", "key": "standard"},
        },
    }


async def _create_orders(
    ct: CommercetoolsClient, label: str, count: int, items: dict[str, list[str]]
) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(16)

    async def one(n: int) -> dict[str, Any]:
        async with gate:
            body = await ct.request(
                "POST", "orders/import", json=_draft(f"{PREFIX}-{label}{n:06d}", n, items)
            )
            return dict(body)

    started = time.perf_counter()
    created = list(await asyncio.gather(*(one(n) for n in range(count))))
    progress(
        f"{BENCH_ID}: created {count:,} {label} orders in the commercetools mock in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return created


def _message(order: dict[str, Any]) -> dict[str, Any]:
    from d365ct.storefront import subscription_message

    identifiers = {"orderNumber": order["orderNumber"]}
    return subscription_message(
        PROJECT_KEY, "order", order, "OrderCreated", identifiers=identifiers, order=order
    )


def _accept(inbox: Inbox, orders: Sequence[dict[str, Any]]) -> list[str]:
    from d365ct.intake import parse_message

    messages = [parse_message(_message(order)) for order in orders]
    results = inbox.accept_many(messages, source="bench")
    if any(r.status != "accepted" for r in results):
        raise RuntimeError(f"the inbox did not accept every message: {results[:3]}")
    return [m.message_id for m in messages]


# ---------------------------------------------------------------------------------------------
# Measuring


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return round(ordered[index], 3)


def _latencies(engine: sa.Engine, message_ids: Sequence[str]) -> list[float]:
    from d365ct.store.tables import intake_messages as m

    out: list[float] = []
    with engine.connect() as conn:
        for start in range(0, len(message_ids), 500):
            chunk = list(message_ids[start : start + 500])
            rows = conn.execute(
                sa.select(m.c.received_at, m.c.processed_at, m.c.status).where(
                    m.c.message_id.in_(chunk)
                )
            ).all()
            for row in rows:
                if row.status != "processed" or row.processed_at is None:
                    raise RuntimeError(f"a message was not processed: {row.status}")
                out.append((row.processed_at - row.received_at).total_seconds())
    if len(out) != len(message_ids):
        raise RuntimeError(f"{len(message_ids) - len(out)} messages are missing from the inbox")
    return out


def _sim_jobs(sim: SimProcess) -> dict[str, dict[str, Any]]:
    jobs = httpx.get(f"{sim.url}/_sim/jobs", timeout=60).json()
    return {str(job["executionId"]): job for job in jobs}


def _job_figures(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    new = [job for key, job in after.items() if key not in before and job["kind"] == "Import"]
    durations = [
        (
            datetime.fromisoformat(job["finishedAt"]) - datetime.fromisoformat(job["startedAt"])
        ).total_seconds()
        for job in new
        if job.get("startedAt") and job.get("finishedAt")
    ]
    return {
        "d365_imports": len(new),
        "rows_imported": sum(int(job.get("rows") or 0) for job in new),
        "job_seconds_max": round(max(durations, default=0.0), 3),
        "job_seconds_mean": round(sum(durations) / len(durations), 3) if durations else 0.0,
        "statuses": sorted({str(job["status"]) for job in new}),
    }


def _d365_orders(sim: SimProcess, prefix: str) -> int:
    """Sales order headers d365sim holds whose number starts with `prefix` (OData $count)."""
    with sim.client() as client:
        response = client.get(
            "/data/SalesOrderHeadersV2/$count",
            params={"cross-company": "true", "$filter": f"SalesOrderNumber eq '{prefix}*'"},
        )
        response.raise_for_status()
        return int(response.text)


def _check_posted(sim: SimProcess, label: str, expected: int, summary: Any) -> None:
    held = _d365_orders(sim, f"{PREFIX}-{label}")
    posted = summary.counts()["orders_posted"]
    if held != expected or posted != expected:
        failed = [o.error for r in summary.orders for o in r.details if not o.ok]
        raise RuntimeError(
            f"{BENCH_ID}: {label}: {expected} orders sent, {posted} reported posted, D365 holds "
            f"{held} of them: the benchmark does not count. First failures: {failed[:3]}"
        )


async def _drain(flows: CommerceFlows, inbox: Inbox) -> Any:
    """CONSUMERS workers drain the inbox, as that many `d365ct orders process` would."""
    from d365ct.flows.orders import ProcessSummary, process_inbox

    total = ProcessSummary()

    async def consumer(worker: str) -> None:
        while True:
            summary = await process_inbox(flows, inbox, worker_id=worker)
            total.orders += summary.orders
            total.rounds += summary.rounds
            if summary.rounds == 0:
                return

    while True:
        await asyncio.gather(*(consumer(f"bench-{n}") for n in range(CONSUMERS)))
        if inbox.counts()["pending"] == 0:
            return total


async def _throughput(
    sim: SimProcess, flows: CommerceFlows, inbox: Inbox, orders: list[dict[str, Any]]
) -> dict[str, Any]:
    ids = _accept(inbox, orders)
    jobs_before = _sim_jobs(sim)
    progress(f"{BENCH_ID}: ours: draining a backlog of {len(ids):,} OrderCreated messages")
    started = time.perf_counter()
    summary = await _drain(flows, inbox)
    seconds = time.perf_counter() - started
    counts = summary.counts()
    jobs = _job_figures(jobs_before, _sim_jobs(sim))
    _check_posted(sim, "T", len(orders), summary)
    latencies = _latencies(flows.engine, ids)
    progress(
        f"{BENCH_ID}: ours: {counts['orders_posted']:,} orders posted in {seconds:.1f} s "
        f"({per_second(counts['orders_posted'], seconds)} orders/s) in {jobs['d365_imports']} "
        "D365 imports"
    )
    return {
        "orders": len(orders),
        "orders_posted": counts["orders_posted"],
        "orders_failed": counts["orders_failed"],
        "rounds": counts["rounds"],
        "seconds": round(seconds, 3),
        "orders_per_s": round(counts["orders_posted"] / seconds, 3),
        **jobs,
        "backlog_latency_p95_seconds": _percentile(latencies, 0.95),
    }


async def _steady(
    sim: SimProcess,
    flows: CommerceFlows,
    inbox: Inbox,
    orders: list[dict[str, Any]],
    rate: float,
) -> dict[str, Any]:
    """A storefront sending `rate` orders/s while one consumer posts with the batch window."""
    from d365ct.flows.orders import process_inbox

    jobs_before = _sim_jobs(sim)
    ids: list[str] = []
    done = asyncio.Event()

    async def storefront() -> None:
        tick = 0.1
        started = time.perf_counter()
        sent = 0
        while sent < len(orders):
            due = min(len(orders), math.floor((time.perf_counter() - started) * rate) + 1)
            if due > sent:
                ids.extend(_accept(inbox, orders[sent:due]))
                sent = due
            await asyncio.sleep(tick)

    async def consumer(worker: str) -> None:
        while not done.is_set():
            summary = await process_inbox(flows, inbox, worker_id=worker, wait=True)
            if summary.rounds == 0:
                await asyncio.sleep(0.1)

    progress(f"{BENCH_ID}: ours: {len(orders):,} orders arriving at {rate:g} orders/s")
    started = time.perf_counter()
    workers = [asyncio.create_task(consumer("bench-collector"))]
    await storefront()
    while inbox.counts()["pending"] > 0:
        await asyncio.sleep(0.2)
    done.set()
    await asyncio.gather(*workers)
    seconds = time.perf_counter() - started
    jobs = _job_figures(jobs_before, _sim_jobs(sim))
    latencies = _latencies(flows.engine, ids)
    held = _d365_orders(sim, f"{PREFIX}-S")
    if held != len(orders):
        raise RuntimeError(f"{BENCH_ID}: steady: {len(orders)} orders sent, D365 holds {held}")
    bound = WINDOW_SECONDS + 2 * jobs["job_seconds_max"]
    figures = {
        "orders": len(orders),
        "arrival_rate_per_s": round(rate, 1),
        "seconds": round(seconds, 3),
        "p50_seconds": _percentile(latencies, 0.50),
        "p95_seconds": _percentile(latencies, 0.95),
        "max_seconds": _percentile(latencies, 1.0),
        "window_seconds": WINDOW_SECONDS,
        "job_seconds": jobs["job_seconds_max"],
        "bound_seconds": round(bound, 3),
        "bound": "window + 2 x the longest D365 job of the phase",
        "d365_imports": jobs["d365_imports"],
        "rows_imported": jobs["rows_imported"],
    }
    progress(
        f"{BENCH_ID}: ours: p95 latency {figures['p95_seconds']} s (bound "
        f"{figures['bound_seconds']} s = {WINDOW_SECONDS:g} s window + 2 x "
        f"{jobs['job_seconds_max']} s job)"
    )
    return figures


async def _naive(
    sim: SimProcess, flows: CommerceFlows, inbox: Inbox, orders: list[dict[str, Any]], full: int
) -> dict[str, Any]:
    from d365ct.config import OrderSettings
    from d365ct.flows.orders import commerce_flows

    one_each = flows.settings.model_copy(
        update={
            "orders": OrderSettings(
                max_orders=1, max_wait_seconds=0, shipping_as=flows.settings.orders.shipping_as
            )
        }
    )
    await flows.orders.io.aclose()  # re-pointing gives the instances clients of their own
    naive = commerce_flows(one_each, flows.engine, jobs=flows.jobs)
    ids = _accept(inbox, orders)
    jobs_before = _sim_jobs(sim)
    progress(f"{BENCH_ID}: naive: {len(orders)} orders, one package each")
    started = time.perf_counter()
    summary = await _drain(naive, inbox)
    seconds = time.perf_counter() - started
    counts = summary.counts()
    jobs = _job_figures(jobs_before, _sim_jobs(sim))
    _check_posted(sim, "N", len(orders), summary)
    latencies = _latencies(flows.engine, ids)
    rate = round(counts["orders_posted"] / seconds, 3)
    progress(f"{BENCH_ID}: naive: {rate} orders/s on {len(orders)} orders")
    return {
        "sample_orders": len(orders),
        "orders_posted": counts["orders_posted"],
        "seconds": round(seconds, 3),
        "orders_per_s": rate,
        **jobs,
        "latency_p95_seconds": _percentile(latencies, 0.95),
        "extrapolated_orders": full,
        "extrapolated_seconds": round(full / max(rate, 1e-9), 1),
        "extrapolated": f"seconds for {full:,} orders at the throughput of the {len(orders)}-order"
        " sample",
    }


async def _main(
    sim: SimProcess,
    flows: CommerceFlows,
    engine: sa.Engine,
    count: int,
    steady: int,
    naive_sample: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    from d365ct.flows.orders import close_clients, ensure_order_types_and_states
    from d365ct.intake import Inbox

    inbox = Inbox(engine)
    try:
        ct = await flows.orders.ct()
        items = await ensure_order_types_and_states(ct, flows.settings)
        if any(item.outcome == "failed" for item in items):
            raise RuntimeError(f"setup of types and states failed: {items}")
        for _, store, *_rest in ENTITIES:
            await ct.create("stores", {"key": store, "name": {"en": store}})
        catalog = _items(sim)
        await _publish_products(ct, sorted({i for items in catalog.values() for i in items}))
        await _shipping_method(ct)
        backlog = await _create_orders(ct, "T", count, catalog)
        arriving = await _create_orders(ct, "S", steady, catalog)
        sample = await _create_orders(ct, "N", naive_sample, catalog)

        ours = await _throughput(sim, flows, inbox, backlog)
        rate = min(MAX_STEADY_RATE, STEADY_LOAD * ours["orders_per_s"])
        ours["latency"] = await _steady(sim, flows, inbox, arriving, rate)
        naive = await _naive(sim, flows, inbox, sample, count)
        return ours, naive
    finally:
        inbox.close()
        await close_clients()
