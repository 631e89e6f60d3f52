"""Flow U1, catalog: D365 released products → commercetools products, writing only what changed.

Read (OData) → map (mapping.catalog) → compare content hashes (sync_state) → upsert the rest.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import sqlalchemy as sa

from d365ct.commercetools import (
    CommercetoolsClient,
    CommercetoolsError,
    ConcurrentModification,
    product_actions,
)
from d365ct.config import Settings
from d365ct.d365.odata import ODataReader, quote_literal
from d365ct.errors import ConfigurationError, CredentialError, PermanentError, TransientError
from d365ct.hooks import CATALOG_HOOK_KEY, load_hook
from d365ct.mapping.catalog import (
    TRANSLATION_FIELDS,
    VARIANT_FIELDS,
    CatalogMappingError,
    CatalogOptions,
    ProductPlan,
    Variant,
    parse_content_hash,
    part_key,
    product_plans,
    translations_by_product,
    variant_of,
)
from d365ct.runtime import adapters
from d365ct.store.error_queue import ErrorQueue
from d365ct.store.sync_state import SyncRecord, SyncStateStore

__all__ = [
    "BATCH",
    "FATAL_ERRORS",
    "FLOW",
    "RECORD_ERRORS",
    "WINDOW",
    "NullProgress",
    "Progress",
    "SyncSummary",
    "read_variants",
    "record_failure",
    "sync_catalog",
]

FLOW = "catalog"
WINDOW = 5000  # products whose hashes are compared at once: changed ones are then looked up
BATCH = 250  # changed products per bulk lookup (fits one URL and one page) and write round
RESOURCE = "products"
# Failures that no record can cause: they stop the run instead of filling the error queue.
FATAL_ERRORS = (CredentialError, ConfigurationError)
RECORD_ERRORS = (CommercetoolsError, PermanentError, TransientError, httpx.HTTPError)

EventHooks = dict[str, list[object]]


class Progress(Protocol):
    """Where a flow reports progress: a total that grows as sources are read, and steps done."""

    def add_total(self, count: int) -> None: ...

    def advance(self, count: int) -> None: ...


class NullProgress:
    def add_total(self, count: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass


@dataclass
class SyncSummary:
    """What one sync run did: counts per outcome, calls per system, the plan of a dry run."""

    flow: str
    legal_entities: list[str]
    full: bool = False
    dry_run: bool = False
    records: int = 0  # desired commercetools resources (products, prices)
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0
    skipped: int = 0
    skipped_reasons: Counter[str] = field(default_factory=Counter)
    d365_calls: int = 0
    ct_calls: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    plan: list[dict[str, Any]] = field(default_factory=list)  # dry run: what would be written

    @property
    def ok(self) -> bool:
        return self.failed == 0

    @property
    def ct_writes(self) -> int:
        return sum(n for method, n in self.ct_calls.items() if method != "GET")

    def as_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "legal_entities": self.legal_entities,
            "full": self.full,
            "dry_run": self.dry_run,
            "records": self.records,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "failed": self.failed,
            "skipped": self.skipped,
            "skipped_reasons": dict(self.skipped_reasons),
            "calls": {
                "d365": self.d365_calls,
                "commercetools": dict(self.ct_calls),
                "commercetools_total": sum(self.ct_calls.values()),
                "commercetools_writes": self.ct_writes,
            },
            "seconds": round(self.seconds, 3),
            "plan": self.plan,
        }


def record_failure(
    errors: ErrorQueue,
    summary: SyncSummary,
    *,
    key: str,
    step: str,
    error: BaseException | str,
    payload: Any = None,
) -> None:
    """One record failed: into the error queue with its payload; the rest of the batch goes on."""
    summary.failed += 1
    errors.add(flow=summary.flow, business_key=key, step=step, error=str(error), payload=payload)


async def read_variants(
    odata: ODataReader, legal_entity: str, select: Sequence[str] = VARIANT_FIELDS
) -> dict[str, list[Variant]]:
    """Released variants of one company, grouped by their master's ItemNumber."""
    found: dict[str, list[Variant]] = {}
    async for row in odata.rows(
        "ReleasedProductVariantsV2", select=list(select), legal_entity=legal_entity
    ):
        found.setdefault(str(row.get("ItemNumber") or "").strip(), []).append(variant_of(row))
    return found


