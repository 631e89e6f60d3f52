"""Proves the DBOS mechanics the D365 flows rely on, on SQLite and on PostgreSQL.

Idempotent start, step checkpoints across kill -9, durable sleep, per-legal-entity queueing.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dbos import DBOS, SetWorkflowID

from d365ct.engine import (
    IMPORT_QUEUE,
    command_version,
    dbos_system_url,
    enqueue_import,
    enqueue_import_async,
    launch_engine,
    shutdown_engine,
)
from d365ct.store import make_engine

ROOT = Path(__file__).resolve().parents[1]
POLL = 0.05  # queue and result polling in tests; production keeps DBOS's 1 s
PG_ADMIN_URL = os.environ.get(
    "D365CT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)

# -- workflows: DBOS registers them globally at import, so they are defined once, here ----------

RUNS: Counter[str] = Counter()
INTERVALS: list[tuple[str, int, float, float]] = []
_INTERVALS_LOCK = threading.Lock()


@DBOS.workflow()
def counted(key: str) -> str:
    # Counted in the body, not a step: any second execution of the workflow shows up.
    RUNS[key] += 1
    return f"done {key}"


@DBOS.step()
def held(partition: str, index: int, hold: float) -> None:
    start = time.monotonic()
    time.sleep(hold)
    with _INTERVALS_LOCK:
        INTERVALS.append((partition, index, start, time.monotonic()))


@DBOS.workflow()
def import_job(partition: str, index: int, hold: float) -> str:
    held(partition, index, hold)
    return f"{partition}-{index}"


@DBOS.step()
def clock() -> float:
    return time.monotonic()


@DBOS.workflow()
def nap(seconds: float) -> float:
    started = clock()
    DBOS.sleep(seconds)
    return clock() - started


@DBOS.workflow()
async def async_import(order: str) -> str:
    RUNS[order] += 1
    return order.upper()


# -- fixtures ------------------------------------------------------------------------------------


def _admin_engine() -> sa.Engine:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not answering at {PG_ADMIN_URL} ({exc.orig}); start it "
            "(.ci/run does) or point D365CT_TEST_POSTGRES_URL at a maintenance database"
        )
    return engine


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this module, dropped afterwards."""
    admin = _admin_engine()
    name = f"d365ct_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        shutdown_engine()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'engine.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def engine(store_url: str) -> Iterator[str]:
    """DBOS launched on the store; a fresh executor id, so nothing is recovered across tests."""
    RUNS.clear()
    INTERVALS.clear()
    launch_engine(store_url, executor_id=f"test-{uuid.uuid4().hex[:8]}", polling_interval_sec=POLL)
    try:
        yield store_url
    finally:
        shutdown_engine()


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- URL handling and launch ---------------------------------------------------------------------


def test_dbos_url_is_the_store_database_with_psycopg3() -> None:
    assert dbos_system_url("sqlite:///x/y.sqlite") == "sqlite:///x/y.sqlite"
    assert (
        dbos_system_url("postgres://u:p%40ss@h:5433/db")
        == "postgresql+psycopg://u:p%40ss@h:5433/db"
    )
    with pytest.raises(ValueError, match="in-memory"):
        dbos_system_url("sqlite://")
    with pytest.raises(ValueError, match="unsupported"):
        dbos_system_url("mysql://h/db")


def test_launch_puts_store_tables_beside_dbos_tables(engine: str) -> None:
    db = make_engine(engine)
    try:
        inspector = sa.inspect(db)
        ours = {"d365_jobs", "d365_record_outcomes", "d365ct_alembic_version"}
        if db.dialect.name == "sqlite":
            tables = set(inspector.get_table_names())
            assert ours <= tables and "workflow_status" in tables  # one file, no clash
        else:
            assert ours <= set(inspector.get_table_names(schema="public"))
            assert "workflow_status" in inspector.get_table_names(schema="dbos")
    finally:
        db.dispose()


