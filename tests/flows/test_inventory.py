"""U2 inventory sync against d365sim and the commercetools mock, checked through their own APIs."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from d365ct.config import Settings
from d365ct.flows.inventory import InventorySyncSummary, sync_inventory
from d365ct.runtime import adapters
from d365ct.store import make_engine, migrate
from d365ct.store.error_queue import ErrorQueue
from d365ct.store.tables import sync_state
from tests.ct_fixtures import CtMock
from tests.flows.support import SECRET_ENV, full_settings
from tests.sim_fixtures import RunningSim

PRODUCTS = 40
PAGE_SIZE = 50  # the test simulator's page size
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
UNMAPPED = {("usmf", "24"), ("demf", "DE-03")}  # left out of full_settings on purpose
ResponseHook = Callable[[httpx.Response], Awaitable[None]]


def expected_sku(row: dict[str, Any]) -> str:
    """The SKU rule, written out independently of d365ct.mapping.skus."""
    dims = ("ProductColorId", "ProductSizeId", "ProductStyleId", "ProductConfigurationId")
    return "-".join([row["ItemNumber"], *(row[d] for d in dims if row[d])])


@dataclass
class InventoryEnv:
    """d365sim seeded small, a fresh commercetools project with the supply channels, a store."""

    sim: RunningSim
    ct: CtMock
    settings: Settings
    engine: sa.Engine
    admin: httpx.Client  # straight to the mock's REST API, as a person with a token would
    hooks: list[ResponseHook] = field(default_factory=list)

    # -- commercetools, read and tampered with directly ----------------------------------------

    def url(self, path: str) -> str:
        return f"{self.ct.url}/{self.ct.project_key}/{path}"

    def channels(self) -> dict[str, str]:
        body = self.admin.get(self.url("channels"), params={"limit": 500}).json()
        return {c["key"]: c["id"] for c in body["results"]}

    def create_channel(self, key: str, roles: tuple[str, ...] = ("InventorySupply",)) -> str:
        response = self.admin.post(self.url("channels"), json={"key": key, "roles": list(roles)})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def delete_channel(self, key: str) -> None:
        channel = self.admin.get(self.url(f"channels/key={key}")).json()
        response = self.admin.delete(
            self.url(f"channels/{channel['id']}"), params={"version": channel["version"]}
        )
        assert response.status_code == 200, response.text

    def inventory(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(sku, channel key) → entry, every entry of the project (GET inventory?limit=500)."""
        key_of = {cid: key for key, cid in self.channels().items()}
        found: dict[tuple[str, str], dict[str, Any]] = {}
        offset = 0
        while True:
            page = self.admin.get(
                self.url("inventory"), params={"limit": 500, "offset": offset}
            ).json()
            for entry in page["results"]:
                channel = key_of[entry["supplyChannel"]["id"]]
                assert (entry["sku"], channel) not in found, "duplicate inventory entry"
                found[(entry["sku"], channel)] = entry
            if len(page["results"]) < 500:
                return found
            offset += 500

    def quantities(self) -> dict[tuple[str, str], int]:
        return {key: entry["quantityOnStock"] for key, entry in self.inventory().items()}

    def tamper(self, sku: str, channel: str, quantity: int) -> None:
        entry = self.inventory()[(sku, channel)]
        response = self.admin.post(
            self.url(f"inventory/{entry['id']}"),
            json={
                "version": entry["version"],
                "actions": [{"action": "changeQuantity", "quantity": quantity}],
            },
        )
        assert response.status_code == 200, response.text

    def posts(self) -> list[httpx.Request]:
        return [r.request for r in self.ct.api_responses("POST")]

    # -- D365, read and changed through d365sim's OData ------------------------------------------

    def on_hand(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        with self.sim.client() as client:
            url: str | None = "/data/WarehousesOnHandV2"
            params: dict[str, str] | None = {"cross-company": "true"}
            while url is not None:
                body = client.get(url, params=params).json()
                rows.extend(body["value"])
                url, params = body.get("@odata.nextLink"), None
        return rows

    def expected(self, rows: list[dict[str, Any]] | None = None) -> dict[tuple[str, str], int]:
        channel = {
            (w.legal_entity, w.warehouse): w.supply_channel for w in self.settings.warehouses
        }
        sums: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for row in self.on_hand() if rows is None else rows:
            key = channel.get((row["dataAreaId"], row["InventoryWarehouseId"]))
            if key is not None:
                sums[(expected_sku(row), key)] += Decimal(str(row["AvailableOnHandQuantity"]))
        return {key: max(0, math.floor(total)) for key, total in sums.items()}

    def row_of(self, key: tuple[str, str]) -> dict[str, Any]:
        """The on-hand row behind an entry (sku, channel key)."""
        channel = {
            (w.legal_entity, w.warehouse): w.supply_channel for w in self.settings.warehouses
        }
        (row,) = (
            r
            for r in self.on_hand()
            if (expected_sku(r), channel.get((r["dataAreaId"], r["InventoryWarehouseId"]))) == key
        )
        return row

    def on_hand_segment(self, row: dict[str, Any]) -> str:
        return "WarehousesOnHandV2(" + ",".join(f"{k}='{row[k]}'" for k in ON_HAND_KEYS) + ")"

    def set_on_hand(self, row: dict[str, Any], quantity: Decimal | int) -> None:
        with self.sim.client() as client:
            response = client.patch(
                f"/data/{self.on_hand_segment(row)}",
                params={"cross-company": "true"},
                json={"AvailableOnHandQuantity": float(quantity)},
            )
        assert response.status_code == 204, response.text

    def delete_on_hand(self, row: dict[str, Any]) -> None:
        with self.sim.client() as client:
            response = client.delete(
                f"/data/{self.on_hand_segment(row)}", params={"cross-company": "true"}
            )
        assert response.status_code == 204, response.text

    # -- d365ct --------------------------------------------------------------------------------

    async def sync(self, **options: Any) -> InventorySyncSummary:
        async def record(response: httpx.Response) -> None:
            self.ct.responses.append(response)
            for hook in self.hooks:
                await hook(response)

        async with adapters(self.settings, event_hooks={"response": [record]}) as io:
            return await sync_inventory(self.settings, self.engine, io=io, **options)

    def errors(self) -> list[Any]:
        return ErrorQueue(self.engine).list(flow="inventory", limit=10_000)

    def state_rows(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(sync_state)).scalar_one()
            )


