"""Store content for the service tests, written through the real stores (JobStore, ErrorQueue,
ReportStore) so the pages and the API read what the flows would have written."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from d365ct.store import JobStore, RecordOutcome
from d365ct.store.error_queue import ErrorEntry, ErrorQueue
from d365ct.store.reports import ReportLine, ReportStore

D365_ERROR = (
    "Cannot create a record in Customers (CustTable). Customer account: CT-2 already exists."
)


@dataclass
class Seeded:
    errors: list[ErrorEntry]
    report_id: str


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def seed(engine: sa.Engine, *, now: datetime | None = None) -> Seeded:
    now = now or datetime.now(UTC)
    clock = Clock(now - timedelta(hours=3))
    jobs = JobStore(engine, clock=clock)

    jobs.create(
        "orders-usmf-1",
        kind="import",
        flow="orders",
        legal_entity="usmf",
        definition_group="d365ct-orders",
        source_keys=["CT-1", "CT-2"],
    )
    jobs.record_package("orders-usmf-1", "dmf/orders-usmf-1.zip")
    jobs.record_execution("orders-usmf-1", "exec-orders-1")
    jobs.set_state("orders-usmf-1", "executing")
    clock.now += timedelta(minutes=2)
    jobs.finish(
        "orders-usmf-1",
        "partially_succeeded",
        {"succeeded": 1, "failed": 1},
        [
            RecordOutcome("Sales order headers V2", "CT-1", "ok"),
            RecordOutcome("Sales order headers V2", "CT-2", "failed", D365_ERROR),
        ],
        d365_status="PartiallySucceeded",
        error=D365_ERROR,
    )

    clock.now = now - timedelta(hours=1)
    jobs.create(
        "customers-usmf-7",
        kind="import",
        flow="customers",
        legal_entity="usmf",
        definition_group="d365ct-customers-import",
        source_keys=["C-7"],
    )
    jobs.record_execution("customers-usmf-7", "exec-cust-7")
    clock.now += timedelta(seconds=40)
    jobs.finish("customers-usmf-7", "succeeded", {"succeeded": 1}, d365_status="Succeeded")

    clock.now = now - timedelta(minutes=30)
    jobs.create(
        "inventory-demf-3",
        kind="export",
        flow="inventory",
        legal_entity="demf",
        definition_group="d365ct-onhand",
        source_keys=[],
    )
    jobs.record_execution("inventory-demf-3", "exec-inv-3")
    jobs.set_state("inventory-demf-3", "executing")
    jobs.mark_stuck(
        "inventory-demf-3", reason="still Executing after 120 status polls", d365_status="Executing"
    )

    clock.now = now - timedelta(minutes=5)
    jobs.create(
        "orders-demf-2",
        kind="import",
        flow="orders",
        legal_entity="demf",
        definition_group="d365ct-orders",
        source_keys=["CT-9"],
    )

    queue = ErrorQueue(engine)
    errors = [
        queue.add(
            flow="orders",
            business_key="CT-2",
            step="import",
            error=D365_ERROR,
            payload={"orderNumber": "CT-2", "lineItems": [{"sku": "A-1"}]},
            correlation={
                "message_id": "m-2",
                "workflow_id": "orders-usmf-1",
                "execution_id": "exec-orders-1",
            },
        ),
        queue.add(
            flow="catalog",
            business_key="ITEM-77",
            step="transform",
            error="variant matrix has no size dimension",
            payload={"ItemNumber": "ITEM-77"},
        ),
    ]

    reports = ReportStore(engine)
    report_id = "reconcile-inventory-usmf-20250101"
    reports.create(
        report_id, flow="inventory", legal_entity="usmf", started_at=now - timedelta(hours=2)
    )
    reports.add_lines(
        report_id,
        [
            ReportLine("SKU-1", "corrected", "11", "usmf-11", 10, 7, 10),
            ReportLine("SKU-2", "corrected", "11", "usmf-11", 0, 5, 0),
            ReportLine("SKU-3", "created", "12", "usmf-12", 4, None, 4),
            ReportLine("SKU-4", "failed", "24", None, 3, None, None, "no supply channel for 24"),
        ],
    )
    reports.finish(
        report_id,
        {"compared": 120, "corrected": 2, "created": 1, "failed": 1},
        finished_at=now - timedelta(hours=2) + timedelta(minutes=4),
    )
    return Seeded(errors, report_id)
