"""C14 nightly inventory reconciliation: a DMF export of on-hand against every commercetools entry.

Drift is corrected (changeQuantity, create, zero) and each run is stored as a report to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from dbos import SetWorkflowID

from d365ct.commercetools import CommercetoolsClient, ResourceNotFound
from d365ct.config import Settings
from d365ct.d365.entities import DEFINITIONS, EntityDefinition
from d365ct.d365.packages import PackageFormatError, PackageReader, open_package
from d365ct.errors import CredentialError, D365ctError, PermanentError
from d365ct.flows.dmf_jobs import ExportResult, PackageJobs
from d365ct.flows.inventory import (
    FLOW,
    EntryState,
    InventoryState,
    channel_predicate,
    entry_draft,
    legal_entities_to_run,
    resolve_channels,
    set_quantity,
    state_of,
)
from d365ct.hooks import INVENTORY_HOOK_KEY, load_hook
from d365ct.mapping.inventory import (
    ITEM_FIELD,
    WAREHOUSE_FIELD,
    OnHandError,
    StockTotal,
    StockTotals,
    WarehouseMap,
    apply_inventory_hook,
    map_on_hand,
    on_hand_fields,
    state_key,
)
from d365ct.runtime import Adapters, adapters
from d365ct.store import JobStore, make_engine
from d365ct.store.error_queue import ErrorQueue
from d365ct.store.reports import LineWriter, ReportLine, ReportStore

__all__ = [
    "ACTIONS",
    "RECONCILE_INSTANCE",
    "ReconcileResult",
    "StatusCallback",
    "on_hand_entity",
    "package_jobs",
    "reconcile_inventory",
    "workflow_id",
]

RECONCILE_INSTANCE = "d365ct-reconcile"  # the DBOS name of the PackageJobs exporting on-hand
# held: a commercetools entry left as it is because D365's rows for it could not be read
ACTIONS = ("unchanged", "corrected", "created", "zeroed", "failed", "unmapped", "held")
BATCH = 500  # concurrent writes per round, and sync-state rows per write to the store

# (legal entity, what the run is doing now)
StatusCallback = Callable[[str, str], None]
Resource = dict[str, Any]

_JOBS: dict[str, PackageJobs] = {}
_VERB = {"corrected": "correct", "created": "create", "zeroed": "zero"}


def package_jobs(settings: Settings) -> PackageJobs:
    """The PackageJobs instance reconciliation exports through: one per process, because DBOS
    registers instances by name; later calls point it at these settings. Create it before
    launch_engine, so DBOS can recover an export that a crash interrupted."""
    store = JobStore(make_engine(settings.store.url))
    jobs = _JOBS.get(RECONCILE_INSTANCE)
    if jobs is None:
        jobs = _JOBS[RECONCILE_INSTANCE] = PackageJobs(
            settings.d365, store, settings.store.workdir, config_name=RECONCILE_INSTANCE
        )
    else:
        jobs.settings, jobs.store, jobs.workdir = settings.d365, store, settings.store.workdir
        jobs._clients.clear()  # bound to event loops of earlier runs
    return jobs


MAX_HELD_LISTED: Final = 100  # held entries named in a report; the failed lines name them all


def workflow_id(legal_entity: str, started: datetime) -> str:
    """The export workflow's id and the report's: one per legal entity and start time."""
    stamp = (
        started.astimezone(UTC).strftime("%Y%m%dT%H%M%S") + f"{started.microsecond // 1000:03d}Z"
    )
    return f"reconcile-inventory-{legal_entity}-{stamp}"


@dataclass
class ReconcileResult:
    legal_entity: str
    report_id: str
    state: str  # completed | failed
    counts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Op:
    sku: str
    channel: str
    quantity: int
    before: int | None
    action: str  # corrected | created | zeroed
    total: StockTotal | None
    entry: Resource | None = None
    detail: str | None = None


class _Run:
    """One legal entity's reconciliation, from the downloaded package to the finished report."""

    def __init__(
        self,
        settings: Settings,
        ct: CommercetoolsClient,
        state: InventoryState,
        lines: LineWriter,
        legal_entity: str,
        errors: ErrorQueue,
        report_id: str,
    ) -> None:
        self.settings = settings
        self.ct = ct
        self.state = state
        self.lines = lines
        self.legal_entity = legal_entity
        self.errors = errors
        self.report_id = report_id
        self.warehouses = WarehouseMap(settings.warehouses)
        self.quantity_field = settings.inventory.quantity_field
        # What bad D365 rows make unknowable: entries (sku@channel) whose rows failed, and
        # channels with a row that names no item (it could belong to any of their entries).
        # A held entry is neither corrected, created nor zeroed; in a held channel no entry is
        # zeroed (its other entries are still corrected): a bad row is no evidence of zero stock.
        self.held_keys: set[str] = set()
        self.held_channels: set[str] = set()
        self.actions = dict.fromkeys(ACTIONS, 0)
        self.by_warehouse: dict[str, dict[str, int]] = {}
        self.rows = 0
        self.ct_entries = 0
        self.channel_ids: dict[str, str] = {}
        self.problems: dict[str, str] = {}
        self._confirmed: dict[str, EntryState] = {}

    def tally(self, warehouse: str, action: str) -> None:
        self.actions[action] += 1
        counts = self.by_warehouse.setdefault(warehouse, dict.fromkeys(ACTIONS, 0))
        counts[action] += 1

    def confirm(self, key: str, state: EntryState) -> None:
        self._confirmed[key] = state
        if len(self._confirmed) >= BATCH:
            self.flush_state()

    def flush_state(self) -> None:
        self.state.put_many(self._confirmed)
        self._confirmed = {}

    # -- D365 side ----------------------------------------------------------------------------

    def read_package(self, path: Path) -> StockTotals:
        """Stream the package's rows into per-(sku, channel) totals. Memory grows with the
        legal entity's distinct (sku, channel) pairs (the mapping dict), never with its rows."""
        # a hook gets the rows behind each total; without one, memory stays per (sku, channel)
        totals = StockTotals(keep_rows=self.settings.inventory.mapping.hook is not None)
        with open_package(path) as package:
            label, definition = on_hand_entity(
                package, self.settings.inventory.entity_set, self.quantity_field
            )
            for row in package.rows(label, definition=definition):
                self.rows += 1
                mapped = map_on_hand(
                    row,
                    self.warehouses,
                    legal_entity=self.legal_entity,
                    quantity_field=self.quantity_field,
                )
                if isinstance(mapped, OnHandError):
                    channel = self.warehouses.channel(self.legal_entity, mapped.warehouse)
                    if channel is None:
                        self.tally(mapped.warehouse, "unmapped")  # counted; the sync queues them
                    else:
                        self.bad_row(mapped, channel, row)
                    continue
                if mapped.channel in self.problems:
                    self.tally(self.warehouses.warehouse_label(mapped.channel), "failed")
                    continue
                totals.add(mapped)
        return totals

    def bad_row(self, mapped: OnHandError, channel: str, row: Mapping[str, Any]) -> None:
        """A row of a mapped warehouse that cannot be read: error queue, report line, and its
        entry (or, without an item, its whole channel) held out of this run's corrections."""
        warehouse = self.warehouses.warehouse_label(channel)
        if mapped.sku:
            self.held_keys.add(state_key(mapped.sku, channel))
            held = "its commercetools entry is left as it is"
        else:
            self.held_channels.add(channel)
            held = f"no entry of channel '{channel}' is zeroed in this run"
        self.tally(warehouse, "failed")
        self.lines.add(
            ReportLine(
                mapped.sku or "?", "failed", warehouse, channel, detail=f"{mapped.reason}; {held}"
            )
        )
        payload = {"dataAreaId": self.legal_entity}
        payload.update((k, v) for k, v in row.items() if k != "dataAreaId")
        self.errors.add(
            flow=FLOW,
            business_key=mapped.business_key,
            step="map",
            error=f"{mapped.reason} (nightly reconciliation; {held})",
            payload=payload,
            correlation={
                "run": self.report_id,
                "legal_entity": self.legal_entity,
                "supply_channel": channel,
            },
        )

    def apply_hook(self, totals: StockTotals) -> None:
        """The inventory hook on every total, so reconciliation compares what the sync writes;
        a total the hook fails on is queued and its entry held, like a bad row."""
        hook = load_hook(self.settings.inventory.mapping.hook, INVENTORY_HOOK_KEY)
        if hook is None:
            return
        failed = apply_inventory_hook(
            totals,
            self.channel_ids,
            hook,
            hook_name=str(self.settings.inventory.mapping.hook),
            legal_entity=self.legal_entity,
            quantity_field=self.quantity_field,
        )
        for total, reason in failed:
            self.held_keys.add(state_key(total.sku, total.channel))
            warehouse = self.warehouses.warehouse_label(total.channel)
            self.tally(warehouse, "failed")
            held = "its commercetools entry is left as it is"
            self.lines.add(
                ReportLine(
                    total.sku,
                    "failed",
                    warehouse,
                    total.channel,
                    total.on_hand,
                    detail=f"{reason}; {held}",
                )
            )
            self.errors.add(
                flow=FLOW,
                business_key=total.business_key,
                step="map",
                error=f"{reason} (nightly reconciliation; {held})",
                payload=total.payload(self.quantity_field),
                correlation={
                    "run": self.report_id,
                    "legal_entity": self.legal_entity,
                    "supply_channel": total.channel,
                },
            )

    def is_held(self, sku: str, channel: str) -> bool:
        return state_key(sku, channel) in self.held_keys

    # -- commercetools side -------------------------------------------------------------------

    async def compare(self, totals: StockTotals) -> None:
        """Every entry of the mapped channels against the totals; then create what is missing.

        Creates wait until the scan is done, so the entries being paged through do not move.
        """
        key_of = {channel_id: key for key, channel_id in self.channel_ids.items()}
        ops: list[_Op] = []
        if key_of:
            async for entry in self.ct.scan("inventory", channel_predicate(key_of)):
                self.ct_entries += 1
                channel = key_of.get((entry.get("supplyChannel") or {}).get("id", ""))
                if channel is None:
                    continue
                op = self.check(entry, channel, totals)
                if op is not None:
                    ops.append(op)
                if len(ops) >= BATCH:
                    await self.apply(ops)
                    ops = []
        await self.apply(ops)
        missing = [
            _Op(t.sku, t.channel, t.quantity, None, "created", t)
            for t in totals.unmatched()
            if not self.is_held(t.sku, t.channel)
        ]
        for start in range(0, len(missing), BATCH):
            await self.apply(missing[start : start + BATCH])
        self.flush_state()

    def check(self, entry: Resource, channel: str, totals: StockTotals) -> _Op | None:
        sku = str(entry.get("sku") or "")
        before = int(entry.get("quantityOnStock") or 0)
        total = totals.get(sku, channel)
        detail = None
        if self.is_held(sku, channel) or (total is None and channel in self.held_channels):
            if total is not None:
                total.matched = True  # a partial total: neither correct nor create from it
            self.tally(self.warehouses.warehouse_label(channel), "held")
            return None
        if total is None:
            wanted, action = 0, "zeroed"  # commercetools sells what D365 no longer has
        else:
            if total.matched:
                detail = "second entry for this sku and supply channel"
            total.matched = True
            wanted, action = total.quantity, "corrected"
        if before == wanted:
            self.tally(self.warehouses.warehouse_label(channel), "unchanged")
            self.confirm(state_key(sku, channel), state_of(entry))
            return None
        return _Op(sku, channel, wanted, before, action, total, entry, detail)

    async def apply(self, ops: Sequence[_Op]) -> None:
        if not ops:
            return
        results = await asyncio.gather(*(self.write(op) for op in ops))
        for op, (body, error) in zip(ops, results, strict=True):
            warehouse = self.warehouses.warehouse_label(op.channel)
            on_hand = None if op.total is None else op.total.on_hand
            if body is None:
                self.tally(warehouse, "failed")
                self.lines.add(
                    ReportLine(
                        op.sku,
                        "failed",
                        warehouse,
                        op.channel,
                        on_hand,
                        op.before,
                        None,
                        f"could not {_VERB[op.action]}: {error}",
                    )
                )
                continue
            self.tally(warehouse, op.action)
            if body.get("id") is not None:
                self.confirm(state_key(op.sku, op.channel), state_of(body))
            self.lines.add(
                ReportLine(
                    op.sku,
                    op.action,
                    warehouse,
                    op.channel,
                    on_hand,
                    op.before,
                    op.quantity,
                    op.detail,
                )
            )

    async def write(self, op: _Op) -> tuple[Resource | None, D365ctError | None]:
        try:
            if op.entry is None:
                return await self.create(op), None
            try:
                return await set_quantity(self.ct, op.quantity, entry=op.entry), None
            except ResourceNotFound:
                if op.action == "zeroed":
                    return {"id": None}, None  # deleted meanwhile: holds nothing either way
                return await self.create(op), None
        except CredentialError:
            raise
        except D365ctError as exc:
            return None, exc

    async def create(self, op: _Op) -> Resource:
        draft = entry_draft(op.total, op.sku, op.channel, self.channel_ids, op.quantity)
        return await self.ct.create("inventory", draft)

    def counts(self, export: ExportResult, seconds: float, ct_calls: int) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "ct_entries": self.ct_entries,
            "actions": self.actions,
            # entries held out of this run because D365 rows for them were bad (see failed lines)
            "held": sorted(self.held_keys)[:MAX_HELD_LISTED],
            "held_total": len(self.held_keys),
            "zeroing_suspended": sorted(self.held_channels),
            "warehouses": dict(sorted(self.by_warehouse.items())),
            "problems": self.problems,
            "export": {
                "job_id": export.job_id,
                "execution_id": export.execution_id,
                "d365_status": export.d365_status,
            },
            "calls": {"commercetools": ct_calls},
            "seconds": round(seconds, 3),
        }