def ct_token(ct: CtMock) -> str:
    response = httpx.post(
        f"{ct.url}/oauth/token",
        params={"grant_type": "client_credentials", "scope": f"manage_project:{ct.project_key}"},
        auth=("tester", "secret"),
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def make_env(
    sim: RunningSim, ct: CtMock, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[InventoryEnv]:
    """Shared by the inventory, reconciliation and CLI tests."""
    monkeypatch.setenv(SECRET_ENV, sim.config.client_secret)
    sim.simulator.seed(PRODUCTS)
    settings = full_settings(sim.base_url, ct.url, ct.project_key, str(workdir))
    migrate(settings.store.url)
    engine = make_engine(settings.store.url)
    admin = httpx.Client(headers={"Authorization": f"Bearer {ct_token(ct)}"}, timeout=30)
    env = InventoryEnv(sim, ct, settings, engine, admin)
    # `d365ct setup` creates the supply channels; here the test does
    for channel in sorted({w.supply_channel for w in settings.warehouses}):
        env.create_channel(channel)
    yield env
    admin.close()
    engine.dispose()


@pytest.fixture
def env(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[InventoryEnv]:
    yield from make_env(fresh_sim, ct_mock, tmp_path, monkeypatch)


def find_row(rows: list[dict[str, Any]], le: str, warehouse: str, **match: Any) -> dict[str, Any]:
    for row in rows:
        if row["dataAreaId"] != le or row["InventoryWarehouseId"] != warehouse:
            continue
        if all(
            (row[k] != "") if v is True else (row[k] == v if v is not None else True)
            for k, v in match.items()
        ):
            return row
    raise AssertionError(f"no on-hand row in {le}/{warehouse} with {match}")


# ---- tests -------------------------------------------------------------------------------------


async def test_a_full_sync_writes_every_entry_and_a_second_one_writes_nothing(
    env: InventoryEnv,
) -> None:
    rows = env.on_hand()
    expected = env.expected(rows)
    unmapped = [r for r in rows if (r["dataAreaId"], r["InventoryWarehouseId"]) in UNMAPPED]
    assert len(expected) > 100 and unmapped

    first = await env.sync()

    assert env.quantities() == expected
    assert any("-" in sku for sku, _ in expected)  # variants are in the data
    assert (first.created, first.updated, first.unchanged) == (len(expected), 0, 0)
    assert first.entries == len(expected) and first.rows == len(rows)
    assert first.failed == len(unmapped)
    assert len(env.posts()) == len(expected)  # one create per entry, nothing else written
    per_entity = {le: sum(1 for r in rows if r["dataAreaId"] == le) for le in ("usmf", "demf")}
    pages = sum(math.ceil(n / PAGE_SIZE) for n in per_entity.values())
    assert pages <= first.d365_calls <= pages + 2  # paged reads, never one call per SKU
    assert first.ct_calls < len(expected) + 10

    # unmapped warehouses: one error queue entry per row, with a reason a person understands
    errors = env.errors()
    assert {e.business_key for e in errors} == {
        f"{expected_sku(r)}@{r['dataAreaId']}/{r['InventoryWarehouseId']}" for r in unmapped
    }
    for entry in errors:
        warehouse = entry.payload["InventoryWarehouseId"]
        assert entry.step == "map"
        assert f"warehouse '{warehouse}'" in entry.error
        assert f"legal entity '{entry.payload['dataAreaId']}'" in entry.error
        assert entry.correlation["legal_entity"] == entry.payload["dataAreaId"]
        assert entry.payload["ItemNumber"] and "AvailableOnHandQuantity" in entry.payload

    env.ct.responses.clear()
    second = await env.sync()
    assert env.posts() == []
    assert (second.created, second.updated, second.zeroed) == (0, 0, 0)
    assert second.unchanged == len(expected)
    assert second.ct_calls == 1  # the supply channels, looked up once per run
    assert {e.attempts for e in env.errors()} == {2}  # same open entries, one more attempt


async def test_changed_on_hand_rows_write_exactly_those_entries(env: InventoryEnv) -> None:
    await env.sync()
    rows = env.on_hand()
    plain = find_row(rows, "usmf", "11", ProductColorId="", ProductSizeId="")
    variant = find_row(rows, "demf", "DE-01", ProductSizeId=True)
    positive = next(
        r
        for r in rows
        if (r["dataAreaId"], r["InventoryWarehouseId"]) == ("usmf", "12")
        and r["AvailableOnHandQuantity"] > 0
    )
    hidden = find_row(rows, "usmf", "24")  # unmapped: its change must not write anything
    env.set_on_hand(plain, Decimal("999.9"))  # floors to 999
    env.set_on_hand(variant, Decimal("3"))
    env.set_on_hand(positive, -4)  # over-reserved: 0 in commercetools
    env.set_on_hand(hidden, 500)
    before = env.inventory()
    env.ct.responses.clear()

    summary = await env.sync()

    changed = {
        (expected_sku(plain), "usmf-11"),
        (expected_sku(variant), "demf-de-01"),
        (expected_sku(positive), "usmf-12"),
    }
    if before[(expected_sku(variant), "demf-de-01")]["quantityOnStock"] == 3:
        changed.discard((expected_sku(variant), "demf-de-01"))
    posts = env.posts()
    assert sorted(r.url.path for r in posts) == sorted(
        f"/{env.ct.project_key}/inventory/{before[key]['id']}" for key in changed
    )
    for request in posts:
        assert json.loads(request.content)["actions"][0]["action"] == "changeQuantity"
    assert summary.updated == len(changed) and summary.created == 0
    assert summary.unchanged == summary.entries - len(changed)
    after = env.quantities()
    assert after == env.expected()
    assert after[(expected_sku(plain), "usmf-11")] == 999
    assert after[(expected_sku(positive), "usmf-12")] == 0
    assert summary.ct_calls == 1 + len(changed)  # channels + one write each, no reads


async def test_full_compares_with_commercetools_and_conflicts_are_resolved(
    env: InventoryEnv,
) -> None:
    await env.sync()
    expected = env.expected()
    (a, b, c) = sorted(expected)[:3]
    env.tamper(*a, quantity=expected[a] + 7)
    env.tamper(*b, quantity=expected[b] + 9)

    # a delta sync trusts what it wrote last: tampering in commercetools is for --full (and the
    # nightly reconciliation) to find
    env.ct.responses.clear()
    delta = await env.sync()
    assert env.posts() == [] and delta.unchanged == len(expected)

    full = await env.sync(full=True)
    assert len(env.posts()) == 2 and full.updated == 2 and full.unchanged == len(expected) - 2
    assert env.quantities() == expected

    # a stale version (somebody wrote meanwhile) costs a 409 and a re-read, never a lost write
    env.tamper(*c, quantity=expected[c] + 1)
    env.set_on_hand(env.row_of(c), expected[c] + 40)
    env.ct.responses.clear()
    summary = await env.sync()
    statuses = [r.status_code for r in env.ct.api_responses("POST")]
    assert statuses == [409, 200]
    assert summary.updated == 1 and summary.failed == delta.failed
    assert env.quantities()[c] == expected[c] + 40


async def test_a_dry_run_plans_and_writes_nothing(env: InventoryEnv) -> None:
    expected = env.expected()
    dry = await env.sync(dry_run=True)
    assert env.posts() == [] and env.inventory() == {}
    assert env.errors() == [] and env.state_rows() == 0
    assert dry.created == len(expected) and dry.written == len(expected)
    assert {(p.sku, p.supply_channel): p.after for p in dry.planned} == expected
    assert {p.action for p in dry.planned} == {"create"}
    assert dry.failed > 0 and all("is not mapped" in f.reason for f in dry.failures)

    await env.sync()
    row = find_row(env.on_hand(), "usmf", "11")
    key = (expected_sku(row), "usmf-11")
    env.set_on_hand(row, expected[key] + 5)
    env.ct.responses.clear()
    dry = await env.sync(dry_run=True)
    assert env.posts() == []
    assert [(p.sku, p.action, p.before, p.after) for p in dry.planned] == [
        (key[0], "update", expected[key], expected[key] + 5)
    ]
    assert env.quantities()[key] == expected[key]


async def test_missing_channels_rejected_writes_and_vanished_rows(env: InventoryEnv) -> None:
    env.delete_channel("usmf-21")
    env.delete_channel("demf-de-02")
    env.create_channel("demf-de-02", roles=("ProductDistribution",))  # not a supply channel
    rows = env.on_hand()

    # usmf-12 disappears after the lookup: commercetools then rejects every write to it
    async def delete_usmf_12(response: httpx.Response) -> None:
        if "/channels" in response.request.url.path and response.request.method == "GET":
            env.hooks.clear()
            env.delete_channel("usmf-12")

    env.hooks.append(delete_usmf_12)
    summary = await env.sync()

    by_step: dict[str, list[Any]] = defaultdict(list)
    for entry in env.errors():
        by_step[entry.step].append(entry)
    in_21 = [r for r in rows if (r["dataAreaId"], r["InventoryWarehouseId"]) == ("usmf", "21")]
    in_de02 = [r for r in rows if (r["dataAreaId"], r["InventoryWarehouseId"]) == ("demf", "DE-02")]
    channel_errors = {e.business_key: e for e in by_step["resolve-channel"]}
    assert set(channel_errors) == {
        f"{expected_sku(r)}@{r['dataAreaId']}/{r['InventoryWarehouseId']}" for r in in_21 + in_de02
    }
    assert any("'usmf-21' does not exist" in e.error for e in channel_errors.values())
    assert any("lacks the role InventorySupply" in e.error for e in channel_errors.values())
    write_errors = by_step["write"]
    assert write_errors and all("ReferencedResourceNotFound" in e.error for e in write_errors)
    assert all(e.business_key.endswith("@usmf/12") for e in write_errors)
    assert all(e.payload["InventoryWarehouseId"] == "12" for e in write_errors)
    created = env.quantities()
    expected = env.expected(rows)
    good = {k: v for k, v in expected.items() if k[1] not in ("usmf-21", "demf-de-02", "usmf-12")}
    assert created == good  # everything else went through
    assert summary.created == len(good)

    # a row D365 no longer has: the entry this flow wrote goes to 0
    gone = next(
        r
        for r in rows
        if (r["dataAreaId"], r["InventoryWarehouseId"]) == ("usmf", "11")
        and created[(expected_sku(r), "usmf-11")] > 0
    )
    key = (expected_sku(gone), "usmf-11")
    env.delete_on_hand(gone)
    env.ct.responses.clear()
    after = await env.sync()
    assert (after.zeroed, after.updated, after.created) == (1, 0, 0)
    assert env.quantities()[key] == 0
    assert len(env.posts()) == 1
    again = await env.sync()  # zero is remembered: nothing to do the next time
    assert again.zeroed == 0 and again.written == 0


async def test_a_row_without_item_stops_zeroing_in_its_channel(env: InventoryEnv) -> None:
    from d365sim.entities import BY_NAME

    await env.sync(legal_entity="usmf")
    rows = [r for r in env.on_hand() if r["dataAreaId"] == "usmf"]
    in_12 = [r for r in rows if r["InventoryWarehouseId"] == "12"]
    in_11 = [r for r in rows if r["InventoryWarehouseId"] == "11"]
    vanished_12, vanished_11 = in_12[0], in_11[0]
    before = env.quantities()
    env.delete_on_hand(vanished_12)
    env.delete_on_hand(vanished_11)
    # Bad data in warehouse 12: a row naming no item may be the vanished row's, so the sync
    # cannot tell "no stock" from "unreadable stock" there, and must not zero anything.
    env.sim.simulator.store.insert_many(
        BY_NAME["WarehousesOnHandV2"], [{**vanished_12, "ItemNumber": ""}]
    )
    summary = await env.sync(legal_entity="usmf")

    after = env.quantities()
    assert (
        after[(expected_sku(vanished_12), "usmf-12")]
        == before[(expected_sku(vanished_12), "usmf-12")]
        > 0
    )
    assert after[(expected_sku(vanished_11), "usmf-11")] == 0  # other channels still zero
    assert summary.zeroed == 1
    (queued,) = [e for e in env.errors() if e.business_key == "?@usmf/12"]
    assert queued.step == "map" and "has no ItemNumber" in queued.error


async def test_progress_and_one_legal_entity(env: InventoryEnv) -> None:
    seen: list[tuple[str, int, int | None]] = []
    summary = await env.sync(legal_entity="USMF", progress=lambda *a: seen.append(a))
    usmf_rows = sum(1 for r in env.on_hand() if r["dataAreaId"] == "usmf")
    assert seen[0] == ("usmf", 0, usmf_rows) and seen[-1] == ("usmf", usmf_rows, usmf_rows)
    assert summary.legal_entities == ["usmf"] and summary.rows == usmf_rows
    pages = math.ceil(usmf_rows / PAGE_SIZE)
    assert pages + 1 <= summary.d365_calls <= pages + 2  # the $count for the bar, and the pages
    assert {channel for _, channel in env.quantities()} == {"usmf-11", "usmf-12", "usmf-21"}
    with pytest.raises(Exception, match="legal entity 'xxmf' is not configured"):
        await env.sync(legal_entity="xxmf")
