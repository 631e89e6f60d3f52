"""A `d365ct orders process`-like worker process for crash and multi-worker tests: drains the
inbox with the real flows and prints a JSON summary line.

Run as `python -m tests.e2e.orders_worker --settings FILE --executor-id ID --worker-id ID`; the
settings file is a Settings dump (secrets stay `env:` references).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from d365ct.config import Settings
from d365ct.engine import launch_engine, shutdown_engine
from d365ct.flows.orders import ProcessSummary, close_clients, commerce_flows, process_inbox
from d365ct.intake import Inbox
from d365ct.store import make_engine


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", required=True)
    parser.add_argument("--executor-id", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument(
        "--until-empty",
        action="store_true",
        help="keep draining while any message is pending (another worker may hold some)",
    )
    args = parser.parse_args()
    settings = Settings.model_validate(json.loads(Path(args.settings).read_text()))
    engine = make_engine(settings.store.url)
    flows = commerce_flows(settings, engine)  # before the launch: DBOS recovers its batches
    launch_engine(settings.store.url, executor_id=args.executor_id, polling_interval_sec=0.05)
    inbox = Inbox(engine)

    async def run() -> ProcessSummary:
        total = ProcessSummary()
        try:
            while True:
                summary = await process_inbox(flows, inbox, worker_id=args.worker_id)
                total.orders += summary.orders
                total.customers += summary.customers
                total.rounds += summary.rounds
                if summary.rounds:
                    continue
                if not args.until_empty or inbox.counts()["pending"] == 0:
                    return total
                await asyncio.sleep(0.2)
        finally:
            await close_clients()

    try:
        summary = asyncio.run(run())
    finally:
        inbox.close()
        shutdown_engine(workflow_completion_timeout_sec=10)
        engine.dispose()
    print(json.dumps({"summary": summary.counts()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
