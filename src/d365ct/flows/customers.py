"""U4 customer master: commercetools customers → D365 CustomersV3 by DMF import, account back.

Durable per batch (DBOS); the account derives from the customer id, so retries never add one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import weakref
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

import httpx
import sqlalchemy as sa
from dbos import DBOS, DBOSConfiguredInstance, SetWorkflowID

from d365ct.commercetools import CommercetoolsClient, ResourceNotFound
from d365ct.config import LegalEntitySettings, Settings
from d365ct.d365.entities import CUSTOMERS_V3
from d365ct.d365.odata import quote_literal
from d365ct.errors import D365ctError, TransientError
from d365ct.flows.dmf_jobs import ImportRequest, ImportResult, PackageJobs, PackageResult
from d365ct.intake import Inbox, InboxEntry
from d365ct.mapping.customers import (
    MappingError,
    account_of,
    customer_legal_entities,
    customer_row,
    customer_write_back_actions,
    synced_legal_entities,
)
from d365ct.runtime import Adapters, adapters
from d365ct.store.error_queue import ErrorQueue
from d365ct.store.sync_state import SyncStateStore

__all__ = [
    "CUSTOMERS_INSTANCE",
    "FLOW",
    "CustomerBatch",
    "CustomerOutcome",
    "CustomerSync",
    "CustomerUnit",
    "LoopAdapters",
    "MessageResult",
    "customer_sync",
    "customers_needing_sync",
    "digest",
    "ensure_customers",
    "sync_customer_messages",
    "sync_customers",
]

FLOW: Final = "customers"
CUSTOMERS_INSTANCE: Final = "d365ct-customers"  # the DBOS name of the CustomerSync instance
RETRY_AFTER: Final = timedelta(seconds=30)  # a message whose customer could not be read
MAX_ATTEMPTS: Final = 5  # deliveries of one message before a transient failure is queued
_ODATA_ACCOUNTS_PER_QUERY = 20  # `or`-ed account filters per OData request (URL length)


def digest(parts: Iterable[str], length: int = 16) -> str:
    """A short stable digest of a set of ids: a batch's identity, whatever their order."""
    text = "\n".join(sorted(set(parts)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def row_hash(row: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()


class LoopAdapters:
    """Adapters per event loop, opened on first use: DBOS runs recovered and queued workflows in
    a loop of its own, and httpx clients must not cross loops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._open: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[AbstractAsyncContextManager[Adapters], Adapters]
        ] = weakref.WeakKeyDictionary()

    async def get(self) -> Adapters:
        loop = asyncio.get_running_loop()
        held = self._open.get(loop)
        if held is None:
            manager = adapters(self.settings)
            held = (manager, await manager.__aenter__())
            self._open[loop] = held
        return held[1]

    async def aclose(self) -> None:
        """Close the adapters of the running loop (the others close with their loops)."""
        held = self._open.pop(asyncio.get_running_loop(), None)
        if held is not None:
            await held[0].__aexit__(None, None, None)


@dataclass(frozen=True)
class CustomerUnit:
    """One customer to import into one legal entity."""

    customer_id: str
    version: int
    account: str
    legal_entity: str
    row: dict[str, Any]
    email: str | None = None
    message_id: str | None = None  # the message that asked for it; None when an order did


@dataclass(frozen=True)
class CustomerBatch:
    batch_id: str  # the DBOS workflow id; its import is `{batch_id}-import`
    legal_entity: str
    definition_group: str
    units: tuple[CustomerUnit, ...]

    @property
    def import_id(self) -> str:
        return f"{self.batch_id}-import"

    def request(self) -> ImportRequest:
        return ImportRequest(
            flow=FLOW,
            legal_entity=self.legal_entity,
            definition_group=self.definition_group,
            entities=(CUSTOMERS_V3.label,),
            units=tuple(((CUSTOMERS_V3.label, unit.row),) for unit in self.units),
            unit_keys=tuple(unit.account for unit in self.units),
            key_fields={CUSTOMERS_V3.label: "CustomerAccount"},
        )


@dataclass(frozen=True)
class CustomerOutcome:
    customer_id: str
    account: str
    legal_entity: str
    status: str  # synced | existing | unchanged | failed | stuck | write-back-failed
    message_id: str | None = None
    workflow_id: str | None = None
    job_id: str | None = None
    execution_id: str | None = None
    error: str | None = None
    error_entry: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("synced", "existing", "unchanged")


@dataclass
class MessageResult:
    """What became of one inbox message."""

    message_id: str
    type: str
    resource_id: str
    outcome: str  # the text stored with the processed message
    status: str  # done | skipped | failed | released
    details: list[Any] = field(default_factory=list)


def _package_of(result: ImportResult, key: str) -> PackageResult | None:
    for package in result.packages:
        if key in package.succeeded or key in package.failed:
            return package
    return result.packages[-1] if result.packages else None


@DBOS.dbos_class()
class CustomerSync(DBOSConfiguredInstance):
    """The U4 workflows, bound to settings, the store and the PackageJobs that imports."""

    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        jobs: PackageJobs,
        *,
        config_name: str = CUSTOMERS_INSTANCE,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.jobs = jobs
        self.io = LoopAdapters(settings)
        self.group_keys: dict[str, str | None] = {}  # customer group id → key
        super().__init__(config_name)

    def repoint(self, settings: Settings, engine: sa.Engine, jobs: PackageJobs) -> None:
        """Bind to other settings (tests, a reloaded configuration); drops open clients."""
        self.settings, self.engine, self.jobs = settings, engine, jobs
        self.io = LoopAdapters(settings)
        self.group_keys.clear()

    @property
    def errors(self) -> ErrorQueue:
        return ErrorQueue(self.engine)

    async def ct(self) -> CommercetoolsClient:
        return (await self.io.get()).commercetools("customers")

    # -- the workflow ------------------------------------------------------------------------

    @DBOS.workflow()
    async def sync_batch(self, batch: CustomerBatch) -> tuple[CustomerOutcome, ...]:
        """Import the batch's customers in one package, then write each account back."""
        handle = await self.jobs.start_import(batch.request(), batch.import_id)
        result: ImportResult = await handle.get_result()
        return await self.conclude(batch, result)

    @DBOS.step()
    async def conclude(
        self, batch: CustomerBatch, result: ImportResult
    ) -> tuple[CustomerOutcome, ...]:
        """Per customer: write back the account (succeeded), or queue D365's error (failed)."""
        outcomes = await asyncio.gather(
            *(self._conclude_one(batch, unit, result) for unit in batch.units)
        )
        synced = [
            (f"{o.legal_entity}/{o.account}", row_hash(u.row), o.customer_id, None)
            for o, u in zip(outcomes, batch.units, strict=True)
            if o.status == "synced"
        ]
        if synced:
            SyncStateStore(self.engine).put_many(FLOW, synced)
        return tuple(outcomes)

    async def _conclude_one(
        self, batch: CustomerBatch, unit: CustomerUnit, result: ImportResult
    ) -> CustomerOutcome:
        package = _package_of(result, unit.account)
        base = CustomerOutcome(
            unit.customer_id,
            unit.account,
            unit.legal_entity,
            "synced",
            message_id=unit.message_id,
            workflow_id=batch.batch_id,
            job_id=package.job_id if package else None,
            execution_id=package.execution_id if package else None,
        )
        if package is None or package.state == "stuck" or unit.account not in package.succeeded:
            if package is not None and package.state == "stuck":
                error = (
                    f"D365 import job {package.job_id} is stuck ({package.d365_status}): resume "
                    f"it with d365ct jobs retry {package.job_id}, then replay this entry"
                )
                status = "stuck"
            else:
                error = (package.failed.get(unit.account) if package else None) or (
                    "D365 did not import the customer"
                )
                status = "failed"
            entry = self.record_failure(unit, base, "import", error)
            return _replace(base, status=status, error=error, error_entry=entry)
        try:
            await self.write_back(unit.customer_id, unit.account, [unit.legal_entity])
        except ResourceNotFound:
            return base  # deleted meanwhile: D365 has it, nothing to write back to
        except (D365ctError, httpx.HTTPError) as exc:
            error = f"writing the D365 account back failed: {exc}"
            entry = self.record_failure(unit, base, "write-back", error)
            return _replace(base, status="write-back-failed", error=error, error_entry=entry)
        return base

    async def write_back(
        self, customer_id: str, account: str, legal_entities: Sequence[str]
    ) -> dict[str, Any]:
        """customerNumber (if unset) and the custom fields, re-computed on every 409 (C8)."""
        ct = await self.ct()
        return await ct.update_with_retry(
            "customers",
            customer_id,
            lambda current: customer_write_back_actions(
                current, account=account, legal_entities=legal_entities
            ),
        )

    def record_failure(
        self, unit: CustomerUnit, outcome: CustomerOutcome, step: str, error: str
    ) -> int:
        entry = self.errors.add(
            flow=FLOW,
            business_key=unit.customer_id,
            step=step,
            error=error,
            payload={
                "customer_id": unit.customer_id,
                "account": unit.account,
                "legal_entity": unit.legal_entity,
                "email": unit.email,
                "row": json.loads(json.dumps(unit.row, default=str)),
            },
            correlation=_correlation(outcome),
        )
        return entry.id

    # -- reading commercetools -----------------------------------------------------------------

    async def group_key(self, customer: Mapping[str, Any]) -> str | None:
        """The key of the customer's group (references carry only the id), cached."""
        ref = customer.get("customerGroup") or {}
        group_id = ref.get("id")
        if not group_id:
            return None
        if (ref.get("obj") or {}).get("key"):
            return str(ref["obj"]["key"])
        if group_id not in self.group_keys:
            found = await (await self.ct()).get_by_id("customer-groups", str(group_id))
            self.group_keys[group_id] = str(found["key"]) if found and found.get("key") else None
        return self.group_keys[group_id]

    async def unit_for(
        self,
        customer: Mapping[str, Any],
        entity: LegalEntitySettings,
        message_id: str | None = None,
    ) -> CustomerUnit:
        """Raises MappingError when the customer cannot become a D365 customer as configured."""
        options = self.settings.customers
        account = account_of(customer, options.account_prefix)
        row = customer_row(
            customer,
            entity,
            account=account,
            default_group=options.customer_group,
            group_key=await self.group_key(customer),
        )
        return CustomerUnit(
            str(customer["id"]),
            int(customer.get("version") or 0),
            account,
            entity.id,
            row,
            customer.get("email"),
            message_id,
        )


def _replace(outcome: CustomerOutcome, **changes: Any) -> CustomerOutcome:
    return dataclasses.replace(outcome, **changes)


def _correlation(outcome: CustomerOutcome) -> dict[str, Any]:
    return {
        "message_id": outcome.message_id,
        "workflow_id": outcome.workflow_id,
        "job_id": outcome.job_id,
        "execution_id": outcome.execution_id,
        "commercetools": f"customers/{outcome.customer_id}",
        "account": outcome.account,
        "legal_entity": outcome.legal_entity,
    }


_INSTANCES: dict[str, CustomerSync] = {}


def customer_sync(settings: Settings, engine: sa.Engine, jobs: PackageJobs) -> CustomerSync:
    """The CustomerSync instance of this process (DBOS registers instances by name, once):
    create it before launch_engine so DBOS can recover its workflows; later calls re-point it."""
    sync = _INSTANCES.get(CUSTOMERS_INSTANCE)
    if sync is None:
        sync = _INSTANCES[CUSTOMERS_INSTANCE] = CustomerSync(settings, engine, jobs)
    else:
        sync.repoint(settings, engine, jobs)
    return sync


# -- running batches ---------------------------------------------------------------------------


async def sync_customers(
    sync: CustomerSync, units: Sequence[CustomerUnit], batch_id: str
) -> list[CustomerOutcome]:
    """Import `units` in one batch per legal entity (batch ids `{batch_id}-{le}[-n]`), chunks of
    at most orders.max_orders, concurrently across legal entities (the queue serialises each)."""
    by_entity: dict[str, list[CustomerUnit]] = {}
    for unit in units:
        by_entity.setdefault(unit.legal_entity, []).append(unit)
    size = sync.settings.orders.max_orders
    batches: list[CustomerBatch] = []
    for entity, members in by_entity.items():
        chunks = [members[i : i + size] for i in range(0, len(members), size)]
        for n, chunk in enumerate(chunks):
            suffix = f"-{n + 1}" if len(chunks) > 1 else ""
            batches.append(
                CustomerBatch(
                    f"{batch_id}-{entity}{suffix}",
                    entity,
                    sync.settings.customers.definition_group,
                    tuple(chunk),
                )
            )

    async def run(batch: CustomerBatch) -> tuple[CustomerOutcome, ...]:
        with SetWorkflowID(batch.batch_id):
            handle = await DBOS.start_workflow_async(sync.sync_batch, batch)
        return await handle.get_result()

    results = await asyncio.gather(*(run(batch) for batch in batches))
    return [outcome for batch_outcomes in results for outcome in batch_outcomes]


async def existing_accounts(
    sync: CustomerSync, legal_entity: str, accounts: Iterable[str]
) -> set[str]:
    """Which of `accounts` D365 already has in the legal entity: one OData read per 20."""
    wanted = sorted(set(accounts))
    odata = (await sync.io.get()).odata
    found: set[str] = set()
    for start in range(0, len(wanted), _ODATA_ACCOUNTS_PER_QUERY):
        chunk = wanted[start : start + _ODATA_ACCOUNTS_PER_QUERY]
        clause = " or ".join(f"CustomerAccount eq {quote_literal(a)}" for a in chunk)
        async for row in odata.rows(
            "CustomersV3",
            filter=clause,
            select=["CustomerAccount"],
            legal_entity=legal_entity,
        ):
            found.add(str(row["CustomerAccount"]))
    return found


async def ensure_customers(
    sync: CustomerSync,
    needs: Sequence[tuple[Mapping[str, Any], LegalEntitySettings]],
    batch_key: str,
) -> dict[tuple[str, str], CustomerOutcome | MappingError]:
    """Make each customer exist in its legal entity before an order needs it there.

    Accounts D365 already has (a customer migrated with its customerNumber, or imported earlier
    by a run that died before writing back) are only written back; the others are imported in
    one batch per legal entity. Key: (customer id, legal entity).
    """
    done: dict[tuple[str, str], CustomerOutcome | MappingError] = {}
    units: list[CustomerUnit] = []
    seen: set[tuple[str, str]] = set()
    for customer, entity in needs:
        key = (str(customer["id"]), entity.id)
        if key in seen:
            continue
        seen.add(key)
        try:
            units.append(await sync.unit_for(customer, entity))
        except MappingError as exc:
            done[key] = exc
    to_import: list[CustomerUnit] = []
    by_entity: dict[str, list[CustomerUnit]] = {}
    for unit in units:
        by_entity.setdefault(unit.legal_entity, []).append(unit)
    for entity_id, members in by_entity.items():
        there = await existing_accounts(sync, entity_id, (u.account for u in members))
        for unit in members:
            if unit.account not in there:
                to_import.append(unit)
                continue
            outcome = CustomerOutcome(unit.customer_id, unit.account, entity_id, "existing")
            try:
                await sync.write_back(unit.customer_id, unit.account, [entity_id])
            except (D365ctError, httpx.HTTPError) as exc:
                outcome = _replace(outcome, status="write-back-failed", error=str(exc))
            done[(unit.customer_id, entity_id)] = outcome
    if to_import:
        ids = [f"{u.customer_id}@{u.version}/{u.legal_entity}" for u in to_import]
        for outcome in await sync_customers(
            sync, to_import, f"customers-{batch_key}-{digest(ids)}"
        ):
            done[(outcome.customer_id, outcome.legal_entity)] = outcome
    return done


# -- the inbox consumer ------------------------------------------------------------------------


async def _load_customer(ct: CommercetoolsClient, entry: InboxEntry) -> Mapping[str, Any] | None:
    """CustomerCreated carries the customer; the update messages carry only what changed, so
    the customer is read as it is now (which also covers payloadNotIncluded)."""
    message = entry.message
    customer = message.payload.get("customer")
    if message.type == "CustomerCreated" and message.payload_included and customer:
        return dict(customer)
    return await ct.get_by_id("customers", message.resource_id)


async def sync_customer_messages(
    sync: CustomerSync, inbox: Inbox, entries: Sequence[InboxEntry]
) -> list[MessageResult]:
    """Process claimed customer messages: map, import per legal entity, write back, settle.

    A customer no store or address country routes is skipped (settled, not queued): most
    customers sign up without an address, and the order flow imports them into the order's
    legal entity when they first order. Unchanged rows (same hash as the last import into that
    legal entity) cost no import.
    """
    ct = await sync.ct()
    state = SyncStateStore(sync.engine)
    results: dict[str, MessageResult] = {}
    units: list[CustomerUnit] = []
    for entry in entries:
        message = entry.message
        result = results[message.message_id] = MessageResult(
            message.message_id, message.type, message.resource_id, "", "done"
        )
        try:
            customer = await _load_customer(ct, entry)
        except TransientError as exc:
            if entry.attempts < MAX_ATTEMPTS:
                inbox.release(message.message_id, retry_after=RETRY_AFTER)
                result.status, result.outcome = "released", f"retry later: {exc}"
                continue
            error = f"reading the customer failed {entry.attempts} times: {exc}"
            _queue_message_error(sync, entry, "load", error)
            result.status, result.outcome = "failed", error
            continue
        except D365ctError as exc:
            _queue_message_error(sync, entry, "load", str(exc))
            result.status, result.outcome = "failed", f"error queued: {exc}"
            continue
        if customer is None:
            result.status = "skipped"
            result.outcome = f"skipped: customer {message.resource_id} no longer exists"
            continue
        try:
            entities = customer_legal_entities(customer, sync.settings.legal_entities)
        except MappingError as exc:
            result.status = "skipped"
            result.outcome = f"skipped: {exc.reason}; it is imported with its first order"
            continue
        for entity in entities:
            try:
                units.append(await sync.unit_for(customer, entity, message.message_id))
            except MappingError as exc:
                _queue_message_error(sync, entry, "map", exc.reason, customer=customer)
                result.status, result.outcome = "failed", f"error queued: {exc.reason}"
    held = state.get_many(FLOW, [f"{u.legal_entity}/{u.account}" for u in units])
    to_import: list[CustomerUnit] = []
    for unit in units:
        record = held.get(f"{unit.legal_entity}/{unit.account}")
        if record is not None and record.content_hash == row_hash(unit.row):
            assert unit.message_id is not None
            results[unit.message_id].details.append(
                CustomerOutcome(unit.customer_id, unit.account, unit.legal_entity, "unchanged")
            )
        else:
            to_import.append(unit)
    if to_import:
        message_ids = [u.message_id for u in to_import if u.message_id]
        outcomes = await sync_customers(sync, to_import, f"customers-{digest(message_ids)}")
        for outcome in outcomes:
            if outcome.message_id:
                results[outcome.message_id].details.append(outcome)
    for result in results.values():
        if result.status == "released":
            continue
        if result.details and result.status == "done":
            failed = [o for o in result.details if not o.ok]
            result.status = "failed" if failed else "done"
            result.outcome = "; ".join(
                f"{o.legal_entity}: {o.account} {o.status}"
                + (f" (error #{o.error_entry})" if o.error_entry else "")
                for o in result.details
            )
        inbox.mark_processed(result.message_id, result.outcome or result.status)
    return list(results.values())


def _queue_message_error(
    sync: CustomerSync,
    entry: InboxEntry,
    step: str,
    error: str,
    *,
    customer: Mapping[str, Any] | None = None,
) -> int:
    message = entry.message
    return sync.errors.add(
        flow=FLOW,
        business_key=message.resource_id,
        step=step,
        error=error,
        payload={
            "customer_id": message.resource_id,
            "email": (customer or {}).get("email"),
            "message": message.raw,
        },
        correlation={
            "message_id": message.message_id,
            "commercetools": f"customers/{message.resource_id}",
        },
    ).id


def customers_needing_sync(customer: Mapping[str, Any], entity: LegalEntitySettings) -> bool:
    """Whether the customer must be imported into (or confirmed in) the legal entity first."""
    return entity.id not in synced_legal_entities(customer)


async def replay_customer(sync: CustomerSync, entry_id: int) -> tuple[bool, str]:
    """Re-drive an error queue entry of the customer flow: read the customer as it is now and
    import it into its legal entities again (no unchanged-skip), in a batch named after the
    entry and its attempt; a failed write-back is only written back again."""
    entry = sync.errors.get(entry_id)
    if entry is None:
        raise LookupError(f"no error queue entry {entry_id}")
    payload = entry.payload if isinstance(entry.payload, dict) else {}
    customer_id = str(payload.get("customer_id") or entry.business_key)
    customer = await (await sync.ct()).get_by_id("customers", customer_id)
    if customer is None:
        return False, f"customer {customer_id} no longer exists in commercetools"
    by_id = {entity.id: entity for entity in sync.settings.legal_entities}
    if entry.step == "write-back" and payload.get("legal_entity") in by_id:
        account = str(
            payload.get("account") or account_of(customer, sync.settings.customers.account_prefix)
        )
        await sync.write_back(customer_id, account, [str(payload["legal_entity"])])
        return True, f"{account}: written back"
    try:
        entities = list(customer_legal_entities(customer, sync.settings.legal_entities))
    except MappingError as exc:
        if payload.get("legal_entity") not in by_id:
            return False, exc.reason
        entities = []
    named = by_id.get(str(payload.get("legal_entity")))
    if named is not None and named not in entities:
        entities.append(named)  # the legal entity an order needed it in
    try:
        units = [await sync.unit_for(customer, entity) for entity in entities]
    except MappingError as exc:
        return False, exc.reason
    outcomes = await sync_customers(sync, units, f"customers-replay-{entry.id}-{entry.attempts}")
    text = "; ".join(
        f"{o.legal_entity}: {o.account} {o.status}" + (f" ({o.error})" if o.error else "")
        for o in outcomes
    )
    return bool(outcomes) and all(o.ok for o in outcomes), text
