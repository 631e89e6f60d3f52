"""U3 order posting against the real peers: d365sim (+ Azurite), the commercetools mock, DBOS on
SQLite. Messages are built as commercetools would send them (the mock sends none)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from d365ct.commercetools import CommercetoolsClient
from d365ct.config import Settings
from d365ct.engine import launch_engine, shutdown_engine
from d365ct.flows.orders import (
    ASSIGNMENTS,
    CommerceFlows,
    commerce_flows,
    ensure_order_types_and_states,
    post_orders,
    process_inbox,
)
from d365ct.flows.replay import replay_entries
from d365ct.intake import Inbox, intake_router, parse_message
from d365ct.mapping.catalog import product_type_draft
from d365ct.mapping.customers import ACCOUNT_FIELD, customer_account
from d365ct.mapping.orders import EXECUTION_FIELD, SALES_ORDER_FIELD, STATUS_FIELD
from d365ct.mapping.skus import variant_sku
from d365ct.store import make_engine
from d365ct.store.error_queue import ErrorQueue
from d365ct.store.sync_state import SyncStateStore
from d365ct.storefront import subscription_message
from tests.ct_fixtures import CtMock
from tests.flows.support import SECRET_ENV, full_settings
from tests.sim_fixtures import RunningSim

PRODUCT_TYPE = "d365-product"
SHIPPING_CENTS = {"USD": 500, "EUR": 490}


# -- the environment ---------------------------------------------------------------------------


@dataclass
class CommerceEnv:
    sim: RunningSim
    mock: CtMock
    settings: Settings
    engine: sa.Engine
    flows: CommerceFlows
    inbox: Inbox
    variant: dict[str, str]  # a usmf product variant: ItemNumber and dimensions

    # D365 (OData, as an auditor would read it)
    def sim_rows(self, entity: str, filter: str) -> list[dict[str, Any]]:
        with self.sim.client() as client:
            response = client.get(
                f"/data/{entity}", params={"cross-company": "true", "$filter": filter}
            )
            response.raise_for_status()
            return list(response.json()["value"])

    def sim_post(self, entity: str, row: dict[str, Any]) -> None:
        with self.sim.client() as client:
            client.post(f"/data/{entity}", json=row).raise_for_status()

    def sim_stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.sim.base_url}/_sim/stats").json())

    def sim_stats_jobs(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.sim.base_url}/_sim/jobs").json())

    def order_in_d365(self, number: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        headers = self.sim_rows("SalesOrderHeadersV2", f"SalesOrderNumber eq '{number}'")
        lines = self.sim_rows("SalesOrderLines", f"SalesOrderNumber eq '{number}'")
        return headers, sorted(lines, key=lambda row: row["LineNumber"])

    # commercetools
    @asynccontextmanager
    async def ct(self) -> AsyncIterator[CommercetoolsClient]:
        async with self.mock.http(record=False) as http:
            yield self.mock.client(http, "orders")

    # the inbox
    def deliver(self, body: dict[str, Any]) -> str:
        return self.inbox.accept(parse_message(body)).status

    @property
    def errors(self) -> ErrorQueue:
        return ErrorQueue(self.engine)


# A message in the platform format, as a Subscription delivers it (also what the demo pushes).
message = subscription_message


def order_created(env: CommerceEnv, order: dict[str, Any], **options: Any) -> dict[str, Any]:
    return message(env.mock.project_key, "order", order, "OrderCreated", order=order, **options)


def legal_entities() -> list[dict[str, Any]]:
    return [
        {
            "id": "usmf",
            "currency": "USD",
            "stores": ["us-store"],
            "countries": ["US"],
            "guest_customer_account": "US-000002",
        },
        {
            "id": "demf",
            "currency": "EUR",
            "stores": ["de-store"],
            "countries": ["DE"],
            "guest_customer_account": "DE-000002",
        },
    ]


def make_commerce_env(
    sim: RunningSim, mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **sections: Any
) -> Iterator[CommerceEnv]:
    """Settings for both peers, the U3/U4 DBOS instances (before the launch), the engine."""
    monkeypatch.setenv(SECRET_ENV, sim.config.client_secret)
    sections.setdefault("legal_entities", legal_entities())
    sections.setdefault("orders", {"max_orders": 50, "max_wait_seconds": 0})
    settings = full_settings(sim.base_url, mock.url, mock.project_key, str(tmp_path), **sections)
    engine = make_engine(settings.store.url)
    flows = commerce_flows(settings, engine)
    launch_engine(settings.store.url, polling_interval_sec=0.05)
    inbox = Inbox(engine)
    with sim.client() as client:
        variant = client.get(
            "/data/ReleasedProductVariantsV2",
            params={"cross-company": "true", "$filter": "dataAreaId eq 'usmf'", "$top": "1"},
        ).json()["value"][0]
        for company in ("usmf", "demf"):  # shipping is posted as a line with this item
            client.post(
                "/data/ReleasedProductsV2",
                json={
                    "dataAreaId": company,
                    "ItemNumber": "SHIPPING",
                    "ProductNumber": "SHIPPING",
                    "ProductName": "Shipping and handling",
                    "ProductSubType": "Product",
                },
            ).raise_for_status()
    dims = {
        k: variant.get(k) or ""
        for k in ("ProductColorId", "ProductSizeId", "ProductStyleId", "ProductConfigurationId")
    }
    try:
        yield CommerceEnv(
            sim, mock, settings, engine, flows, inbox, {"ItemNumber": variant["ItemNumber"], **dims}
        )
    finally:
        inbox.close()
        shutdown_engine(workflow_completion_timeout_sec=5)
        engine.dispose()


async def seed_commercetools(env: CommerceEnv) -> None:
    """What a storefront project has: product type, stores, shipping, our types and states."""
    async with env.ct() as ct:
        items = await ensure_order_types_and_states(ct, env.settings)
        assert all(item.outcome == "created" for item in items), items
        await ct.create("product-types", product_type_draft(PRODUCT_TYPE))
        await ct.create(
            "tax-categories",
            {
                "key": "standard",
                "name": "Standard",
                "rates": [
                    {"name": "US", "amount": 0, "includedInPrice": False, "country": "US"},
                    {"name": "DE", "amount": 0.19, "includedInPrice": True, "country": "DE"},
                ],
            },
        )
        for key, country in (("us", "US"), ("de", "DE")):
            await ct.create("zones", {"key": key, "name": key, "locations": [{"country": country}]})
        await ct.create(
            "shipping-methods",
            {
                "key": "standard",
                "name": "Standard",
                "isDefault": False,
                "taxCategory": {"typeId": "tax-category", "key": "standard"},
                "zoneRates": [
                    {
                        "zone": {"typeId": "zone", "key": zone},
                        "shippingRates": [
                            {"price": {"currencyCode": cur, "centAmount": SHIPPING_CENTS[cur]}}
                        ],
                    }
                    for zone, cur in (("us", "USD"), ("de", "EUR"))
                ],
            },
        )
        for store in ("us-store", "de-store"):
            await ct.create("stores", {"key": store, "name": {"en": store}})
        variant = env.variant
        await add_product(
            ct,
            variant_sku(
                variant["ItemNumber"],
                variant["ProductColorId"],
                variant["ProductSizeId"],
                variant["ProductStyleId"],
                variant["ProductConfigurationId"],
            ),
            variant,
        )
        for item in ("D0001", "D0002"):
            await add_product(ct, item, {"ItemNumber": item})


async def add_product(ct: CommercetoolsClient, sku: str, variant: dict[str, str]) -> None:
    """A product as the catalog flow publishes it: the D365 item and dimensions as attributes."""
    names = {
        "ProductColorId": "color",
        "ProductSizeId": "size",
        "ProductStyleId": "style",
        "ProductConfigurationId": "configuration",
    }
    attributes = [{"name": "d365-item-number", "value": variant["ItemNumber"]}]
    attributes += [{"name": names[k], "value": v} for k, v in variant.items() if k in names and v]
    slug = sku.lower().replace(" ", "-")
    await ct.create(
        "products",
        {
            "key": slug,
            "productType": {"typeId": "product-type", "key": PRODUCT_TYPE},
            "name": {"en": f"Product {sku}"},
            "slug": {"en": f"p-{slug}"},
            "masterVariant": {"sku": sku, "attributes": attributes},
            "publish": True,
        },
    )


async def create_customer(env: CommerceEnv, **fields: Any) -> dict[str, Any]:
    draft = {
        "email": f"{uuid.uuid4().hex[:8]}@example.com",
        "firstName": "Ada",
        "lastName": "Lovelace",
        **fields,
    }
    async with env.ct() as ct:
        return await ct.create("customers", draft)


async def import_order(
    env: CommerceEnv,
    lines: list[tuple[str, int, int]],
    *,
    store: str = "us-store",
    currency: str = "USD",
    country: str = "US",
    order_number: str | None = None,
    customer_id: str | None = None,
    shipping: bool = True,
) -> dict[str, Any]:
    """An order through /orders/import: the mock's only way to leave orderNumber unset."""
    shipping_cents = SHIPPING_CENTS[currency] if shipping else 0
    total = sum(quantity * cents for _, quantity, cents in lines) + shipping_cents
    draft: dict[str, Any] = {
        "store": {"typeId": "store", "key": store},
        "customerEmail": "shopper@example.com",
        "totalPrice": {"currencyCode": currency, "centAmount": total},
        "shippingAddress": {
            "firstName": "Grace",
            "lastName": "Hopper",
            "streetName": "Main St",
            "streetNumber": "7",
            "postalCode": "98052" if country == "US" else "20095",
            "city": "Redmond" if country == "US" else "Hamburg",
            "country": country,
        },
        "lineItems": [
            {
                "name": {"en": f"Product {sku}"},
                "variant": {"sku": sku},
                "price": {"value": {"currencyCode": currency, "centAmount": cents}},
                "quantity": quantity,
            }
            for sku, quantity, cents in lines
        ],
    }
    if order_number:
        draft["orderNumber"] = order_number
    if customer_id:
        draft["customerId"] = customer_id
    if shipping:
        price = {"currencyCode": currency, "centAmount": shipping_cents}
        draft["shippingInfo"] = {
            "shippingMethodName": "Standard",
            "price": price,
            "shippingRate": {"price": price},
            "shippingMethod": {"typeId": "shipping-method", "key": "standard"},
        }
    async with env.ct() as ct:
        return dict(await ct.request("POST", "orders/import", json=draft))


