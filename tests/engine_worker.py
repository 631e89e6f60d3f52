"""Subprocess half of tests/test_engine.py: runs a durable workflow the test kills and recovers.

Run from the repo root: python -m tests.engine_worker URL LOG {start,recover} {steps,nap} [--block]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from dbos import DBOS, SetWorkflowID, WorkflowHandle

from d365ct.engine import launch_engine, shutdown_engine

STORE_URL, LOG_FILE, MODE, WORKFLOW = sys.argv[1:5]
# Only the first run blocks in step 2; the recovering run lets the re-executed step finish.
BLOCK = "--block" in sys.argv[5:]
WORKFLOW_ID = f"engine-worker-{WORKFLOW}"
NAP_SECONDS = 8.0  # long beside start-up (which imports every workflow module) and the kill delay


def log(event: str) -> None:
    """Append one event durably: the test reads this file after a SIGKILL."""
    with Path(LOG_FILE).open("a") as f:
        f.write(f"{event} {time.time():.3f} {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())


@DBOS.step()
def step_one(x: int) -> int:
    log("step1")
    return x + 1


@DBOS.step()
def step_two(x: int) -> int:
    log("step2-start")
    if BLOCK:
        time.sleep(60)  # killed here by the test
    log("step2-done")
    return x * 10


@DBOS.workflow()
def two_steps(x: int) -> int:
    return step_two(step_one(x))


@DBOS.step()
def now(label: str) -> float:
    log(label)
    return time.time()


@DBOS.workflow()
def nap(seconds: float) -> list[float]:
    started = now("nap-start")
    DBOS.sleep(seconds)  # the test kills the process during this sleep
    return [started, now("nap-done")]


def main() -> None:
    # A fixed executor id: recovery only resumes this executor's (and app version's) workflows.
    launch_engine(STORE_URL, executor_id="engine-worker", polling_interval_sec=0.05)
    handle: WorkflowHandle[Any]
    try:
        if MODE == "start":
            with SetWorkflowID(WORKFLOW_ID):
                if WORKFLOW == "steps":
                    handle = DBOS.start_workflow(two_steps, 4)
                else:
                    handle = DBOS.start_workflow(nap, NAP_SECONDS)
        else:
            # Never start anything here: the result must come from launch-time recovery alone.
            handle = DBOS.retrieve_workflow(WORKFLOW_ID)
        print(json.dumps({"result": handle.get_result()}), flush=True)
    finally:
        shutdown_engine()


if __name__ == "__main__":
    main()
