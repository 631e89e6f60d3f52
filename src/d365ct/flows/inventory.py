"""U2 inventory sync: D365 on-hand by warehouse (paged OData) → commercetools InventoryEntries.

Plain async functions, idempotent, writing only changed quantities; `d365ct run` schedules them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from d365ct.commercetools import (
    CommercetoolsClient,
    ResourceNotFound,
    field_predicate,
    inventory_actions,
    quote_predicate_string,
)
from d365ct.config import Settings
from d365ct.errors import ConfigurationError, CredentialError, D365ctError
from d365ct.hooks import INVENTORY_HOOK_KEY, load_hook
from d365ct.mapping.inventory import (
    OnHandError,
    StockTotal,
    StockTotals,
    WarehouseMap,
    apply_inventory_hook,
    inventory_draft,
    map_on_hand,
    on_hand_fields,
    state_key,
)
from d365ct.runtime import Adapters, adapters
from d365ct.store.error_queue import ErrorQueue
from d365ct.store.jobs import READ_ONLY_OPTION
from d365ct.store.tables import sync_state

__all__ = [
    "FLOW",
    "EntryState",
    "InventoryState",
    "InventorySyncSummary",
    "PlannedChange",
    "ProgressCallback",
    "RecordFailure",
    "channel_predicate",
    "entry_draft",
    "legal_entities_to_run",
    "resolve_channels",
    "set_quantity",
    "sync_inventory",
]

FLOW = "inventory"
BATCH = 500  # entries per sync_state read, commercetools lookup and concurrent write round
MAX_LISTED = 1000  # planned changes and failures kept for printing; the counts are complete
INVENTORY_SUPPLY = "InventorySupply"

# (legal entity, rows read so far, total rows or None when unknown)
ProgressCallback = Callable[[str, int, int | None], None]
Resource = dict[str, Any]


# ---- what the last sync wrote ------------------------------------------------------------------


@dataclass(frozen=True)
class EntryState:
    quantity: int
    ct_id: str | None
    ct_version: int | None


class InventoryState:
    """`sync_state` rows of the inventory flow: key "<sku>@<channel>", content hash = quantity.

    With the commercetools id and version kept too, a changed quantity goes out as one update
    without a read; a stale version costs one 409 and a re-read, never a lost write.
    """

    _CHUNK = 500  # keys per IN (...): well under SQLite's and PostgreSQL's parameter limits

    def __init__(
        self, engine: sa.Engine, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._engine = engine
        self._now = clock

    def get_many(self, keys: Sequence[str]) -> dict[str, EntryState]:
        t = sync_state
        found: dict[str, EntryState] = {}
        with self._engine.connect().execution_options(**{READ_ONLY_OPTION: True}) as conn:
            for start in range(0, len(keys), self._CHUNK):
                chunk = keys[start : start + self._CHUNK]
                query = sa.select(t.c.key, t.c.content_hash, t.c.ct_id, t.c.ct_version).where(
                    t.c.flow == FLOW, t.c.key.in_(chunk)
                )
                for row in conn.execute(query):
                    found[row.key] = _entry_state(row)
        return found

    def for_channel(self, channel: str) -> Iterator[tuple[str, EntryState]]:
        """Every entry the flow wrote for one channel: (sku, state)."""
        t = sync_state
        suffix = f"@{channel}"
        query = sa.select(t.c.key, t.c.content_hash, t.c.ct_id, t.c.ct_version).where(
            t.c.flow == FLOW, t.c.key.endswith(suffix, autoescape=True)
        )
        with self._engine.connect().execution_options(**{READ_ONLY_OPTION: True}) as conn:
            for row in conn.execution_options(yield_per=self._CHUNK).execute(query):
                yield row.key[: -len(suffix)], _entry_state(row)

    def put_many(self, entries: Mapping[str, EntryState]) -> None:
        if not entries:
            return
        now = self._now()
        rows = [
            {
                "flow": FLOW,
                "key": key,
                "content_hash": str(state.quantity),
                "ct_id": state.ct_id,
                "ct_version": state.ct_version,
                "updated_at": now,
            }
            for key, state in entries.items()
        ]
        insert = (
            postgresql.insert(sync_state)
            if self._engine.dialect.name == "postgresql"
            else sqlite.insert(sync_state)
        )
        statement = insert.on_conflict_do_update(
            index_elements=[sync_state.c.flow, sync_state.c.key],
            set_={
                "content_hash": insert.excluded.content_hash,
                "ct_id": insert.excluded.ct_id,
                "ct_version": insert.excluded.ct_version,
                "updated_at": insert.excluded.updated_at,
            },
        )
        with self._engine.begin() as conn:
            for start in range(0, len(rows), self._CHUNK):
                conn.execute(statement, rows[start : start + self._CHUNK])


def _entry_state(row: Any) -> EntryState:
    try:
        quantity = int(row.content_hash)
    except ValueError:
        quantity = -1  # not written by this version: never equal, so compared afresh
    version = None if row.ct_version is None else int(row.ct_version)
    return EntryState(quantity, row.ct_id, version)


def state_of(entry: Mapping[str, Any]) -> EntryState:
    """The sync state of an InventoryEntry as commercetools returned it."""
    return EntryState(int(entry["quantityOnStock"]), str(entry["id"]), int(entry["version"]))


# ---- commercetools helpers shared with the reconciliation ---------------------------------------


async def resolve_channels(
    ct: CommercetoolsClient, keys: Iterable[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Channel key → id for usable supply channels, and key → problem for the others."""
    wanted = sorted(set(keys))
    found = await ct.find_by_keys("channels", wanted) if wanted else {}
    ids: dict[str, str] = {}
    problems: dict[str, str] = {}
    for key in wanted:
        channel = found.get(key)
        if channel is None:
            problems[key] = (
                f"supply channel '{key}' does not exist in commercetools: create it with role "
                f"{INVENTORY_SUPPLY} (d365ct setup does)"
            )
        elif INVENTORY_SUPPLY not in (channel.get("roles") or ()):
            problems[key] = (
                f"channel '{key}' lacks the role {INVENTORY_SUPPLY}, which commercetools "
                "requires of an inventory supply channel"
            )
        else:
            ids[key] = str(channel["id"])
    return ids, problems