async def ct_get(env: CommerceEnv, resource: str, rid: str) -> dict[str, Any]:
    async with env.ct() as ct:
        body = await ct.get_by_id(resource, rid)
    assert body is not None
    return body


async def posted_state_id(env: CommerceEnv) -> str:
    async with env.ct() as ct:
        state = await ct.get_by_key("states", env.settings.orders.posted_state)
    assert state is not None
    return str(state["id"])


@pytest.fixture
def env(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CommerceEnv]:
    yield from make_commerce_env(fresh_sim, ct_mock, tmp_path, monkeypatch)


@pytest.fixture
async def commerce(env: CommerceEnv) -> CommerceEnv:
    await seed_commercetools(env)
    return env


def variant_sku_of(env: CommerceEnv) -> str:
    v = env.variant
    return variant_sku(
        v["ItemNumber"],
        v["ProductColorId"],
        v["ProductSizeId"],
        v["ProductStyleId"],
        v["ProductConfigurationId"],
    )


# -- tests -------------------------------------------------------------------------------------


async def test_orders_post_in_one_package_per_legal_entity(commerce: CommerceEnv) -> None:
    env = commerce
    sku = variant_sku_of(env)
    customer = await create_customer(
        env,
        stores=[{"typeId": "store", "key": "us-store"}],
        addresses=[
            {"streetName": "Pine St", "city": "Seattle", "postalCode": "98101", "country": "US"}
        ],
        defaultShippingAddress=0,
    )
    us_numbered = await import_order(
        env, [("D0001", 2, 1999), (sku, 1, 4550)], order_number="WEB-1001"
    )
    us_unnumbered = await import_order(env, [("D0002", 3, 1000)])
    us_customer = await import_order(
        env, [("D0001", 1, 1999)], order_number="WEB-1002", customer_id=customer["id"]
    )
    de_orders = [
        await import_order(
            env,
            [("D0001", 1, 2500)],
            store="de-store",
            currency="EUR",
            country="DE",
            order_number=f"WEB-2{n:03d}",
        )
        for n in range(2)
    ]
    orders = [us_numbered, us_unnumbered, us_customer, *de_orders]
    assert us_unnumbered.get("orderNumber") is None
    for order in orders:
        assert env.deliver(order_created(env, order)) == "accepted"

    summary = await process_inbox(env.flows, env.inbox, worker_id="test")

    counts = summary.counts()
    assert counts["orders_posted"] == 5 and counts["orders_failed"] == 0, summary.as_dict()
    assert counts["order_messages"] == {"done": 5}
    stats = env.sim_stats()
    # one customer import (the customer D365 did not have) + one order package per company
    assert stats["imports"] == 3 and stats["importOverlaps"] == 0
    assert counts["d365_imports"] == 2
    assert env.inbox.counts()["processed"] == 5

    # the unnumbered order got its number first, in commercetools, then in D365
    unnumbered = await ct_get(env, "orders", us_unnumbered["id"])
    assigned = unnumbered["orderNumber"]
    assert assigned.startswith("CT-") and len(assigned) == 13

    state_id = await posted_state_id(env)
    jobs = {o.message_id: o for r in summary.orders for o in r.details}
    for order, company in zip(orders, ["usmf"] * 3 + ["demf"] * 2, strict=True):
        current = await ct_get(env, "orders", order["id"])
        number = current["orderNumber"]
        headers, lines = env.order_in_d365(number)
        assert len(headers) == 1, number  # posted exactly once
        assert headers[0]["dataAreaId"] == company
        fields = current["custom"]["fields"]
        assert fields[STATUS_FIELD] == "posted" and fields[SALES_ORDER_FIELD] == number
        assert fields[EXECUTION_FIELD].startswith("d365ct-")
        assert current["state"]["id"] == state_id
        # the line amounts D365 holds add up to the commercetools total
        total = Decimal(current["totalPrice"]["centAmount"]) / 100
        assert sum(Decimal(str(li["LineAmount"])) for li in lines) == total
        assert lines[-1]["ItemNumber"] == "SHIPPING"
    assert len({o.execution_id for o in jobs.values()}) == 2

    headers, lines = env.order_in_d365("WEB-1001")
    assert headers[0]["OrderingCustomerAccountNumber"] == "US-000002"  # the guest account
    assert headers[0]["CurrencyCode"] == "USD"
    assert [(li["ItemNumber"], Decimal(str(li["OrderedSalesQuantity"]))) for li in lines] == [
        ("D0001", 2),
        (env.variant["ItemNumber"], 1),
        ("SHIPPING", 1),
    ]
    assert Decimal(str(lines[0]["SalesPrice"])) == Decimal("19.99")
    assert Decimal(str(lines[0]["LineAmount"])) == Decimal("39.98")
    assert lines[1]["ProductColorId"] == env.variant["ProductColorId"]
    assert lines[1]["ProductSizeId"] == env.variant["ProductSizeId"]

    # the registered customer was imported into usmf first and carries its account now
    account = customer_account(customer["id"], env.settings.customers.account_prefix)
    headers, _ = env.order_in_d365("WEB-1002")
    assert headers[0]["OrderingCustomerAccountNumber"] == account
    assert len(env.sim_rows("CustomersV3", f"CustomerAccount eq '{account}'")) == 1
    synced = await ct_get(env, "customers", customer["id"])
    assert synced["customerNumber"] == account
    assert synced["custom"]["fields"][ACCOUNT_FIELD] == account
    assert env.errors.count_open() == 0
    assert SyncStateStore(env.engine).count(ASSIGNMENTS) == 0  # assignments end with the batch


