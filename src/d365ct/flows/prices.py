"""Flow U1, prices: D365 sales price agreements → commercetools StandalonePrices, per legal entity.

Read (OData, amounts as Decimal) → map (mapping.prices) → compare with sync_state → write deltas.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from d365ct.commercetools import (
    CommercetoolsClient,
    ConcurrentModification,
    ResourceNotFound,
    standalone_price_actions,
)
from d365ct.config import LegalEntitySettings, Settings
from d365ct.d365.http import odata_error_message
from d365ct.d365.odata import ODataReader
from d365ct.errors import ConfigurationError, PermanentError
from d365ct.flows.catalog import (
    FATAL_ERRORS,
    RECORD_ERRORS,
    NullProgress,
    Progress,
    SyncSummary,
    read_variants,
    record_failure,
)
from d365ct.flows.setup import ensure_customer_groups
from d365ct.hooks import PRICES_HOOK_KEY, load_hook
from d365ct.mapping.prices import (
    PRICE_FIELDS,
    PRICE_VARIANT_FIELDS,
    PriceMapping,
    PriceOptions,
    PricePlan,
    price_plans,
)
from d365ct.runtime import adapters
from d365ct.store.error_queue import ErrorQueue
from d365ct.store.sync_state import SyncRecord, SyncStateStore

__all__ = ["FLOW", "sync_prices"]

FLOW = "prices"
RESOURCE = "standalone-prices"
Clock = Callable[[], datetime]


async def decimal_rows(
    odata: ODataReader, entity_set: str, **options: Any
) -> AsyncIterator[dict[str, Any]]:
    """Like ODataReader.rows, but JSON numbers become Decimal: amounts never pass a float."""
    url: str | None = f"data/{entity_set}"
    params: dict[str, str] | None = odata.query(**options)
    while url is not None:
        response = await odata.http.request("GET", url, params=params)
        odata.calls += 1
        if response.status_code != 200:
            raise PermanentError(
                f"reading {entity_set} failed ({response.status_code}): "
                f"{odata_error_message(response)}"
            )
        body = json.loads(response.content, parse_float=Decimal)
        for row in body.get("value", []):
            yield row
        url, params = body.get("@odata.nextLink"), None


def _instant(value: Any) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _held_scope(price: Mapping[str, Any], group_keys: Mapping[str, str]) -> tuple[Any, ...]:
    """The scope of a StandalonePrice as commercetools returns it, comparable to a plan's."""
    group = price.get("customerGroup") or {}
    return (
        price.get("sku"),
        (price.get("value") or {}).get("currencyCode"),
        price.get("country"),
        group_keys.get(str(group.get("id"))) if group else None,
        _instant(price.get("validFrom")),
        _instant(price.get("validUntil")),
        *((f"id:{price['channel'].get('id')}",) if price.get("channel") else ()),
    )


def _plan_scope(plan: PricePlan) -> tuple[Any, ...]:
    sku, currency, country, group, valid_from, valid_until, *channel = plan.scope
    scope = (sku, currency, country, group, _instant(valid_from), _instant(valid_until))
    # A channel (only a hook sets one) is named by key, which a held price does not show: such
    # a price never matches a held one here, so a lost store cannot be recovered for it.
    return (*scope, *channel)


@dataclass
class _Write:
    plan: PricePlan
    kind: str  # create | update
    current: Mapping[str, Any] | None = None  # full sync / recovered: the price as held
    stored: SyncRecord | None = None


