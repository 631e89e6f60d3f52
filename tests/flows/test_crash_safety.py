"""kill -9 mid-import and two workers on one PostgreSQL: each package is imported exactly once,
and imports of one legal entity never overlap (d365sim records overlaps)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from d365ct.store import JobStore, make_engine
from tests.flows.support import SECRET_ENV
from tests.sim_fixtures import RunningSim
from tests.test_engine import _admin_engine

ROOT = Path(__file__).resolve().parents[2]


def start_worker(
    store: str, sim: RunningSim, executor: str, workdir: Path, *imports: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.flows.import_worker",
            "--store",
            store,
            "--d365",
            sim.base_url,
            "--executor-id",
            executor,
            "--workdir",
            str(workdir),
            *imports,
        ],
        cwd=ROOT,
        env={**os.environ, SECRET_ENV: sim.config.client_secret},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(worker: subprocess.Popen[str], timeout: float = 120) -> dict[str, object]:
    out, err = worker.communicate(timeout=timeout)
    assert worker.returncode == 0, err[-3000:]
    last = [line for line in out.splitlines() if line.startswith('{"results"')][-1]
    return dict(json.loads(last)["results"])


def sim_jobs(sim: RunningSim) -> list[dict[str, object]]:
    return list(httpx.get(f"{sim.base_url}/_sim/jobs").json())


def test_kill_9_while_executing_imports_once(fresh_sim: RunningSim, tmp_path: Path) -> None:
    fresh_sim.config.job_seconds = 4
    store = f"sqlite:///{tmp_path / 'worker.sqlite'}"
    spec = "crash-import:usmf:KILL-1+KILL-2"
    worker = start_worker(store, fresh_sim, "worker-1", tmp_path / "work", spec)
    deadline = time.monotonic() + 60
    while not any(j["status"] == "Executing" for j in sim_jobs(fresh_sim)):
        assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
        assert time.monotonic() < deadline, "the import never started executing"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    job = JobStore(make_engine(store)).get("crash-import")
    # Killed somewhere between the trigger and its outcome: the execution id was recorded first.
    assert job is not None and job.state in ("uploading", "triggered", "executing")
    assert job.execution_id is not None
    recorded_execution = job.execution_id

    again = start_worker(store, fresh_sim, "worker-1", tmp_path / "work", spec)
    results = finish(again)
    assert results["crash-import"] == {"succeeded": ["KILL-1", "KILL-2"], "failed": {}}
    stats = httpx.get(f"{fresh_sim.base_url}/_sim/stats").json()
    assert stats["imports"] == 1  # the package reached D365 exactly once
    (execution,) = sim_jobs(fresh_sim)
    assert execution["executionId"] == recorded_execution
    job = JobStore(make_engine(store)).get("crash-import")
    assert job is not None and job.state == "succeeded"


@pytest.fixture
def postgres_store() -> Iterator[str]:
    admin = _admin_engine()
    name = f"d365ct_workers_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(str(admin.url)).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_two_workers_on_postgres_never_overlap_imports_per_legal_entity(
    fresh_sim: RunningSim, postgres_store: str, tmp_path: Path
) -> None:
    fresh_sim.config.job_seconds = 0.4
    specs_a = [f"pg-a{i}:{le}:PGA{i}" for i, le in enumerate(["usmf", "demf", "usmf"])]
    specs_b = [f"pg-b{i}:{le}:PGB{i}" for i, le in enumerate(["demf", "usmf", "demf"])]
    ids_a = ",".join(spec.split(":")[0] for spec in specs_a)
    ids_b = ",".join(spec.split(":")[0] for spec in specs_b)
    # Either worker may run any queued import, so each stays up until all six are done.
    first = start_worker(
        postgres_store, fresh_sim, "worker-a", tmp_path / "a", f"--also-wait-for={ids_b}", *specs_a
    )
    second = start_worker(
        postgres_store, fresh_sim, "worker-b", tmp_path / "b", f"--also-wait-for={ids_a}", *specs_b
    )
    results = {**finish(first, 180), **finish(second, 180)}
    assert len(results) == 6 and all(not r["failed"] for r in results.values())  # type: ignore[index]
    stats = httpx.get(f"{fresh_sim.base_url}/_sim/stats").json()
    assert stats["imports"] == 6
    assert stats["importOverlaps"] == 0
    assert stats["maxInFlightImportsByLegalEntity"] == {"usmf": 1, "demf": 1}
