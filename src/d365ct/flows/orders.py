"""U3 order posting: OrderCreated messages → D365 sales order packages, micro-batched per company.

Each batch is a DBOS workflow whose id derives from its messages; status is written back to orders.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import httpx
import sqlalchemy as sa
from dbos import DBOS, DBOSConfiguredInstance, SetWorkflowID

from d365ct.commercetools import CommercetoolsClient, CommercetoolsError, ResourceNotFound
from d365ct.config import LegalEntitySettings, Settings
from d365ct.d365.odata import quote_literal
from d365ct.errors import D365ctError, PermanentError, TransientError
from d365ct.flows.customers import (
    CustomerOutcome,
    CustomerSync,
    LoopAdapters,
    MessageResult,
    customer_sync,
    customers_needing_sync,
    digest,
    ensure_customers,
    sync_customer_messages,
)
from d365ct.flows.dmf_jobs import ImportRequest, ImportResult, PackageJobs, PackageResult
from d365ct.intake import Inbox, InboxEntry
from d365ct.mapping.customers import (
    ACCOUNT_FIELD,
    CUSTOMER_TYPE_KEY,
    LEGAL_ENTITIES_FIELD,
    MappingError,
)
from d365ct.mapping.orders import (
    CHARGE_ENTITY,
    EXECUTION_FIELD,
    KEY_FIELDS,
    ORDER_ENTITIES,
    ORDER_TYPE_KEY,
    PENDING_STATE,
    SALES_ORDER_FIELD,
    STATUS_FIELD,
    SalesOrderRows,
    effective_order_number,
    order_customer_account,
    order_write_back_actions,
    route_order,
    sales_order_rows,
)
from d365ct.store import JobStore, make_engine
from d365ct.store.error_queue import ErrorQueue
from d365ct.store.sync_state import SyncStateStore

if TYPE_CHECKING:
    from d365ct.flows.setup import SetupItem

__all__ = [
    "ASSIGNMENTS",
    "FLOW",
    "IMPORTED_TYPES",
    "JOBS_INSTANCE",
    "ORDERS_INSTANCE",
    "ORDER_TYPES",
    "CommerceFlows",
    "OrderBatch",
    "OrderOutcome",
    "OrderPosting",
    "OrderUnit",
    "ProcessSummary",
    "close_clients",
    "collect_orders",
    "commerce_flows",
    "customer_type_draft",
    "ensure_order_types_and_states",
    "order_type_draft",
    "post_order_messages",
    "post_orders",
    "process_inbox",
    "wired_flows",
]

FLOW: Final = "orders"
ORDERS_INSTANCE: Final = "d365ct-orders"  # DBOS name of the OrderPosting instance
JOBS_INSTANCE: Final = "d365ct-commerce"  # DBOS name of the PackageJobs of U3 and U4
ASSIGNMENTS: Final = "order-batches"  # sync_state rows: message id → the batch it went into
ORDER_TYPES: Final = ("OrderCreated",)
# Orders imported into commercetools (U6, migrations) came from D365 or elsewhere: never posted.
IMPORTED_TYPES: Final = ("OrderImported",)
RETRY_AFTER: Final = timedelta(seconds=30)
MAX_ATTEMPTS: Final = 5


@dataclass(frozen=True)
class OrderUnit:
    """One order ready to import: its rows and what the write-back needs."""

    order_id: str
    order_number: str
    legal_entity: str
    rows: SalesOrderRows
    snapshot: dict[str, Any]  # id, version, custom, state: enough to compute the write-back
    message_id: str | None = None


@dataclass(frozen=True)
class OrderBatch:
    batch_id: str  # the DBOS workflow id; its import is `{batch_id}-import`
    legal_entity: str
    definition_group: str
    orders: tuple[OrderUnit, ...]

    @property
    def import_id(self) -> str:
        return f"{self.batch_id}-import"

    def request(self) -> ImportRequest:
        charged = any(unit.rows.charges for unit in self.orders)
        return ImportRequest(
            flow=FLOW,
            legal_entity=self.legal_entity,
            definition_group=self.definition_group,
            entities=(*ORDER_ENTITIES, CHARGE_ENTITY) if charged else ORDER_ENTITIES,
            units=tuple(unit.rows.unit() for unit in self.orders),
            unit_keys=tuple(unit.order_number for unit in self.orders),
            key_fields=KEY_FIELDS,
        )


@dataclass(frozen=True)
class OrderOutcome:
    order_id: str
    order_number: str | None
    legal_entity: str | None
    # posted | failed | stuck | write-back-failed | error (queued before import) | released
    status: str
    message_id: str | None = None
    workflow_id: str | None = None
    job_id: str | None = None
    execution_id: str | None = None
    error: str | None = None
    error_entry: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "posted"


def _snapshot(order: Mapping[str, Any]) -> dict[str, Any]:
    return {name: order.get(name) for name in ("id", "version", "custom", "state", "orderNumber")}


def _package_of(result: ImportResult, key: str) -> PackageResult | None:
    for package in result.packages:
        if key in package.succeeded or key in package.failed:
            return package
    return result.packages[-1] if result.packages else None


def _correlation(outcome: OrderOutcome) -> dict[str, Any]:
    return {
        "message_id": outcome.message_id,
        "workflow_id": outcome.workflow_id,
        "job_id": outcome.job_id,
        "execution_id": outcome.execution_id,
        "commercetools": f"orders/{outcome.order_id}",
        "order_number": outcome.order_number,
        "legal_entity": outcome.legal_entity,
    }


@DBOS.dbos_class()
class OrderPosting(DBOSConfiguredInstance):
    """The U3 workflows, bound to settings, the store, the PackageJobs and the customer sync."""

    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        jobs: PackageJobs,
        customers: CustomerSync,
        *,
        config_name: str = ORDERS_INSTANCE,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.jobs = jobs
        self.customers = customers
        self.io = LoopAdapters(settings)
        self.state_ids: dict[str, str | None] = {}
        super().__init__(config_name)

    def repoint(
        self, settings: Settings, engine: sa.Engine, jobs: PackageJobs, customers: CustomerSync
    ) -> None:
        self.settings, self.engine, self.jobs, self.customers = settings, engine, jobs, customers
        self.io = LoopAdapters(settings)
        self.state_ids.clear()

    @property
    def errors(self) -> ErrorQueue:
        return ErrorQueue(self.engine)

    async def ct(self) -> CommercetoolsClient:
        return (await self.io.get()).commercetools("orders")

    # -- the workflow ------------------------------------------------------------------------

    @DBOS.workflow()
    async def post_batch(self, batch: OrderBatch) -> tuple[OrderOutcome, ...]:
        """One package for the batch's orders, then each order's status written back.

        The import's workflow id derives from the batch id, and PackageJobs records the D365
        execution id before it triggers: a batch started again (a replayed message, a restart)
        joins the same import instead of posting its orders twice.
        """
        handle = await self.jobs.start_import(batch.request(), batch.import_id)
        result: ImportResult = await handle.get_result()
        return await self.conclude(batch, result)

    @DBOS.step()
    async def conclude(self, batch: OrderBatch, result: ImportResult) -> tuple[OrderOutcome, ...]:
        state_id = await self.state_id(self.settings.orders.posted_state)
        return tuple(
            await asyncio.gather(
                *(self._conclude_one(batch, unit, result, state_id) for unit in batch.orders)
            )
        )

    async def _conclude_one(
        self, batch: OrderBatch, unit: OrderUnit, result: ImportResult, state_id: str | None
    ) -> OrderOutcome:
        package = _package_of(result, unit.order_number)
        outcome = OrderOutcome(
            unit.order_id,
            unit.order_number,
            unit.legal_entity,
            "posted",
            message_id=unit.message_id,
            workflow_id=batch.batch_id,
            job_id=package.job_id if package else None,
            execution_id=package.execution_id if package else None,
        )
        if package is not None and package.state == "stuck":
            # D365 may still run it: leave the order as it is and let an operator resume the job
            error = (
                f"D365 import job {package.job_id} is stuck ({package.d365_status}): resume it "
                f"with d365ct jobs retry {package.job_id}, then replay this entry"
            )
            entry = self.record_failure(unit, outcome, "import", error)
            return dataclasses.replace(outcome, status="stuck", error=error, error_entry=entry)
        posted = package is not None and unit.order_number in package.succeeded
        try:
            await self.write_back(
                unit.order_id,
                unit.snapshot,
                posted=posted,
                execution_id=outcome.execution_id,
                sales_order_number=unit.order_number,
                state_id=state_id,
            )
            written: str | None = None
        except ResourceNotFound:
            written = None  # deleted meanwhile: nothing to write back to
        except (D365ctError, httpx.HTTPError) as exc:
            written = f"writing the status back to commercetools failed: {exc}"
        if not posted:
            error = (package.failed.get(unit.order_number) if package else None) or (
                "D365 did not import the order"
            )
            if written:
                error = f"{error} (and {written})"
            entry = self.record_failure(unit, outcome, "import", error)
            return dataclasses.replace(outcome, status="failed", error=error, error_entry=entry)
        if written:
            entry = self.record_failure(unit, outcome, "write-back", written)
            return dataclasses.replace(
                outcome, status="write-back-failed", error=written, error_entry=entry
            )
        return outcome

    async def state_id(self, key: str) -> str | None:
        if key not in self.state_ids:
            found = await (await self.ct()).get_by_key("states", key)
            self.state_ids[key] = str(found["id"]) if found else None
        return self.state_ids[key]

    async def write_back(
        self,
        order_id: str,
        snapshot: Mapping[str, Any] | None,
        *,
        posted: bool,
        execution_id: str | None,
        sales_order_number: str,
        state_id: str | None,
    ) -> dict[str, Any]:
        """Custom fields and (posted) the State; against the snapshot first, on 409 re-read."""
        ct = await self.ct()
        posted_state = self.settings.orders.posted_state
        return await ct.update_with_retry(
            "orders",
            order_id,
            lambda current: order_write_back_actions(
                current,
                posted=posted,
                execution_id=execution_id,
                sales_order_number=sales_order_number,
                posted_state=posted_state,
                posted_state_id=state_id,
            ),
            current=snapshot,
        )

    def record_failure(self, unit: OrderUnit, outcome: OrderOutcome, step: str, error: str) -> int:
        return self.errors.add(
            flow=FLOW,
            business_key=unit.order_number,
            step=step,
            error=error,
            payload={
                "order_id": unit.order_id,
                "order_number": unit.order_number,
                "legal_entity": unit.legal_entity,
                "posted": step == "write-back",
                "lines": len(unit.rows.lines),
                # Decimal and datetime as text: the payload is JSON
                "header": json.loads(json.dumps(unit.rows.header, default=str)),
            },
            correlation=_correlation(outcome),
        ).id


# -- wiring ------------------------------------------------------------------------------------


@dataclass
class CommerceFlows:
    """The DBOS instances of U3 and U4 and what they share."""

    settings: Settings
    engine: sa.Engine
    jobs: PackageJobs
    customers: CustomerSync
    orders: OrderPosting

    @property
    def errors(self) -> ErrorQueue:
        return ErrorQueue(self.engine)


_FLOWS: dict[str, CommerceFlows] = {}
_OWN_JOBS: dict[str, PackageJobs] = {}


def commerce_flows(
    settings: Settings, engine: sa.Engine | None = None, *, jobs: PackageJobs | None = None
) -> CommerceFlows:
    """The U3/U4 instances of this process: DBOS registers instances once, by name, so later
    calls re-point them at these settings. Call it before launch_engine so that DBOS can recover
    batches a crash interrupted. Without `engine`, the store of `settings` is opened (once).

    `jobs`: a PackageJobs the service already shares between flows; without it, one named
    JOBS_INSTANCE is created (and re-pointed at these settings on later calls).
    """
    held = _FLOWS.get("commerce")
    if engine is None:
        same_store = held is not None and held.settings.store.url == settings.store.url
        engine = held.engine if held is not None and same_store else make_engine(settings.store.url)
    store = JobStore(engine)
    if jobs is None:
        own = _OWN_JOBS.get(JOBS_INSTANCE)
        if own is None:
            own = _OWN_JOBS[JOBS_INSTANCE] = PackageJobs(
                settings.d365, store, settings.store.workdir, config_name=JOBS_INSTANCE
            )
        else:
            own.settings, own.store, own.workdir = settings.d365, store, settings.store.workdir
            own._clients.clear()  # bound to event loops of earlier runs
        jobs = own
    customers = customer_sync(settings, engine, jobs)
    if held is None:
        orders = OrderPosting(settings, engine, jobs, customers)
        held = CommerceFlows(settings, engine, jobs, customers, orders)
    else:
        held.orders.repoint(settings, engine, jobs, customers)
        held.settings, held.engine, held.jobs = settings, engine, jobs
    _FLOWS["commerce"] = held
    return held


def wired_flows(settings: Settings) -> CommerceFlows:
    """The instances already wired to these settings (a running service's, with their open
    clients), or new ones: replays from the dashboard must not re-point the service's flows."""
    held = _FLOWS.get("commerce")
    if held is not None and held.settings == settings:
        return held
    return commerce_flows(settings)


