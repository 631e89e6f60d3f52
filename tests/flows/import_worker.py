"""A d365ct worker process for crash and concurrency tests: imports customers, prints results.

Run as `python -m tests.flows.import_worker --store URL --d365 URL --executor-id ID IMPORT...`
where each IMPORT is `workflow_id:legal_entity:ACCOUNT+ACCOUNT…`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from dbos import DBOS

from d365ct.engine import launch_engine, shutdown_engine
from d365ct.flows.dmf_jobs import PackageJobs
from d365ct.store import JobStore, make_engine
from tests.flows.support import customer, customers_request, sim_settings


async def wait_for(workflow_ids: list[str]) -> None:
    """Stay up until every listed workflow ends: any worker may run any queued import."""
    for workflow_id in workflow_ids:
        while (await DBOS.get_workflow_status_async(workflow_id)) is None:
            await asyncio.sleep(0.1)
        await (await DBOS.retrieve_workflow_async(workflow_id)).get_result()


async def run(jobs: PackageJobs, imports: list[str], others: list[str]) -> dict[str, object]:
    handles = []
    for spec in imports:
        workflow_id, legal_entity, accounts = spec.split(":")
        rows = [customer(a) for a in accounts.split("+")]
        request = customers_request(*rows, legal_entity=legal_entity)
        handles.append((workflow_id, await jobs.start_import(request, workflow_id)))
    print(json.dumps({"started": [w for w, _ in handles]}), flush=True)
    results: dict[str, object] = {}
    for workflow_id, handle in handles:
        result = await handle.get_result()
        results[workflow_id] = {"succeeded": list(result.succeeded), "failed": result.failed}
    await wait_for(others)
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--d365", required=True)
    parser.add_argument("--executor-id", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--also-wait-for", default="", help="comma-separated workflow ids")
    parser.add_argument("imports", nargs="+")
    args = parser.parse_args()
    jobs = PackageJobs(
        sim_settings(args.d365), JobStore(make_engine(args.store)), Path(args.workdir)
    )
    launch_engine(args.store, executor_id=args.executor_id, polling_interval_sec=0.05)
    try:
        others = [w for w in args.also_wait_for.split(",") if w]
        results = asyncio.run(run(jobs, args.imports, others))
    finally:
        shutdown_engine(workflow_completion_timeout_sec=5)
    print(json.dumps({"results": results}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