def channel_predicate(channel_ids: Iterable[str]) -> str:
    """`supplyChannel(id in (...))`: narrows inventory queries to the mapped channels."""
    literal = "(" + ",".join(quote_predicate_string(i) for i in sorted(channel_ids)) + ")"
    return field_predicate("supplyChannel.id", literal)


async def lookup_entries(
    ct: CommercetoolsClient, totals: Sequence[StockTotal], channel_ids: Mapping[str, str]
) -> dict[tuple[str, str], Resource]:
    """(sku, channel key) → the commercetools entry, in bulk: `sku in (...)` per URL-sized batch."""
    if not totals:
        return {}
    key_of = {channel_id: key for key, channel_id in channel_ids.items()}
    where = channel_predicate({channel_ids[t.channel] for t in totals})
    found = await ct.find_by_field("inventory", "sku", [t.sku for t in totals], where=where)
    index: dict[tuple[str, str], Resource] = {}
    for sku, entries in found.items():
        for entry in entries:
            channel = key_of.get((entry.get("supplyChannel") or {}).get("id", ""))
            if channel is not None:
                index.setdefault((sku, channel), entry)
    return index


def _change(quantity: int) -> Callable[[Mapping[str, Any]], list[dict[str, Any]]]:
    return lambda current: inventory_actions(current, {"quantityOnStock": quantity})


async def set_quantity(
    ct: CommercetoolsClient,
    quantity: int,
    *,
    entry: Mapping[str, Any] | None = None,
    known: EntryState | None = None,
) -> Resource:
    """changeQuantity (absolute) on an entry we hold (`entry`) or only know by id and version.

    A known version goes out without a read; on 409 the entry is re-read and the action
    recomputed (SPEC C8). Raises ResourceNotFound when the entry is gone.
    """
    if entry is not None:
        return await ct.update_with_retry(
            "inventory", str(entry["id"]), _change(quantity), current=entry
        )
    if known is None or known.ct_id is None or known.ct_version is None:
        raise ValueError("set_quantity needs the entry or its id and version")
    ct.versions.remember("inventory", {"id": known.ct_id, "version": known.ct_version})
    return await ct.update_with_retry(
        "inventory",
        known.ct_id,
        _change(quantity),
        actions=[{"action": "changeQuantity", "quantity": quantity}],
    )


def legal_entities_to_run(settings: Settings, only: str | None) -> list[str]:
    """The legal entities a run covers: one (checked against the configuration) or all."""
    if only is not None:
        entity = only.lower()
        configured = {le.id for le in settings.legal_entities}
        mapped = {w.legal_entity.lower() for w in settings.warehouses}
        if entity not in configured | mapped:
            raise ConfigurationError(
                f"legal entity '{only}' is not configured ([[legal_entities]] / [[warehouses]])"
            )
        return [entity]
    entities = [le.id for le in settings.legal_entities]
    for warehouse in settings.warehouses:  # a mapped entity without its own section still runs
        if warehouse.legal_entity.lower() not in entities:
            entities.append(warehouse.legal_entity.lower())
    if not entities:
        raise ConfigurationError("no [[legal_entities]] or [[warehouses]] are configured")
    return entities


