"""C14 reconciliation: DMF export from d365sim (through DBOS) against the commercetools mock."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from d365ct.config import InventoryMappingSettings, InventorySettings
from d365ct.d365.entities import CUSTOMERS_V3, INVENTORY_ON_HAND_V2, EntityDefinition
from d365ct.d365.packages import PackageFormatError, PackageWriter, open_package
from d365ct.engine import launch_engine, shutdown_engine
from d365ct.flows.dmf_jobs import PackageJobs
from d365ct.flows.reconcile import (
    ReconcileResult,
    on_hand_entity,
    package_jobs,
    reconcile_inventory,
)
from d365ct.mapping.examples import SAFETY_STOCK
from d365ct.runtime import adapters
from d365ct.store import JobStore
from d365ct.store.reports import ReportStore
from tests.ct_fixtures import CtMock
from tests.flows.test_inventory import UNMAPPED, InventoryEnv, make_env
from tests.sim_fixtures import RunningSim


@pytest.fixture
def env(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[InventoryEnv]:
    yield from make_env(fresh_sim, ct_mock, tmp_path, monkeypatch)


@pytest.fixture
def jobs(env: InventoryEnv) -> Iterator[PackageJobs]:
    instance = package_jobs(env.settings)
    launch_engine(env.settings.store.url, polling_interval_sec=0.05)
    yield instance
    shutdown_engine(workflow_completion_timeout_sec=5)


async def reconcile(env: InventoryEnv, jobs: PackageJobs, **options: Any) -> list[ReconcileResult]:
    async def record(response: httpx.Response) -> None:
        env.ct.responses.append(response)

    settings = options.pop("settings", env.settings)
    async with adapters(settings, event_hooks={"response": [record]}) as io_:
        return await reconcile_inventory(settings, env.engine, jobs, io=io_, **options)


def add_entry(env: InventoryEnv, sku: str, channel: str, quantity: int) -> None:
    response = env.admin.post(
        env.url("inventory"),
        json={
            "sku": sku,
            "quantityOnStock": quantity,
            "supplyChannel": {"typeId": "channel", "id": env.channels()[channel]},
        },
    )
    assert response.status_code == 201, response.text


def delete_entry(env: InventoryEnv, key: tuple[str, str]) -> None:
    entry = env.inventory()[key]
    response = env.admin.delete(
        env.url(f"inventory/{entry['id']}"), params={"version": entry["version"]}
    )
    assert response.status_code == 200, response.text


async def test_reconciliation_corrects_exactly_the_drift_and_reports_it(
    env: InventoryEnv, jobs: PackageJobs
) -> None:
    await env.sync()
    expected = env.expected()
    usmf = sorted(k for k in expected if k[1].startswith("usmf"))
    demf = sorted(k for k in expected if k[1].startswith("demf"))
    tampered, patched, deleted = usmf[0], usmf[1], demf[0]
    env.tamper(*tampered, quantity=expected[tampered] + 11)
    env.tamper(*demf[1], quantity=expected[demf[1]] + 3)
    env.set_on_hand(env.row_of(patched), expected[patched] + 25)  # a delta the sync missed
    delete_entry(env, deleted)
    add_entry(env, "GHOST-1", "usmf-12", 6)  # commercetools sells what D365 does not have
    add_entry(env, "GHOST-2", "usmf-12", 0)  # … already 0: nothing to do
    env.ct.responses.clear()

    results = await reconcile(env, jobs)

    assert [(r.legal_entity, r.state) for r in results] == [
        ("usmf", "completed"),
        ("demf", "completed"),
    ]
    reports = ReportStore(env.engine)
    lines = {
        (line.sku, line.supply_channel): (line.action, line.ct_before, line.ct_after)
        for r in results
        for line in reports.lines(r.report_id)
    }
    assert lines == {
        tampered: ("corrected", expected[tampered] + 11, expected[tampered]),
        demf[1]: ("corrected", expected[demf[1]] + 3, expected[demf[1]]),
        patched: ("corrected", expected[patched], expected[patched] + 25),
        deleted: ("created", None, expected[deleted]),
        ("GHOST-1", "usmf-12"): ("zeroed", 6, 0),
    }
    (ghost,) = reports.lines(results[0].report_id, action="zeroed")
    assert ghost.d365_quantity is None and ghost.warehouse == "12"
    (fixed,) = [line for line in reports.lines(results[0].report_id) if line.sku == patched[0]]
    assert fixed.d365_quantity == expected[patched] + 25 and fixed.warehouse == "11"

    # commercetools now holds D365's quantities, and exactly the drift was written
    after = env.quantities()
    assert after.pop(("GHOST-1", "usmf-12")) == 0 and after.pop(("GHOST-2", "usmf-12")) == 0
    assert after == env.expected()
    assert len(env.posts()) == 5

    # counts per action and per warehouse
    rows = env.on_hand()
    usmf_counts = results[0].counts
    assert usmf_counts["rows"] == sum(1 for r in rows if r["dataAreaId"] == "usmf")
    assert usmf_counts["actions"] == {
        "unchanged": len(usmf) - 2 + 1,  # + GHOST-2
        "corrected": 2,
        "created": 0,
        "zeroed": 1,
        "failed": 0,
        "unmapped": sum(
            1
            for r in rows
            if (r["dataAreaId"], r["InventoryWarehouseId"]) in UNMAPPED
            and r["dataAreaId"] == "usmf"
        ),
        "held": 0,
    }
    assert usmf_counts["held"] == [] and usmf_counts["zeroing_suspended"] == []
    assert usmf_counts["warehouses"]["12"]["zeroed"] == 1
    assert usmf_counts["warehouses"]["24"]["unmapped"] == usmf_counts["actions"]["unmapped"]
    assert sum(w["unchanged"] for w in usmf_counts["warehouses"].values()) == len(usmf) - 1
    assert results[1].counts["actions"]["created"] == 1
    assert usmf_counts["ct_entries"] == len(usmf) + 2

    # the export ran as a durable job whose id is the report's
    job = JobStore(env.engine).get(results[0].report_id)
    assert job is not None and job.kind == "export" and job.state == "succeeded"
    assert results[0].report_id.startswith("reconcile-inventory-usmf-")
    assert usmf_counts["export"]["execution_id"] == job.execution_id
    stored = reports.get(results[0].report_id)
    assert stored is not None and stored.finished_at is not None
    assert stored.counts["actions"] == usmf_counts["actions"]
    assert not list((env.settings.store.workdir / "exports").glob("*.zip"))

    # a second run finds nothing, and the delta sync agrees with what reconciliation wrote
    env.ct.responses.clear()
    again = await reconcile(env, jobs)
    assert [reports.count_lines(r.report_id) for r in again] == [0, 0]
    assert env.posts() == []
    summary = await env.sync()
    assert env.posts() == [] and summary.written == 0


async def test_reconciling_an_empty_project_creates_everything(
    env: InventoryEnv, jobs: PackageJobs
) -> None:
    expected = env.expected()
    results = await reconcile(env, jobs, legal_entity="demf")
    assert [r.legal_entity for r in results] == ["demf"]
    demf = {k: v for k, v in expected.items() if k[1].startswith("demf")}
    assert env.quantities() == demf
    reports = ReportStore(env.engine)
    report_id = results[0].report_id
    assert {line.action for line in reports.lines(report_id)} == {"created"}
    assert reports.count_lines(report_id) == len(demf)
    text = io.StringIO()
    assert reports.write_csv(report_id, text) == len(demf)
    rows = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert {(r["sku"], r["supply_channel"]): int(r["ct_after"]) for r in rows} == demf
    assert all(r["ct_before"] == "" for r in rows)
    data = json.loads(json.dumps(reports.to_dict(report_id)))
    assert data["report"]["counts"]["actions"]["created"] == len(demf)


async def test_a_failed_export_is_reported_and_the_others_still_run(
    env: InventoryEnv, jobs: PackageJobs
) -> None:
    broken = env.settings.model_copy(
        update={"inventory": InventorySettings(export_project="no-such-project")}
    )
    results = await reconcile(env, jobs, settings=broken)
    assert [(r.legal_entity, r.state) for r in results] == [("usmf", "failed"), ("demf", "failed")]
    assert all("no-such-project" in (r.error or "") for r in results), results[0].error
    assert all("d365ct jobs show reconcile-inventory-" in (r.error or "") for r in results)
    assert env.inventory() == {}


ON_HAND_KEY_FIELDS = (
    "dataAreaId",
    "ItemNumber",
    "ProductColorId",
    "ProductConfigurationId",
    "ProductSizeId",
    "ProductStyleId",
    "InventorySiteId",
    "InventoryWarehouseId",
)


def write_raw_on_hand(env: InventoryEnv, row: dict[str, Any]) -> None:
    """Store a row in d365sim as D365 might hold it, bypassing OData validation (bad data)."""
    from d365sim.entities import BY_NAME

    env.sim.simulator.store.upsert(BY_NAME["WarehousesOnHandV2"], row, by=ON_HAND_KEY_FIELDS)


def reconcile_errors(env: InventoryEnv) -> list[Any]:
    """Error-queue entries a reconciliation wrote (the delta sync queues unmapped rows too)."""
    return [e for e in env.errors() if str(e.correlation.get("run")).startswith("reconcile-")]


async def test_bad_d365_rows_are_queued_and_their_entries_left_untouched(
    env: InventoryEnv, jobs: PackageJobs
) -> None:
    await env.sync()
    expected = env.expected()
    in_11 = sorted(k for k in expected if k[1] == "usmf-11")
    unreadable, drifted = in_11[0], in_11[1]
    before = env.quantities()
    # An unparsable quantity: the entry must not be zeroed as if D365 had no stock for it.
    write_raw_on_hand(env, {**env.row_of(unreadable), "AvailableOnHandQuantity": None})
    # A row of warehouse 12 without ItemNumber could be any entry's: nothing there is zeroed.
    itemless = {**env.row_of(sorted(k for k in expected if k[1] == "usmf-12")[0])}
    itemless.update(ItemNumber="", AvailableOnHandQuantity=5)
    write_raw_on_hand(env, itemless)
    add_entry(env, "GHOST-1", "usmf-12", 6)  # zeroed by a clean run (see the test above)
    env.tamper(*drifted, quantity=expected[drifted] + 4)  # the rest still gets corrected
    env.ct.responses.clear()

    results = await reconcile(env, jobs, legal_entity="usmf")

    (usmf,) = results
    assert usmf.state == "completed"
    after = env.quantities()
    assert after[unreadable] == before[unreadable] == expected[unreadable]
    assert after[("GHOST-1", "usmf-12")] == 6
    assert after[drifted] == expected[drifted]
    assert len(env.posts()) == 1  # the one correction

    counts = usmf.counts
    assert counts["actions"]["failed"] == 2
    assert counts["actions"]["held"] == 2  # the unreadable entry and GHOST-1
    assert counts["actions"]["zeroed"] == 0 and counts["actions"]["corrected"] == 1
    assert counts["held"] == [f"{unreadable[0]}@usmf-11"] and counts["held_total"] == 1
    assert counts["zeroing_suspended"] == ["usmf-12"]
    lines = ReportStore(env.engine).lines(usmf.report_id, action="failed")
    assert sorted((line.sku, line.supply_channel) for line in lines) == [
        ("?", "usmf-12"),
        (unreadable[0], "usmf-11"),
    ]
    assert all(
        "left as it is" in (line.detail or "") or "zeroed" in (line.detail or "") for line in lines
    )

    errors = {e.business_key: e for e in reconcile_errors(env)}
    assert set(errors) == {f"{unreadable[0]}@usmf/11", "?@usmf/12"}
    queued = errors[f"{unreadable[0]}@usmf/11"]
    assert queued.step == "map" and "AvailableOnHandQuantity" in queued.error
    assert queued.payload["ItemNumber"] == env.row_of(unreadable)["ItemNumber"]
    assert queued.correlation["run"] == usmf.report_id
    assert "no ItemNumber" in errors["?@usmf/12"].error

    # the next night finds the same bad rows: one more attempt each, not new entries
    await reconcile(env, jobs, legal_entity="usmf")
    assert sorted(e.attempts for e in reconcile_errors(env)) == [2, 2]


SEED_ON_HAND = EntityDefinition(  # the seed brief's entity, under a label d365ct cannot know
    label="Inventory on-hand V2",
    odata_name="InventOnHandV2",
    fields=("dataAreaId", "ItemNumber", "InventoryWarehouseId", "AvailablePhysicalQuantity"),
    keys=("dataAreaId", "ItemNumber", "InventoryWarehouseId"),
)
SEED_ROW = {
    "dataAreaId": "usmf",
    "ItemNumber": "D0001",
    "InventoryWarehouseId": "11",
    "AvailablePhysicalQuantity": "7.5",
}


def _package(tmp_path: Path, *entities: EntityDefinition) -> Path:
    writer = PackageWriter(tmp_path, definition_group="d365ct-onhand")
    rows = {SEED_ON_HAND.label: SEED_ROW, CUSTOMERS_V3.label: {"CustomerAccount": "C1"}}
    (written,) = writer.write_units(
        list(entities), [[(e, rows.get(e.label, {})) for e in entities]]
    )
    return written.path


def test_the_configured_entity_set_chooses_the_package_entity(tmp_path: Path) -> None:
    path = _package(tmp_path / "seed", SEED_ON_HAND)
    with open_package(path) as package:
        label, definition = on_hand_entity(package, "InventOnHandV2", "AvailablePhysicalQuantity")
        assert label == "Inventory on-hand V2"
        (row,) = package.rows(label, definition=definition)
    assert row["ItemNumber"] == "D0001" and row["AvailablePhysicalQuantity"] == "7.5"

    # the default entity set is found by its DMF label among others
    path = _package(tmp_path / "default", CUSTOMERS_V3, INVENTORY_ON_HAND_V2)
    with open_package(path) as package:
        label, definition = on_hand_entity(
            package, "WarehousesOnHandV2", "AvailablePhysicalQuantity"
        )
    assert label == INVENTORY_ON_HAND_V2.label
    assert "AvailablePhysicalQuantity" in definition.fields

    # an entity set of unknown label in a package of several entities: a clear refusal
    path = _package(tmp_path / "two", CUSTOMERS_V3, SEED_ON_HAND)
    with open_package(path) as package, pytest.raises(PackageFormatError) as refused:
        on_hand_entity(package, "InventOnHandV2", "AvailablePhysicalQuantity")
    assert "inventory.entity_set 'InventOnHandV2'" in str(refused.value)
    assert "'Customers V3', 'Inventory on-hand V2'" in str(refused.value)

    # the default entity set never reads another entity by mistake
    path = _package(tmp_path / "wrong", SEED_ON_HAND)
    with open_package(path) as package, pytest.raises(PackageFormatError, match="no entity"):
        on_hand_entity(package, "WarehousesOnHandV2", "AvailableOnHandQuantity")


async def test_the_inventory_hook_shapes_what_sync_and_reconciliation_write(
    env: InventoryEnv, jobs: PackageJobs
) -> None:
    inventory = env.settings.inventory.model_copy(
        update={
            "mapping": InventoryMappingSettings(
                hook="d365ct.mapping.examples:hold_back_safety_stock"
            )
        }
    )
    env.settings = env.settings.model_copy(update={"inventory": inventory})
    summary = await env.sync(legal_entity="usmf")
    held_back = {
        key: max(0, quantity - SAFETY_STOCK)
        for key, quantity in env.expected().items()
        if key[1].startswith("usmf")
    }
    assert summary.failed == len([e for e in env.errors() if e.step == "map"])  # unmapped only
    assert env.quantities() == held_back
    assert any(q > 0 for q in held_back.values()) and any(q == 0 for q in held_back.values())

    # reconciliation applies the same hook, so it finds nothing to correct …
    env.ct.responses.clear()
    [result] = await reconcile(env, jobs, legal_entity="usmf")
    assert result.counts["actions"]["corrected"] == 0 and env.posts() == []
    assert result.counts["actions"]["unchanged"] == len(held_back)

    # … and corrects drift to the hooked quantity, not to D365's raw one
    key = next(k for k, q in held_back.items() if q > 0)
    env.tamper(*key, quantity=held_back[key] + SAFETY_STOCK)
    [result] = await reconcile(env, jobs, legal_entity="usmf")
    assert result.counts["actions"]["corrected"] == 1
    assert env.quantities()[key] == held_back[key]