async def _read_translations(
    odata: ODataReader, options: CatalogOptions
) -> dict[str, dict[str, str]]:
    languages = " or ".join(f"LanguageId eq {quote_literal(lang)}" for lang, _ in options.languages)
    rows = [
        row
        async for row in odata.rows(
            "ProductTranslations", select=list(TRANSLATION_FIELDS), filter=languages
        )
    ]
    return translations_by_product(rows, options)


@dataclass
class _Group:
    """The products of one D365 item (several when split), plus leftover parts to delete."""

    item: str
    plans: list[ProductPlan]
    orphans: list[str]

    @property
    def keys(self) -> list[str]:
        return [plan.key for plan in self.plans] + self.orphans


@dataclass
class _Outcome:
    key: str
    outcome: str  # created | updated | unchanged | deleted | failed
    body: Mapping[str, Any] | None = None
    error: BaseException | None = None
    plan: ProductPlan | None = None
    step: str = "upsert"


def _skus(product: Mapping[str, Any]) -> list[str]:
    master_data = product.get("masterData")
    data = (master_data.get("staged") or master_data["current"]) if master_data else product
    variants = [data.get("masterVariant") or {}, *(data.get("variants") or ())]
    return [str(v["sku"]) for v in variants if v.get("sku")]


class _CatalogSync:
    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        ct: CommercetoolsClient,
        summary: SyncSummary,
        progress: Progress,
    ) -> None:
        self.settings = settings
        hook = load_hook(settings.catalog.mapping.hook, CATALOG_HOOK_KEY)
        self.options = CatalogOptions.from_settings(settings.catalog, hook)
        self.ct = ct
        self.state = SyncStateStore(engine)
        self.errors = ErrorQueue(engine)
        self.summary = summary
        self.progress = progress
        self.full = summary.full
        self.dry_run = summary.dry_run
        self._product_type_checked = False

    # ---- planning -----------------------------------------------------------------------------

    def plan_batch(
        self,
        rows: Sequence[Mapping[str, Any]],
        variants: Mapping[str, Sequence[Variant]],
        names: Mapping[str, Mapping[str, str]],
        items: set[str],
    ) -> list[_Group]:
        """The groups of this batch that need a look at commercetools; the rest are unchanged."""
        groups: dict[str, list[ProductPlan]] = {}
        for row in rows:
            item = str(row.get("ItemNumber") or "").strip()
            product_number = str(row.get("ProductNumber") or item).strip()
            try:
                plans = product_plans(
                    row, variants.get(item, ()), names.get(product_number, {}), self.options
                )
                clash = [p.key for p in plans if p.part > 1 and p.key in items]
                if clash:
                    raise CatalogMappingError(
                        f"product master {item} splits into {', '.join(clash)}, which is also a "
                        "D365 item number; raise the variant limit or rename the item"
                    )
            except CatalogMappingError as exc:
                record_failure(
                    self.errors, self.summary, key=item, step="map", error=exc, payload=row
                )
                continue
            if not plans:
                self.summary.skipped += 1
                self.summary.skipped_reasons["product master without released variants"] += 1
                continue
            groups[item] = plans
        self.summary.records += sum(len(p) for p in groups.values())
        stored = self.state.get_many(FLOW, [p.key for plans in groups.values() for p in plans])
        changed: list[_Group] = []
        for item, plans in groups.items():
            orphans = self._orphans(item, plans, stored.get(item), items)
            if (
                self.full
                or orphans
                or any(
                    p.key not in stored or stored[p.key].content_hash != p.content_hash
                    for p in plans
                )
            ):
                changed.append(_Group(item, plans, orphans))
            else:
                self.summary.unchanged += len(plans)
        return changed

    def _orphans(
        self, item: str, plans: Sequence[ProductPlan], first: SyncRecord | None, items: set[str]
    ) -> list[str]:
        """Parts a previous split made that the current one no longer has (never a D365 item)."""
        parts = len(plans)
        old_parts = parse_content_hash(first.content_hash)[1] if first else 1
        orphans = [part_key(item, n) for n in range(parts + 1, old_parts + 1)]
        if self.full and not orphans and plans[0].skus != [item]:
            # without trusted state, probe the next part: the usual leftover of a shrunk split
            orphans.append(part_key(item, parts + 1))
        return [key for key in orphans if key not in items]

    # ---- applying -----------------------------------------------------------------------------

    async def apply(self, groups: Sequence[_Group]) -> None:
        keys = [key for group in groups for key in group.keys]
        existing = await self.ct.find_by_keys(RESOURCE, keys)
        stale: list[str] = []
        for group in groups:  # a leftover commercetools no longer holds is nothing to delete
            stale.extend(key for key in group.orphans if key not in existing)
            group.orphans = [key for key in group.orphans if key in existing]
        if stale and not self.dry_run:
            self.state.delete(FLOW, stale)
        if self.dry_run:
            for group in groups:
                self._plan(group, existing)
            return
        if any(key not in existing for group in groups for key in group.keys):
            await self._check_product_type()
        results = await asyncio.gather(*(self._apply_group(group, existing) for group in groups))
        done: list[tuple[str, str, str | None, int | None]] = []
        gone: list[str] = []
        for outcomes in results:
            for result in outcomes:
                if result.outcome == "failed":
                    assert result.error is not None
                    payload = result.plan.draft if result.plan else None
                    record_failure(
                        self.errors,
                        self.summary,
                        key=result.key,
                        step=result.step,
                        error=result.error,
                        payload=payload,
                    )
                    continue
                if result.outcome == "deleted":
                    self.summary.deleted += 1
                    gone.append(result.key)
                    continue
                setattr(self.summary, result.outcome, getattr(self.summary, result.outcome) + 1)
                assert result.plan is not None and result.body is not None
                done.append(
                    (
                        result.key,
                        result.plan.content_hash,
                        str(result.body.get("id")),
                        int(result.body["version"]) if "version" in result.body else None,
                    )
                )
        self.state.put_many(FLOW, done)
        self.state.delete(FLOW, gone)

    def _plan(self, group: _Group, existing: Mapping[str, Mapping[str, Any]]) -> None:
        for plan in group.plans:
            current = existing.get(plan.key)
            if current is None:
                self.summary.created += 1
                self.summary.plan.append({"key": plan.key, "action": "create", "skus": plan.skus})
                continue
            actions = product_actions(current, plan.draft, publish=self.options.publish)
            if not actions:
                self.summary.unchanged += 1
                continue
            self.summary.updated += 1
            self.summary.plan.append(
                {"key": plan.key, "action": "update", "actions": [a["action"] for a in actions]}
            )
        for key in group.orphans:
            self.summary.deleted += 1
            self.summary.plan.append({"key": key, "action": "delete", "reason": "split shrank"})

    async def _check_product_type(self) -> None:
        if self._product_type_checked:
            return
        key = self.options.product_type
        if await self.ct.get_by_key("product-types", key) is None:
            raise ConfigurationError(
                f"commercetools has no product type '{key}' (catalog.product_type): "
                "run `d365ct setup` first"
            )
        self._product_type_checked = True

    async def _apply_group(
        self, group: _Group, existing: Mapping[str, Mapping[str, Any]]
    ) -> list[_Outcome]:
        current: dict[str, Mapping[str, Any] | None] = {k: existing.get(k) for k in group.keys}
        outcomes: list[_Outcome] = []
        if len(group.plans) > 1 or group.orphans:
            try:
                outcomes = await self._release(group, current)
            except FATAL_ERRORS:
                raise
            except RECORD_ERRORS as exc:
                return [
                    _Outcome(p.key, "failed", error=exc, plan=p, step="split") for p in group.plans
                ]
        for plan in group.plans:  # in part order: each part's skus are free by now
            outcomes.append(await self._upsert(plan, current.get(plan.key)))
        return outcomes

    async def _upsert(self, plan: ProductPlan, current: Mapping[str, Any] | None) -> _Outcome:
        draft, publish = plan.draft, self.options.publish
        try:
            result = await self.ct.upsert(
                RESOURCE,
                draft,
                lambda held: product_actions(held, draft, publish=publish),
                current=current,
            )
        except FATAL_ERRORS:
            raise
        except RECORD_ERRORS as exc:
            return _Outcome(plan.key, "failed", error=exc, plan=plan)
        return _Outcome(plan.key, result.outcome, result.resource, plan=plan)

    async def _release(
        self, group: _Group, current: dict[str, Mapping[str, Any] | None]
    ) -> list[_Outcome]:
        """Before a split group is written, free every sku that moves to another part.

        A sku is unique in a project, so it must leave its old product before another part can
        add it. Leftover parts are deleted; a part left with no sku of its own is deleted too
        and created again by the upsert that follows.
        """
        owner = {sku: plan.key for plan in group.plans for sku in plan.skus}
        outcomes: list[_Outcome] = []
        for key in group.keys:
            product = current.get(key)
            if product is None:
                continue
            held = _skus(product)
            moving = [sku for sku in held if owner.get(sku, key) != key]
            if key in group.orphans or (moving and len(moving) == len(held)):
                await self._delete(product)
                current[key] = None
                if key in group.orphans:
                    outcomes.append(_Outcome(key, "deleted"))
                continue
            if moving:
                release = functools.partial(_release_actions, moving=frozenset(moving))
                current[key] = await self.ct.update_with_retry(
                    RESOURCE, str(product["id"]), release, current=product
                )
        return outcomes

    async def _delete(self, product: Mapping[str, Any]) -> None:
        rid = str(product["id"])
        version = int(product["version"])
        master_data = product.get("masterData") or {}
        for _ in range(5):
            try:
                if master_data.get("published"):
                    # commercetools deletes only unpublished products
                    body = await self.ct.update(RESOURCE, rid, version, [{"action": "unpublish"}])
                    version, master_data = int(body["version"]), body.get("masterData") or {}
                await self.ct.delete(RESOURCE, rid, version)
                return
            except ConcurrentModification:
                fresh = await self.ct.get_by_id(RESOURCE, rid)
                if fresh is None:
                    return
                version, master_data = int(fresh["version"]), fresh.get("masterData") or {}
        raise ConcurrentModification(f"product {rid}: kept changing while being deleted")