# ---- the sync ----------------------------------------------------------------------------------


Action = Literal["create", "update", "zero"]


@dataclass(frozen=True)
class PlannedChange:
    legal_entity: str
    sku: str
    supply_channel: str
    warehouse: str
    action: Action
    before: int | None  # None: no entry yet
    after: int


@dataclass(frozen=True)
class RecordFailure:
    business_key: str
    step: str  # map | resolve-channel | write
    reason: str


@dataclass
class InventorySyncSummary:
    legal_entities: list[str] = field(default_factory=list)
    full: bool = False
    dry_run: bool = False
    rows: int = 0  # D365 on-hand rows read
    entries: int = 0  # distinct (sku, supply channel) they map to
    created: int = 0
    updated: int = 0
    zeroed: int = 0  # entries whose D365 row disappeared, set to 0
    unchanged: int = 0
    failed: int = 0  # rows and entries sent to the error queue
    d365_calls: int = 0
    ct_calls: int = 0
    seconds: float = 0.0
    planned: list[PlannedChange] = field(default_factory=list)  # dry run: the first MAX_LISTED
    failures: list[RecordFailure] = field(default_factory=list)  # the first MAX_LISTED

    @property
    def written(self) -> int:
        return self.created + self.updated + self.zeroed

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["written"] = self.written
        return data


@dataclass(frozen=True)
class _Op:
    action: Action
    total: StockTotal | None  # None for a zeroed entry that has no D365 row any more
    sku: str
    channel: str
    quantity: int
    before: int | None
    entry: Resource | None = None
    known: EntryState | None = None