async def test_a_bad_order_fails_alone_and_replays_after_the_fix(commerce: CommerceEnv) -> None:
    env = commerce
    async with env.ct() as ct:
        await add_product(ct, "ZZ999", {"ItemNumber": "ZZ999"})  # no such item in D365
    good = [
        await import_order(env, [("D0001", 1, 1000)], order_number=f"GOOD-{n}") for n in range(2)
    ]
    bad = await import_order(env, [("D0002", 1, 1000), ("ZZ999", 2, 700)], order_number="BAD-1")
    for order in (*good, bad):
        env.deliver(order_created(env, order))

    summary = await process_inbox(env.flows, env.inbox, worker_id="test")

    assert summary.counts()["orders_posted"] == 2
    assert env.sim_stats()["byStatus"]["PartiallySucceeded"] == 1
    for order in good:
        assert len(env.order_in_d365(order["orderNumber"])[0]) == 1
    (entry,) = env.errors.list(flow="orders")
    assert entry.business_key == "BAD-1" and entry.step == "import"
    # D365's own words, naming the item
    assert "ZZ999" in entry.error and "Released products" in entry.error
    assert entry.correlation["execution_id"].startswith("d365ct-")
    assert entry.correlation["message_id"] and entry.correlation["workflow_id"]
    assert entry.correlation["commercetools"] == f"orders/{bad['id']}"
    failed = await ct_get(env, "orders", bad["id"])
    assert failed["custom"]["fields"][STATUS_FIELD] == "failed"
    assert failed.get("state") is None
    message_id = entry.correlation["message_id"]
    stored = env.inbox.get(message_id)
    assert stored is not None and stored.status == "processed"
    assert f"error #{entry.id}" in (stored.outcome or "")

    # replaying before the fix fails again: one more attempt on the same entry
    (again,) = await replay_entries(env.settings, env.engine, [entry])
    assert not again.ok
    entry = env.errors.get(entry.id)  # type: ignore[assignment]
    assert entry is not None and entry.status == "open" and entry.attempts == 2

    # an operator creates the item in D365, then replays
    env.sim_post(
        "ReleasedProductsV2",
        {
            "dataAreaId": "usmf",
            "ItemNumber": "ZZ999",
            "ProductNumber": "ZZ999",
            "ProductName": "Late item",
            "ProductSubType": "Product",
        },
    )
    (outcome,) = await replay_entries(env.settings, env.engine, [entry])
    assert outcome.ok, outcome
    closed = env.errors.get(entry.id)
    assert closed is not None and closed.status == "replayed"
    headers, lines = env.order_in_d365("BAD-1")
    assert len(headers) == 1
    assert [li["ItemNumber"] for li in lines] == ["D0002", "ZZ999", "SHIPPING"]
    posted = await ct_get(env, "orders", bad["id"])
    assert posted["custom"]["fields"][STATUS_FIELD] == "posted"
    assert posted["state"]["id"] == await posted_state_id(env)

    # a replay of a closed entry does nothing
    (skipped,) = await replay_entries(env.settings, env.engine, [closed])
    assert skipped.status == "skipped"