def _release_actions(product: Mapping[str, Any], moving: frozenset[str]) -> list[dict[str, Any]]:
    held = _skus(product)
    leaving = [sku for sku in held if sku in moving]
    staying = [sku for sku in held if sku not in moving]
    if not leaving or not staying:
        return []
    actions: list[dict[str, Any]] = []
    if held[0] in moving:  # the master variant cannot be removed while it is the master
        actions.append({"action": "changeMasterVariant", "sku": staying[0]})
    actions.extend({"action": "removeVariant", "sku": sku} for sku in leaving)
    return actions


async def sync_catalog(
    settings: Settings,
    engine: sa.Engine,
    *,
    full: bool = False,
    dry_run: bool = False,
    legal_entity: str | None = None,
    progress: Progress | None = None,
    event_hooks: EventHooks | None = None,
) -> SyncSummary:
    """Sync the released products of `legal_entity` (default catalog.source_legal_entity).

    `full` ignores stored hashes and diffs every product against commercetools (unchanged ones
    are still not written); `dry_run` reads both sides and reports the plan without writing.
    Per-product failures go to the error queue; credential and configuration errors stop the run.

    Memory: variants are held per master and translations per product (a few short strings each,
    tens of MB at 100,000 products); released products are held as their $select-ed fields, so
    split keys can be checked against every item number. Hashes are compared per `WINDOW` of
    products; only changed ones are looked up in commercetools (one GET per `BATCH`) and written.

    Re-running is the recovery: a hash is stored only after its write succeeded, creates follow a
    lookup by key, and updates are version-guarded (C8), so the next run finishes a crashed one.
    """
    started = time.monotonic()
    source = (legal_entity or settings.catalog.source_legal_entity).lower()
    summary = SyncSummary(FLOW, [source], full=full, dry_run=dry_run)
    progress = progress or NullProgress()
    async with adapters(settings, event_hooks=event_hooks) as ad:
        ct = ad.commercetools("catalog")
        sync = _CatalogSync(settings, engine, ct, summary, progress)
        try:
            variants = await read_variants(ad.odata, source)
            names = await _read_translations(ad.odata, sync.options)
            rows = [
                row
                async for row in ad.odata.rows(
                    "ReleasedProductsV2",
                    select=list(sync.options.product_fields),
                    legal_entity=source,
                )
            ]
            progress.add_total(len(rows))
            items = {str(row.get("ItemNumber") or "").strip() for row in rows}
            for start in range(0, len(rows), WINDOW):
                window = rows[start : start + WINDOW]
                groups = sync.plan_batch(window, variants, names, items)
                progress.advance(len(window) - len(groups))
                for first in range(0, len(groups), BATCH):
                    chunk = groups[first : first + BATCH]
                    await sync.apply(chunk)
                    progress.advance(len(chunk))
        finally:
            summary.d365_calls = ad.odata.calls
            summary.ct_calls = Counter(ct.calls)
            summary.seconds = time.monotonic() - started
    return summary
