"""kill -9 of an order worker in each phase of a batch, and two workers on one PostgreSQL: every
order reaches D365 exactly once and is written back, and imports of a legal entity never overlap.

The workers are separate processes (tests/e2e/orders_worker.py) running the real flows against
d365sim and the commercetools mock; this process only delivers messages and watches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from d365ct.flows.orders import ASSIGNMENTS
from d365ct.intake import Inbox
from d365ct.mapping.orders import STATUS_FIELD
from d365ct.store import make_engine, migrate
from d365ct.store.sync_state import SyncStateStore
from d365ct.store.tables import intake_messages
from tests.ct_fixtures import CtMock, CtMockServer
from tests.flows.support import SECRET_ENV, full_settings
from tests.flows.test_crash_safety import postgres_store  # noqa: F401
from tests.flows.test_orders import (
    CommerceEnv,
    ct_get,
    import_order,
    legal_entities,
    order_created,
    seed_commercetools,
)
from tests.sim_fixtures import RunningSim

ROOT = Path(__file__).resolve().parents[2]


def offline_env(
    sim: RunningSim, mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> Iterator[CommerceEnv]:
    """Settings, store and inbox, but no workflow engine in this process: the workers run it."""
    monkeypatch.setenv(SECRET_ENV, sim.config.client_secret)
    settings = full_settings(
        sim.base_url,
        mock.url,
        mock.project_key,
        str(tmp_path),
        legal_entities=legal_entities(),
        orders={"max_orders": 50, "max_wait_seconds": 0},
        store={"url": store, "workdir": str(tmp_path / "work")},
    )
    migrate(settings.store.url)
    engine = make_engine(settings.store.url)
    inbox = Inbox(engine)
    with sim.client() as client:
        variant = client.get(
            "/data/ReleasedProductVariantsV2",
            params={"cross-company": "true", "$filter": "dataAreaId eq 'usmf'", "$top": "1"},
        ).json()["value"][0]
        for company in ("usmf", "demf"):
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
    env = CommerceEnv(
        sim,
        mock,
        settings,
        engine,
        None,  # type: ignore[arg-type]  # no flows here: the workers run them
        inbox,
        {"ItemNumber": variant["ItemNumber"], **dims},
    )
    try:
        yield env
    finally:
        inbox.close()
        engine.dispose()


def start_worker(
    env: CommerceEnv, tmp_path: Path, executor: str, *, until_empty: bool = False
) -> subprocess.Popen[str]:
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(env.settings.model_dump(mode="json")))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.e2e.orders_worker",
            "--settings",
            str(settings_file),
            "--executor-id",
            executor,
            "--worker-id",
            f"{executor}-{time.monotonic_ns()}",
            *(["--until-empty"] if until_empty else []),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(worker: subprocess.Popen[str], timeout: float = 180) -> dict[str, Any]:
    out, err = worker.communicate(timeout=timeout)
    assert worker.returncode == 0, err[-3000:]
    last = [line for line in out.splitlines() if line.startswith('{"summary"')][-1]
    return dict(json.loads(last)["summary"])


def sim_jobs(env: CommerceEnv) -> list[dict[str, Any]]:
    return list(httpx.get(f"{env.sim.base_url}/_sim/jobs").json())


def wait_for(
    what: str, condition: Callable[[], bool], worker: subprocess.Popen[str], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if worker.poll() is not None:
            raise AssertionError(f"the worker ended before {what}: {worker.stderr.read()[-2000:]}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.01)


def expire_leases(env: CommerceEnv) -> None:
    """What `max_wait_seconds` + 10 minutes do after a crash: the dead worker's leases end."""
    with env.engine.begin() as conn:
        conn.execute(
            sa.update(intake_messages)
            .where(intake_messages.c.status == "pending")
            .values(lease_until=None, claimed_by=None)
        )


async def orders_to_post(env: CommerceEnv, prefix: str, count: int) -> list[dict[str, Any]]:
    orders = []
    for n in range(count):
        german = n % 2 == 1
        orders.append(
            await import_order(
                env,
                [("D0001", 1 + n % 3, 1000 + n)],
                store="de-store" if german else "us-store",
                currency="EUR" if german else "USD",
                country="DE" if german else "US",
                order_number=f"{prefix}-{n:03d}",
            )
        )
    for order in orders:
        assert env.deliver(order_created(env, order)) == "accepted"
    return orders