async def test_a_message_delivered_twice_is_posted_once(commerce: CommerceEnv) -> None:
    env = commerce
    order = await import_order(env, [("D0001", 1, 1000)], order_number="ONCE-1")
    body = order_created(env, order)
    assert env.deliver(body) == "accepted"
    assert env.deliver(body) == "duplicate"

    await process_inbox(env.flows, env.inbox, worker_id="test")
    assert env.deliver(body) == "duplicate"  # after processing too
    second = await process_inbox(env.flows, env.inbox, worker_id="test")

    assert second.rounds == 0
    assert env.sim_stats()["imports"] == 1
    assert len(env.order_in_d365("ONCE-1")[0]) == 1


async def test_a_batch_started_again_joins_the_first_run(commerce: CommerceEnv) -> None:
    """A crash after the batch ran but before its messages were settled: the messages come back
    and rejoin their batch (durable assignment), so D365 imports once."""
    env = commerce
    orders = [
        await import_order(env, [("D0001", 1, 1000)], order_number=f"AGAIN-{n}") for n in range(2)
    ]
    items = [(order, f"message-{n}") for n, order in enumerate(orders)]
    first = await post_orders(env.flows, items)
    # the settle step never ran: assignments are still there
    assert SyncStateStore(env.engine).count(ASSIGNMENTS) == 2
    again = await post_orders(env.flows, items)
    assert [o.status for o in first] == [o.status for o in again] == ["posted", "posted"]
    assert {o.workflow_id for o in first} == {o.workflow_id for o in again}
    assert {o.execution_id for o in first} == {o.execution_id for o in again}
    assert env.sim_stats()["imports"] == 1
    for order in orders:
        assert len(env.order_in_d365(order["orderNumber"])[0]) == 1