def test_launch_and_shutdown_are_repeatable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'again.sqlite'}"
    try:
        launch_engine(url, polling_interval_sec=POLL)
        launch_engine(url, polling_interval_sec=POLL, import_concurrency=2)  # relaunch in place
        assert IMPORT_QUEUE.partition_concurrency == 2  # stored in the system database
        with SetWorkflowID(_id("again")):
            assert counted("k") == "done k"
    finally:
        shutdown_engine()
        shutdown_engine()
    with pytest.raises(ValueError, match="at least 1"):
        launch_engine(url, import_concurrency=0)


def test_a_command_keeps_apart_from_the_service_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'versions.sqlite'}"
    try:
        launch_engine(url, polling_interval_sec=POLL)
        service = DBOS.application_version
        launch_engine(url, polling_interval_sec=POLL, command=True)
        # Its own version: it neither dequeues nor recovers the service's workflows ...
        assert DBOS.application_version == command_version() != service
        # ... and schedule ticks keep going to the service's version.
        assert DBOS.get_latest_application_version()["version_name"] == service
        with SetWorkflowID(_id("command")):
            assert counted("k") == "done k"
    finally:
        shutdown_engine()


# -- (1) idempotent start by workflow id ----------------------------------------------------------


def test_same_workflow_id_runs_the_body_once(engine: str) -> None:
    wid = _id("idem")
    with SetWorkflowID(wid):
        first = counted("a")
    with SetWorkflowID(wid):
        second = counted("a")
    with SetWorkflowID(wid):
        third = DBOS.start_workflow(counted, "a").get_result()
    assert first == second == third == "done a"
    assert RUNS["a"] == 1


def test_enqueue_import_twice_with_one_id_runs_once(engine: str) -> None:
    wid = _id("import")
    first = enqueue_import(counted, "order-1", legal_entity="usmf", workflow_id=wid)
    second = enqueue_import(counted, "order-1", legal_entity="usmf", workflow_id=wid)
    assert first.get_workflow_id() == second.get_workflow_id() == wid
    assert first.get_result() == second.get_result() == "done order-1"
    assert RUNS["order-1"] == 1
    status = DBOS.get_workflow_status(wid)
    assert status is not None
    assert status.queue_name == "d365-imports"


# -- (3) durable sleep ---------------------------------------------------------------------------


def test_durable_sleep_is_checkpointed(engine: str) -> None:
    wid = _id("nap")
    with SetWorkflowID(wid):
        slept = nap(0.3)
    assert slept >= 0.3
    steps = [s["function_name"] for s in DBOS.list_workflow_steps(wid)]
    assert steps == ["clock", "DBOS.sleep", "clock"]
    # Replaying the finished workflow skips the recorded sleep and returns the recorded result.
    began = time.monotonic()
    with SetWorkflowID(wid):
        assert nap(0.3) == slept
    assert time.monotonic() - began < 0.3


# -- (4) one import at a time per legal entity, entities in parallel ------------------------------


def _overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_partitioned_queue_serialises_each_legal_entity(engine: str) -> None:
    hold = 0.3
    handles = [
        enqueue_import(import_job, entity, i, hold, legal_entity=entity, workflow_id=_id(entity))
        for i in range(3)
        for entity in ("usmf", "demf")
    ]
    assert sorted(h.get_result() for h in handles) == sorted(
        f"{e}-{i}" for i in range(3) for e in ("usmf", "demf")
    )
    by_entity: dict[str, list[tuple[int, float, float]]] = {"usmf": [], "demf": []}
    for entity, index, start, end in INTERVALS:
        by_entity[entity].append((index, start, end))
    for entity, runs in by_entity.items():
        # Not asserted: FIFO order. DBOS orders by created_at in milliseconds, then workflow id.
        runs.sort(key=lambda r: r[1])
        assert len(runs) == 3
        for (_, s1, e1), (_, s2, e2) in itertools.pairwise(runs):
            assert not _overlaps((s1, e1), (s2, e2)), f"two {entity} imports overlapped"
    assert any(
        _overlaps((s1, e1), (s2, e2))
        for _, s1, e1 in by_entity["usmf"]
        for _, s2, e2 in by_entity["demf"]
    ), "different legal entities never ran concurrently"


