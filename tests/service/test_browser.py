"""The dashboard in headless Chromium (Debian's chromium, driven by Playwright): the real app on
uvicorn, token auth on, a seeded SQLite store; pages, login, htmx replay and bulk resolve.

Without Chromium these tests fail (they are never skipped): `make browser` installs it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from d365ct.intake import Inbox
from d365ct.store.error_queue import ErrorQueue
from tests.service.conftest import D365_SECRET, TOKEN
from tests.service.live import (
    INTAKE_MESSAGE_ID,
    MISSING_CHROMIUM,
    LiveDashboard,
    chromium_path,
    live_dashboard,
)
from tests.service.seed import D365_ERROR

pytestmark = pytest.mark.browser

TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        pytest.fail(MISSING_CHROMIUM, pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveDashboard]:
    with live_dashboard(tmp_path) as dashboard:
        yield dashboard


@pytest.fixture
def page(chromium: Browser, live: LiveDashboard) -> Iterator[Page]:
    """A fresh browser context (no cookies) on the live dashboard; script errors fail the test."""
    context = chromium.new_context(base_url=live.base_url, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # The 401 of the "without a token" test is expected; anything else (a CSP violation,
        # a script error) is a defect.
        if message.type == "error" and "401" not in message.text:
            problems.append(f"{message.text} ({message.location.get('url')})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    yield page
    context.close()
    assert problems == [], f"the browser reported errors: {problems}"


def log_in(page: Page, next_path: str = "/") -> None:
    page.goto(next_path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_label("Service token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(re.escape(next_path) + "$"))


def test_without_the_token_pages_ask_to_log_in_and_the_api_refuses(page: Page) -> None:
    for path in ("/", "/jobs", "/errors", "/reports", "/config"):
        page.goto(path)
        expect(page).to_have_url(re.compile(r"/login\?next="))
        expect(page.get_by_role("heading", name="Log in to d365ct")).to_be_visible()
        expect(page.locator("#errors, #jobs, #flows")).to_have_count(0)
    for path in ("/api/jobs", "/api/errors", "/api/openapi.json", "/metrics"):
        assert page.request.get(path).status == 401, path

    page.get_by_label("Service token").fill("not-the-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong token.")
    expect(page.get_by_role("navigation")).to_have_count(0)


def test_overview(page: Page) -> None:
    log_in(page, "/")
    expect(page).to_have_title("Overview · d365ct")
    tiles = page.locator(".tile")
    expect(tiles.filter(has_text="Open errors")).to_contain_text("3")
    expect(tiles.filter(has_text="Stuck jobs")).to_contain_text("1")
    expect(tiles.filter(has_text="Jobs finished, last 24 h")).to_contain_text("2")
    flows = page.locator("#flows tbody tr")
    expect(flows.filter(has_text="orders")).to_have_count(1)
    expect(flows.filter(has_text="inventory").locator("a.s-stuck")).to_have_text("1")
    assert page.locator("svg rect").count() >= 1  # jobs finished per hour


def test_jobs_list_and_job_detail(page: Page) -> None:
    log_in(page, "/jobs")
    rows = page.locator("#jobs tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.filter(has_text="inventory-demf-3")).to_contain_text("stuck")

    page.locator("form.filters select[name=flow]").select_option("orders")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"flow=orders"))
    expect(rows).to_have_count(2)

    page.get_by_role("link", name="orders-usmf-1").first.click()
    expect(page).to_have_url(re.compile(r"/jobs/orders-usmf-1$"))
    expect(page.locator("h1")).to_contain_text("orders-usmf-1")
    expect(page.locator("#correlation")).to_contain_text("exec-orders-1")
    expect(page.locator("#d365-errors")).to_contain_text(D365_ERROR)
    outcomes = page.locator("#outcomes tbody tr")
    expect(outcomes).to_have_count(2)
    expect(outcomes.filter(has_text="CT-2")).to_contain_text("failed")


def test_replay_of_a_failed_record_by_click(page: Page, live: LiveDashboard) -> None:
    entry = live.intake_error
    log_in(page, "/errors")
    row = page.locator(f"#error-{entry.id}")
    expect(row).to_contain_text("unknown message type OrderCreated")
    expect(row.locator(".badge")).to_have_text("open")

    row.get_by_role("button", name="Replay").click()  # htmx swaps the row in place

    expect(row.locator(".badge")).to_have_text("replayed")
    expect(row.get_by_role("status")).to_contain_text(f"replayed: {INTAKE_MESSAGE_ID} accepted")
    expect(row.get_by_role("button", name="Replay")).to_have_count(0)
    stored = ErrorQueue(live.engine).get(entry.id)
    assert stored is not None and stored.status == "replayed"
    inbox = Inbox(live.engine)
    try:
        accepted = inbox.get(INTAKE_MESSAGE_ID)
    finally:
        inbox.close()
    assert accepted is not None and accepted.status == "pending"
    assert (accepted.message.type, accepted.message.resource_id) == ("OrderCreated", "order-7")

    page.reload()  # the open list no longer holds it
    expect(page.locator(f"#error-{entry.id}")).to_have_count(0)


def test_bulk_resolve(page: Page, live: LiveDashboard) -> None:
    orders_error, catalog_error = live.seeded.errors
    log_in(page, "/errors")
    page.get_by_label(f"select {orders_error.id}", exact=True).check()
    page.get_by_label(f"select {catalog_error.id}", exact=True).check()
    page.get_by_placeholder("why it needs no replay").fill("fixed in D365 by hand")
    page.get_by_role("button", name="Resolve selected").click()

    expect(page.locator("#flash")).to_have_text("resolve: 2 of 2 done.")
    expect(page.locator("#errors tbody tr")).to_have_count(1)  # the intake entry stays open
    expect(page.locator(f"#error-{live.intake_error.id}")).to_be_visible()
    queue = ErrorQueue(live.engine)
    for entry in (orders_error, catalog_error):
        stored = queue.get(entry.id)
        assert stored is not None
        assert (stored.status, stored.note) == ("resolved", "fixed in D365 by hand")

    page.locator("select[name=status]").select_option("resolved")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#errors tbody tr")).to_have_count(2)


def test_reconciliation_report_with_chart_and_csv(page: Page, live: LiveDashboard) -> None:
    report_id = live.seeded.report_id
    log_in(page, "/reports")
    page.get_by_role("link", name=report_id).click()
    expect(page.locator("h1")).to_contain_text(report_id)
    warehouses = page.locator("#warehouses tbody tr")
    expect(warehouses).to_have_count(3)
    bars = page.locator("svg rect")
    assert bars.count() >= 1
    expect(page.locator("#lines")).to_contain_text("no supply channel for 24")

    with page.expect_download() as info:
        page.locator("#csv").click()
    download = info.value
    assert download.suggested_filename.endswith(".csv")
    text = Path(download.path()).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(r["sku"] for r in rows) == ["SKU-1", "SKU-2", "SKU-3", "SKU-4"]


def test_configuration_view_hides_secrets(page: Page) -> None:
    log_in(page, "/config")
    expect(page.locator("#section-d365")).to_contain_text("sandbox-client")
    expect(page.locator("#section-store")).to_contain_text("sqlite:///")
    expect(page.locator("#section-service")).to_contain_text("127.0.0.1:8080")
    content = page.content()
    assert TOKEN not in content and D365_SECRET not in content