def on_hand_entity(
    package: PackageReader, entity_set: str, quantity_field: str
) -> tuple[str, EntityDefinition]:
    """The package entity that carries on-hand, and the definition its rows are read with.

    `[inventory] entity_set` names the on-hand entity for the reconciliation as for the delta
    sync. An entity set d365ct knows (WarehousesOnHandV2) is found in the package by its DMF
    label ("Inventory on-hand by warehouse V2"). Another one (the seed brief's InventOnHandV2)
    has a label d365ct cannot know, so the export project must carry that entity alone; its
    rows need ItemNumber and InventoryWarehouseId. The configured quantity field is read either
    way.
    """
    wanted = entity_set.strip().casefold()
    known = next((d for d in DEFINITIONS.values() if d.odata_name.casefold() == wanted), None)
    if known is not None:
        label = package.entity(known.label).label
        definition = known
    else:
        entities = package.entities
        if len(entities) != 1:
            present = ", ".join(f"'{e.label}'" for e in entities) or "none"
            raise PackageFormatError(
                f"inventory.entity_set '{entity_set}' is not an entity d365ct knows the DMF "
                f"label of, so the on-hand export project must carry that one entity alone; "
                f"its package has {present}"
            )
        label = entities[0].label
        definition = EntityDefinition(
            label=label,
            odata_name=entity_set,
            fields=("dataAreaId", *on_hand_fields(quantity_field)),
            keys=(ITEM_FIELD, WAREHOUSE_FIELD),
        )
    if quantity_field not in definition.fields:
        definition = dataclasses.replace(definition, fields=(*definition.fields, quantity_field))
    return label, definition


