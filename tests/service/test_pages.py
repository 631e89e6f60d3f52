"""Every dashboard page renders what the stores hold; actions work with htmx and without."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from d365ct.check import CheckResult
from d365ct.config import Settings
from d365ct.service.app import create_app
from d365ct.service.logging import Redactor
from d365ct.service.queries import StepView
from d365ct.service.replay import ReplayRegistry
from d365ct.store.error_queue import ErrorEntry, ErrorQueue
from tests.service.conftest import D365_SECRET, TOKEN
from tests.service.seed import Seeded, seed

HTMX = {"HX-Request": "true"}


@pytest.fixture
def seeded(store_engine: sa.Engine) -> Seeded:
    return seed(store_engine)


def _steps(workflow_id: str) -> list[StepView]:
    t0 = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)
    return [
        StepView(1, "d365ct.flows.dmf_jobs.upload", t0, t0 + timedelta(seconds=2), None, None),
        StepView(
            2,
            "d365ct.flows.dmf_jobs.trigger",
            t0 + timedelta(seconds=2),
            t0 + timedelta(seconds=3),
            None,
            None,
        ),
        StepView(
            3,
            "d365ct.flows.dmf_jobs.poll",
            t0 + timedelta(seconds=3),
            t0 + timedelta(seconds=60),
            "PartiallySucceeded",
            None,
        ),
    ]


@pytest.fixture
def registry() -> ReplayRegistry:
    return ReplayRegistry()


@pytest.fixture
def app(
    settings: Settings, store_engine: sa.Engine, registry: ReplayRegistry, seeded: Seeded
) -> FastAPI:
    async def checks(_: Settings) -> list[CheckResult]:
        return [
            CheckResult("D365 token", "ok", "client sandbox-client"),
            CheckResult("commercetools", "warn", "[commercetools] is not configured"),
            CheckResult("legal entity zz", "fail", f"not found; secret was {D365_SECRET}"),
        ]

    return create_app(
        settings,
        store_engine=store_engine,
        readiness={},
        replay_registry=registry,
        step_history=_steps,
        redactor=Redactor([D365_SECRET, TOKEN]),
        check_runner=checks,
    )


def _no_secrets(html: str) -> None:
    assert D365_SECRET not in html
    assert TOKEN not in html


def test_overview(browser: TestClient) -> None:
    page = browser.get("/")
    assert page.status_code == 200
    html = page.text
    _no_secrets(html)
    flows = html[html.index('id="flows"') :]
    for flow in ("catalog", "prices", "inventory", "orders", "customers"):
        assert f">{flow}</a>" in flows
    # orders: one partially succeeded (a failure), one pending; an open error each for orders
    # and catalog; the stuck inventory export is listed with its reason.
    assert 'href="/errors?flow=orders">1</a>' in html
    assert 'href="/jobs?state=stuck&flow=inventory">1</a>' in html
    assert "still Executing after 120 status polls" in html
    assert "<svg" in html and 'aria-label="jobs finished per hour, last 24 hours"' in html
    assert len(re.findall(r'<rect class="bar"', html)) == 24
    assert ">2</div>" in html  # jobs finished in the last 24 h


def test_jobs_list_and_filters(browser: TestClient) -> None:
    html = browser.get("/jobs").text
    for job_id in ("orders-usmf-1", "customers-usmf-7", "inventory-demf-3", "orders-demf-2"):
        assert job_id in html
    stuck = browser.get("/jobs", params={"state": "stuck"}).text
    assert "inventory-demf-3" in stuck and "orders-usmf-1" not in stuck
    by_flow = browser.get("/jobs", params={"flow": "orders", "legal_entity": "demf"}).text
    assert "orders-demf-2" in by_flow and "orders-usmf-1" not in by_flow
    assert browser.get("/jobs", params={"state": "bogus"}).status_code == 422


def test_job_detail_shows_chain_errors_and_timeline(browser: TestClient) -> None:
    page = browser.get("/jobs/orders-usmf-1")
    assert page.status_code == 200
    html = page.text
    chain = html[html.index('id="correlation"') :]
    assert "orders-usmf-1" in chain and "exec-orders-1" in chain
    assert "dmf/orders-usmf-1.zip" in chain and "2 record(s)" in chain
    assert "CT-2 already exists" in html[html.index('id="d365-errors"') :]
    steps = html[html.index('id="steps"') :]
    assert "d365ct.flows.dmf_jobs.poll" in steps and "57.00" in steps
    assert 'class="timeline"' in steps
    outcomes = html[html.index('id="outcomes"') :]
    assert "CT-1" in outcomes and "CT-2" in outcomes
    assert browser.get("/jobs/nope").status_code == 404


def test_job_detail_without_engine(
    settings: Settings, store_engine: sa.Engine, seeded: Seeded
) -> None:
    app = create_app(settings, store_engine=store_engine, readiness={}, auth_disabled=True)
    with TestClient(app) as client:
        html = client.get("/jobs/orders-usmf-1").text
    assert "does not run in this process" in html


def test_error_queue_page(browser: TestClient, seeded: Seeded) -> None:
    html = browser.get("/errors").text
    _no_secrets(html)
    table = html[html.index('id="errors"') :]
    assert "CT-2" in table and "ITEM-77" in table
    assert "&#34;orderNumber&#34;: &#34;CT-2&#34;" in table or '"orderNumber": "CT-2"' in table
    assert "exec-orders-1" in table  # correlation
    assert 'hx-post="/errors/' in table and 'form="bulk"' in table
    catalog_only = browser.get("/errors", params={"flow": "catalog"}).text
    assert (
        "ITEM-77" in catalog_only
        and "CT-2" not in catalog_only[catalog_only.index('id="errors"') :]
    )


def test_replay_without_handler_leaves_the_entry_open(
    browser: TestClient, seeded: Seeded, store_engine: sa.Engine
) -> None:
    entry = seeded.errors[0]
    row = browser.post(f"/errors/{entry.id}/replay", headers=HTMX)
    assert row.status_code == 200
    assert row.text.lstrip().startswith(f'<tr id="error-{entry.id}"')
    assert "no replay handler for flow orders yet" in row.text
    reloaded = ErrorQueue(store_engine).get(entry.id)
    assert reloaded is not None and reloaded.status == "open"


def test_replay_with_handler_closes_the_entry(
    browser: TestClient, seeded: Seeded, registry: ReplayRegistry, store_engine: sa.Engine
) -> None:
    replayed: list[str] = []

    async def handler(entry: ErrorEntry) -> tuple[Any, str]:
        replayed.append(entry.business_key)
        return "replayed", f"order {entry.business_key} posted"

    registry.register("orders", handler)
    entry = seeded.errors[0]
    row = browser.post(f"/errors/{entry.id}/replay", headers=HTMX)
    assert "order CT-2 posted" in row.text and "s-replayed" in row.text
    assert replayed == ["CT-2"]
    reloaded = ErrorQueue(store_engine).get(entry.id)
    assert reloaded is not None and reloaded.status == "replayed"
    # Without htmx the form posts and lands back on the list with a message.
    again = browser.post(f"/errors/{entry.id}/replay")
    assert again.status_code == 303
    assert "refused" in browser.get(again.headers["location"]).text


def test_replay_failure_shows_the_reason(
    browser: TestClient, seeded: Seeded, registry: ReplayRegistry
) -> None:
    async def handler(entry: ErrorEntry) -> tuple[Any, str]:
        raise RuntimeError(f"D365 said no (client secret {D365_SECRET})")

    registry.register("catalog", handler)
    row = browser.post(f"/errors/{seeded.errors[1].id}/replay", headers=HTMX).text
    assert "D365 said no" in row and D365_SECRET not in row


def test_resolve_single_and_bulk(
    browser: TestClient, seeded: Seeded, store_engine: sa.Engine
) -> None:
    first, second = seeded.errors
    row = browser.post(f"/errors/{first.id}/resolve", headers=HTMX, data={"note": "fixed in D365"})
    assert "s-resolved" in row.text and "fixed in D365" in row.text
    bulk = browser.post(
        "/errors/bulk", data={"action": "resolve", "ids": [str(second.id)], "note": "dup"}
    )
    assert bulk.status_code == 303
    page = browser.get(bulk.headers["location"]).text
    assert "resolve: 1 of 1 done." in page
    queue = ErrorQueue(store_engine)
    assert queue.count_open() == 0
    assert queue.get(second.id).note == "dup"  # type: ignore[union-attr]
    nothing = browser.post("/errors/bulk", data={"action": "replay"})
    assert "Select+at+least+one" in nothing.headers["location"]


def test_bulk_replay_reports_each_entry(browser: TestClient, seeded: Seeded) -> None:
    ids = [str(e.id) for e in seeded.errors]
    response = browser.post("/errors/bulk", data={"action": "replay", "ids": ids})
    page = browser.get(response.headers["location"]).text
    assert "replay: 0 of 2 done." in page
    assert "no replay handler for flow orders yet" in page


def test_reports_pages(browser: TestClient, seeded: Seeded) -> None:
    listing = browser.get("/reports").text
    assert seeded.report_id in listing and f"/api/reports/{seeded.report_id}.csv" in listing
    html = browser.get(f"/reports/{seeded.report_id}").text
    assert 'aria-label="drift per warehouse"' in html
    warehouses = html[html.index('id="warehouses"') :]
    # warehouse 11: |10-7| + |0-5| = 8 units over 2 lines; 12: 4; 24: 3 (failed)
    assert re.search(r"<td>11</td><td class=\"num\">2</td><td class=\"num\">8</td>", warehouses)
    assert "no supply channel for 24" in html
    assert browser.get("/reports/nope").status_code == 404


def test_config_page_shows_references_never_secrets(browser: TestClient) -> None:
    html = browser.get("/config").text
    _no_secrets(html)
    assert "env:D365CT_TEST_D365_SECRET" in html
    assert "env:D365CT_TEST_SERVICE_TOKEN" in html
    assert 'id="section-d365"' in html and "import_concurrency_per_legal_entity" in html


def test_checks_on_demand(browser: TestClient) -> None:
    partial = browser.post("/config/check", headers=HTMX)
    assert partial.status_code == 200
    html = partial.text
    assert html.lstrip().startswith("<table") or "<table" in html
    assert "D365 token" in html and "s-warn" in html and "s-fail" in html
    assert "1 failed" in html
    _no_secrets(html)
    full = browser.post("/config/check")  # without htmx: the whole page with results
    assert 'id="section-d365"' in full.text and 'id="checks"' in full.text


def test_store_url_password_is_masked(settings: Settings, store_engine: sa.Engine) -> None:
    data = settings.model_dump()
    data["store"]["url"] = "postgresql://d365ct:hunter2-pass@db.internal/d365ct"
    shown = Settings.model_validate(data)
    app = create_app(shown, store_engine=store_engine, readiness={}, auth_disabled=True)
    with TestClient(app) as client:
        html = client.get("/config").text
        config = client.get("/api/config").json()
    assert "hunter2-pass" not in html
    assert "hunter2-pass" not in str(config)
    assert config["store"]["url"] == "postgresql+psycopg://d365ct:***@db.internal/d365ct" or (
        config["store"]["url"].endswith("@db.internal/d365ct")
    )