async def test_an_unroutable_order_goes_to_the_error_queue(commerce: CommerceEnv) -> None:
    env = commerce
    async with env.ct() as ct:
        await ct.create("stores", {"key": "fr-store", "name": {"en": "France"}})
    order = await import_order(
        env,
        [("D0001", 1, 1000)],
        store="fr-store",
        currency="EUR",
        country="FR",
        order_number="FR-1",
        shipping=False,
    )
    env.deliver(order_created(env, order))

    summary = await process_inbox(env.flows, env.inbox, worker_id="test")

    assert summary.counts()["order_messages"] == {"failed": 1}
    (entry,) = env.errors.list(flow="orders")
    assert entry.step == "route" and entry.business_key == "FR-1"
    assert "no legal entity for store fr-store / country FR" in entry.error
    assert env.sim_stats()["imports"] == 0


async def test_a_message_without_payload_reads_the_order(commerce: CommerceEnv) -> None:
    env = commerce
    order = await import_order(env, [("D0001", 1, 1000)], order_number="BIG-1")
    body = order_created(env, order)
    del body["order"], body["type"]
    body["payloadNotIncluded"] = {"reason": "payload too large", "payloadType": "OrderCreated"}
    env.deliver(body)

    summary = await process_inbox(env.flows, env.inbox, worker_id="test")

    assert summary.counts()["orders_posted"] == 1
    assert len(env.order_in_d365("BIG-1")[0]) == 1