async def _export(
    jobs: PackageJobs, settings: Settings, legal_entity: str, wid: str
) -> ExportResult:
    with SetWorkflowID(wid):
        result: ExportResult = await jobs.export_project(
            FLOW, settings.inventory.export_project, legal_entity
        )
    if result.package_path is None:
        job = jobs.store.get(result.job_id)
        said = f" ({job.last_error})" if job is not None and job.last_error else ""
        raise PermanentError(
            f"the on-hand export of '{legal_entity}' (data project "
            f"'{settings.inventory.export_project}') ended {result.state}, D365 status "
            f"{result.d365_status}{said}: see d365ct jobs show {result.job_id}"
        )
    return result


async def _reconcile_one(
    settings: Settings,
    io: Adapters,
    jobs: PackageJobs,
    reports: ReportStore,
    state: InventoryState,
    errors: ErrorQueue,
    legal_entity: str,
    started: datetime,
    status: StatusCallback,
) -> ReconcileResult:
    wid = workflow_id(legal_entity, started)
    clock = time.perf_counter()
    ct = io.commercetools("inventory")
    ct_before = sum(ct.calls.values())
    status(legal_entity, f"exporting on-hand (DMF project {settings.inventory.export_project})")
    export = await _export(jobs, settings, legal_entity, wid)
    reports.create(wid, flow=FLOW, legal_entity=legal_entity, started_at=started)
    with reports.writer(wid) as lines:
        run = _Run(settings, ct, state, lines, legal_entity, errors, wid)
        try:
            channels = run.warehouses.channels(legal_entity)
            run.channel_ids, run.problems = await resolve_channels(ct, channels)
            assert export.package_path is not None
            status(legal_entity, "reading the exported package")
            totals = await asyncio.to_thread(run.read_package, Path(export.package_path))
            run.apply_hook(totals)
            status(legal_entity, f"comparing {len(totals):,} D365 entries with commercetools")
            await run.compare(totals)
        except D365ctError as exc:
            lines.flush()
            calls = sum(ct.calls.values()) - ct_before
            counts = run.counts(export, time.perf_counter() - clock, calls)
            reports.finish(wid, {**counts, "error": str(exc)})
            raise
    calls = sum(ct.calls.values()) - ct_before
    counts = run.counts(export, time.perf_counter() - clock, calls)
    report = reports.finish(wid, counts)
    with contextlib.suppress(OSError):  # the report is the record; the package was a means
        Path(export.package_path).unlink()
    return ReconcileResult(legal_entity, wid, "completed", report.counts)