async def assert_posted_once(env: CommerceEnv, orders: list[dict[str, Any]]) -> None:
    for order in orders:
        headers, lines = env.order_in_d365(order["orderNumber"])
        assert len(headers) == 1, order["orderNumber"]
        assert [li["ItemNumber"] for li in lines] == ["D0001", "SHIPPING"]
        current = await ct_get(env, "orders", order["id"])
        assert current["custom"]["fields"][STATUS_FIELD] == "posted", order["orderNumber"]
    counts = env.inbox.counts()
    assert counts["pending"] == 0 and counts["processed"] == len(orders)
    assert env.errors.count_open() == 0
    assert SyncStateStore(env.engine).count(ASSIGNMENTS) == 0
    stats = httpx.get(f"{env.sim.base_url}/_sim/stats").json()
    assert stats["importOverlaps"] == 0


@pytest.fixture
def sqlite_env(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CommerceEnv]:
    store = f"sqlite:///{tmp_path / 'worker.sqlite'}"
    yield from offline_env(fresh_sim, ct_mock, tmp_path, monkeypatch, store)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["assigned", "executing", "writing-back"])
async def test_kill_9_in_each_phase_posts_every_order_once(
    sqlite_env: CommerceEnv, ct_mock_server: CtMockServer, tmp_path: Path, phase: str
) -> None:
    env = sqlite_env
    env.sim.config.job_seconds = 2
    await seed_commercetools(env)
    orders = await orders_to_post(env, f"K{phase[:2].upper()}", 4)

    worker = start_worker(env, tmp_path, "worker-1")
    paused = False
    try:
        if phase == "assigned":
            # batches assigned to their messages; the kill lands before or at the trigger
            wait_for(
                "the batches' assignment",
                lambda: SyncStateStore(env.engine).count(ASSIGNMENTS) > 0,
                worker,
            )
        elif phase == "executing":
            wait_for(
                "an import executing in D365",
                lambda: any(j["status"] == "Executing" for j in sim_jobs(env)),
                worker,
            )
        else:
            # commercetools stops answering, so the worker hangs in the write-back after D365
            # imported both packages; then it dies there
            wait_for(
                "an import executing in D365",
                lambda: any(j["status"] == "Executing" for j in sim_jobs(env)),
                worker,
            )
            os.killpg(ct_mock_server.process.pid, signal.SIGSTOP)
            paused = True
            wait_for(
                "both imports done in D365",
                lambda: sum(j["status"] == "Succeeded" for j in sim_jobs(env)) == 2,
                worker,
            )
            time.sleep(1.0)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        if paused:
            os.killpg(ct_mock_server.process.pid, signal.SIGCONT)
    assert env.inbox.counts()["processed"] == 0  # killed before any message was settled
    if phase == "writing-back":
        assert len(env.order_in_d365(orders[0]["orderNumber"])[0]) == 1
        current = await ct_get(env, "orders", orders[0]["id"])
        assert STATUS_FIELD not in (current.get("custom") or {}).get("fields", {})
    imports_before = len(sim_jobs(env))

    expire_leases(env)
    finish(start_worker(env, tmp_path, "worker-1"))

    await assert_posted_once(env, orders)
    jobs = sim_jobs(env)
    # a batch that had reached D365 was resumed, never imported a second time
    if phase in ("executing", "writing-back"):
        assert len(jobs) == imports_before == 2
    assert len(jobs) == 2 and all(j["status"] == "Succeeded" for j in jobs)


@pytest.mark.slow
async def test_two_workers_on_postgres_post_every_order_once(
    fresh_sim: RunningSim,
    ct_mock: CtMock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    postgres_store: str,  # noqa: F811
) -> None:
    fresh_sim.config.job_seconds = 1.5  # long enough that both workers get a share
    for env in offline_env(fresh_sim, ct_mock, tmp_path, monkeypatch, postgres_store):
        await seed_commercetools(env)
        orders = await orders_to_post(env, "PG", 24)
        env.settings = env.settings.model_copy(
            update={"orders": env.settings.orders.model_copy(update={"max_orders": 4})}
        )
        first = start_worker(env, tmp_path, "worker-a", until_empty=True)
        second = start_worker(env, tmp_path, "worker-b", until_empty=True)
        results = [finish(first), finish(second)]

        assert sum(r["orders_posted"] for r in results) == len(orders)
        assert all(r["orders_posted"] > 0 for r in results), results  # both took a share
        await assert_posted_once(env, orders)
        stats = httpx.get(f"{fresh_sim.base_url}/_sim/stats").json()
        assert stats["imports"] == 6  # 12 orders per legal entity, 4 per package
        assert stats["maxInFlightImportsByLegalEntity"] == {"usmf": 1, "demf": 1}