async def close_clients() -> None:
    """Close the U3/U4 clients of the running event loop (call before asyncio.run ends it)."""
    held = _FLOWS.get("commerce")
    if held is not None:
        await held.orders.io.aclose()
        await held.customers.io.aclose()
        held.jobs._clients.clear()


# -- preparing orders --------------------------------------------------------------------------


@dataclass
class _Prepared:
    order: dict[str, Any]
    number: str
    entity: LegalEntitySettings
    message_id: str | None
    snapshot: dict[str, Any]


async def _assign_number(
    ct: CommercetoolsClient, order: Mapping[str, Any], number: str
) -> dict[str, Any]:
    """setOrderNumber before anything else, so D365 and commercetools share the number. The
    number derives from the order id: a retry computes the same one, or finds it already set."""

    def actions(current: Mapping[str, Any]) -> list[dict[str, Any]]:
        if current.get("orderNumber"):
            return []
        return [{"action": "setOrderNumber", "orderNumber": number}]

    return await ct.update_with_retry("orders", str(order["id"]), actions, current=order)


async def _fetch_customers(flows: CommerceFlows, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    ct = await flows.customers.ct()
    found = await ct.find_by_field("customers", "id", list(ids))
    return {cid: bodies[0] for cid, bodies in found.items()}


class _Failures:
    """Collects the orders that fail before import: each one error queue entry and an outcome."""

    def __init__(self, flows: CommerceFlows) -> None:
        self.flows = flows
        self.outcomes: list[OrderOutcome] = []

    def add(
        self,
        order: Mapping[str, Any],
        message_id: str | None,
        step: str,
        error: str,
        *,
        number: str | None = None,
        entity: str | None = None,
    ) -> None:
        order_id = str(order.get("id"))
        number = number or order.get("orderNumber") or None
        outcome = OrderOutcome(order_id, number, entity, "error", message_id=message_id)
        entry = self.flows.errors.add(
            flow=FLOW,
            business_key=number or f"order:{order_id}",
            step=step,
            error=error,
            payload={"order_id": order_id, "order_number": number, "legal_entity": entity},
            correlation=_correlation(outcome),
        )
        self.outcomes.append(dataclasses.replace(outcome, error=error, error_entry=entry.id))


async def _prepare(
    flows: CommerceFlows,
    items: Sequence[tuple[Mapping[str, Any], str | None]],
    failures: _Failures,
    released: list[OrderOutcome],
    *,
    may_release: Callable[[str | None], bool],
) -> list[_Prepared]:
    """Number (setOrderNumber where missing, concurrently) and route each order."""
    settings = flows.settings
    ct = await flows.orders.ct()
    numbered: list[tuple[dict[str, Any], str | None, str]] = []
    for item, message_id in items:
        order = dict(item)
        try:
            numbered.append(
                (
                    order,
                    message_id,
                    effective_order_number(order, settings.orders.order_number_prefix),
                )
            )
        except MappingError as exc:
            failures.add(order, message_id, "map", exc.reason)
    assigned = await asyncio.gather(
        *(
            _assign_number(ct, order, number) if not order.get("orderNumber") else _same(order)
            for order, _, number in numbered
        ),
        return_exceptions=True,
    )
    prepared: list[_Prepared] = []
    numbers: dict[str, str] = {}
    for (order, message_id, number), current in zip(numbered, assigned, strict=True):
        if isinstance(current, TransientError) and may_release(message_id):
            released.append(
                OrderOutcome(
                    str(order["id"]), number, None, "released", message_id, error=str(current)
                )
            )
            continue
        if isinstance(current, D365ctError | httpx.HTTPError):
            failures.add(
                order,
                message_id,
                "order-number",
                f"setOrderNumber failed: {current}",
                number=number,
            )
            continue
        if isinstance(current, BaseException):
            raise current
        number = str(current.get("orderNumber") or number)
        order["orderNumber"] = number
        try:
            entity = route_order(order, settings.legal_entities)
        except MappingError as exc:
            failures.add(order, message_id, "route", exc.reason, number=number)
            continue
        if number in numbers and numbers[number] != order["id"]:
            failures.add(
                order,
                message_id,
                "map",
                f"order number {number} is also used by order {numbers[number]}",
                number=number,
                entity=entity.id,
            )
            continue
        numbers[number] = str(order["id"])
        prepared.append(_Prepared(order, number, entity, message_id, _snapshot(current)))
    return prepared


async def _same(order: dict[str, Any]) -> dict[str, Any]:
    return order


async def _units(
    flows: CommerceFlows,
    prepared: Sequence[_Prepared],
    failures: _Failures,
    batch_key: str,
    released: list[OrderOutcome],
    may_release: Callable[[str | None], bool],
) -> list[OrderUnit]:
    """Resolve each order's D365 customer account (importing customers that D365 does not have
    in the order's legal entity yet), then map the order to rows."""
    settings = flows.settings
    ids = sorted({str(p.order["customerId"]) for p in prepared if p.order.get("customerId")})
    try:
        customers = await _fetch_customers(flows, ids)
    except (D365ctError, httpx.HTTPError) as exc:
        for p in prepared:
            if isinstance(exc, TransientError | httpx.HTTPError) and may_release(p.message_id):
                released.append(
                    OrderOutcome(
                        str(p.order["id"]),
                        p.number,
                        p.entity.id,
                        "released",
                        p.message_id,
                        error=f"reading customers failed: {exc}",
                    )
                )
                continue
            failures.add(
                p.order,
                p.message_id,
                "customer",
                f"reading customers failed: {exc}",
                number=p.number,
                entity=p.entity.id,
            )
        return []
    needs = [
        (customers[str(p.order["customerId"])], p.entity)
        for p in prepared
        if str(p.order.get("customerId")) in customers
        and customers_needing_sync(customers[str(p.order["customerId"])], p.entity)
    ]
    ensured: dict[tuple[str, str], CustomerOutcome | MappingError] = {}
    if needs:
        try:
            ensured = await ensure_customers(flows.customers, needs, batch_key)
        except (D365ctError, httpx.HTTPError) as exc:
            problem = MappingError(f"could not make sure D365 has the customer: {exc}")
            ensured = {(str(c["id"]), e.id): problem for c, e in needs}
    units: list[OrderUnit] = []
    for p in prepared:
        customer_id = str(p.order.get("customerId") or "")
        customer = customers.get(customer_id)
        outcome = ensured.get((customer_id, p.entity.id))
        if isinstance(outcome, MappingError) or (outcome is not None and not outcome.ok):
            reason = (
                outcome.reason
                if isinstance(outcome, MappingError)
                else (f"{outcome.status}: {outcome.error}")
            )
            failures.add(
                p.order,
                p.message_id,
                "customer",
                f"customer {customer_id} is not in D365 legal entity {p.entity.id}: {reason}",
                number=p.number,
                entity=p.entity.id,
            )
            continue
        try:
            account = order_customer_account(
                p.order, p.entity, customer, settings.customers.account_prefix
            )
            rows = sales_order_rows(
                p.order,
                p.entity,
                order_number=p.number,
                customer_account=account,
                settings=settings.orders,
            )
        except MappingError as exc:
            failures.add(
                p.order, p.message_id, "map", exc.reason, number=p.number, entity=p.entity.id
            )
            continue
        units.append(
            OrderUnit(str(p.order["id"]), p.number, p.entity.id, rows, p.snapshot, p.message_id)
        )
    return units


# -- batching and posting ----------------------------------------------------------------------


def _batches(
    flows: CommerceFlows,
    units: Sequence[OrderUnit],
    name: Callable[[str, Sequence[OrderUnit]], str],
) -> list[OrderBatch]:
    size = flows.settings.orders.max_orders
    by_entity: dict[str, list[OrderUnit]] = {}
    for unit in units:
        by_entity.setdefault(unit.legal_entity, []).append(unit)
    group = flows.settings.orders.definition_group
    return [
        OrderBatch(name(entity, members[i : i + size]), entity, group, tuple(members[i : i + size]))
        for entity, members in by_entity.items()
        for i in range(0, len(members), size)
    ]


def _assigned_batches(flows: CommerceFlows, units: Sequence[OrderUnit]) -> list[OrderBatch]:
    """Batches of message-borne orders, each message durably assigned to its batch before the
    batch starts: a message claimed again after a crash rejoins the batch it went into (same
    workflow id: DBOS runs it once), never a new one that would post its order twice."""
    state = SyncStateStore(flows.engine)
    held = state.get_many(ASSIGNMENTS, [u.message_id for u in units if u.message_id])
    again: dict[str, list[OrderUnit]] = {}
    fresh: list[OrderUnit] = []
    for unit in units:
        record = held.get(unit.message_id or "")
        if record is not None:
            again.setdefault(record.content_hash, []).append(unit)
        else:
            fresh.append(unit)
    group = flows.settings.orders.definition_group
    batches = [
        OrderBatch(batch_id, members[0].legal_entity, group, tuple(members))
        for batch_id, members in again.items()
    ]

    def name(entity: str, members: Sequence[OrderUnit]) -> str:
        return f"orders-{entity}-{digest(u.message_id or u.order_id for u in members)}"

    new = _batches(flows, fresh, name)
    state.put_many(
        ASSIGNMENTS,
        [
            (unit.message_id, batch.batch_id, unit.order_id, None)
            for batch in new
            for unit in batch.orders
            if unit.message_id
        ],
    )
    return batches + new


async def _run(
    flows: CommerceFlows, batches: Sequence[OrderBatch]
) -> list[tuple[OrderBatch, tuple[OrderOutcome, ...] | BaseException]]:
    """Start every batch (the per-legal-entity queue serialises their imports), await all."""

    async def run(batch: OrderBatch) -> tuple[OrderOutcome, ...]:
        with SetWorkflowID(batch.batch_id):
            handle = await DBOS.start_workflow_async(flows.orders.post_batch, batch)
        return await handle.get_result()

    results = await asyncio.gather(*(run(batch) for batch in batches), return_exceptions=True)
    return list(zip(batches, results, strict=True))


async def _already_in_d365(flows: CommerceFlows, unit: OrderUnit) -> bool:
    """Whether D365 holds the order with all its lines (a replay then only writes back)."""
    odata = (await flows.orders.io.get()).odata
    key = {"dataAreaId": unit.legal_entity, "SalesOrderNumber": unit.order_number}
    if await odata.get("SalesOrderHeadersV2", key) is None:
        return False
    lines = await odata.count(
        "SalesOrderLines",
        filter=f"SalesOrderNumber eq {quote_literal(unit.order_number)}",
        legal_entity=unit.legal_entity,
    )
    return lines >= len(unit.rows.lines)


async def post_orders(
    flows: CommerceFlows,
    items: Sequence[tuple[Mapping[str, Any], str | None]],
    *,
    batch_id: str | None = None,
    check_d365: Mapping[str, str | None] | None = None,
    may_release: Callable[[str | None], bool] = lambda _message_id: False,
) -> list[OrderOutcome]:
    """Post orders (each with the id of the message that brought it, or None) to D365.

    Order number first (setOrderNumber when missing), routing, customer accounts, rows; then
    one batch per legal entity and up to orders.max_orders orders. Message-borne orders are
    batched through durable assignments; others go into `batch_id` (one per legal entity,
    suffixed). `check_d365` (order id → execution id to record) first asks D365 whether the
    order is already complete there, and then only writes back: replays use it.
    """
    failures = _Failures(flows)
    released: list[OrderOutcome] = []
    prepared = await _prepare(flows, items, failures, released, may_release=may_release)
    key = batch_id or digest(m or str(o.get("id")) for o, m in items)
    units = await _units(flows, prepared, failures, key, released, may_release)
    done: list[OrderOutcome] = []
    if check_d365 is not None:
        state_id = await flows.orders.state_id(flows.settings.orders.posted_state)
        remaining = []
        for unit in units:
            if unit.order_id in check_d365 and await _already_in_d365(flows, unit):
                execution = check_d365[unit.order_id]
                await flows.orders.write_back(
                    unit.order_id,
                    None,
                    posted=True,
                    execution_id=execution,
                    sales_order_number=unit.order_number,
                    state_id=state_id,
                )
                done.append(
                    OrderOutcome(
                        unit.order_id,
                        unit.order_number,
                        unit.legal_entity,
                        "posted",
                        unit.message_id,
                        execution_id=execution,
                    )
                )
            else:
                remaining.append(unit)
        units = remaining
    if batch_id is not None:
        batches = _batches(flows, units, lambda entity, members: f"{batch_id}-{entity}")
        if len({b.batch_id for b in batches}) < len(batches):
            batches = [
                dataclasses.replace(b, batch_id=f"{b.batch_id}-{n}")
                for n, b in enumerate(batches, start=1)
            ]
    else:
        batches = _assigned_batches(flows, units)
    outcomes: list[OrderOutcome] = []
    ran = await _run(flows, batches)
    # A batch that failed for good (one order too large for any package, say) would fail again
    # as a whole: each of its orders goes once more in a batch of its own, so that only the
    # culprit fails and the rest of the batch is posted.
    alone = [
        OrderBatch(
            f"{batch.batch_id}-{unit.order_number}",
            unit.legal_entity,
            batch.definition_group,
            (unit,),
        )
        for batch, result in ran
        if isinstance(result, PermanentError) and len(batch.orders) > 1
        for unit in batch.orders
    ]
    if alone:
        split = {id(b) for b, r in ran if isinstance(r, PermanentError) and len(b.orders) > 1}
        for batch, _ in ran:
            if id(batch) in split:
                state = SyncStateStore(flows.engine)
                state.delete(ASSIGNMENTS, [u.message_id for u in batch.orders if u.message_id])
        ran = [(b, r) for b, r in ran if id(b) not in split] + await _run(flows, alone)
    for batch, result in ran:
        if not isinstance(result, BaseException):
            outcomes.extend(result)
            continue
        # The batch's workflow itself failed (its import records its own failures): a new
        # batch must take these orders, since DBOS would answer the same id with this error.
        error = f"batch {batch.batch_id} failed: {type(result).__name__}: {result}"
        for unit in batch.orders:
            if unit.message_id:
                SyncStateStore(flows.engine).delete(ASSIGNMENTS, [unit.message_id])
            # a permanent failure (a package over the size limit, say) fails the same way on
            # every retry: straight to the error queue with its reason
            if may_release(unit.message_id) and not isinstance(result, PermanentError):
                released.append(
                    OrderOutcome(
                        unit.order_id,
                        unit.order_number,
                        unit.legal_entity,
                        "released",
                        unit.message_id,
                        workflow_id=batch.batch_id,
                        error=error,
                    )
                )
            else:
                failures.add(
                    {"id": unit.order_id},
                    unit.message_id,
                    "import",
                    error,
                    number=unit.order_number,
                    entity=unit.legal_entity,
                )
    covered = {(o.order_id, o.message_id) for o in outcomes}
    covered |= {(o.order_id, o.message_id) for o in released + failures.outcomes}
    for unit in units:
        if (unit.order_id, unit.message_id) not in covered:
            # its assigned batch had started without it (a crash between assigning and
            # starting): give it back, to be batched anew
            released.append(
                OrderOutcome(
                    unit.order_id,
                    unit.order_number,
                    unit.legal_entity,
                    "released",
                    unit.message_id,
                    error="its batch ran without it",
                )
            )
            if unit.message_id:
                SyncStateStore(flows.engine).delete(ASSIGNMENTS, [unit.message_id])
    return failures.outcomes + done + outcomes + released


# -- the inbox consumer ------------------------------------------------------------------------


async def _load_order(ct: CommercetoolsClient, entry: InboxEntry) -> dict[str, Any] | None:
    message = entry.message
    order = message.payload.get("order")
    if message.payload_included and isinstance(order, dict):
        return dict(order)
    return await ct.get_by_id("orders", message.resource_id)


def _within_batch_size(
    flows: CommerceFlows, items: Sequence[tuple[Mapping[str, Any], str | None]]
) -> tuple[list[tuple[Mapping[str, Any], str | None]], list[tuple[Mapping[str, Any], str | None]]]:
    """Split claimed orders into those that fit one micro-batch per legal entity (up to
    orders.max_orders each, in claim order) and the overflow. Orders already assigned to a
    batch (claimed again after a crash) always stay, to rejoin it; orders that do not route
    stay too, for post_orders to queue with the reason."""
    size = flows.settings.orders.max_orders
    assigned = SyncStateStore(flows.engine).get_many(ASSIGNMENTS, [mid for _, mid in items if mid])
    taken: dict[str, int] = {}
    keep: list[tuple[Mapping[str, Any], str | None]] = []
    overflow: list[tuple[Mapping[str, Any], str | None]] = []
    for order, message_id in items:
        try:
            entity = route_order(order, flows.settings.legal_entities).id
        except MappingError:
            keep.append((order, message_id))
            continue
        if message_id and message_id not in assigned and taken.get(entity, 0) >= size:
            overflow.append((order, message_id))
            continue
        taken[entity] = taken.get(entity, 0) + 1
        keep.append((order, message_id))
    return keep, overflow


def _describe(outcome: OrderOutcome) -> str:
    text = f"{outcome.order_number or outcome.order_id} {outcome.status}"
    if outcome.legal_entity:
        text += f" in {outcome.legal_entity}"
    if outcome.execution_id and outcome.status == "posted":
        text += f" ({outcome.execution_id})"
    if outcome.error_entry:
        text += f" (error #{outcome.error_entry})"
    return text


async def post_order_messages(
    flows: CommerceFlows, inbox: Inbox, entries: Sequence[InboxEntry]
) -> list[MessageResult]:
    """Process claimed OrderCreated messages as one micro-batch per legal entity, then settle
    them (processed after the write-back; released for a retry on transient trouble)."""
    ct = await flows.orders.ct()
    results: dict[str, MessageResult] = {}
    items: list[tuple[Mapping[str, Any], str | None]] = []
    attempts = {e.message.message_id: e.attempts for e in entries}
    for entry in entries:
        message = entry.message
        result = results[message.message_id] = MessageResult(
            message.message_id, message.type, message.resource_id, "", "done"
        )
        try:
            order = await _load_order(ct, entry)
        except TransientError as exc:
            if entry.attempts < MAX_ATTEMPTS:
                inbox.release(message.message_id, retry_after=RETRY_AFTER)
                result.status, result.outcome = "released", f"retry later: {exc}"
                continue
            order, error = None, f"reading the order failed {entry.attempts} times: {exc}"
        except (D365ctError, httpx.HTTPError) as exc:
            order, error = None, f"reading the order failed: {exc}"
        else:
            error = f"order {message.resource_id} no longer exists"
        if order is None:
            failures = _Failures(flows)
            failures.add({"id": message.resource_id}, message.message_id, "load", error)
            result.details.extend(failures.outcomes)
            continue
        items.append((order, message.message_id))
    items, overflow = _within_batch_size(flows, items)
    if overflow:
        # A round claims max_orders per legal entity in all, not per legal entity: what does not
        # fit its entity's batch waits for the next round rather than cost a D365 job alone.
        inbox.release_many([mid for _, mid in overflow if mid], not_attempted=True)
        for _, mid in overflow:
            results[str(mid)].status = "released"
            results[str(mid)].outcome = "left for the next micro-batch (this one was full)"
    outcomes = await post_orders(
        flows, items, may_release=lambda mid: attempts.get(mid or "", MAX_ATTEMPTS) < MAX_ATTEMPTS
    )
    for outcome in outcomes:
        if outcome.message_id in results:
            results[outcome.message_id].details.append(outcome)
    settled: list[tuple[str, str]] = []
    retry: list[str] = []
    for result in results.values():
        if result.status == "released":
            continue
        outcome_list: list[OrderOutcome] = result.details
        if any(o.status == "released" for o in outcome_list):
            retry.append(result.message_id)
            result.status = "released"
            result.outcome = "; ".join(f"retry later: {o.error}" for o in outcome_list)
            continue
        result.status = "done" if outcome_list and all(o.ok for o in outcome_list) else "failed"
        result.outcome = "; ".join(_describe(o) for o in outcome_list) or "nothing to post"
        settled.append((result.message_id, result.outcome))
    inbox.release_many(retry, retry_after=RETRY_AFTER)
    inbox.mark_processed_many(settled)  # the batch's messages in one transaction
    SyncStateStore(flows.engine).delete(ASSIGNMENTS, [message_id for message_id, _ in settled])
    return list(results.values())


@dataclass
class ProcessSummary:
    """What one drain of the inbox did."""

    rounds: int = 0
    customers: list[MessageResult] = field(default_factory=list)
    orders: list[MessageResult] = field(default_factory=list)
    skipped: list[MessageResult] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> dict[str, Any]:
        def by_status(results: Sequence[MessageResult]) -> dict[str, int]:
            out: dict[str, int] = {}
            for result in results:
                out[result.status] = out.get(result.status, 0) + 1
            return out

        orders = [o for r in self.orders for o in r.details if isinstance(o, OrderOutcome)]
        posted = [o for o in orders if o.status == "posted"]
        return {
            "rounds": self.rounds,
            "customer_messages": by_status(self.customers),
            "order_messages": by_status(self.orders),
            "skipped_messages": len(self.skipped),
            "orders_posted": len(posted),
            "orders_failed": sum(1 for o in orders if o.status not in ("posted", "released")),
            "d365_imports": len({o.job_id for o in orders if o.job_id}),
            "seconds": round(self.seconds, 3),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.counts(),
            "messages": [
                {
                    "id": r.message_id,
                    "type": r.type,
                    "resource": r.resource_id,
                    "status": r.status,
                    "outcome": r.outcome,
                }
                for r in (*self.customers, *self.orders, *self.skipped)
            ],
        }


def _lease(flows: CommerceFlows) -> timedelta:
    # Long enough to cover the window and a batch's work; a message claimed again while its
    # batch still runs rejoins that batch (assignments), so a short lease costs no duplicate.
    return timedelta(seconds=flows.settings.orders.max_wait_seconds) + timedelta(minutes=10)


async def collect_orders(
    flows: CommerceFlows,
    inbox: Inbox,
    worker_id: str,
    *,
    wait: bool,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    stop: asyncio.Event | None = None,
) -> list[InboxEntry]:
    """Claim OrderCreated messages for one micro-batch round: up to orders.max_orders per legal
    entity. With `wait`, keep claiming until that many or until the oldest claimed message has
    waited orders.max_wait_seconds (the window is measured from receipt, across legal
    entities); without, take what is there now (a drain). A set `stop` closes the window at
    once: what is claimed is posted now rather than left leased by a stopping worker."""
    settings = flows.settings.orders
    limit = settings.max_orders * max(1, len(flows.settings.legal_entities))
    lease = _lease(flows)
    claimed = inbox.claim(ORDER_TYPES, limit, worker_id, lease=lease)
    if not wait or not claimed:
        return claimed
    window = timedelta(seconds=settings.max_wait_seconds)
    while len(claimed) < limit and not (stop is not None and stop.is_set()):
        oldest = min(e.received_at for e in claimed)
        remaining = (oldest + window - clock()).total_seconds()
        if remaining <= 0:
            break
        await sleep(min(remaining, 0.5))
        claimed += inbox.claim(ORDER_TYPES, limit - len(claimed), worker_id, lease=lease)
    return claimed


async def process_inbox(
    flows: CommerceFlows,
    inbox: Inbox,
    *,
    worker_id: str = "d365ct",
    wait: bool = False,
    max_rounds: int | None = None,
    stop: asyncio.Event | None = None,
) -> ProcessSummary:
    """Drain the inbox once: customer messages first (so orders find their customers), then
    order micro-batches, round after round until nothing is claimable; then return. A set
    `stop` closes the batch window of the round in hand (see collect_orders).

    Messages released for a retry, and updates still waiting for their creation, are not
    claimable yet: a drain leaves them for the next one.
    """
    started = time.perf_counter()
    summary = ProcessSummary()
    settings = flows.settings
    customer_types = settings.intake.customer_update_types
    limit = settings.orders.max_orders * max(1, len(settings.legal_entities))
    # With a window, the next round collects and posts while the previous one still posts (at
    # most two rounds in flight): its import queues right behind the job in progress (C4) or
    # runs at once in another legal entity, instead of waiting for the previous round's
    # write-back and settling too.
    posting: list[asyncio.Task[list[MessageResult]]] = []
    try:
        while max_rounds is None or summary.rounds < max_rounds:
            busy = False
            for task in [t for t in posting if t.done()]:
                posting.remove(task)
                summary.orders += task.result()
            customers = inbox.claim(customer_types, limit, worker_id, lease=_lease(flows))
            if customers:
                busy = True
                summary.customers += await sync_customer_messages(flows.customers, inbox, customers)
            orders = await collect_orders(flows, inbox, worker_id, wait=wait, stop=stop)
            if orders:
                busy = True
                if not wait:
                    summary.orders += await post_order_messages(flows, inbox, orders)
                else:
                    if len(posting) >= 2:
                        summary.orders += await posting.pop(0)
                    posting.append(asyncio.create_task(post_order_messages(flows, inbox, orders)))
            elif posting:
                # nothing to collect yet, but a round is posting: keep watching for arrivals
                await asyncio.wait(posting, timeout=0.2, return_when=asyncio.FIRST_COMPLETED)
                continue
            for entry in inbox.claim(IMPORTED_TYPES, limit, worker_id):
                busy = True
                text = "skipped: imported orders came from D365 or elsewhere; not posted back"
                inbox.mark_processed(entry.message.message_id, text)
                summary.skipped.append(
                    MessageResult(
                        entry.message.message_id,
                        entry.message.type,
                        entry.message.resource_id,
                        text,
                        "skipped",
                    )
                )
            if not busy:
                break
            summary.rounds += 1
    finally:
        if posting:
            # an error above must not abandon a round half-way through its write-back
            await asyncio.wait(posting)
    for task in posting:
        summary.orders += await task
    summary.seconds = time.perf_counter() - started
    return summary


# -- setup -------------------------------------------------------------------------------------


def _string_field(name: str, label: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": {"en": label},
        "required": False,
        "type": {"name": "String"},
        "inputHint": "SingleLine",
    }


def order_type_draft() -> dict[str, Any]:
    return {
        "key": ORDER_TYPE_KEY,
        "name": {"en": "D365 posting"},
        "description": {"en": "Where d365ct posted the order in Dynamics 365 F&O"},
        "resourceTypeIds": ["order"],
        "fieldDefinitions": [
            _string_field(EXECUTION_FIELD, "D365 DMF execution id"),
            _string_field(SALES_ORDER_FIELD, "D365 sales order number"),
            _string_field(STATUS_FIELD, "D365 sync status"),
        ],
    }


def customer_type_draft() -> dict[str, Any]:
    return {
        "key": CUSTOMER_TYPE_KEY,
        "name": {"en": "D365 customer"},
        "description": {"en": "The customer's account in Dynamics 365 F&O"},
        "resourceTypeIds": ["customer"],
        "fieldDefinitions": [
            _string_field(ACCOUNT_FIELD, "D365 customer account"),
            {
                "name": LEGAL_ENTITIES_FIELD,
                "label": {"en": "D365 legal entities"},
                "required": False,
                "type": {"name": "Set", "elementType": {"name": "String"}},
                "inputHint": "SingleLine",
            },
        ],
    }


async def _ensure_type(
    ct: CommercetoolsClient, draft: Mapping[str, Any], items: list[SetupItem]
) -> None:
    from d365ct.flows.setup import SetupItem

    key = str(draft["key"])
    try:
        current = await ct.get_by_key("types", key)
        if current is None:
            await ct.create("types", draft)
            items.append(SetupItem("type", key, "created"))
            return
        wrong = set(draft["resourceTypeIds"]) - set(current.get("resourceTypeIds") or ())
        if wrong:
            items.append(
                SetupItem(
                    "type",
                    key,
                    "failed",
                    f"type {key} exists for {current.get('resourceTypeIds')}, not {sorted(wrong)}",
                )
            )
            return

        def missing(held: Mapping[str, Any]) -> list[dict[str, Any]]:
            names = {f["name"] for f in held.get("fieldDefinitions") or ()}
            return [
                {"action": "addFieldDefinition", "fieldDefinition": f}
                for f in draft["fieldDefinitions"]
                if f["name"] not in names
            ]

        added = missing(current)
        if added:
            await ct.update_with_retry("types", str(current["id"]), missing, current=current)
            names = ", ".join(a["fieldDefinition"]["name"] for a in added)
            items.append(SetupItem("type", key, "updated", f"added {names}"))
        else:
            items.append(SetupItem("type", key, "exists"))
    except (CommercetoolsError, TransientError, httpx.HTTPError) as exc:
        items.append(SetupItem("type", key, "failed", str(exc)))


async def _ensure_state(
    ct: CommercetoolsClient,
    key: str,
    name: str,
    *,
    initial: bool,
    transitions: Sequence[str] | None,
    items: list[SetupItem],
) -> None:
    from d365ct.flows.setup import SetupItem

    targets = [{"typeId": "state", "key": t} for t in transitions or ()]
    try:
        current = await ct.get_by_key("states", key)
        if current is None:
            draft: dict[str, Any] = {
                "key": key,
                "type": "OrderState",
                "initial": initial,
                "name": {"en": name},
            }
            if transitions is not None:
                draft["transitions"] = targets
            await ct.create("states", draft)
            items.append(SetupItem("state", key, "created"))
            return
        if current.get("type") != "OrderState":
            items.append(
                SetupItem("state", key, "failed", f"state {key} is a {current.get('type')}")
            )
            return
        ids = {}
        for target in transitions or ():
            found = await ct.get_by_key("states", target)
            if found is not None:
                ids[target] = str(found["id"])

        def actions(held: Mapping[str, Any]) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            if initial and not held.get("initial"):
                out.append({"action": "changeInitial", "initial": True})
            existing = held.get("transitions")
            if transitions is not None and existing is not None:
                have = {t.get("id") for t in existing}
                lacking = [t for t in transitions if ids.get(t) not in have]
                if lacking:
                    keep = [{"typeId": "state", "id": t["id"]} for t in existing]
                    out.append(
                        {
                            "action": "setTransitions",
                            "transitions": keep + [{"typeId": "state", "key": t} for t in lacking],
                        }
                    )
            return out

        todo = actions(current)
        if todo:
            await ct.update_with_retry("states", str(current["id"]), actions, current=current)
            items.append(SetupItem("state", key, "updated", ", ".join(a["action"] for a in todo)))
        else:
            items.append(SetupItem("state", key, "exists"))
    except (CommercetoolsError, TransientError, httpx.HTTPError) as exc:
        items.append(SetupItem("state", key, "failed", str(exc)))


async def ensure_order_types_and_states(
    ct: CommercetoolsClient, settings: Settings
) -> list[SetupItem]:
    """Create, idempotently, what U3/U4 write back into: the order and customer custom Types,
    and the order States `d365-pending` (initial, → posted) and orders.posted_state.

    A second run creates nothing ("exists"); a type missing one of our fields gets it added.
    The posted state keeps no transition list, so the storefront's own order workflow may
    continue from it.
    """
    items: list[SetupItem] = []
    await _ensure_type(ct, order_type_draft(), items)
    await _ensure_type(ct, customer_type_draft(), items)
    posted = settings.orders.posted_state
    await _ensure_state(ct, posted, "Posted to D365", initial=False, transitions=None, items=items)
    await _ensure_state(
        ct, PENDING_STATE, "Awaiting D365 posting", initial=True, transitions=[posted], items=items
    )
    return items


# -- replay ------------------------------------------------------------------------------------


async def replay_order(flows: CommerceFlows, entry_id: int) -> tuple[bool, str]:
    """Re-drive an error queue entry of the order flow through the same idempotent path.

    A failed write-back is written back again (D365 has the order). Anything else re-reads the
    order as commercetools holds it now (the operator may have fixed it), asks D365 whether it
    is complete there after all, and posts it otherwise, in a batch of its own whose id names
    the entry and its attempt, so replaying the same attempt twice joins the first run.
    """
    entry = flows.errors.get(entry_id)
    if entry is None:
        raise LookupError(f"no error queue entry {entry_id}")
    payload = entry.payload if isinstance(entry.payload, dict) else {}
    order_id = (
        payload.get("order_id") or (entry.correlation.get("commercetools") or "").split("/")[-1]
    )
    if not order_id:
        return False, "the entry names no order"
    ct = await flows.orders.ct()
    order = await ct.get_by_id("orders", str(order_id))
    if order is None:
        return False, f"order {order_id} no longer exists in commercetools"
    execution = entry.correlation.get("execution_id")
    if entry.step == "write-back":
        state_id = await flows.orders.state_id(flows.settings.orders.posted_state)
        number = str(payload.get("order_number") or order.get("orderNumber"))
        await flows.orders.write_back(
            str(order_id),
            order,
            posted=True,
            execution_id=execution,
            sales_order_number=number,
            state_id=state_id,
        )
        return True, f"{number}: status written back"
    if (order.get("custom") or {}).get("fields", {}).get(STATUS_FIELD) == "posted":
        return True, f"{order.get('orderNumber')}: already posted"
    outcomes = await post_orders(
        flows,
        [(order, None)],
        batch_id=f"orders-replay-{entry.id}-{entry.attempts}",
        check_d365={str(order_id): execution},
    )
    texts = "; ".join(_describe(o) + (f": {o.error}" if o.error else "") for o in outcomes)
    return bool(outcomes) and all(o.ok for o in outcomes), texts
