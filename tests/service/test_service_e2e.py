"""`d365ct run` as a child process against d365sim and the commercetools mock: customer and order
messages pushed to /intake/commercetools are processed by the service's inbox processor (orders
land in D365 once, are written back to commercetools; bad ones reach the error queue), the
inventory schedule runs in the service, and SIGTERM stops it with exit code 0."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from d365ct.demo import free_port, running_service, service_sections
from d365ct.flows.catalog import sync_catalog
from d365ct.flows.setup import run_setup
from d365ct.store import make_engine, migrate
from d365ct.store.error_queue import ErrorQueue
from d365ct.storefront import check_storefront, deliver, seed_storefront, wait_settled
from tests.ct_fixtures import CtMock
from tests.flows.support import SECRET_ENV, full_settings
from tests.sim_fixtures import RunningSim
from tests.store.conftest import postgres_url  # noqa: F401 (fixture)


@pytest.mark.slow
async def test_the_service_processes_pushed_orders_and_customers(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, fresh_sim.config.client_secret)
    monkeypatch.setenv("D365CT_DEMO_API_TOKEN", "service-token-0123456789")
    monkeypatch.setenv("D365CT_DEMO_INTAKE_TOKEN", "intake-token-0123456789")
    sections = service_sections(free_port(), schedules=False)
    sections["inventory"] = {"schedule": "*/2 * * * * *", "reconcile_schedule": ""}
    settings = full_settings(
        fresh_sim.base_url, ct_mock.url, ct_mock.project_key, str(tmp_path), **sections
    )
    migrate(settings.store.url)
    engine = make_engine(settings.store.url)
    await run_setup(settings)
    assert (await sync_catalog(settings, engine)).created > 0
    front = await seed_storefront(settings, customers=2, orders=5)
    assert len(front.bad) == 2

    with running_service(settings, tmp_path) as service:
        unauthorised = httpx.post(f"{service.base_url}/intake/commercetools", json={})
        assert unauthorised.status_code == 401
        token = "intake-token-0123456789"
        assert deliver(service.base_url, token, front.messages) == len(front.messages)
        assert deliver(service.base_url, token, front.messages) == 0  # duplicates
        took = wait_settled(engine, front, timeout=120)
        assert set(took) == {"customer", "order"}
        outcome = await check_storefront(settings, engine, front)
        assert outcome.problems == []
        assert outcome.orders_posted == 3 and outcome.customers_synced == 2
        assert set(outcome.orders_in_error_queue) == set(front.bad)

        # The dashboard's replay re-drives a bad order through the orders flow: still unroutable.
        unrouted = next(n for n, why in front.bad.items() if "store" in why)
        entry = next(
            e for e in ErrorQueue(engine).list(flow="orders") if e.business_key == unrouted
        )
        replayed = httpx.post(
            f"{service.base_url}/api/errors/{entry.id}/replay",
            headers={"Authorization": "Bearer service-token-0123456789"},
            timeout=60,
        )
        assert replayed.status_code == 422, replayed.text
        assert "no legal entity" in replayed.text and "no replay handler" not in replayed.text

        # The inventory schedule (every 2 s) ran the sync inside the service.
        deadline = time.monotonic() + 30
        total = 0
        while time.monotonic() < deadline and not total:
            async with ct_mock.http(record=False) as http:
                ct = ct_mock.client(http, "inventory")
                total = int((await ct.request("GET", "inventory", params={"limit": "1"}))["total"])
            await asyncio.sleep(0.5)
        assert total > 0, "the scheduled inventory sync wrote nothing within 30 s"
        started = time.monotonic()
    stopped_in = time.monotonic() - started
    assert service.process.returncode == 0, service.log_path.read_text()[-4000:]
    log = service.log_path.read_text()
    assert "inbox processor stopped" in log and "d365ct service stopped" in log
    assert "service-token-0123456789" not in log and "intake-token-0123456789" not in log
    assert stopped_in < 60  # the shutdown waits for a running scheduled sync (up to 30 s)
    engine.dispose()


@pytest.mark.slow
async def test_two_workers_on_postgresql_post_each_order_once(
    fresh_sim: RunningSim,
    ct_mock: CtMock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    postgres_url: str,  # noqa: F811 (the fixture imported above)
) -> None:
    """Two `d365ct run` processes on one PostgreSQL store compete for the same inbox: the inbox
    leases each message to one of them, and each order reaches D365 exactly once."""
    monkeypatch.setenv(SECRET_ENV, fresh_sim.config.client_secret)
    monkeypatch.setenv("D365CT_DEMO_API_TOKEN", "service-token-0123456789")
    monkeypatch.setenv("D365CT_DEMO_INTAKE_TOKEN", "intake-token-0123456789")
    settings = full_settings(
        fresh_sim.base_url,
        ct_mock.url,
        ct_mock.project_key,
        str(tmp_path),
        **service_sections(free_port(), schedules=False),
    )
    settings = settings.model_copy(
        update={"store": settings.store.model_copy(update={"url": postgres_url})}
    )
    second = settings.model_copy(
        update={"service": settings.service.model_copy(update={"bind": f"127.0.0.1:{free_port()}"})}
    )
    engine = make_engine(postgres_url)
    await run_setup(settings)
    assert (await sync_catalog(settings, engine)).created > 0
    front = await seed_storefront(settings, customers=3, orders=10)

    with (
        running_service(settings, tmp_path / "a", {"DBOS__VMID": "worker-a"}) as a,
        running_service(second, tmp_path / "b", {"DBOS__VMID": "worker-b"}) as b,
    ):
        token = "intake-token-0123456789"
        half = len(front.messages) // 2
        assert deliver(a.base_url, token, front.messages[:half]) == half
        assert deliver(b.base_url, token, front.messages[half:]) == len(front.messages) - half
        wait_settled(engine, front, timeout=120)
        outcome = await check_storefront(settings, engine, front)
    assert outcome.problems == []  # every good order once in D365, in its legal entity
    assert outcome.orders_posted == 8 and set(outcome.orders_in_error_queue) == set(front.bad)
    assert a.process.returncode == 0 and b.process.returncode == 0
    for service in (a, b):
        assert "inbox processor started" in service.log_path.read_text()
    engine.dispose()
