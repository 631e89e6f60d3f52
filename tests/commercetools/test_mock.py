"""The commercetools client against the real mock server: 409 convergence, bulk lookups, scans,
standalone prices and inventory, and "no change, no call" counted by an httpx event hook.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from d365ct.commercetools import (
    CommercetoolsClient,
    CommercetoolsError,
    inventory_actions,
    money,
    product_actions,
    standalone_price_actions,
)
from tests.ct_fixtures import CtMock, ct_mock, ct_mock_server  # noqa: F401


@pytest.fixture
async def http(ct_mock: CtMock) -> AsyncIterator[httpx.AsyncClient]:  # noqa: F811
    async with ct_mock.http() as client:
        yield client


@pytest.fixture
def catalog(ct_mock: CtMock, http: httpx.AsyncClient) -> CommercetoolsClient:  # noqa: F811
    return ct_mock.client(http, "catalog")


def product_draft(key: str, *, sku: str | None = None, color: str = "red") -> dict[str, Any]:
    return {
        "key": key,
        "name": {"en": f"Product {key}"},
        "slug": {"en": f"product-{key}".replace('"', "").replace(" ", "-")},
        "productType": {"typeId": "product-type", "key": "furniture"},
        "masterVariant": {
            "sku": sku or f"sku-{key}",
            "attributes": [{"name": "color", "value": color}],
        },
        "variants": [],
    }


async def create_product_type(client: CommercetoolsClient) -> None:
    await client.create(
        "product-types",
        {"key": "furniture", "name": "Furniture", "description": "chairs", "attributes": []},
    )


async def create_many(
    client: CommercetoolsClient, resource: str, drafts: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    return await asyncio.gather(*(client.create(resource, draft) for draft in drafts))


def set_color(color: str) -> Callable[[Any], list[dict[str, Any]]]:
    def compute(current: Any) -> list[dict[str, Any]]:
        master = current["masterData"]["staged"]["masterVariant"]
        held = {a["name"]: a.get("value") for a in master["attributes"]}
        if held.get("color") == color:
            return []
        return [{"action": "setAttribute", "sku": master["sku"], "name": "color", "value": color}]

    return compute


# ---- optimistic concurrency -------------------------------------------------------------------


async def test_update_with_a_stale_cached_version_converges_after_a_409(
    ct_mock: CtMock,  # noqa: F811
    http: httpx.AsyncClient,
    catalog: CommercetoolsClient,
) -> None:
    await create_product_type(catalog)
    created = await catalog.create("products", product_draft("chair"))
    assert catalog.versions.by_key("products", "chair") == (created["id"], 1)

    # another writer (its own client, its own cache) changes the name meanwhile
    other = ct_mock.client(http, "another-writer")
    renamed = await other.update(
        "products",
        created["id"],
        1,
        [{"action": "changeName", "name": {"en": "Renamed elsewhere"}}],
    )
    assert renamed["version"] == 2

    compute = set_color("green")
    before = len(ct_mock.api_responses("POST"))
    updated = await catalog.update_with_retry(
        "products", "chair", compute, actions=compute(created)
    )
    statuses = [r.status_code for r in ct_mock.api_responses("POST")[before:]]
    assert statuses == [409, 200]  # the stale version was refused, then the recomputed update
    staged = updated["masterData"]["staged"]
    assert staged["name"] == {"en": "Renamed elsewhere"}  # the other writer's change survived
    assert staged["masterVariant"]["attributes"] == [{"name": "color", "value": "green"}]
    assert updated["version"] == 3
    assert catalog.versions.by_key("products", "chair") == (created["id"], 3)


async def test_the_mock_accepts_a_stale_version_for_an_action_that_changes_nothing(
    ct_mock: CtMock,  # noqa: F811
    http: httpx.AsyncClient,
    catalog: CommercetoolsClient,
) -> None:
    await create_product_type(catalog)
    stale = await catalog.create("products", product_draft("desk"))
    desired = product_draft("desk", color="oak")
    # somebody else already wrote exactly what we want
    await ct_mock.client(http, "another-writer").update(
        "products", stale["id"], 1, product_actions(stale, desired)
    )
    before = len(ct_mock.api_responses())
    result = await catalog.update_with_retry(
        "products", "desk", lambda current: product_actions(current, desired), current=stale
    )
    calls = [(r.request.method, r.status_code) for r in ct_mock.api_responses()[before:]]
    # The mock checks the version only for actions that change something, so this stale no-op
    # passes; the real API answers 409 and update_with_retry re-reads (unit-tested with a fake).
    assert calls == [("POST", 200)]
    assert result["masterData"]["staged"]["masterVariant"]["attributes"][0]["value"] == "oak"


async def test_upsert_creates_then_leaves_alone_then_updates_and_publishes(
    ct_mock: CtMock,  # noqa: F811
    catalog: CommercetoolsClient,
) -> None:
    await create_product_type(catalog)
    desired = product_draft("lamp")

    def compute(current: Any) -> list[dict[str, Any]]:
        return product_actions(current, desired, publish=True)

    first = await catalog.upsert("products", {**desired, "publish": True}, compute)
    assert first.outcome == "created"
    posts = len(ct_mock.api_responses("POST"))
    second = await catalog.upsert("products", desired, compute)
    assert second.outcome == "unchanged"
    assert len(ct_mock.api_responses("POST")) == posts  # no change, no write

    desired["name"] = {"en": "Lamp", "de": "Lampe"}
    third = await catalog.upsert("products", desired, compute)
    assert third.outcome == "updated"
    data = third.resource["masterData"]
    assert data["current"]["name"] == {"en": "Lamp", "de": "Lampe"}  # published
    assert data["hasStagedChanges"] is False

    # known absent (from a bulk lookup): created without a read
    gets = len(ct_mock.api_responses("GET"))
    fourth = await catalog.upsert("products", product_draft("rug"), compute, current=None)
    assert fourth.outcome == "created"
    assert len(ct_mock.api_responses("GET")) == gets


# ---- bulk reads -------------------------------------------------------------------------------


async def test_find_by_keys_across_batches_and_scan_of_300_products(
    ct_mock: CtMock,  # noqa: F811
    http: httpx.AsyncClient,
) -> None:
    catalog = ct_mock.client(http, max_url_length=1500)
    await create_product_type(catalog)
    keys = [f"item-{i:03d}" for i in range(299)] + ['quoted "item"']
    created = await create_many(catalog, "products", [product_draft(k) for k in keys])
    ids = {body["id"] for body in created}

    before = len(ct_mock.responses)
    found = await catalog.find_by_keys("products", [*keys, "no-such-key"])
    lookups = [r for r in ct_mock.responses[before:] if r.request.method == "GET"]
    assert set(found) == set(keys)
    assert {body["id"] for body in found.values()} == ids
    assert len(lookups) >= 5  # several batches ...
    assert all(len(str(r.request.url)) <= 1500 for r in lookups)  # ... each under the URL limit

    by_sku = await catalog.find_by_field(
        "products", "masterData.current.masterVariant.sku", ["sku-item-007", "sku-item-123"]
    )
    assert {sku: [b["key"] for b in bodies] for sku, bodies in by_sku.items()} == {
        "sku-item-007": ["item-007"],
        "sku-item-123": ["item-123"],
    }

    seen = [body["id"] async for body in catalog.scan("products", page_size=40)]
    assert len(seen) == len(set(seen)) == 300 and set(seen) == ids

    # with sort trusted, the mock's unsorted first page switches the scan to offsets by itself
    trusting = ct_mock.client(http, sort_honoured=True)
    seen = [body["id"] async for body in trusting.scan("products", page_size=40)]
    assert len(seen) == len(set(seen)) == 300 and set(seen) == ids

    filtered = [
        body["key"]
        async for body in catalog.scan("products", 'key in ("item-001","item-002")', page_size=1)
    ]
    assert sorted(filtered) == ["item-001", "item-002"]


# ---- standalone prices and inventory ----------------------------------------------------------


async def test_standalone_price_create_and_update(
    ct_mock: CtMock,  # noqa: F811
    http: httpx.AsyncClient,
) -> None:
    prices = ct_mock.client(http, "prices")
    desired = {"sku": "sku-chair", "value": money(Decimal("19.99"), "EUR"), "country": "DE"}
    created = await prices.create("standalone-prices", desired)
    assert created["value"]["centAmount"] == 1999
    assert standalone_price_actions(created, desired) == []

    desired["value"] = money(Decimal("17.50"), "EUR")
    updated = await prices.update_with_retry(
        "standalone-prices",
        created["id"],
        lambda current: standalone_price_actions(current, desired),
        current=created,
    )
    assert updated["value"] == {
        "type": "centPrecision",
        "currencyCode": "EUR",
        "centAmount": 1750,
        "fractionDigits": 2,
    }
    assert updated["version"] == 2

    posts = len(ct_mock.api_responses("POST"))
    again = await prices.update_with_retry(
        "standalone-prices",
        created["id"],
        lambda current: standalone_price_actions(current, desired),
        current=updated,
    )
    assert again == updated
    assert len(ct_mock.api_responses("POST")) == posts  # no action, no call

    yen = await prices.create(
        "standalone-prices", {"sku": "sku-chair", "value": money(1500, "JPY")}
    )
    assert yen["value"]["centAmount"] == 1500 and yen["value"]["fractionDigits"] == 0


async def test_inventory_create_update_and_lookup_by_sku(
    ct_mock: CtMock,  # noqa: F811
    http: httpx.AsyncClient,
) -> None:
    inventory = ct_mock.client(http, "inventory")
    channel = await inventory.create(
        "channels", {"key": "usmf-11", "roles": ["InventorySupply"], "name": {"en": "USMF 11"}}
    )
    supply = {"typeId": "channel", "id": channel["id"]}
    skus = [f"sku-{i:03d}" for i in range(120)]
    await create_many(
        inventory,
        "inventory",
        [{"sku": sku, "quantityOnStock": 10, "supplyChannel": supply} for sku in skus],
    )
    await inventory.create("inventory", {"sku": "sku-000", "quantityOnStock": 99})  # no channel

    found = await inventory.find_by_field(
        "inventory", "sku", skus, where=f'supplyChannel(id = "{channel["id"]}")'
    )
    assert set(found) == set(skus)
    assert all(len(entries) == 1 for entries in found.values())
    everywhere = await inventory.find_by_field("inventory", "sku", ["sku-000"])
    assert sorted(e["quantityOnStock"] for e in everywhere["sku-000"]) == [10, 99]

    desired = {"sku": "sku-005", "quantityOnStock": 3, "supplyChannel": supply}
    entry = found["sku-005"][0]
    posts = len(ct_mock.api_responses("POST"))
    updated = await inventory.update(
        "inventory", entry["id"], entry["version"], inventory_actions(entry, desired)
    )
    assert updated["quantityOnStock"] == 3 and updated["availableQuantity"] == 3
    unchanged = found["sku-006"][0]
    await inventory.update(
        "inventory",
        unchanged["id"],
        unchanged["version"],
        inventory_actions(unchanged, {"sku": "sku-006", "quantityOnStock": 10}),
        current=unchanged,
    )
    assert len(ct_mock.api_responses("POST")) == posts + 1  # only the changed entry was written
    fetched = await inventory.get_by_id("inventory", entry["id"])
    assert fetched is not None and fetched["quantityOnStock"] == 3

    deleted = await inventory.delete("inventory", entry["id"])
    assert deleted is not None and await inventory.get_by_id("inventory", entry["id"]) is None


# ---- errors and odd shapes --------------------------------------------------------------------


async def test_mock_errors_become_typed_errors(
    catalog: CommercetoolsClient,
) -> None:
    with pytest.raises(CommercetoolsError) as caught:
        await catalog.create("products", {"name": {"en": "no type"}, "slug": {"en": "x"}})
    assert caught.value.status == 400 and caught.value.codes == ("InvalidJsonInput",)
    assert "productType" in str(caught.value)

    await create_product_type(catalog)
    product = await catalog.create("products", product_draft("sofa"))
    with pytest.raises(CommercetoolsError, match="Invalid action setSku") as caught:
        await catalog.update("products", product["id"], 1, [{"action": "setSku", "sku": "x"}])
    assert caught.value.codes == ("InvalidInput",)
    with pytest.raises(CommercetoolsError, match="InvalidInput"):
        await catalog.query("products", where='key in ("a"')


async def test_customer_create_unwraps_the_sign_in_result(
    ct_mock: CtMock,  # noqa: F811
    http: httpx.AsyncClient,
) -> None:
    customers = ct_mock.client(http, "customers")
    customer = await customers.create(
        "customers", {"email": "ada@example.com", "key": "ada", "firstName": "Ada"}
    )
    assert customer["email"] == "ada@example.com" and customer["version"] == 1
    assert customers.versions.by_key("customers", "ada") == (customer["id"], 1)