def test_partition_concurrency_is_configurable(tmp_path: Path) -> None:
    INTERVALS.clear()
    launch_engine(
        f"sqlite:///{tmp_path / 'two.sqlite'}", import_concurrency=2, polling_interval_sec=POLL
    )
    try:
        handles = [
            enqueue_import(import_job, "usmf", i, 0.4, legal_entity="usmf", workflow_id=_id("c2"))
            for i in range(4)
        ]
        for h in handles:
            h.get_result()
    finally:
        shutdown_engine()
    spans = [(start, end) for _, _, start, end in INTERVALS]
    peak = max(sum(_overlaps(a, b) for b in spans) for a in spans)  # counts itself
    assert peak == 2


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[str]:
    """DBOS on SQLite, launched outside the event loop (DBOS refuses launch inside a loop)."""
    RUNS.clear()
    url = f"sqlite:///{tmp_path / 'async.sqlite'}"
    launch_engine(url, polling_interval_sec=POLL)
    try:
        yield url
    finally:
        shutdown_engine()


async def test_enqueue_import_async(sqlite_engine: str) -> None:
    wid = _id("async")
    first = await enqueue_import_async(async_import, "so", legal_entity="usmf", workflow_id=wid)
    again = await enqueue_import_async(async_import, "so", legal_entity="usmf", workflow_id=wid)
    assert await first.get_result() == await again.get_result() == "SO"
    assert RUNS["so"] == 1


# -- (2) checkpoints and sleeps survive kill -9 ---------------------------------------------------


def _events(log: Path) -> list[tuple[str, float, int]]:
    if not log.exists():
        return []
    rows = [line.split() for line in log.read_text().splitlines()]
    return [(name, float(ts), int(pid)) for name, ts, pid in rows]


def _run_worker(url: str, log: Path, mode: str, wf: str, *extra: str) -> subprocess.Popen[str]:
    # As a module from the repository root: run as a script, tests/ would head sys.path and
    # tests/d365ct/ would shadow the real d365ct package.
    return subprocess.Popen(
        [sys.executable, "-m", "tests.engine_worker", url, str(log), mode, wf, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when(proc: subprocess.Popen[str], log: Path, event: str, delay: float = 0.0) -> None:
    deadline = time.monotonic() + 30
    while not any(name == event for name, _, _ in _events(log)):
        if proc.poll() is not None:
            pytest.fail(f"worker exited before {event!r}: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"worker never reached {event!r}: {proc.communicate()[1][-3000:]}")
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _result(proc: subprocess.Popen[str]) -> Any:
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, f"recovering worker failed:\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])["result"]


def test_killed_workflow_resumes_after_its_last_completed_step(
    store_url: str, tmp_path: Path
) -> None:
    url, log = store_url, tmp_path / "events.log"
    _kill_when(_run_worker(url, log, "start", "steps", "--block"), log, "step2-start")

    assert _result(_run_worker(url, log, "recover", "steps")) == (4 + 1) * 10
    names = [name for name, _, _ in _events(log)]
    # Step 1 completed before the kill, so it is not run again; step 2 was interrupted, so it
    # runs again in full (steps are at-least-once: a step must be safe to repeat).
    assert names == ["step1", "step2-start", "step2-start", "step2-done"]
    pids = [pid for _, _, pid in _events(log)]
    assert pids[0] == pids[1] != pids[2] == pids[3]


def test_durable_sleep_keeps_its_deadline_across_kill(store_url: str, tmp_path: Path) -> None:
    url, log = store_url, tmp_path / "events.log"
    nap_seconds = 8.0  # as in engine_worker.py
    _kill_when(_run_worker(url, log, "start", "nap"), log, "nap-start", delay=1.5)

    respawned = time.time()
    started, done = _result(_run_worker(url, log, "recover", "nap"))
    assert done - started >= nap_seconds
    # The wake-up time was recorded before the kill, so the recovered workflow sleeps only the
    # rest; a sleep restarted by recovery would end a full nap after the respawn.
    assert done < respawned + nap_seconds
    assert [name for name, _, _ in _events(log)] == ["nap-start", "nap-done"]