class _Sync:
    def __init__(
        self,
        settings: Settings,
        io: Adapters,
        engine: sa.Engine,
        summary: InventorySyncSummary,
        progress: ProgressCallback | None,
        run_id: str,
    ) -> None:
        self.settings = settings
        self.io = io
        self.ct = io.commercetools("inventory")
        self.warehouses = WarehouseMap(settings.warehouses)
        self.state = InventoryState(engine)
        self.errors = ErrorQueue(engine)
        self.summary = summary
        self.progress = progress
        self.run_id = run_id
        self.quantity_field = settings.inventory.quantity_field
        self.hook = load_hook(settings.inventory.mapping.hook, INVENTORY_HOOK_KEY)
        self.channel_ids: dict[str, str] = {}
        self.channel_problems: dict[str, str] = {}
        # Channels with a row that names no item: it could be any entry's, so none is zeroed.
        self.held_channels: set[str] = set()

    # -- failures ----------------------------------------------------------------------------

    def fail(
        self,
        business_key: str,
        step: str,
        reason: str,
        payload: Any,
        legal_entity: str,
        channel: str | None = None,
    ) -> None:
        self.summary.failed += 1
        if len(self.summary.failures) < MAX_LISTED:
            self.summary.failures.append(RecordFailure(business_key, step, reason))
        if self.summary.dry_run:
            return
        correlation = {"run": self.run_id, "legal_entity": legal_entity}
        if channel is not None:
            correlation["supply_channel"] = channel
        self.errors.add(
            flow=FLOW,
            business_key=business_key,
            step=step,
            error=reason,
            payload=payload,
            correlation=correlation,
        )

    # -- one legal entity ----------------------------------------------------------------------

    async def run(self, legal_entities: Sequence[str]) -> None:
        channels = [c for le in legal_entities for c in self.warehouses.channels(le)]
        self.channel_ids, self.channel_problems = await resolve_channels(self.ct, channels)
        for legal_entity in legal_entities:
            await self.legal_entity(legal_entity)

    async def legal_entity(self, legal_entity: str) -> None:
        totals, failed_keys = await self.read(legal_entity)
        if self.hook is not None:
            failed = apply_inventory_hook(
                totals,
                self.channel_ids,
                self.hook,
                hook_name=str(self.settings.inventory.mapping.hook),
                legal_entity=legal_entity,
                quantity_field=self.quantity_field,
            )
            for total, reason in failed:
                failed_keys.add(state_key(total.sku, total.channel))  # not zeroed either
                payload = total.payload(self.quantity_field)
                self.fail(total.business_key, "map", reason, payload, legal_entity, total.channel)
        self.summary.entries += len(totals)
        batch: list[StockTotal] = []
        for total in totals:
            batch.append(total)
            if len(batch) >= BATCH:
                await self.sync_batch(legal_entity, batch)
                batch = []
        if batch:
            await self.sync_batch(legal_entity, batch)
        await self.zero_vanished(legal_entity, totals, failed_keys)

    async def read(self, legal_entity: str) -> tuple[StockTotals, set[str]]:
        """Every on-hand row of the legal entity, page by page, mapped and summed."""
        odata = self.io.odata
        entity_set = self.settings.inventory.entity_set
        total_rows = None
        if self.progress is not None:  # one extra call buys a progress bar with an end
            total_rows = await odata.count(entity_set, legal_entity=legal_entity)
            self.progress(legal_entity, 0, total_rows)
        totals = StockTotals()
        failed_keys: set[str] = set()
        read = 0
        select = list(on_hand_fields(self.quantity_field))
        async for page in odata.pages(entity_set, legal_entity=legal_entity, select=select):
            for row in page:
                self.map_row(legal_entity, row, totals, failed_keys)
            read += len(page)
            self.summary.rows += len(page)
            if self.progress is not None:
                self.progress(legal_entity, read, total_rows)
        return totals, failed_keys

    def map_row(
        self,
        legal_entity: str,
        row: Mapping[str, Any],
        totals: StockTotals,
        failed_keys: set[str],
    ) -> None:
        mapped = map_on_hand(
            row, self.warehouses, legal_entity=legal_entity, quantity_field=self.quantity_field
        )
        if isinstance(mapped, OnHandError):
            channel = self.warehouses.channel(legal_entity, mapped.warehouse)
            if channel is not None and mapped.sku:
                failed_keys.add(state_key(mapped.sku, channel))  # do not zero it either
            elif channel is not None:
                self.held_channels.add(channel)
            # the row as read ($select leaves out dataAreaId), without OData annotations
            payload = {"dataAreaId": legal_entity}
            payload.update((k, v) for k, v in row.items() if not k.startswith("@"))
            self.fail(mapped.business_key, "map", mapped.reason, payload, legal_entity, channel)
            return
        problem = self.channel_problems.get(mapped.channel)
        if problem is not None:
            failed_keys.add(state_key(mapped.sku, mapped.channel))
            self.fail(
                mapped.business_key,
                "resolve-channel",
                problem,
                mapped.as_row(self.quantity_field),
                legal_entity,
                mapped.channel,
            )
            return
        totals.add(mapped)

    async def sync_batch(self, legal_entity: str, batch: Sequence[StockTotal]) -> None:
        keys = [state_key(t.sku, t.channel) for t in batch]
        known = {} if self.summary.full else self.state.get_many(keys)
        ops: list[_Op] = []
        unknown: list[StockTotal] = []
        for total, key in zip(batch, keys, strict=True):
            state = known.get(key)
            if state is not None and state.quantity == total.quantity:
                self.summary.unchanged += 1
            elif state is not None and state.ct_id is not None and state.ct_version is not None:
                ops.append(
                    _Op(
                        "update",
                        total,
                        total.sku,
                        total.channel,
                        total.quantity,
                        state.quantity,
                        known=state,
                    )
                )
            else:
                unknown.append(total)
        confirmed: dict[str, EntryState] = {}
        entries = await lookup_entries(self.ct, unknown, self.channel_ids)
        for total in unknown:
            entry = entries.get(total.key)
            if entry is None:
                ops.append(_Op("create", total, total.sku, total.channel, total.quantity, None))
            elif entry.get("quantityOnStock") == total.quantity:
                self.summary.unchanged += 1
                confirmed[state_key(total.sku, total.channel)] = state_of(entry)
            else:
                before = entry.get("quantityOnStock")
                ops.append(
                    _Op(
                        "update",
                        total,
                        total.sku,
                        total.channel,
                        total.quantity,
                        None if before is None else int(before),
                        entry=entry,
                    )
                )
        if not self.summary.dry_run:
            self.state.put_many(confirmed)
        await self.apply(legal_entity, ops)

    async def zero_vanished(
        self, legal_entity: str, totals: StockTotals, failed_keys: set[str]
    ) -> None:
        """Entries this flow wrote whose D365 row is gone: nothing left to sell, so 0."""
        ops: list[_Op] = []
        for channel in self.warehouses.channels(legal_entity):
            if channel not in self.channel_ids or channel in self.held_channels:
                continue
            for sku, state in self.state.for_channel(channel):
                if (sku, channel) in totals or state_key(sku, channel) in failed_keys:
                    continue
                if state.quantity != 0 and state.ct_id is not None:
                    ops.append(_Op("zero", None, sku, channel, 0, state.quantity, known=state))
        for start in range(0, len(ops), BATCH):
            await self.apply(legal_entity, ops[start : start + BATCH])

    # -- writes ------------------------------------------------------------------------------

    async def apply(self, legal_entity: str, ops: Sequence[_Op]) -> None:
        if self.summary.dry_run:
            for op in ops:
                self.count(op)
                if len(self.summary.planned) < MAX_LISTED:
                    self.summary.planned.append(
                        PlannedChange(
                            legal_entity,
                            op.sku,
                            op.channel,
                            self.warehouses.warehouse_label(op.channel),
                            op.action,
                            op.before,
                            op.quantity,
                        )
                    )
            return
        results = await asyncio.gather(*(self.write(op) for op in ops))
        written: dict[str, EntryState] = {}
        for op, (body, error) in zip(ops, results, strict=True):
            key = state_key(op.sku, op.channel)
            if body is not None:
                self.count(op)
                # an entry deleted in commercetools before we could zero it: 0 is what it holds
                gone = body.get("id") is None
                written[key] = EntryState(0, None, None) if gone else state_of(body)
                continue
            warehouse = (
                op.total.warehouse if op.total else self.warehouses.warehouse_label(op.channel)
            )
            payload = (
                op.total.payload(self.quantity_field)
                if op.total
                else {"sku": op.sku, "supplyChannel": op.channel, "quantityOnStock": 0}
            )
            self.fail(
                f"{op.sku}@{legal_entity}/{warehouse}",
                "write",
                str(error),
                payload,
                legal_entity,
                op.channel,
            )
        self.state.put_many(written)

    def count(self, op: _Op) -> None:
        if op.action == "create":
            self.summary.created += 1
        elif op.action == "zero":
            self.summary.zeroed += 1
        else:
            self.summary.updated += 1

    async def write(self, op: _Op) -> tuple[Resource | None, D365ctError | None]:
        """One create or changeQuantity; a record-level failure is returned, not raised."""
        try:
            if op.action == "create":
                return await self.create(op), None
            try:
                body = await set_quantity(self.ct, op.quantity, entry=op.entry, known=op.known)
            except ResourceNotFound:
                if op.action == "zero":
                    return {"id": None}, None
                return await self.create(op), None  # deleted in commercetools meanwhile
            return body, None
        except CredentialError:
            raise  # every record would fail the same way: stop the run
        except D365ctError as exc:
            return None, exc

    async def create(self, op: _Op) -> Resource:
        return await self.ct.create(
            "inventory", entry_draft(op.total, op.sku, op.channel, self.channel_ids, op.quantity)
        )