async def test_orders_pushed_over_http_are_posted(commerce: CommerceEnv) -> None:
    from fastapi import FastAPI

    env = commerce
    app = FastAPI()
    app.include_router(intake_router(env.inbox, lambda: "intake-secret"))
    order = await import_order(env, [("D0001", 2, 1250)], order_number="PUSH-1")
    body = order_created(env, order)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://d365ct") as client:
        refused = await client.post("/intake/commercetools", json=body)
        assert refused.status_code == 401
        pushed = await client.post(
            "/intake/commercetools",
            content=json.dumps(body),
            headers={"Authorization": "Bearer intake-secret", "Content-Type": "application/json"},
        )
    assert pushed.status_code == 200 and pushed.json()["accepted"] == 1

    summary = await process_inbox(env.flows, env.inbox, worker_id="test")

    assert summary.counts()["orders_posted"] == 1
    headers, lines = env.order_in_d365("PUSH-1")
    assert len(headers) == 1
    assert Decimal(str(lines[0]["LineAmount"])) == Decimal("25.00")


async def test_setup_is_idempotent(commerce: CommerceEnv) -> None:
    env = commerce
    async with env.ct() as ct:
        items = await ensure_order_types_and_states(ct, env.settings)
        assert {item.outcome for item in items} == {"exists"}
        pending = await ct.get_by_key("states", "d365-pending")
        posted = await ct.get_by_key("states", env.settings.orders.posted_state)
    assert pending is not None and posted is not None
    assert pending["initial"] is True
    assert [t["id"] for t in pending["transitions"]] == [posted["id"]]


