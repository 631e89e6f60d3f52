"""Flow U1 catalog against d365sim and the commercetools mock: full sync, zero-call re-sync,
delta after a change in D365, a concurrent writer (409), stable variant splits, error queue.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from d365ct.config import CatalogMappingSettings, Settings
from d365ct.flows.catalog import sync_catalog
from d365ct.flows.setup import run_setup
from d365ct.mapping.skus import sku_of
from d365ct.store import make_engine, migrate
from d365ct.store.error_queue import ErrorQueue
from d365ct.store.sync_state import SyncStateStore
from tests.ct_fixtures import CtMock
from tests.flows.support import SECRET_ENV, full_settings
from tests.sim_fixtures import RunningSim

Hook = Callable[[httpx.Request], Awaitable[None]]


@dataclass
class Harness:
    """d365sim, a fresh commercetools project, settings and a migrated store, plus the ways a
    test reads both sides behind the flow's back."""

    sim: RunningSim
    ct: CtMock
    settings: Settings
    engine: sa.Engine

    def hooks(self, *on_request: Hook) -> dict[str, list[object]]:
        """httpx hooks for a flow: every response recorded in `ct.responses`."""

        async def record(response: httpx.Response) -> None:
            self.ct.responses.append(response)

        return {"response": [record], "request": list(on_request)}

    def with_catalog(self, **changes: Any) -> Settings:
        catalog = self.settings.catalog.model_copy(update=changes)
        return self.settings.model_copy(update={"catalog": catalog})

    # ---- commercetools, read directly --------------------------------------------------------

    def ct_token(self) -> str:
        response = httpx.post(
            f"{self.ct.url}/oauth/token",
            params={
                "grant_type": "client_credentials",
                "scope": f"manage_project:{self.ct.project_key}",
            },
            auth=("test-reader", "secret"),
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def ct_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.ct.url}/{self.ct.project_key}",
            headers={"Authorization": f"Bearer {self.ct_token()}"},
            timeout=30,
        )

    def ct_all(self, resource: str) -> list[dict[str, Any]]:
        with self.ct_client() as client:
            response = client.get(f"/{resource}", params={"limit": 500})
            response.raise_for_status()
            body = response.json()
        assert body["total"] <= 500, "more than one page: the test should page"
        return list(body["results"])

    def products(self) -> dict[str, dict[str, Any]]:
        return {p["key"]: p for p in self.ct_all("products")}

    def writes(self) -> list[httpx.Response]:
        return [r for r in self.ct.api_responses() if r.request.method != "GET"]

    # ---- D365, read and changed directly -----------------------------------------------------

    def sim_rows(
        self, entity: str, legal_entity: str | None = "usmf", flt: str | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, str] | None = {"cross-company": "true"}
        clauses = [f"dataAreaId eq '{legal_entity}'"] if legal_entity else []
        if flt:
            clauses.append(flt)
        if clauses:
            assert params is not None
            params["$filter"] = " and ".join(clauses)
        rows: list[dict[str, Any]] = []
        url: str | None = f"/data/{entity}"
        with self.sim.client() as client:
            while url:
                response = client.get(url, params=params)
                response.raise_for_status()
                body = response.json()
                rows.extend(body["value"])
                url, params = body.get("@odata.nextLink"), None
        return rows

    def sim_patch(self, segment: str, body: dict[str, Any]) -> None:
        with self.sim.client() as client:
            response = client.patch(f"/data/{segment}", params={"cross-company": "true"}, json=body)
        assert response.status_code == 204, response.text