class _PriceSync:
    """The writes of one legal entity's prices.

    commercetools ids are tracked in sync_state (flow "prices", key = price key + scope digest),
    since the mock drops StandalonePrice keys: a changed value is one POST at the stored version
    (no read); a price whose agreement disappeared or expired is deleted; a new one is created.
    A new price with no stored id is first looked for by sku and scope, so a lost store does not
    duplicate prices.
    """

    def __init__(
        self,
        engine: sa.Engine,
        ct: CommercetoolsClient,
        summary: SyncSummary,
        progress: Progress,
    ) -> None:
        self.ct = ct
        self.state = SyncStateStore(engine)
        self.errors = ErrorQueue(engine)
        self.summary = summary
        self.progress = progress

    async def run(self, entity: LegalEntitySettings, mapping: PriceMapping) -> None:
        summary = self.summary
        for row in mapping.errors:
            # amounts are Decimal (read exactly): the queue's JSON gets their text
            payload = json.loads(json.dumps(row.row, default=str))
            record_failure(
                self.errors, summary, key=row.record, step="map", error=row.reason, payload=payload
            )
        for row in mapping.skipped:
            summary.skipped += 1
            summary.skipped_reasons[row.kind] += 1
        plans = mapping.plans
        summary.records += len(plans)
        self.progress.add_total(len(plans))

        stored = self.state.items(FLOW, prefix=f"{entity.id}-")
        desired = {plan.state_key for plan in plans}
        # A price whose hook failed keeps what commercetools holds (whatever its scope): a broken
        # hook must not delete prices, as an inventory hook's failure zeroes no entry.
        held_back = {row.record for row in mapping.errors if row.kind == "hook"}
        vanished = {
            key: record
            for key, record in stored.items()
            if key not in desired and key.rpartition("@")[0] not in held_back
        }
        writes: list[_Write] = []
        for plan in plans:
            record = stored.get(plan.state_key)
            if record is None:
                writes.append(_Write(plan, "create"))
            elif summary.full or record.content_hash != plan.content_hash or not record.ct_id:
                writes.append(_Write(plan, "update", stored=record))
            else:
                summary.unchanged += 1
        self.progress.advance(len(plans) - len(writes))

        if summary.dry_run:
            for write in writes:
                if write.kind == "create":
                    summary.created += 1
                else:
                    summary.updated += 1
                summary.plan.append(
                    {"key": write.plan.state_key, "action": write.kind, "draft": write.plan.draft}
                )
            summary.deleted += len(vanished)
            summary.plan.extend({"key": key, "action": "delete"} for key in vanished)
            self.progress.advance(len(writes))
            return

        # Scope fields cannot change in place, and the new price may reuse the old one's key:
        # deletions go first.
        await self._delete_vanished(vanished)
        if not writes:
            return
        wanted = {
            plan.group: f"D365 customer group {plan.group.removeprefix('d365-')}"
            for plan in (w.plan for w in writes)
            if plan.group
        }
        group_ids, items = await ensure_customer_groups(self.ct, wanted)
        missing = {item.key: item.detail for item in items if item.outcome == "failed"}
        for write in [w for w in writes if w.plan.group in missing]:
            writes.remove(write)
            self.progress.advance(1)
            reason = f"customer group {write.plan.group} cannot be created: "
            record_failure(
                self.errors,
                summary,
                key=write.plan.state_key,
                step="customer-group",
                error=reason + missing[str(write.plan.group)],
                payload=write.plan.draft,
            )
        group_keys = {rid: key for key, rid in group_ids.items()}
        tracked = {r.ct_id for r in stored.values() if r.ct_id}
        await self._recover(writes, group_keys, tracked)
        if summary.full:
            await self._read_current(writes)

        results = await asyncio.gather(*(self._write(w) for w in writes))
        done = []
        for write, (outcome, body, error) in zip(writes, results, strict=True):
            self.progress.advance(1)
            if error is not None:
                record_failure(
                    self.errors,
                    summary,
                    key=write.plan.state_key,
                    step=write.kind,
                    error=error,
                    payload=write.plan.draft,
                )
                continue
            assert body is not None
            setattr(summary, outcome, getattr(summary, outcome) + 1)
            done.append(
                (
                    write.plan.state_key,
                    write.plan.content_hash,
                    str(body["id"]),
                    int(body["version"]),
                )
            )
        self.state.put_many(FLOW, done)

    async def _delete_vanished(self, vanished: Mapping[str, SyncRecord]) -> None:
        async def delete(key: str, record: SyncRecord) -> str | None:
            if not record.ct_id:
                return key
            try:
                await self._delete(record.ct_id, record.ct_version)
            except FATAL_ERRORS:
                raise
            except RECORD_ERRORS as exc:
                record_failure(self.errors, self.summary, key=key, step="delete", error=exc)
                return None
            self.summary.deleted += 1
            return key

        gone = await asyncio.gather(*(delete(k, r) for k, r in vanished.items()))
        self.state.delete(FLOW, [key for key in gone if key is not None])

    async def _delete(self, rid: str, version: int | None) -> None:
        for _ in range(5):
            try:
                await self.ct.delete(RESOURCE, rid, version)
                return
            except ConcurrentModification:
                fresh = await self.ct.get_by_id(RESOURCE, rid)
                if fresh is None:
                    return
                version = int(fresh["version"])
        raise ConcurrentModification(f"standalone price {rid}: kept changing while being deleted")

    async def _recover(
        self, writes: Sequence[_Write], group_keys: Mapping[str, str], tracked: set[str]
    ) -> None:
        """Creates whose price exists already (a store lost or a crash after the create) become
        updates of it: matched by sku and the whole scope, each held price claimed once."""
        creates = [w for w in writes if w.kind == "create"]
        if not creates:
            return
        found = await self.ct.find_by_field(RESOURCE, "sku", sorted({w.plan.sku for w in creates}))
        free: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
        for prices in found.values():
            for price in prices:
                if str(price["id"]) not in tracked:
                    free.setdefault(_held_scope(price, group_keys), []).append(price)
        for write in creates:
            candidates = free.get(_plan_scope(write.plan))
            if candidates:
                write.kind, write.current = "update", candidates.pop()

    async def _read_current(self, writes: Sequence[_Write]) -> None:
        ids = [w.stored.ct_id for w in writes if w.current is None and w.stored and w.stored.ct_id]
        found = await self.ct.find_by_field(RESOURCE, "id", ids) if ids else {}
        for write in writes:
            if write.current is None and write.stored and write.stored.ct_id:
                held = found.get(write.stored.ct_id)
                if held:
                    write.current = held[0]
                else:
                    write.kind = "create"  # deleted in commercetools meanwhile

    async def _write(
        self, write: _Write
    ) -> tuple[str, Mapping[str, Any] | None, BaseException | None]:
        draft = write.plan.draft
        desired = {"value": draft["value"], "active": True}

        def compute(held: Mapping[str, Any]) -> list[dict[str, Any]]:
            return standalone_price_actions(held, desired)

        try:
            if write.kind == "update" and write.current is not None:
                body = await self.ct.update_with_retry(
                    RESOURCE, str(write.current["id"]), compute, current=write.current
                )
                wrote = int(body["version"]) != int(write.current["version"])
                return ("updated" if wrote else "unchanged"), body, None
            if write.kind == "update" and write.stored and write.stored.ct_id:
                # the value is all a same-scope change can touch: send it at the stored version,
                # no read; a stale version costs one 409, a re-read and a recompute
                if write.stored.ct_version is not None:
                    self.ct.versions.remember(
                        RESOURCE, {"id": write.stored.ct_id, "version": write.stored.ct_version}
                    )
                try:
                    body = await self.ct.update_with_retry(
                        RESOURCE,
                        write.stored.ct_id,
                        compute,
                        actions=[{"action": "changeValue", "value": draft["value"]}],
                    )
                    return "updated", body, None
                except ResourceNotFound:
                    pass  # deleted in commercetools by someone else: create it again
            body = await self.ct.create(RESOURCE, draft)
            return "created", body, None
        except FATAL_ERRORS:
            raise
        except RECORD_ERRORS as exc:
            return "failed", None, exc