def entry_draft(
    total: StockTotal | None, sku: str, channel: str, channel_ids: Mapping[str, str], quantity: int
) -> dict[str, Any]:
    """The InventoryEntryDraft a create sends: the hook's, or the default one."""
    if total is not None and total.draft is not None:
        return {**total.draft, "quantityOnStock": quantity}
    return inventory_draft(sku, channel, channel_ids[channel], quantity)


async def sync_inventory(
    settings: Settings,
    engine: sa.Engine,
    *,
    legal_entity: str | None = None,
    full: bool = False,
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
    io: Adapters | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> InventorySyncSummary:
    """Bring commercetools' stock of the mapped supply channels to D365's on-hand (U2).

    Per legal entity: read every on-hand row with paged OData (one call per page), map and sum
    them per (sku, channel), then write only what changed since the last sync (sync_state), or,
    with `full`, since what commercetools holds. Entries not known yet are looked up in bulk.
    Records that fail go to the error queue; the rest proceeds. `dry_run` reads everything and
    writes nothing (no commercetools writes, no sync state, no error queue). Safe to repeat: a
    second run with the same D365 data writes nothing. Memory: one small record per on-hand row
    of the legal entity in hand (rows are summed before anything is compared).
    """
    started = time.perf_counter()
    entities = legal_entities_to_run(settings, legal_entity)
    summary = InventorySyncSummary(legal_entities=entities, full=full, dry_run=dry_run)
    run_id = f"sync-inventory-{clock().strftime('%Y%m%dT%H%M%SZ')}"

    async def go(adapters_: Adapters) -> None:
        sync = _Sync(settings, adapters_, engine, summary, progress, run_id)
        d365_before = adapters_.odata.calls
        ct_before = sum(sync.ct.calls.values())
        try:
            await sync.run(entities)
        finally:
            summary.d365_calls = adapters_.odata.calls - d365_before
            summary.ct_calls = sum(sync.ct.calls.values()) - ct_before

    if io is not None:
        await go(io)
    else:
        async with adapters(settings) as opened:
            await go(opened)
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary
