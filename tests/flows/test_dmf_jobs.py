"""The durable import and export workflows against d365sim + Azurite, with DBOS on SQLite."""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from d365ct.engine import launch_engine, shutdown_engine
from d365ct.flows.dmf_jobs import ImportRequest, PackageJobs, execution_id_for
from d365ct.store import JobStore, make_engine
from tests.flows.support import SECRET_ENV, customer, customers_request, sim_settings
from tests.sim_fixtures import RunningSim

_JOBS: dict[str, PackageJobs] = {}


@pytest.fixture
def jobs(
    fresh_sim: RunningSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PackageJobs]:
    monkeypatch.setenv(SECRET_ENV, fresh_sim.config.client_secret)
    url = f"sqlite:///{tmp_path / 'd365ct.sqlite'}"
    instance = _JOBS.get("d365")
    if instance is None:  # DBOS keeps registered instances for the whole process
        instance = _JOBS["d365"] = PackageJobs(
            sim_settings(fresh_sim.base_url), JobStore(make_engine(url)), tmp_path / "work"
        )
    instance.settings = sim_settings(fresh_sim.base_url)
    instance.store = JobStore(make_engine(url))
    instance.workdir = tmp_path / "work"
    instance._clients.clear()
    launch_engine(url, polling_interval_sec=0.05)
    yield instance
    shutdown_engine(workflow_completion_timeout_sec=5)


def sim_stats(sim: RunningSim) -> dict[str, object]:
    return dict(httpx.get(f"{sim.base_url}/_sim/stats").json())


async def test_import_reports_per_record_outcomes(fresh_sim: RunningSim, jobs: PackageJobs) -> None:
    request = customers_request(customer("WF-1"), customer("WF-2", group="BAD"), customer("WF-3"))
    handle = await jobs.start_import(request, "import-customers-1")
    result = await handle.get_result()
    assert result.succeeded == ("WF-1", "WF-3")
    assert list(result.failed) == ["WF-2"]
    assert "BAD" in result.failed["WF-2"] and "Customer groups" in result.failed["WF-2"]
    (package,) = result.packages
    assert package.d365_status == "PartiallySucceeded"
    assert package.execution_id == execution_id_for("import-customers-1")
    job = jobs.store.get("import-customers-1")
    assert job is not None and job.state == "partially_succeeded"
    assert job.execution_id == package.execution_id
    outcomes = {o.business_key: o.outcome for o in jobs.store.outcomes(job.id)}
    assert outcomes == {"WF-1": "ok", "WF-2": "failed", "WF-3": "ok"}
    with fresh_sim.client() as client:
        stored = client.get(
            "/data/CustomersV3", params={"$filter": "CustomerAccount eq 'WF-*'"}
        ).json()["value"]
    assert sorted(c["CustomerAccount"] for c in stored) == ["WF-1", "WF-3"]


async def test_starting_twice_imports_once(fresh_sim: RunningSim, jobs: PackageJobs) -> None:
    request = customers_request(customer("WF-10"))
    first = await jobs.start_import(request, "import-twice")
    second = await jobs.start_import(request, "import-twice")
    assert (await first.get_result()) == (await second.get_result())
    assert sim_stats(fresh_sim)["imports"] == 1


async def test_a_job_that_never_finishes_is_marked_stuck(
    fresh_sim: RunningSim, jobs: PackageJobs
) -> None:
    fresh_sim.config.job_seconds = 5
    jobs.settings = sim_settings(fresh_sim.base_url, poll_max_attempts=3)
    handle = await jobs.start_import(customers_request(customer("WF-20")), "import-stuck")
    result = await handle.get_result()
    assert result.stuck == ("import-stuck",)
    job = jobs.store.get("import-stuck")
    assert job is not None and job.state == "stuck"
    assert job.d365_status in ("NotRun", "Executing")
    assert "3 status polls" in (job.last_error or "")


async def test_large_batches_are_split_into_several_packages(
    fresh_sim: RunningSim, jobs: PackageJobs
) -> None:
    jobs.settings = sim_settings(fresh_sim.base_url, package_max_bytes=64 * 1024)
    rows = [{**customer(f"WF-S{i:04d}"), "OrganizationName": uuid.uuid4().hex} for i in range(4000)]
    handle = await jobs.start_import(customers_request(*rows), "import-split")
    result = await handle.get_result()
    assert len(result.packages) >= 2
    assert len(result.succeeded) == 4000 and not result.failed
    assert [p.job_id for p in result.packages][:2] == ["import-split.p1", "import-split.p2"]
    assert sim_stats(fresh_sim)["importOverlaps"] == 0


async def test_export_downloads_the_package(fresh_sim: RunningSim, jobs: PackageJobs) -> None:
    from dbos import SetWorkflowID

    with SetWorkflowID("export-customers-demf"):
        result = await jobs.export_project("customers", "d365ct-customers", "demf")
    assert result.state == "succeeded" and result.package_path is not None
    with zipfile.ZipFile(result.package_path) as archive:
        text = archive.read("Customers V3.csv").decode("utf-16")
    rows = [line for line in io.StringIO(text, newline="") if line.strip()][1:]
    with fresh_sim.client() as client:
        expected = client.get(
            "/data/CustomersV3/$count",
            params={"cross-company": "true", "$filter": "dataAreaId eq 'demf'"},
        ).text
    assert len(rows) == int(expected)
    job = jobs.store.get("export-customers-demf")
    assert job is not None and job.state == "succeeded" and job.kind == "export"


async def test_a_refused_package_fails_every_record_with_d365s_reason(
    fresh_sim: RunningSim, jobs: PackageJobs
) -> None:
    request = ImportRequest(
        flow="inventory",
        legal_entity="usmf",
        definition_group="d365ct-onhand-import",
        entities=("Inventory on-hand by warehouse V2",),  # D365 exports it, never imports it
        units=((("Inventory on-hand by warehouse V2", {"ItemNumber": "D0001"}),),),
        unit_keys=("D0001",),
    )
    handle = await jobs.start_import(request, "import-refused")
    result = await handle.get_result()
    assert result.failed == {"D0001": result.failed["D0001"]}
    assert "does not support import" in result.failed["D0001"]
    job = jobs.store.get("import-refused")
    assert job is not None and job.state == "failed"
    assert sim_stats(fresh_sim)["imports"] == 0