async def sync_prices(
    settings: Settings,
    engine: sa.Engine,
    *,
    legal_entity: str | None = None,
    full: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
    event_hooks: dict[str, list[object]] | None = None,
    clock: Clock | None = None,
) -> SyncSummary:
    """Sync the sales price agreements of every configured legal entity (or only `legal_entity`).

    Each row's currency is its own (PriceCurrencyCode), so one company may price in several.
    `full` re-reads every tracked price from commercetools and rewrites only differing values;
    `dry_run` reports creates, updates and deletes from the stored state alone (no calls to
    commercetools). Per-price failures go to the error queue; the rest proceeds.
    """
    started = time.monotonic()
    if legal_entity is not None:
        entities: tuple[LegalEntitySettings, ...] = (settings.legal_entity(legal_entity),)
    else:
        entities = settings.legal_entities
    if not entities:
        raise ConfigurationError("no [[legal_entities]] configured: nothing to price")
    summary = SyncSummary(FLOW, [e.id for e in entities], full=full, dry_run=dry_run)
    progress = progress or NullProgress()
    hook = load_hook(settings.prices.mapping.hook, PRICES_HOOK_KEY)
    async with adapters(settings, event_hooks=event_hooks) as ad:
        ct = ad.commercetools("catalog")
        sync = _PriceSync(engine, ct, summary, progress)
        try:
            for entity in entities:
                variants = await read_variants(ad.odata, entity.id, PRICE_VARIANT_FIELDS)
                rows = [
                    row
                    async for row in decimal_rows(
                        ad.odata,
                        "SalesPriceAgreements",
                        select=list(PRICE_FIELDS),
                        legal_entity=entity.id,
                    )
                ]
                options = PriceOptions(
                    entity.id,
                    country=entity.countries[0].upper() if entity.countries else None,
                    hook=hook,
                    hook_name=settings.prices.mapping.hook or "",
                )
                now = clock() if clock is not None else datetime.now(UTC)
                await sync.run(entity, price_plans(rows, variants, options, now=now))
        finally:
            summary.d365_calls = ad.odata.calls
            summary.ct_calls = Counter(ct.calls)
            summary.seconds = time.monotonic() - started
    return summary