async def test_with_a_window_the_batch_waits_for_more_orders(env: CommerceEnv) -> None:
    """`collect_orders(wait=True)` keeps claiming until max_orders per legal entity or until the
    oldest claimed message has waited max_wait_seconds."""
    from datetime import timedelta

    from d365ct.config import OrderSettings
    from d365ct.flows.orders import collect_orders

    windowed = dataclasses.replace(
        env.flows,
        settings=env.settings.model_copy(
            update={"orders": OrderSettings(max_orders=2, max_wait_seconds=30)}
        ),
    )
    late: list[str] = []

    def order(n: int) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "version": 1, "orderNumber": f"W-{n}"}

    env.deliver(order_created(env, order(0)))
    now = datetime.now(UTC)
    clock_at = [now]

    async def sleep(seconds: float) -> None:
        # the window is open: one more order arrives while it waits, then time moves on
        if not late:
            late.append(env.deliver(order_created(env, order(1))))
        else:
            clock_at[0] = now + timedelta(seconds=31)

    claimed = await collect_orders(
        windowed, env.inbox, "w", wait=True, sleep=sleep, clock=lambda: clock_at[0]
    )
    assert late == ["accepted"] and len(claimed) == 2
    assert await collect_orders(windowed, env.inbox, "w", wait=True) == []  # nothing left

    # A stopping worker closes the window at once and posts what it holds.
    env.deliver(order_created(env, order(2)))
    stop = asyncio.Event()
    stop.set()

    async def no_sleep(seconds: float) -> None:
        raise AssertionError("the window stayed open after stop")

    held = await collect_orders(windowed, env.inbox, "w", wait=True, sleep=no_sleep, stop=stop)
    assert len(held) == 1


@pytest.fixture
def charge_env(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CommerceEnv]:
    yield from make_commerce_env(
        fresh_sim,
        ct_mock,
        tmp_path,
        monkeypatch,
        orders={
            "max_orders": 50,
            "max_wait_seconds": 0,
            "shipping_as": "charge",
            "shipping_charge_code": "FREIGHT",
        },
    )


async def test_shipping_posted_as_a_header_charge(charge_env: CommerceEnv) -> None:
    env = charge_env
    await seed_commercetools(env)
    shipped = await import_order(env, [("D0001", 2, 1999)], order_number="WEB-3001")
    free = await import_order(env, [("D0002", 1, 1000)], order_number="WEB-3002", shipping=False)
    for order in (shipped, free):
        assert env.deliver(order_created(env, order)) == "accepted"

    summary = await process_inbox(env.flows, env.inbox, worker_id="test")

    assert summary.counts()["orders_posted"] == 2, summary.as_dict()
    headers, lines = env.order_in_d365("WEB-3001")
    assert len(headers) == 1
    assert [li["ItemNumber"] for li in lines] == ["D0001"]  # no shipping line
    charges = env.sim_rows("SalesOrderHeaderChargesV2", "SalesOrderNumber eq 'WEB-3001'")
    assert [
        (c["dataAreaId"], c["SalesChargeCode"], c["ChargeCategory"], c["ChargeLineNumber"])
        for c in charges
    ] == [("usmf", "FREIGHT", "Fixed", 1)]
    assert Decimal(str(charges[0]["FixedChargeAmount"])) == Decimal("5.00")
    assert charges[0]["ChargeAccountingCurrencyCode"] == "USD"
    # lines plus charges are the commercetools total: the ledger matches
    total = Decimal(shipped["totalPrice"]["centAmount"]) / 100
    assert sum(Decimal(str(li["LineAmount"])) for li in lines) + Decimal("5.00") == total
    assert env.sim_rows("SalesOrderHeaderChargesV2", "SalesOrderNumber eq 'WEB-3002'") == []
    assert env.errors.count_open() == 0


