"""The store aggregates behind the overview and /metrics, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from d365ct.service.queries import StoreQueries
from d365ct.store import JobStore
from tests.service.seed import seed
from tests.store.conftest import db_url, engine, postgres_url

__all__ = ["db_url", "engine", "postgres_url"]

NOW = datetime(2025, 3, 4, 12, 30, tzinfo=UTC)


def test_aggregates(engine: sa.Engine) -> None:
    seed(engine, now=NOW)
    q = StoreQueries(engine)
    q.ping()
    assert q.jobs_by_flow_state() == {
        ("orders", "partially_succeeded"): 1,
        ("orders", "pending"): 1,
        ("customers", "succeeded"): 1,
        ("inventory", "stuck"): 1,
    }
    assert q.open_jobs() == {"orders": 1, "inventory": 1}
    assert q.error_count_open() == 2
    assert q.errors_open_by_flow() == {"orders": 1, "catalog": 1}
    assert q.intake_pending() == 0
    assert q.last_run()["orders"] == NOW - timedelta(minutes=5)
    assert q.flows() == ["catalog", "customers", "inventory", "orders"]


def test_finished_per_hour_and_durations(engine: sa.Engine) -> None:
    seed(engine, now=NOW)
    q = StoreQueries(engine)
    hours = q.finished_per_hour(hours=24, now=NOW)
    assert len(hours) == 24
    assert hours[-1].start == datetime(2025, 3, 4, 12, tzinfo=UTC)
    by_hour = {b.start.hour: b.count for b in hours if b.count}
    # orders finished at 09:32, customers at 11:30:40
    assert by_hour == {9: 1, 11: 1}
    assert [b.count for b in q.finished_per_hour(hours=24, now=NOW, flow="customers")].count(1) == 1
    durations = q.job_duration_buckets((60.0, 120.0, 300.0))
    assert durations[("orders", "import")] == ([0, 1, 1], 1, 120.0)
    assert durations[("customers", "import")] == ([1, 1, 1], 1, 40.0)
    assert ("inventory", "export") not in durations  # stuck: not finished


def test_jobs_of_a_workflow(engine: sa.Engine) -> None:
    jobs = JobStore(engine)
    for job_id in ("wf-1", "wf-1.p1", "wf-1.p2", "wf-10", "wf_1.p1"):
        jobs.create(
            job_id,
            kind="import",
            flow="orders",
            legal_entity="usmf",
            definition_group="g",
            source_keys=[],
        )
    assert sorted(StoreQueries(engine).job_ids_of_workflow("wf-1")) == [
        "wf-1",
        "wf-1.p1",
        "wf-1.p2",
    ]
    assert StoreQueries(engine).job_ids_of_workflow("wf_1") == ["wf_1.p1"]
