"""The scheduler of `d365ct run`: which schedules the configuration yields, and a seconds-level
schedule running the inventory sync as a DBOS workflow against d365sim and the commercetools
mock; a schedule no longer configured is deleted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from dbos import DBOS
from prometheus_client import CollectorRegistry

from d365ct.config import Settings
from d365ct.engine import launch_engine, shutdown_engine
from d365ct.errors import ConfigurationError
from d365ct.flows import scheduled
from d365ct.flows.setup import run_setup
from d365ct.service import metrics
from d365ct.service.runner import (
    SCHEDULE_PREFIX,
    apply_schedules,
    claim_latest_version,
    register_schedule_queues,
    schedules_for,
)
from d365ct.store import make_engine
from tests.ct_fixtures import CtMock
from tests.flows.support import SECRET_ENV, full_settings, sim_settings
from tests.sim_fixtures import RunningSim


def _settings(tmp_path: Path, **sections: Any) -> Settings:
    return full_settings("http://127.0.0.1:9", "http://127.0.0.1:9", "p", str(tmp_path), **sections)


def test_defaults_schedule_every_configured_flow(tmp_path: Path) -> None:
    schedules = {s.name: s for s in schedules_for(_settings(tmp_path))}
    assert {name: s.cron for name, s in schedules.items()} == {
        "catalog": "*/30 * * * *",
        "prices": "15,45 * * * *",
        "inventory": "*/5 * * * *",
        "reconcile": "0 2 * * *",
    }
    assert schedules["inventory"].workflow is scheduled.scheduled_inventory_sync
    # The reconciliation never overlaps an inventory sync, nor prices the catalog sync.
    assert schedules["reconcile"].queue == schedules["inventory"].queue
    assert schedules["prices"].queue == schedules["catalog"].queue != schedules["inventory"].queue


def test_empty_cron_turns_a_schedule_off_and_missing_configuration_leaves_it_out(
    tmp_path: Path,
) -> None:
    off = _settings(tmp_path, catalog={"schedule": ""}, inventory={"reconcile_schedule": " "})
    assert [s.name for s in schedules_for(off)] == ["prices", "inventory"]
    no_warehouses = _settings(tmp_path, warehouses=[])
    assert [s.name for s in schedules_for(no_warehouses)] == ["catalog", "prices"]
    only_d365 = Settings.model_validate({"d365": sim_settings("http://127.0.0.1:9").model_dump()})
    assert schedules_for(only_d365) == []


@pytest.mark.parametrize("cron", ["every day", "61 * * * *", "* * *"])
def test_an_invalid_cron_names_its_key(tmp_path: Path, cron: str) -> None:
    with pytest.raises(ConfigurationError, match=r"inventory\.schedule = .* cron"):
        schedules_for(_settings(tmp_path, inventory={"schedule": cron}))


@pytest.mark.slow
async def test_a_seconds_schedule_runs_the_inventory_sync(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, fresh_sim.config.client_secret)
    off = {"catalog": {"schedule": ""}, "prices": {"schedule": ""}}
    settings = full_settings(
        fresh_sim.base_url,
        ct_mock.url,
        ct_mock.project_key,
        str(tmp_path),
        inventory={"schedule": "*/2 * * * * *", "reconcile_schedule": ""},
        **off,
    )
    await run_setup(settings)  # the supply channels
    engine = make_engine(settings.store.url)
    scheduled.configure(settings, engine)

    def start() -> list[str]:
        launch_engine(settings.store.url, polling_interval_sec=0.1)
        schedules = schedules_for(settings)
        register_schedule_queues(schedules)
        apply_schedules(schedules)
        claim_latest_version()
        return [s["schedule_name"] for s in DBOS.list_schedules()]

    records_before = _sample("d365ct_flow_records_total", flow="inventory")
    failures_before = _sample("d365ct_flow_failures_total", flow="inventory")
    try:
        assert await asyncio.to_thread(start) == [f"{SCHEDULE_PREFIX}inventory"]
        deadline = time.monotonic() + 45
        done: list[Any] = []
        while time.monotonic() < deadline and not done:
            await asyncio.sleep(0.5)
            runs = await DBOS.list_workflows_async(name="d365ct.scheduled.inventory")
            done = [w for w in runs if w.status == "SUCCESS"]
        assert done, "the scheduled inventory sync did not complete within 45 s"
        output = done[0].output
        assert output["created"] > 0 and output["failed"] > 0  # unmapped warehouses fail
        async with ct_mock.http(record=False) as http:
            ct = ct_mock.client(http, "inventory")
            page = await ct.request("GET", "inventory", params={"limit": "1"})
        assert page["total"] >= output["created"]
        # The run fed /metrics: its rows and failures per flow (other runs may have added more).
        assert _sample("d365ct_flow_records_total", flow="inventory") >= (
            records_before + output["rows"]
        )
        assert _sample("d365ct_flow_failures_total", flow="inventory") >= (
            failures_before + output["failed"]
        )

        # A schedule no longer configured is deleted.
        quiet = settings.model_copy(
            update={"inventory": settings.inventory.model_copy(update={"schedule": ""})}
        )
        apply_schedules(schedules_for(quiet))
        assert DBOS.list_schedules(schedule_name_prefix=SCHEDULE_PREFIX) == []
    finally:
        await asyncio.to_thread(shutdown_engine, workflow_completion_timeout_sec=5)
        engine.dispose()


def _sample(name: str, **labels: str) -> float:
    return _flow_registry().get_sample_value(name, labels) or 0.0


def _flow_registry() -> CollectorRegistry:
    """The process's flow counters, readable by name (they belong to no global registry)."""
    registry = CollectorRegistry()
    registry.register(metrics.FLOW_RECORDS)
    registry.register(metrics.FLOW_FAILURES)
    return registry
