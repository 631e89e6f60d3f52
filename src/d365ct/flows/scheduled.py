"""The cron runs of `d365ct run`: catalog, price and inventory delta syncs and the nightly inventory
reconciliation, each a registered DBOS workflow that DBOS's scheduler starts (one run per tick).

The runner points them at its settings with ``configure`` before the engine launches; the
schedules themselves (names, cron, queues) are built by ``d365ct.service.runner.schedules_for``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from dbos import DBOS

from d365ct.config import Settings
from d365ct.errors import ConfigurationError
from d365ct.flows.dmf_jobs import PackageJobs
from d365ct.service import metrics

__all__ = [
    "FLOWS",
    "configure",
    "configured",
    "queue_name",
    "scheduled_catalog_sync",
    "scheduled_inventory_reconciliation",
    "scheduled_inventory_sync",
    "scheduled_price_sync",
]

log = logging.getLogger("d365ct.scheduled")

# Schedule name → (the settings key that holds its cron, for messages)
FLOWS: Final = {
    "catalog": "catalog.schedule",
    "prices": "prices.schedule",
    "inventory": "inventory.schedule",
    "reconcile": "inventory.reconcile_schedule",
}


# Flows that write the same commercetools resources share a queue: a reconciliation must not
# overlap an inventory delta sync (it would set back what the sync wrote after its export), and
# prices follow the catalog whose products they price.
_QUEUE_OF: Final = {
    "catalog": "catalog",
    "prices": "catalog",
    "inventory": "inventory",
    "reconcile": "inventory",
}


def queue_name(flow: str) -> str:
    """The queue of a flow's ticks, run one at a time across all workers: a sync slower than
    its interval is followed by the next tick, never overlapped by it or by its queue mates."""
    return f"d365ct-scheduled-{_QUEUE_OF[flow]}"


@dataclass
class _Wiring:
    settings: Settings
    engine: sa.Engine
    reconcile_jobs: PackageJobs


_WIRING: dict[str, _Wiring] = {}


def configure(settings: Settings, engine: sa.Engine) -> None:
    """Point the scheduled flows at `settings` and the store `engine`. Call before launch_engine:
    it registers the PackageJobs instance reconciliation exports through, so that DBOS can recover
    an export that a crash interrupted."""
    from d365ct.flows.reconcile import package_jobs

    _WIRING["service"] = _Wiring(settings, engine, package_jobs(settings))


def configured() -> _Wiring:
    wiring = _WIRING.get("service")
    if wiring is None:
        raise ConfigurationError(
            "a scheduled flow ran in a process that did not configure the scheduled flows "
            "(d365ct.flows.scheduled.configure before launch)"
        )
    return wiring


def _done(flow: str, scheduled_at: datetime, summary: dict[str, Any]) -> dict[str, Any]:
    _record_run(flow, summary)
    log.info(
        "scheduled %s run finished",
        flow,
        extra={"flow": flow, "scheduled_at": scheduled_at.isoformat(), "summary": summary},
    )
    return summary


def _record_run(flow: str, summary: dict[str, Any]) -> None:
    """Feed /metrics: the run's records (D365 rows or desired resources) and failures, and its
    duration. A run that recovery replays is counted again; the figures are rates, not ledgers."""
    reports = summary.get("reports")
    if reports is not None:  # the reconciliation: one report per legal entity
        counts = [r.get("counts") or {} for r in reports]
        checked = sum(int(c.get("rows") or 0) for c in counts)
        failed = sum(1 for r in reports if r.get("state") == "failed")
        for c in counts:
            metrics.observe_step(flow, "reconcile", float(c.get("seconds") or 0.0))
    else:
        checked = int(summary.get("rows") or summary.get("records") or 0)
        failed = int(summary.get("failed") or 0)
        metrics.observe_step(flow, "sync", float(summary.get("seconds") or 0.0))
    metrics.record_records(flow, checked)
    if failed:
        metrics.record_failures(flow, failed)


# Each sync is one step: re-running a sync is its recovery (hashes are stored after writes,
# updates are version-guarded), so a run a crash interrupted is simply run again.


@DBOS.step(name="d365ct.scheduled.catalog_sync")
async def _catalog_sync() -> dict[str, Any]:
    from d365ct.flows.catalog import sync_catalog

    wiring = configured()
    summary = (await sync_catalog(wiring.settings, wiring.engine)).as_dict()
    summary.pop("plan", None)
    return summary


@DBOS.step(name="d365ct.scheduled.price_sync")
async def _price_sync() -> dict[str, Any]:
    from d365ct.flows.prices import sync_prices

    wiring = configured()
    summary = (await sync_prices(wiring.settings, wiring.engine)).as_dict()
    summary.pop("plan", None)
    return summary


@DBOS.step(name="d365ct.scheduled.inventory_sync")
async def _inventory_sync() -> dict[str, Any]:
    from d365ct.flows.inventory import sync_inventory

    wiring = configured()
    summary = (await sync_inventory(wiring.settings, wiring.engine)).as_dict()
    summary.pop("planned", None)
    return summary


@DBOS.workflow(name="d365ct.scheduled.catalog")
async def scheduled_catalog_sync(scheduled_at: datetime, context: Any) -> dict[str, Any]:
    """The catalog delta sync (U1), on `catalog.schedule`."""
    return _done("catalog", scheduled_at, await _catalog_sync())


@DBOS.workflow(name="d365ct.scheduled.prices")
async def scheduled_price_sync(scheduled_at: datetime, context: Any) -> dict[str, Any]:
    """The price delta sync (U1), on `prices.schedule`."""
    return _done("prices", scheduled_at, await _price_sync())


@DBOS.workflow(name="d365ct.scheduled.inventory")
async def scheduled_inventory_sync(scheduled_at: datetime, context: Any) -> dict[str, Any]:
    """The inventory delta sync (U2), on `inventory.schedule`."""
    return _done("inventory", scheduled_at, await _inventory_sync())


@DBOS.workflow(name="d365ct.scheduled.reconcile")
async def scheduled_inventory_reconciliation(
    scheduled_at: datetime, context: Any
) -> dict[str, Any]:
    """The inventory reconciliation (C14), on `inventory.reconcile_schedule`.

    Not one step: each legal entity's on-hand export is its own durable workflow (a child of
    this one), so DBOS resumes a long export instead of starting it over."""
    from d365ct.flows.reconcile import reconcile_inventory

    wiring = configured()
    results = await reconcile_inventory(
        wiring.settings, wiring.engine, wiring.reconcile_jobs, started_at=scheduled_at
    )
    return _done("reconcile", scheduled_at, {"reports": [r.as_dict() for r in results]})