@pytest.fixture
def pairs_env(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CommerceEnv]:
    yield from make_commerce_env(
        fresh_sim, ct_mock, tmp_path, monkeypatch, orders={"max_orders": 2, "max_wait_seconds": 0}
    )


async def test_a_full_batch_leaves_the_overflow_for_the_next_round(pairs_env: CommerceEnv) -> None:
    """A round claims max_orders × legal entities; what exceeds one entity's batch waits for the
    next round instead of costing a D365 job of its own."""
    env = pairs_env
    await seed_commercetools(env)
    us = [
        await import_order(env, [("D0001", 1, 1000)], order_number=f"PAIR-US{n}", shipping=False)
        for n in range(4)
    ]
    de = [
        await import_order(
            env,
            [("D0001", 1, 1000)],
            store="de-store",
            currency="EUR",
            country="DE",
            order_number=f"PAIR-DE{n}",
            shipping=False,
        )
        for n in range(3)
    ]
    # claimed in arrival order: the first round gets US0-US2 and DE0 (2 × 2 messages)
    for order in (*us[:3], de[0], de[1], de[2], us[3]):
        assert env.deliver(order_created(env, order)) == "accepted"

    summary = await process_inbox(env.flows, env.inbox, worker_id="test")

    counts = summary.counts()
    assert counts["orders_posted"] == 7 and counts["orders_failed"] == 0, summary.as_dict()
    # US2 went back once and was posted with US3: 4 packages, where batching every claimed
    # order at once would have cost 5 (US0+US1, US2 alone, DE0 alone, DE1+DE2, US3 alone)
    assert env.sim_stats()["imports"] == 4
    assert counts["order_messages"] == {"done": 7, "released": 1}
    for number in [f"PAIR-US{n}" for n in range(4)] + [f"PAIR-DE{n}" for n in range(3)]:
        assert len(env.order_in_d365(number)[0]) == 1, number
    overflowed = [r for r in summary.orders if r.status == "released"]
    assert [env.inbox.get(r.message_id).attempts for r in overflowed] == [1]  # type: ignore[union-attr]


@pytest.fixture
def window_env(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CommerceEnv]:
    yield from make_commerce_env(
        fresh_sim,
        ct_mock,
        tmp_path,
        monkeypatch,
        orders={"max_orders": 50, "max_wait_seconds": 0.3},
    )


async def test_with_a_window_the_next_round_posts_while_the_previous_one_runs(
    window_env: CommerceEnv,
) -> None:
    """An order arriving while a round's import executes is collected and posted at once (its
    own legal entity's import need not wait), not after the previous round has settled."""
    import asyncio

    env = window_env
    env.sim.config.job_seconds = 2
    await seed_commercetools(env)
    us = await import_order(env, [("D0001", 1, 1000)], order_number="WIN-US")
    de = await import_order(
        env,
        [("D0001", 1, 2500)],
        store="de-store",
        currency="EUR",
        country="DE",
        order_number="WIN-DE",
    )
    env.deliver(order_created(env, us, message_id="m-win-us"))
    run = asyncio.create_task(process_inbox(env.flows, env.inbox, worker_id="w", wait=True))
    deadline = asyncio.get_running_loop().time() + 30
    while not any(j["status"] == "Executing" for j in env.sim_stats_jobs()):
        assert asyncio.get_running_loop().time() < deadline, "the first import never ran"
        await asyncio.sleep(0.02)
    env.deliver(order_created(env, de, message_id="m-win-de"))

    summary = await asyncio.wait_for(run, 60)

    assert summary.counts()["orders_posted"] == 2, summary.as_dict()
    first = env.inbox.get("m-win-us")
    assert first is not None and first.processed_at is not None
    (de_job,) = [j for j in env.sim_stats_jobs() if j["legalEntity"] == "demf"]
    # the second round's package reached D365 before the first round had even settled
    assert datetime.fromisoformat(de_job["createdAt"]) < first.processed_at.replace(tzinfo=UTC)
