"""/metrics: Prometheus text with the process counters and the series read from the store."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from d365ct.intake.inbox import InboxStats
from d365ct.runtime import adapters
from d365ct.service import metrics
from d365ct.service.queries import StoreQueries
from tests.flows.support import SECRET_ENV as SIM_SECRET_ENV
from tests.flows.support import sim_settings
from tests.service.conftest import make_settings
from tests.service.seed import seed
from tests.sim_fixtures import RunningSim


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_series(api: TestClient, store_engine: sa.Engine) -> None:
    seed(store_engine)
    metrics.record_retry("d365", "429")
    metrics.record_retry("d365", "429")
    metrics.record_retry("commercetools", "503")
    metrics.record_records("catalog", 10)
    metrics.record_failures("catalog")
    metrics.observe_step("orders", "poll", 2.0)

    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    s = _samples(text)
    assert s[("d365ct_store_up", ())] == 1
    assert s[("d365ct_d365_jobs", (("flow", "orders"), ("state", "partially_succeeded")))] == 1
    assert s[("d365ct_d365_jobs", (("flow", "inventory"), ("state", "stuck")))] == 1
    assert s[("d365ct_queue_depth", (("flow", "orders"),))] == 1
    assert s[("d365ct_queue_depth", (("flow", "inventory"),))] == 1
    assert s[("d365ct_error_queue_open", ())] == 2
    assert s[("d365ct_intake_pending", ())] == 0
    # orders-usmf-1 took 2 minutes, customers-usmf-7 40 seconds
    orders = (("flow", "orders"), ("kind", "import"))
    assert s[("d365ct_d365_job_duration_seconds_count", orders)] == 1
    assert s[("d365ct_d365_job_duration_seconds_sum", orders)] == pytest_approx(120.0)
    assert s[("d365ct_d365_job_duration_seconds_bucket", (*orders, ("le", "60.0")))] == 0
    assert s[("d365ct_d365_job_duration_seconds_bucket", (*orders, ("le", "120.0")))] == 1
    assert s[("d365ct_d365_job_duration_seconds_bucket", (*orders, ("le", "+Inf")))] == 1
    assert s[("d365ct_http_retries_total", (("reason", "429"), ("target", "d365")))] >= 2
    assert s[("d365ct_http_retries_total", (("reason", "503"), ("target", "commercetools")))] >= 1
    assert s[("d365ct_flow_records_total", (("flow", "catalog"),))] >= 10
    assert s[("d365ct_flow_failures_total", (("flow", "catalog"),))] >= 1
    assert s[("d365ct_step_duration_seconds_count", (("flow", "orders"), ("step", "poll")))] >= 1
    assert re.search(r"^process_cpu_seconds_total ", text, re.M)


def pytest_approx(value: float) -> object:
    import pytest

    return pytest.approx(value, abs=0.01)


def test_unreadable_store_is_a_zero_not_a_failed_scrape(tmp_path: object) -> None:
    engine = sa.create_engine("sqlite:///:memory:")  # no tables: every query fails
    registry = metrics.build_registry(StoreQueries(engine))
    text = metrics.render(registry).decode()
    assert "d365ct_store_up 0.0" in text
    assert "d365ct_d365_jobs" not in text.replace("# HELP d365ct_d365_jobs", "")


def test_inbox_counters(store_engine: sa.Engine) -> None:
    stats = InboxStats()
    stats.add("accepted", 3)
    stats.add("duplicate")
    text = metrics.render(
        metrics.build_registry(StoreQueries(store_engine), inbox_stats=stats)
    ).decode()
    s = _samples(text)
    assert s[("d365ct_intake_messages_total", (("outcome", "accepted"),))] == 3
    assert s[("d365ct_intake_messages_total", (("outcome", "duplicate"),))] == 1


def test_d365_throttling_is_counted_in_the_service_metrics(
    running_sim: RunningSim,
    tmp_path: Path,
    secrets_env: None,
    api: TestClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 429 from d365sim, met by the adapters the flows use (runtime.adapters), is retried and
    shows in the service's /metrics as d365ct_http_retries_total{target="d365",reason="429"}."""
    monkeypatch.setenv(SIM_SECRET_ENV, running_sim.config.client_secret)
    settings = make_settings(
        tmp_path, d365=sim_settings(running_sim.base_url).model_dump(mode="json")
    )
    throttled = (("reason", "429"), ("target", "d365"))
    before = _samples(api.get("/metrics").text).get(("d365ct_http_retries_total", throttled), 0)

    async def read_twice() -> None:
        async with adapters(settings) as ctx:
            for _ in range(2):  # one request per second passes; the second waits Retry-After
                await ctx.d365_http.get_json("data/CustomersV3", {"$top": "1"})

    faults = f"{running_sim.base_url}/_sim/faults"  # the simulator's admin API
    httpx.put(faults, json={"throttle_rps": 1}).raise_for_status()
    try:
        asyncio.run(read_twice())
    finally:
        httpx.put(faults, json={"throttle_rps": 0}).raise_for_status()
    assert running_sim.simulator.counters.snapshot().get("429", 0) >= 1
    after = _samples(api.get("/metrics").text)[("d365ct_http_retries_total", throttled)]
    assert after >= before + 1