async def reconcile_inventory(
    settings: Settings,
    engine: sa.Engine,
    jobs: PackageJobs,
    *,
    legal_entity: str | None = None,
    io: Adapters | None = None,
    status: StatusCallback | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    started_at: datetime | None = None,
) -> list[ReconcileResult]:
    """Reconcile each legal entity's stock (all configured, or one) and report it (C14).

    `started_at` fixes the run's start (default: the clock when each legal entity begins); a
    scheduled run passes its tick, so that a run recovery repeats finds the same export
    workflow and report ids.

    Needs a launched engine (launch_engine) with `jobs` registered: the on-hand export is the
    durable workflow PackageJobs.export_project, id "reconcile-inventory-<le>-<timestamp>",
    which is also the report's id. Every commercetools entry of the legal entity's supply
    channels is compared with the export: a different quantity is corrected, an entry with no
    D365 row is set to 0 ("zeroed"), a D365 row with no entry is created. The report counts
    each action per warehouse and has one line per discrepancy, with before and after.
    A legal entity that fails is reported as failed; the others still run.
    """
    entities = legal_entities_to_run(settings, legal_entity)
    reports = ReportStore(engine, clock=clock)
    state = InventoryState(engine, clock=clock)
    errors = ErrorQueue(engine, clock=clock)
    results: list[ReconcileResult] = []

    def quiet(_le: str, _message: str) -> None:
        return None

    async def go(io_: Adapters) -> None:
        for entity in entities:
            started = started_at or clock()
            try:
                results.append(
                    await _reconcile_one(
                        settings,
                        io_,
                        jobs,
                        reports,
                        state,
                        errors,
                        entity,
                        started,
                        status or quiet,
                    )
                )
            except D365ctError as exc:
                wid = workflow_id(entity, started)
                report = reports.get(wid)  # exists when the export got through
                counts = dict(report.counts) if report is not None else {}
                results.append(ReconcileResult(entity, wid, "failed", counts, str(exc)))

    if io is not None:
        await go(io)
    else:
        async with adapters(settings) as opened:
            await go(opened)
    return results


def summary_counts(results: Sequence[ReconcileResult]) -> Mapping[str, int]:
    """Actions summed over the legal entities of a run."""
    total = dict.fromkeys(ACTIONS, 0)
    for result in results:
        for action, count in (result.counts.get("actions") or {}).items():
            total[action] = total.get(action, 0) + int(count)
    return total
