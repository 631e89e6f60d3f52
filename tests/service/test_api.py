"""The JSON API mirrors the dashboard: jobs, error queue actions, reports and CSV, config."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from d365ct.check import CheckResult
from d365ct.config import Settings
from d365ct.service.app import create_app
from d365ct.service.replay import ReplayRegistry
from d365ct.store.error_queue import ErrorEntry, ErrorQueue
from d365ct.store.reports import CSV_COLUMNS, ReportLine, ReportStore
from tests.service.conftest import D365_SECRET
from tests.service.seed import D365_ERROR, Seeded, seed


@pytest.fixture
def seeded(store_engine: sa.Engine) -> Seeded:
    return seed(store_engine)


@pytest.fixture
def registry() -> ReplayRegistry:
    return ReplayRegistry()


@pytest.fixture
def app(
    settings: Settings, store_engine: sa.Engine, registry: ReplayRegistry, seeded: Seeded
) -> FastAPI:
    async def checks(_: Settings) -> list[CheckResult]:
        return [CheckResult("D365 token", "ok", "fine"), CheckResult("x", "fail", "broken")]

    return create_app(
        settings,
        store_engine=store_engine,
        readiness={},
        replay_registry=registry,
        check_runner=checks,
    )


def test_jobs(api: TestClient) -> None:
    jobs = api.get("/api/jobs").json()["jobs"]
    assert [j["id"] for j in jobs] == [
        "orders-demf-2",
        "inventory-demf-3",
        "customers-usmf-7",
        "orders-usmf-1",
    ]
    stuck = api.get("/api/jobs", params={"state": "stuck"}).json()["jobs"]
    assert [j["id"] for j in stuck] == ["inventory-demf-3"]
    several = api.get("/api/jobs", params=[("state", "stuck"), ("state", "pending")]).json()
    assert {j["id"] for j in several["jobs"]} == {"inventory-demf-3", "orders-demf-2"}
    usmf_orders = api.get("/api/jobs", params={"flow": "orders", "legal_entity": "usmf"}).json()
    assert [j["id"] for j in usmf_orders["jobs"]] == ["orders-usmf-1"]
    assert api.get("/api/jobs", params={"state": "bogus"}).status_code == 422
    assert len(api.get("/api/jobs", params={"limit": 1}).json()["jobs"]) == 1


def test_job_detail(api: TestClient) -> None:
    body = api.get("/api/jobs/orders-usmf-1").json()
    assert body["job"]["state"] == "partially_succeeded"
    assert body["correlation"] == {
        "workflow_id": "orders-usmf-1",
        "execution_id": "exec-orders-1",
        "package_blob": "dmf/orders-usmf-1.zip",
        "records": ["CT-1", "CT-2"],
        "packages": ["orders-usmf-1"],
    }
    assert body["d365_errors"] == [D365_ERROR]
    failed = [o for o in body["outcomes"] if o["outcome"] == "failed"]
    assert failed == [
        {
            "entity": "Sales order headers V2",
            "business_key": "CT-2",
            "outcome": "failed",
            "error": D365_ERROR,
        }
    ]
    assert body["steps"] is None  # no engine in this process
    assert api.get("/api/jobs/missing").status_code == 404


def test_overview(api: TestClient) -> None:
    body = api.get("/api/overview").json()
    flows = {f["flow"]: f for f in body["flows"]}
    assert flows["orders"]["jobs"] == {"partially_succeeded": 1, "pending": 1}
    assert flows["orders"]["failures"] == 1 and flows["orders"]["running"] == 1
    assert flows["inventory"]["stuck"] == 1
    assert flows["prices"]["total"] == 0 and flows["prices"]["last_run"] is None
    assert body["open_errors"] == 2


def test_errors_list_and_get(api: TestClient, seeded: Seeded) -> None:
    errors = api.get("/api/errors").json()["errors"]
    assert {e["business_key"] for e in errors} == {"CT-2", "ITEM-77"}
    order = next(e for e in errors if e["flow"] == "orders")
    assert order["payload"]["orderNumber"] == "CT-2"
    assert order["correlation"]["execution_id"] == "exec-orders-1"
    assert order["attempts"] == 1 and order["status"] == "open"
    assert api.get("/api/errors", params={"flow": "catalog"}).json()["errors"][0]["step"] == (
        "transform"
    )
    assert api.get("/api/errors", params={"status": "resolved"}).json()["errors"] == []
    assert api.get("/api/errors", params={"status": "nonsense"}).status_code == 422
    assert api.get(f"/api/errors/{order['id']}").json()["business_key"] == "CT-2"
    assert api.get("/api/errors/99999").status_code == 404


def test_replay_without_handler_is_422_and_stays_open(
    api: TestClient, seeded: Seeded, store_engine: sa.Engine
) -> None:
    entry = seeded.errors[0]
    response = api.post(f"/api/errors/{entry.id}/replay")
    assert response.status_code == 422
    assert response.json()["detail"] == "no replay handler for flow orders yet"
    assert ErrorQueue(store_engine).get(entry.id).status == "open"  # type: ignore[union-attr]


def test_replay_outcomes(api: TestClient, seeded: Seeded, registry: ReplayRegistry) -> None:
    async def replayed(entry: ErrorEntry) -> tuple[Any, str]:
        return "replayed", "posted"

    async def pending(entry: ErrorEntry) -> tuple[Any, str]:
        return "pending", "workflow catalog-replay-1 started"

    registry.register("orders", replayed)
    registry.register("catalog", pending)
    order, item = seeded.errors
    ok = api.post(f"/api/errors/{order.id}/replay")
    assert ok.status_code == 200
    assert ok.json()["result"] == "replayed" and ok.json()["entry"]["status"] == "replayed"
    assert api.post(f"/api/errors/{order.id}/replay").status_code == 409
    background = api.post(f"/api/errors/{item.id}/replay")
    assert background.status_code == 202 and background.json()["entry"]["status"] == "open"
    assert api.post("/api/errors/424242/replay").status_code == 404


def test_resolve_and_bulk(api: TestClient, seeded: Seeded, store_engine: sa.Engine) -> None:
    order, item = seeded.errors
    resolved = api.post(f"/api/errors/{order.id}/resolve", json={"note": "posted by hand"})
    assert resolved.status_code == 200
    assert resolved.json()["entry"]["note"] == "posted by hand"
    no_body = api.post(f"/api/errors/{item.id}/resolve")
    assert no_body.status_code == 200
    queue = ErrorQueue(store_engine)
    third = queue.add(flow="orders", business_key="CT-3", step="route", error="no legal entity")
    fourth = queue.add(flow="orders", business_key="CT-4", step="route", error="no legal entity")
    bulk = api.post("/api/errors/replay", json={"ids": [third.id, fourth.id]}).json()
    assert [r["result"] for r in bulk["results"]] == ["failed", "failed"]
    bulk = api.post(
        "/api/errors/resolve", json={"ids": [third.id, fourth.id, order.id], "note": "routed"}
    ).json()
    assert [r["result"] for r in bulk["results"]] == ["resolved", "resolved", "refused"]
    assert queue.count_open() == 0
    assert api.post("/api/errors/resolve", json={"ids": []}).status_code == 422


def test_reports_and_csv(api: TestClient, seeded: Seeded) -> None:
    listed = api.get("/api/reports").json()["reports"]
    assert [r["id"] for r in listed] == [seeded.report_id]
    body = api.get(f"/api/reports/{seeded.report_id}").json()
    assert body["report"]["counts"]["corrected"] == 2
    assert body["total_lines"] == 4
    assert {w["warehouse"]: w["drift_units"] for w in body["warehouses"]} == {
        "11": 8,
        "12": 4,
        "24": 3,
    }
    response = api.get(f"/api/reports/{seeded.report_id}.csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert f'filename="{seeded.report_id}.csv"' in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[1] == ["SKU-1", "11", "usmf-11", "10", "7", "10", "corrected", ""]
    assert len(rows) == 5
    assert api.get("/api/reports/missing.csv").status_code == 404
    assert api.get("/api/reports/missing").status_code == 404


def test_large_csv_streams_every_line(api: TestClient, store_engine: sa.Engine) -> None:
    reports = ReportStore(store_engine)
    reports.create("big", flow="inventory", legal_entity="usmf")
    reports.add_lines(
        "big", (ReportLine(f"SKU-{i}", "corrected", "11", "usmf-11", i, 0, i) for i in range(1234))
    )
    text = api.get("/api/reports/big.csv").text
    assert text.count("\n") == 1235


def test_config_and_check(api: TestClient) -> None:
    config = api.get("/api/config").json()
    assert config["d365"]["client_secret"] == "env:D365CT_TEST_D365_SECRET"
    assert config["service"]["token"] == "env:D365CT_TEST_SERVICE_TOKEN"
    assert D365_SECRET not in str(config)
    check = api.post("/api/check").json()
    assert check["ok"] is False
    assert [r["status"] for r in check["results"]] == ["ok", "fail"]


def test_openapi_lists_the_api(api: TestClient) -> None:
    paths = api.get("/api/openapi.json").json()["paths"]
    for path in (
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/errors",
        "/api/errors/{entry_id}/replay",
        "/api/errors/{entry_id}/resolve",
        "/api/reports",
        "/api/reports/{report_id}.csv",
    ):
        assert path in paths