@pytest.fixture
def harness(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    monkeypatch.setenv(SECRET_ENV, fresh_sim.config.client_secret)
    settings = full_settings(fresh_sim.base_url, ct_mock.url, ct_mock.project_key, str(tmp_path))
    migrate(settings.store.url)
    engine = make_engine(settings.store.url)
    yield Harness(fresh_sim, ct_mock, settings, engine)
    engine.dispose()


@pytest.fixture
async def ready(harness: Harness) -> Harness:
    """The harness after `d365ct setup` (product type, channels, customer groups)."""
    report = await run_setup(harness.settings)
    assert report.ok, report.as_dict()
    return harness


def expected_catalog(h: Harness) -> dict[str, dict[str, Any]]:
    """What commercetools must hold, computed from d365sim's own rows (not from our mapping)."""
    products = h.sim_rows("ReleasedProductsV2")
    variants = h.sim_rows("ReleasedProductVariantsV2")
    german = {
        row["ProductNumber"]: row["ProductName"]
        for row in h.sim_rows("ProductTranslations", None, "LanguageId eq 'de'")
    }
    by_master: dict[str, list[dict[str, Any]]] = {}
    for row in variants:
        by_master.setdefault(row["ItemNumber"], []).append(row)
    expected = {}
    for row in products:
        item = row["ItemNumber"]
        rows = by_master.get(item, [])
        expected[item] = {
            "name": {"en": row["ProductName"], "de": german[row["ProductNumber"]]},
            "skus": sorted(sku_of(v) for v in rows) if rows else [item],
            "dims": {
                sku_of(v): {
                    name: v[field]
                    for field, name in (
                        ("ProductColorId", "color"),
                        ("ProductSizeId", "size"),
                        ("ProductStyleId", "style"),
                        ("ProductConfigurationId", "configuration"),
                    )
                    if v[field]
                }
                for v in rows
            },
        }
    return expected


def held_variants(product: dict[str, Any], projection: str = "current") -> list[dict[str, Any]]:
    data = product["masterData"][projection]
    return [data["masterVariant"], *data["variants"]]


def attributes(variant: dict[str, Any]) -> dict[str, Any]:
    return {a["name"]: a["value"] for a in variant.get("attributes") or ()}


async def test_full_sync_mirrors_d365_and_a_second_run_makes_no_calls(ready: Harness) -> None:
    h = ready
    summary = await sync_catalog(h.settings, h.engine, event_hooks=h.hooks())
    expected = expected_catalog(h)
    assert summary.ok and summary.created == len(expected) == 60
    assert summary.ct_calls["POST"] == len(expected)  # one create per product, nothing else
    assert summary.ct_calls["GET"] <= 2  # a bulk lookup per batch of 250 + the product type

    products = h.products()
    assert set(products) == set(expected)
    for key, want in expected.items():
        product = products[key]
        assert product["masterData"]["published"] is True
        current = product["masterData"]["current"]
        assert current["name"] == want["name"]
        assert current["slug"]["en"].endswith(key.lower())
        variants = held_variants(product)
        assert [v["sku"] for v in variants] == want["skus"]
        for variant in variants:
            held = attributes(variant)
            assert held["d365-item-number"] == key
            dims = {k: v for k, v in held.items() if not k.startswith("d365-")}
            assert dims == want["dims"].get(variant["sku"], {})
    assert sum(len(w["skus"]) > 1 for w in expected.values()) == 12  # the seed's masters

    versions = {key: p["version"] for key, p in products.items()}
    seen = len(h.ct.api_responses())
    again = await sync_catalog(h.settings, h.engine, event_hooks=h.hooks())
    assert len(h.ct.api_responses()) == seen  # zero commercetools calls
    assert again.unchanged == len(expected) and again.created == again.updated == 0
    assert sum(again.ct_calls.values()) == 0
    assert {key: p["version"] for key, p in h.products().items()} == versions

    # --full diffs against commercetools: reads, but still writes nothing
    full = await sync_catalog(h.settings, h.engine, full=True, event_hooks=h.hooks())
    assert full.unchanged == len(expected) and full.ct_writes == 0 and full.ct_calls["GET"] >= 1
    assert {key: p["version"] for key, p in h.products().items()} == versions


async def test_a_name_changed_in_d365_updates_only_that_product(ready: Harness) -> None:
    h = ready
    await sync_catalog(h.settings, h.engine)
    before = {key: p["version"] for key, p in h.products().items()}
    h.sim_patch(
        "ReleasedProductsV2(dataAreaId='usmf',ItemNumber='D0003')", {"ProductName": "Renamed"}
    )
    h.sim_patch(
        "ProductTranslations(ProductNumber='D0010',LanguageId='de')", {"ProductName": "Umbenannt"}
    )

    summary = await sync_catalog(h.settings, h.engine, event_hooks=h.hooks())
    assert (summary.updated, summary.created, summary.failed) == (2, 0, 0)
    assert summary.unchanged == len(before) - 2
    writes = h.writes()
    assert len(writes) == 2 and summary.ct_writes == 2  # one update per changed product
    products = h.products()
    ids = {products["D0003"]["id"], products["D0010"]["id"]}
    assert {w.request.url.path.rsplit("/", 1)[1] for w in writes} == ids
    assert products["D0003"]["masterData"]["current"]["name"]["en"] == "Renamed"
    assert products["D0010"]["masterData"]["current"]["name"]["de"] == "Umbenannt"
    assert products["D0010"]["masterData"]["current"]["slug"]["de"] == "umbenannt-d0010"
    assert products["D0003"]["masterData"]["hasStagedChanges"] is False  # published again
    changed = {key for key, p in products.items() if p["version"] != before[key]}
    assert changed == {"D0003", "D0010"}
    stored = SyncStateStore(h.engine).get_many("catalog", ["D0003"])["D0003"]
    assert stored.ct_version == products["D0003"]["version"]


async def test_a_concurrent_writer_costs_a_409_and_the_sync_still_converges(ready: Harness) -> None:
    h = ready
    await sync_catalog(h.settings, h.engine)
    target = h.products()["D0004"]
    h.sim_patch("ReleasedProductsV2(dataAreaId='usmf',ItemNumber='D0004')", {"ProductName": "Ours"})
    bumped: list[int] = []

    async def concurrent_writer(request: httpx.Request) -> None:
        # Before our first update reaches commercetools, somebody else changes the product.
        if bumped or request.method != "POST" or not request.url.path.endswith(target["id"]):
            return
        token = h.ct_token()
        async with httpx.AsyncClient(timeout=30) as other:
            response = await other.post(
                f"{h.ct.url}/{h.ct.project_key}/products/{target['id']}",
                headers={"Authorization": f"Bearer {token}"},
                json={
                    "version": target["version"],
                    "actions": [{"action": "changeName", "name": {"en": "Theirs", "de": "Ihres"}}],
                },
            )
        response.raise_for_status()
        bumped.append(response.json()["version"])

    summary = await sync_catalog(h.settings, h.engine, event_hooks=h.hooks(concurrent_writer))
    assert bumped, "the concurrent writer did not run"
    statuses = Counter(r.status_code for r in h.writes())
    assert statuses[409] == 1 and statuses[200] == 1  # one conflict, then one good update
    assert (summary.updated, summary.failed) == (1, 0)
    product = h.products()["D0004"]
    assert product["masterData"]["current"]["name"]["en"] == "Ours"  # D365 wins, recomputed
    assert product["version"] > bumped[0]
    # the state stored is the converged one: the next run has nothing to do
    again = await sync_catalog(h.settings, h.engine)
    assert again.unchanged == 60 and sum(again.ct_calls.values()) == 0


def assert_split(products: dict[str, dict[str, Any]], expected: dict[str, Any], limit: int) -> None:
    """Every D365 sku in exactly one product, parts within the limit, keys item, item-2, …"""
    for item, want in expected.items():
        parts = -(-len(want["skus"]) // limit)
        keys = [item] + [f"{item}-{n}" for n in range(2, parts + 1)]
        held = [v["sku"] for key in keys for v in held_variants(products[key], "staged")]
        assert held == want["skus"], item  # sorted by sku, chunked in order
        assert all(len(held_variants(products[k], "staged")) <= limit for k in keys)
        assert f"{item}-{parts + 1}" not in products  # no leftover part
    all_skus = [v["sku"] for p in products.values() for v in held_variants(p, "staged")]
    assert len(all_skus) == len(set(all_skus)) == sum(len(w["skus"]) for w in expected.values())


async def test_variant_split_is_stable_across_runs_and_limit_changes(ready: Harness) -> None:
    h = ready
    expected = expected_catalog(h)
    five = h.with_catalog(variant_limit=5)
    first = await sync_catalog(five, h.engine)
    products = h.products()
    assert first.ok and len(products) > len(expected)  # some masters were split
    assert_split(products, expected, 5)
    slugs = [p["masterData"]["current"]["slug"]["en"] for p in products.values()]
    assert len(set(slugs)) == len(slugs)
    versions = {key: p["version"] for key, p in products.items()}

    seen = len(h.ct.api_responses())
    again = await sync_catalog(five, h.engine, event_hooks=h.hooks())
    full = await sync_catalog(five, h.engine, full=True, event_hooks=h.hooks())
    assert again.unchanged == full.unchanged == len(products)
    assert not [r for r in h.ct.api_responses()[seen:] if r.request.method != "GET"]
    assert {key: p["version"] for key, p in h.products().items()} == versions

    # A larger limit merges parts (leftovers deleted, skus moved); a smaller one splits again.
    deleted = {}
    for limit in (10, 3, 100):
        summary = await sync_catalog(h.with_catalog(variant_limit=limit), h.engine)
        assert summary.ok, ErrorQueue(h.engine).list()
        products = h.products()
        assert_split(products, expected, limit)
        deleted[limit] = summary.deleted
    assert deleted[10] > 0 and deleted[100] > 0  # leftover parts really were removed
    assert set(products) == set(expected)  # 100: no master of this seed needs a second part


async def test_a_product_commercetools_rejects_goes_to_the_error_queue(ready: Harness) -> None:
    h = ready

    async def corrupt(request: httpx.Request) -> None:
        # One draft reaches commercetools without its product type: a genuine 400 from the mock.
        if request.method == "POST" and request.url.path.endswith("/products"):
            body = json.loads(request.content)
            if body.get("key") == "D0007":
                del body["productType"]
                content = json.dumps(body).encode()
                request.stream = httpx.ByteStream(content)
                request._content = content
                request.headers["Content-Length"] = str(len(content))

    summary = await sync_catalog(h.settings, h.engine, event_hooks=h.hooks(corrupt))
    assert (summary.failed, summary.created) == (1, 59)
    [entry] = ErrorQueue(h.engine).list(flow="catalog")
    assert entry.business_key == "D0007" and entry.step == "upsert"
    assert "400" in entry.error and "productType" in entry.error
    assert entry.payload["key"] == "D0007" and entry.payload["masterVariant"]["sku"] == "D0007"
    assert "D0007" not in h.products()

    retry = await sync_catalog(h.settings, h.engine)  # only the failed one is tried again
    assert (retry.created, retry.unchanged, retry.failed) == (1, 59, 0)
    assert "D0007" in h.products()


async def test_dry_run_reports_the_plan_and_writes_nothing(ready: Harness) -> None:
    h = ready
    await sync_catalog(h.settings, h.engine)
    h.sim_patch("ReleasedProductsV2(dataAreaId='usmf',ItemNumber='D0002')", {"ProductName": "New"})
    summary = await sync_catalog(h.settings, h.engine, dry_run=True, event_hooks=h.hooks())
    assert summary.dry_run and summary.updated == 1 and summary.unchanged == 59
    assert summary.plan == [
        {"key": "D0002", "action": "update", "actions": ["changeName", "changeSlug", "publish"]}
    ]
    assert h.writes() == []
    assert h.products()["D0002"]["masterData"]["current"]["name"]["en"] != "New"
    real = await sync_catalog(h.settings, h.engine)  # the dry run stored nothing
    assert real.updated == 1


async def test_without_setup_the_run_stops_with_a_clear_error(harness: Harness) -> None:
    from d365ct.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="d365ct setup"):
        await sync_catalog(harness.settings, harness.engine)
    assert SyncStateStore(harness.engine).count("catalog") == 0


async def test_mapping_overrides_and_a_hook_shape_the_products(harness: Harness) -> None:
    h = harness
    settings = h.with_catalog(
        mapping=CatalogMappingSettings.model_validate(
            {
                "fields": ["SearchName"],
                "attributes": {
                    "brand": {"value": "Contoso"},
                    "product-group": {"field": "ProductGroupId", "default": "none"},
                },
                "hook": "tests.mapping.hook_samples:refuse_d0007",
            }
        )
    )
    report = await run_setup(settings)  # adds the configured attributes to the product type
    assert report.ok, report.as_dict()
    with h.ct_client() as client:
        product_type = client.get("/product-types/key=d365-product").json()
    assert {"brand", "product-group"} <= {a["name"] for a in product_type["attributes"]}

    summary = await sync_catalog(settings, h.engine, event_hooks=h.hooks())

    expected = expected_catalog(h)
    groups = {r["ItemNumber"]: r["ProductGroupId"] for r in h.sim_rows("ReleasedProductsV2")}
    assert (summary.created, summary.failed) == (len(expected) - 1, 1)
    [refused] = ErrorQueue(h.engine).list(flow="catalog")
    assert refused.business_key == "D0007" and refused.step == "map"
    assert refused.error == (
        "mapping hook tests.mapping.hook_samples:refuse_d0007 failed for product D0007: "
        "ValueError: D0007 is blocked for the web shop"
    )
    assert refused.payload["SearchName"]  # the source row as read, with the extra field
    products = h.products()
    assert "D0007" not in products and len(products) == len(expected) - 1
    for key, product in products.items():
        current = product["masterData"]["current"]
        assert current["name"] == {k: v.upper() for k, v in expected[key]["name"].items()}
        for variant in held_variants(product):
            held = attributes(variant)
            assert held["brand"] == "Contoso"
            assert held["product-group"] == (groups[key] or "none")

    # the hook is part of the mapping: unchanged D365 data with the same hook writes nothing
    again = await sync_catalog(settings, h.engine, event_hooks=h.hooks())
    assert (again.unchanged, again.failed, again.ct_writes) == (len(expected) - 1, 1, 0)

    # another hook (the documented example) re-syncs what its drafts change: every product
    mapping = settings.catalog.mapping.model_copy(
        update={"hook": "d365ct.mapping.examples:describe_with_search_name"}
    )
    described = settings.model_copy(
        update={"catalog": settings.catalog.model_copy(update={"mapping": mapping})}
    )
    summary = await sync_catalog(described, h.engine, event_hooks=h.hooks())
    assert (summary.updated, summary.created, summary.failed) == (len(expected) - 1, 1, 0)
    search = {r["ItemNumber"]: r["SearchName"] for r in h.sim_rows("ReleasedProductsV2")}
    for key, product in h.products().items():
        current = product["masterData"]["current"]
        assert current["name"] == expected[key]["name"]  # no longer upper-cased
        assert current["description"] == {
            locale: f"{name} (D365 search name {search[key]})"
            for locale, name in expected[key]["name"].items()
        }
