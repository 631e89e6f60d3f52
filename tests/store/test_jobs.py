"""The D365 job store on SQLite and PostgreSQL: migrations, atomic transitions, correlation.

Every test runs on both backends through the parametrised ``store`` fixture.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from importlib.resources import files
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from d365ct.store import (
    VERSION_TABLE,
    ExecutionIdConflictError,
    InvalidTransitionError,
    JobNotFoundError,
    JobStore,
    RecordOutcome,
    make_engine,
    metadata,
    migrate,
    normalise_url,
)


@pytest.fixture
def store(engine: sa.Engine) -> JobStore:
    return JobStore(engine)


def _create(store: JobStore, job_id: str = "wf-orders-1", **overrides: object) -> None:
    args: dict[str, object] = {
        "kind": "import",
        "flow": "orders",
        "legal_entity": "usmf",
        "definition_group": "d365ct-orders",
        "source_keys": ["SO-1", "SO-2"],
    }
    args.update(overrides)
    store.create(job_id, **args)  # type: ignore[arg-type]


# -- migrations ----------------------------------------------------------------------------------


def test_migration_matches_tables_and_reruns_cleanly(db_url: str, engine: sa.Engine) -> None:
    migrate(db_url)  # already at head: a no-op
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
        )
        assert compare_metadata(ctx, metadata) == []
        head = ScriptDirectory(str(files("d365ct.store") / "migrations")).get_current_head()
        assert ctx.get_current_revision() == head


def test_normalise_url_picks_psycopg3() -> None:
    assert normalise_url("postgresql://h/db").drivername == "postgresql+psycopg"
    assert normalise_url("postgres://h/db").drivername == "postgresql+psycopg"
    assert normalise_url("sqlite:///x.sqlite").drivername == "sqlite"
    with pytest.raises(ValueError, match="unsupported store URL"):
        normalise_url("mysql://h/db")


def test_sqlite_engine_pragmas(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'p.sqlite'}")
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    eng.dispose()


# -- create and read -----------------------------------------------------------------------------


def test_create_is_idempotent_on_id(store: JobStore) -> None:
    first = store.create(
        "wf-1",
        kind="import",
        flow="orders",
        legal_entity="usmf",
        definition_group="grp",
        source_keys=["SO-1"],
    )
    again = store.create(
        "wf-1",
        kind="export",
        flow="inventory",
        legal_entity="demf",
        definition_group="other",
        source_keys=["X"],
    )
    assert again == first
    assert first.state == "pending" and first.attempts == 0 and first.source_keys == ("SO-1",)
    assert first.execution_id is None and first.result is None and first.finished_at is None
    assert first.created_at.tzinfo is UTC
    assert store.get("wf-1") == first
    assert store.get("missing") is None
    with pytest.raises(ValueError, match="kind"):
        _create(store, "wf-2", kind="sync")


def test_timestamps_are_utc_whatever_the_clock_zone(engine: sa.Engine) -> None:
    local = datetime(2025, 3, 30, 2, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    job = JobStore(engine, clock=lambda: local).create(
        "wf-tz",
        kind="export",
        flow="inventory",
        legal_entity="usmf",
        definition_group="g",
        source_keys=[],
    )
    assert job.created_at == local and job.created_at.tzinfo is UTC
    assert job.created_at.hour == 21
    with pytest.raises(ValueError, match="timezone-aware"):
        JobStore(engine, clock=datetime.now).create(
            "wf-naive",
            kind="export",
            flow="inventory",
            legal_entity="usmf",
            definition_group="g",
            source_keys=[],
        )


def test_list_filters_and_orders_newest_first(engine: sa.Engine) -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    ticks = iter(range(100))
    store = JobStore(engine, clock=lambda: t0 + timedelta(seconds=next(ticks)))
    _create(store, "a", legal_entity="usmf")
    _create(store, "b", legal_entity="demf")
    _create(store, "c", legal_entity="usmf", flow="customers")
    store.set_state("a", "uploading")
    assert [j.id for j in store.list()] == ["c", "b", "a"]
    assert [j.id for j in store.list(limit=2)] == ["c", "b"]
    assert [j.id for j in store.list("pending")] == ["c", "b"]
    assert [j.id for j in store.list(["pending", "uploading"], legal_entity="usmf")] == ["c", "a"]
    assert [j.id for j in store.list(flow="orders", legal_entity="usmf")] == ["a"]
    with pytest.raises(ValueError, match="unknown job state"):
        store.list("running")


# -- execution id --------------------------------------------------------------------------------


def test_record_execution_is_durable_and_repeatable(
    store: JobStore, engine: sa.Engine, db_url: str
) -> None:
    _create(store)
    job = store.record_execution("wf-orders-1", "exec-1")
    assert job.execution_id == "exec-1" and job.state == "pending"
    assert store.record_execution("wf-orders-1", "exec-1").execution_id == "exec-1"  # re-run step
    # Committed: a separate engine (another process, in effect) sees it at once.
    other = make_engine(db_url)
    try:
        found = JobStore(other).by_execution_id("exec-1")
        assert found is not None and found.id == "wf-orders-1"
    finally:
        other.dispose()
    assert store.by_execution_id("exec-unknown") is None


def test_execution_id_is_unique_and_never_replaced(store: JobStore) -> None:
    _create(store, "wf-a")
    _create(store, "wf-b")
    _create(store, "wf-c")
    store.record_execution("wf-a", "exec-1")
    with pytest.raises(ExecutionIdConflictError, match="already belongs to job 'wf-a'"):
        store.record_execution("wf-b", "exec-1")
    with pytest.raises(ExecutionIdConflictError, match="already has execution id"):
        store.record_execution("wf-a", "exec-2")
    # Any number of jobs may still be without one (UNIQUE ignores NULLs).
    job_b, job_c = store.get("wf-b"), store.get("wf-c")
    assert job_b is not None and job_b.execution_id is None
    assert job_c is not None and job_c.execution_id is None
    with pytest.raises(JobNotFoundError):
        store.record_execution("wf-missing", "exec-3")


# -- compare-and-set transitions -----------------------------------------------------------------


def test_set_state_compares_and_sets(store: JobStore) -> None:
    _create(store)
    job = store.set_state("wf-orders-1", "uploading", expected={"pending"})
    assert job.state == "uploading" and job.updated_at >= job.created_at
    with pytest.raises(InvalidTransitionError) as refused:
        store.set_state("wf-orders-1", "uploading", expected={"pending"})
    assert refused.value.current == "uploading" and refused.value.target == "uploading"
    job = store.set_state("wf-orders-1", "triggered", expected={"uploading"}, d365_status="Queued")
    job = store.set_state(
        "wf-orders-1", "executing", d365_status="Executing", count_attempt=True, error="slow"
    )
    job = store.set_state("wf-orders-1", "executing", expected={"executing"}, count_attempt=True)
    assert (job.state, job.d365_status, job.attempts, job.last_error) == (
        "executing",
        "Executing",
        2,
        "slow",
    )
    with pytest.raises(ValueError, match="finish"):
        store.set_state("wf-orders-1", "succeeded")
    with pytest.raises(ValueError, match="unknown job state"):
        store.set_state("wf-orders-1", "running")  # type: ignore[arg-type]
    with pytest.raises(JobNotFoundError):
        store.set_state("wf-missing", "uploading")


def test_only_one_of_racing_workers_wins_a_transition(store: JobStore) -> None:
    _create(store)
    store.set_state("wf-orders-1", "triggered")
    workers = 8
    barrier = threading.Barrier(workers)
    wins: list[int] = []
    losses: list[str] = []

    def race(n: int) -> None:
        barrier.wait()
        try:
            store.set_state("wf-orders-1", "executing", expected={"triggered"}, error=f"w{n}")
            wins.append(n)
        except InvalidTransitionError as exc:
            losses.append(exc.current)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and losses == ["executing"] * (workers - 1)
    job = store.get("wf-orders-1")
    assert job is not None and job.last_error == f"w{wins[0]}"


# -- finish and stuck ----------------------------------------------------------------------------


def test_finish_stores_result_and_outcomes_atomically(store: JobStore) -> None:
    _create(store)
    store.record_execution("wf-orders-1", "exec-1")
    store.set_state("wf-orders-1", "executing", d365_status="Executing")
    outcomes = [
        RecordOutcome("SalesOrderHeadersV2", "SO-1", "ok"),
        RecordOutcome("SalesOrderHeadersV2", "SO-2", "failed", "Customer 'C-9' does not exist."),
    ]
    job = store.finish(
        "wf-orders-1",
        "partially_succeeded",
        {"ok": 1, "failed": 1},
        outcomes,
        d365_status="PartiallySucceeded",
    )
    assert job.state == "partially_succeeded" and job.is_terminal
    assert job.result == {"ok": 1, "failed": 1} and job.d365_status == "PartiallySucceeded"
    assert job.finished_at is not None and job.finished_at.tzinfo is UTC
    assert store.outcomes("wf-orders-1") == outcomes
    # A replayed step finds the job finished already and changes nothing.
    assert store.finish("wf-orders-1", "partially_succeeded", {"other": True}) == job
    with pytest.raises(InvalidTransitionError):
        store.finish("wf-orders-1", "succeeded")
    with pytest.raises(InvalidTransitionError):
        store.set_state("wf-orders-1", "executing")
    with pytest.raises(ValueError, match="terminal"):
        store.finish("wf-orders-1", "executing")


def test_finish_rolls_back_on_a_bad_outcome(store: JobStore) -> None:
    _create(store)
    bad = [RecordOutcome("E", "K1", "ok"), RecordOutcome("E", "K2", "maybe")]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maybe"):
        store.finish("wf-orders-1", "succeeded", {}, bad)
    job = store.get("wf-orders-1")
    assert job is not None and job.state == "pending" and job.finished_at is None
    assert store.outcomes("wf-orders-1") == []


def test_finish_streams_many_outcomes(store: JobStore) -> None:
    _create(store)
    count = 1234  # more than one insert batch
    outcomes = (RecordOutcome("CustomersV3", f"C-{i:05d}", "ok") for i in range(count))
    store.finish("wf-orders-1", "succeeded", {"records": count}, outcomes)
    stored = store.outcomes("wf-orders-1")
    assert len(stored) == count and stored[0].business_key == "C-00000"


def test_mark_stuck_and_resolve_later(store: JobStore) -> None:
    _create(store)
    store.set_state("wf-orders-1", "executing")
    job = store.mark_stuck("wf-orders-1", reason="still Executing after 40 polls", d365_status="X")
    assert (job.state, job.last_error, job.d365_status) == (
        "stuck",
        "still Executing after 40 polls",
        "X",
    )
    assert store.mark_stuck("wf-orders-1", reason="again").last_error == job.last_error  # no-op
    assert [j.id for j in store.list("stuck")] == ["wf-orders-1"]
    # An operator's later check may still settle it.
    assert store.finish("wf-orders-1", "succeeded", expected={"stuck"}).state == "succeeded"
    with pytest.raises(InvalidTransitionError):
        store.mark_stuck("wf-orders-1", reason="too late")


def test_package_and_execution_id_only_on_open_jobs(store: JobStore) -> None:
    _create(store)
    job = store.record_package("wf-orders-1", "dmf/wf-orders-1.zip")
    assert job.package_blob == "dmf/wf-orders-1.zip"
    store.finish("wf-orders-1", "canceled")
    with pytest.raises(InvalidTransitionError, match="recording its package"):
        store.record_package("wf-orders-1", "dmf/other.zip")
    with pytest.raises(InvalidTransitionError, match="recording an execution id"):
        store.record_execution("wf-orders-1", "exec-late")
