"""`d365ct setup`: creates what the flows need in commercetools; a second run creates nothing.

Product type, supply channels per warehouse, customer groups. D365 data projects cannot be listed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from d365ct.commercetools import CommercetoolsClient, CommercetoolsError
from d365ct.config import Settings
from d365ct.d365.odata import ODataReader
from d365ct.errors import PermanentError, TransientError
from d365ct.mapping.catalog import CatalogOptions, product_type_draft
from d365ct.mapping.prices import customer_group_key
from d365ct.runtime import adapters

__all__ = ["SetupItem", "SetupReport", "ensure_customer_groups", "run_setup"]

SUPPLY_ROLE = "InventorySupply"
_ITEM_ERRORS = (CommercetoolsError, TransientError, httpx.HTTPError)


@dataclass(frozen=True)
class SetupItem:
    kind: str  # product-type | channel | customer-group | d365-data-projects | …
    key: str
    outcome: str  # created | updated | exists | failed | skipped
    detail: str = ""


@dataclass
class SetupReport:
    items: list[SetupItem] = field(default_factory=list)
    ct_calls: Counter[str] = field(default_factory=Counter)
    d365_calls: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(item.outcome == "failed" for item in self.items)

    def count(self, outcome: str) -> int:
        return sum(1 for item in self.items if item.outcome == outcome)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "items": [item.__dict__ for item in self.items],
            "created": self.count("created"),
            "updated": self.count("updated"),
            "exists": self.count("exists"),
            "failed": self.count("failed"),
            "calls": {"d365": self.d365_calls, "commercetools": dict(self.ct_calls)},
            "seconds": round(self.seconds, 3),
        }


async def _product_type(
    ct: CommercetoolsClient, key: str, extra_attributes: Sequence[str], report: SetupReport
) -> None:
    desired = product_type_draft(key, extra_attributes)
    try:
        current = await ct.get_by_key("product-types", key)
        if current is None:
            await ct.create("product-types", desired)
            report.items.append(SetupItem("product-type", key, "created"))
            return
        held = {a["name"]: a for a in current.get("attributes") or ()}
        clash = [
            a["name"]
            for a in desired["attributes"]
            if a["name"] in held and held[a["name"]].get("type", {}).get("name") != "text"
        ]
        if clash:
            report.items.append(
                SetupItem(
                    "product-type",
                    key,
                    "failed",
                    f"attribute(s) {', '.join(clash)} exist with another type than text; "
                    "an attribute type cannot be changed: rename catalog.product_type",
                )
            )
            return

        def missing(product_type: Mapping[str, Any]) -> list[dict[str, Any]]:
            names = {a["name"] for a in product_type.get("attributes") or ()}
            return [
                {"action": "addAttributeDefinition", "attribute": attribute}
                for attribute in desired["attributes"]
                if attribute["name"] not in names
            ]

        actions = missing(current)
        if not actions:
            report.items.append(SetupItem("product-type", key, "exists"))
            return
        await ct.update_with_retry("product-types", str(current["id"]), missing, current=current)
        added = ", ".join(a["attribute"]["name"] for a in actions)
        report.items.append(SetupItem("product-type", key, "updated", f"added {added}"))
    except _ITEM_ERRORS as exc:
        report.items.append(SetupItem("product-type", key, "failed", str(exc)))


async def _channels(ct: CommercetoolsClient, settings: Settings, report: SetupReport) -> None:
    wanted = {w.supply_channel: w for w in settings.warehouses}
    if not wanted:
        return
    existing = await ct.find_by_keys("channels", list(wanted))
    for key, warehouse in wanted.items():
        current = existing.get(key)
        try:
            if current is None:
                await ct.create(
                    "channels",
                    {
                        "key": key,
                        "roles": [SUPPLY_ROLE],
                        "name": {
                            "en": f"D365 {warehouse.legal_entity} warehouse {warehouse.warehouse}"
                        },
                    },
                )
                report.items.append(SetupItem("channel", key, "created"))
            elif SUPPLY_ROLE not in (current.get("roles") or ()):
                await ct.update_with_retry(
                    "channels",
                    str(current["id"]),
                    lambda held: (
                        []
                        if SUPPLY_ROLE in (held.get("roles") or ())
                        else [{"action": "addRoles", "roles": [SUPPLY_ROLE]}]
                    ),
                    current=current,
                )
                report.items.append(SetupItem("channel", key, "updated", f"added {SUPPLY_ROLE}"))
            else:
                report.items.append(SetupItem("channel", key, "exists"))
        except _ITEM_ERRORS as exc:
            report.items.append(SetupItem("channel", key, "failed", str(exc)))


async def ensure_customer_groups(
    ct: CommercetoolsClient, wanted: Mapping[str, str], *, create: bool = True
) -> tuple[dict[str, str], list[SetupItem]]:
    """key → id of the customer groups `wanted` (key → name), creating the missing ones.

    One bulk lookup, then one create per missing group. Items report what happened per key.
    """
    if not wanted:
        return {}, []
    existing = await ct.find_by_keys("customer-groups", list(wanted))
    ids = {key: str(body["id"]) for key, body in existing.items()}
    items = [SetupItem("customer-group", key, "exists") for key in existing]
    for key, name in wanted.items():
        if key in ids:
            continue
        if not create:
            items.append(SetupItem("customer-group", key, "skipped", "would be created"))
            continue
        try:
            body = await ct.create("customer-groups", {"key": key, "groupName": name})
        except CommercetoolsError as exc:
            if "DuplicateField" not in exc.codes:
                items.append(SetupItem("customer-group", key, "failed", str(exc)))
                continue
            raced = await ct.get_by_key("customer-groups", key)  # created meanwhile: fine
            if raced is None:
                items.append(SetupItem("customer-group", key, "failed", str(exc)))
                continue
            body = raced
        ids[key] = str(body["id"])
        items.append(SetupItem("customer-group", key, "created"))
    return ids, items


async def _d365_customer_groups(odata: ODataReader, settings: Settings) -> dict[str, str]:
    """commercetools key → name of the D365 customer groups of every configured legal entity."""
    found: dict[str, str] = {}
    for entity in settings.legal_entities:
        async for row in odata.rows(
            "CustomerGroups", select=["CustomerGroupId", "Description"], legal_entity=entity.id
        ):
            code = str(row.get("CustomerGroupId") or "").strip()
            if code:
                name = str(row.get("Description") or "").strip() or f"D365 customer group {code}"
                found.setdefault(customer_group_key(code), name)
    return found


async def run_setup(
    settings: Settings, *, event_hooks: dict[str, list[object]] | None = None
) -> SetupReport:
    """Create or complete, in commercetools: the product type (catalog.product_type) with the
    dimension and D365 number attributes; a supply channel (role InventorySupply) per
    [[warehouses]] entry; a customer group `d365-<code>` per D365 customer group of the configured
    legal entities (the prices flow also creates groups it meets on demand).

    With a commercetools `orders` client configured, also what the order and customer flows
    write back into (U3/U4): the custom Types `d365ct-order` and `d365ct-customer` and the order
    States `d365-pending` (initial) and orders.posted_state, through that client (it needs
    manage_types and manage_states besides manage_orders).

    Not done here: checking D365 data projects, since D365 offers no API to list them (a missing
    project fails its first job with D365's own error).
    """
    started = time.monotonic()
    report = SetupReport()
    async with adapters(settings, event_hooks=event_hooks) as ad:
        ct = ad.commercetools("catalog")
        try:
            # the attributes [catalog.mapping] sets must exist before a product can carry them
            extra = CatalogOptions.from_settings(settings.catalog).custom_attributes
            await _product_type(ct, settings.catalog.product_type, extra, report)
            await _channels(ct, settings, report)
            try:
                groups = await _d365_customer_groups(ad.odata, settings)
            except (PermanentError, TransientError, httpx.HTTPError) as exc:
                reason = f"reading D365 CustomerGroups: {exc}"
                report.items.append(SetupItem("customer-group", "*", "failed", reason))
            else:
                _, items = await ensure_customer_groups(ct, groups)
                report.items.extend(items)
            clients = settings.require_commercetools().clients
            if "orders" in clients:
                from d365ct.flows.orders import ensure_order_types_and_states

                orders_ct = ad.commercetools("orders")
                report.items.extend(await ensure_order_types_and_states(orders_ct, settings))
            report.items.append(
                SetupItem(
                    "d365-data-projects",
                    "*",
                    "skipped",
                    "D365 has no API that lists data projects; a missing one fails its first "
                    "job with D365's own error",
                )
            )
        finally:
            report.ct_calls = Counter(ct.calls)
            report.d365_calls = ad.odata.calls
            report.seconds = time.monotonic() - started
    return report
