"""The demo's storefront: customers and orders created in the commercetools mock, their
Subscription messages built as commercetools would send them, and the check of what came of them.

The mock has no Messages or Subscriptions, so `subscription_message` builds the platform-format
delivery (``notificationType: Message``, payload included) that a commercetools HTTP destination
would POST to ``/intake/commercetools``. Some orders are bad on purpose (see `BAD_ORDERS`).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import httpx
import sqlalchemy as sa

from d365ct.config import Settings
from d365ct.d365.odata import quote_literal
from d365ct.intake import Inbox
from d365ct.intake.http import INTAKE_PATH
from d365ct.mapping.customers import ACCOUNT_FIELD, custom_field
from d365ct.mapping.orders import SALES_ORDER_FIELD
from d365ct.runtime import adapters
from d365ct.store.error_queue import ErrorQueue

__all__ = [
    "BAD_ORDERS",
    "UNKNOWN_SKU",
    "UNMAPPED_STORE",
    "Storefront",
    "StorefrontOutcome",
    "check_storefront",
    "deliver",
    "seed_storefront",
    "subscription_message",
    "wait_settled",
]

UNKNOWN_SKU: Final = "NO-SUCH-SKU"
UNMAPPED_STORE: Final = "fr-store"  # exists in commercetools, routed to no legal entity
# What is wrong with the bad orders, in the order they are seeded (one of each from 4 orders
# up, only the first from 2): the posting must put each in the error queue, and only it.
BAD_ORDERS: Final = (
    ("unknown-sku", f"a line with SKU {UNKNOWN_SKU}: sold in commercetools, unknown to D365"),
    ("unmapped-store", f"store {UNMAPPED_STORE} (country FR), which no legal entity takes"),
)
_MARKETS: Final = (  # store, currency, country, city, postal code
    ("us-store", "USD", "US", "Redmond", "98052"),
    ("de-store", "EUR", "DE", "Hamburg", "20095"),
)
_NAMES: Final = (
    ("Ada", "Lovelace"),
    ("Grace", "Hopper"),
    ("Alan", "Turing"),
    ("Edsger", "Dijkstra"),
    ("Barbara", "Liskov"),
    ("Donald", "Knuth"),
    ("Frances", "Allen"),
    ("Ken", "Thompson"),
)


@dataclass
class Storefront:
    """What the storefront created, and what must come of it."""

    project_key: str
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)  # id → customer
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # number → order
    good: dict[str, str] = field(default_factory=dict)  # order number → legal entity
    bad: dict[str, str] = field(default_factory=dict)  # order number → what is wrong
    messages: list[dict[str, Any]] = field(default_factory=list)  # customers first

    def message_ids(self, resource_type: str) -> list[str]:
        return [m["id"] for m in self.messages if m["resource"]["typeId"] == resource_type]


def subscription_message(
    project_key: str,
    resource_type: str,
    resource: Mapping[str, Any],
    message_type: str,
    *,
    sequence: int = 1,
    message_id: str | None = None,
    identifiers: Mapping[str, Any] | None = None,
    **payload: Any,
) -> dict[str, Any]:
    """A message in commercetools' platform format, as a Subscription delivers it."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "notificationType": "Message",
        "projectKey": project_key,
        "id": message_id or str(uuid.uuid4()),
        "version": 1,
        "sequenceNumber": sequence,
        "resource": {"typeId": resource_type, "id": resource["id"]},
        "resourceVersion": resource["version"],
        "resourceUserProvidedIdentifiers": dict(identifiers or {}),
        "type": message_type,
        "createdAt": now,
        "lastModifiedAt": now,
        **payload,
    }


def _variants(products: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for product in products:
        current = product.get("masterData", {}).get("current", {})
        for variant in [current.get("masterVariant"), *current.get("variants", [])]:
            if variant and variant.get("sku"):
                out.append({"sku": variant["sku"], "attributes": variant.get("attributes", [])})
    return out


def _order_draft(
    number: str,
    customer: Mapping[str, Any] | None,
    market: tuple[str, str, str, str, str],
    lines: list[tuple[dict[str, Any], int, int]],
) -> dict[str, Any]:
    store, currency, country, city, postal = market
    first, last = (customer or {}).get("firstName", "Guest"), (customer or {}).get("lastName", "")
    draft: dict[str, Any] = {
        "orderNumber": number,
        "store": {"typeId": "store", "key": store},
        "customerEmail": (customer or {}).get("email", "guest@example.com"),
        "totalPrice": {
            "currencyCode": currency,
            "centAmount": sum(quantity * cents for _, quantity, cents in lines),
        },
        "shippingAddress": {
            "firstName": first,
            "lastName": last,
            "streetName": "Main St",
            "streetNumber": "7",
            "postalCode": postal,
            "city": city,
            "country": country,
        },
        "lineItems": [
            {
                "name": {"en": f"Product {variant['sku']}"},
                "variant": variant,
                "price": {"value": {"currencyCode": currency, "centAmount": cents}},
                "quantity": quantity,
            }
            for variant, quantity, cents in lines
        ],
    }
    if customer is not None:
        draft["customerId"] = customer["id"]
    return draft


async def seed_storefront(settings: Settings, customers: int, orders: int) -> Storefront:
    """Create `customers` customers and `orders` orders (some bad, see BAD_ORDERS) in
    commercetools, plus the order Types and States the posting writes back, and build their
    messages. Orders reference SKUs the catalog sync published, alternate between the US and
    German stores (routed to usmf and demf) and belong to the customers in turn."""
    from d365ct.flows.orders import ensure_order_types_and_states

    ct_settings = settings.require_commercetools()
    front = Storefront(ct_settings.project_key)
    bad_kinds = [kind for kind, _ in BAD_ORDERS[: 2 if orders >= 4 else 1 if orders >= 2 else 0]]
    async with adapters(settings) as ad:
        ct = ad.commercetools("orders")
        await ensure_order_types_and_states(ct, settings)
        for key in ("us-store", "de-store", UNMAPPED_STORE):
            if await ct.get_by_key("stores", key) is None:
                await ct.create("stores", {"key": key, "name": {"en": key}})
        page = await ad.commercetools("catalog").request("GET", "products", params={"limit": "20"})
        variants = _variants(list(page.get("results", [])))
        if not variants:
            raise RuntimeError("the storefront found no products: run the catalog sync first")
        catalog = ad.commercetools("catalog")
        if bad_kinds and await catalog.get_by_key("products", "demo-no-such-sku") is None:
            # A product someone created in commercetools by hand: D365 has no such item.
            await ad.commercetools("catalog").create(
                "products",
                {
                    "key": "demo-no-such-sku",
                    "productType": {"typeId": "product-type", "key": settings.catalog.product_type},
                    "name": {"en": "Not released in D365"},
                    "slug": {"en": "demo-no-such-sku"},
                    "masterVariant": {"sku": UNKNOWN_SKU},
                    "publish": True,
                },
            )
        shoppers = ad.commercetools("customers")
        for n in range(customers):
            first, last = _NAMES[n % len(_NAMES)]
            market = _MARKETS[n % len(_MARKETS)]
            created = await shoppers.create(
                "customers",
                {
                    "email": f"{first.lower()}.{last.lower()}.{n + 1}@example.com",
                    "firstName": first,
                    "lastName": last,
                    "addresses": [
                        {
                            "firstName": first,
                            "lastName": last,
                            "streetName": "Main St",
                            "streetNumber": str(n + 1),
                            "postalCode": market[4],
                            "city": market[3],
                            "country": market[2],
                        }
                    ],
                },
            )
            customer = dict(created.get("customer", created))
            front.customers[customer["id"]] = customer
            front.messages.append(
                subscription_message(
                    front.project_key, "customer", customer, "CustomerCreated", customer=customer
                )
            )
        shopper_list = list(front.customers.values())
        cycle = itertools.cycle(variants)
        for n in range(orders):
            number = f"DEMO-{n + 1:04d}"
            market = _MARKETS[n % len(_MARKETS)]
            buyer = shopper_list[n % len(shopper_list)] if shopper_list else None
            if buyer is not None:  # the store matching the customer's country
                country = buyer["addresses"][0]["country"]
                market = next(m for m in _MARKETS if m[2] == country)
            lines = [(next(cycle), 1 + (n + i) % 3, 1000 + 250 * ((n + i) % 7)) for i in range(2)]
            kind = bad_kinds.pop(0) if bad_kinds and n >= orders - 2 else None
            if kind == "unknown-sku":
                lines.append(({"sku": UNKNOWN_SKU, "attributes": []}, 1, 999))
            elif kind == "unmapped-store":
                market = (UNMAPPED_STORE, "EUR", "FR", "Paris", "75001")
            order = await ct.request(
                "POST", "orders/import", json=_order_draft(number, buyer, market, lines)
            )
            front.orders[number] = dict(order)
            if kind is None:
                front.good[number] = "usmf" if market[0] == "us-store" else "demf"
            else:
                front.bad[number] = dict(BAD_ORDERS)[kind]
            front.messages.append(
                subscription_message(front.project_key, "order", order, "OrderCreated", order=order)
            )
    return front


def deliver(base_url: str, intake_token: str, messages: list[dict[str, Any]]) -> int:
    """POST each message to the service's webhook intake, one per request as commercetools
    does; returns how many were accepted (first deliveries)."""
    accepted = 0
    headers = {"Authorization": f"Bearer {intake_token}"}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for message in messages:
            response = client.post(INTAKE_PATH, json=message, headers=headers)
            response.raise_for_status()
            accepted += int(response.json().get("accepted", 0))
    return accepted


def wait_settled(
    engine: sa.Engine, front: Storefront, timeout: float, poll: float = 0.5
) -> dict[str, float]:
    """Wait until every storefront message is settled (no longer pending in the inbox); return
    per resource type the seconds it took. Raises TimeoutError with what is still pending."""
    started = time.monotonic()
    inbox = Inbox(engine)
    pending = {m["id"]: m["resource"]["typeId"] for m in front.messages}
    took: dict[str, float] = {}
    try:
        while True:
            for message_id in list(pending):
                entry = inbox.get(message_id)
                if entry is not None and entry.status != "pending":
                    kind = pending.pop(message_id)
                    if kind not in pending.values():
                        took[kind] = round(time.monotonic() - started, 2)
            if not pending:
                return took
            if time.monotonic() - started > timeout:
                raise TimeoutError(
                    f"{len(pending)} storefront message(s) still pending after {timeout:.0f} s"
                )
            time.sleep(poll)
    finally:
        inbox.close()


@dataclass
class StorefrontOutcome:
    problems: list[str]
    customers_synced: int
    customer_failures: int
    orders_posted: int
    orders_in_error_queue: dict[str, str]  # order number → the error text


async def check_storefront(
    settings: Settings, engine: sa.Engine, front: Storefront
) -> StorefrontOutcome:
    """What came of the storefront: good orders once each in D365 (in their legal entity) and
    written back in commercetools; bad ones in the error queue, with a reason; customers synced."""
    problems: list[str] = []
    errors = ErrorQueue(engine)
    open_orders = {e.business_key: e for e in errors.list(flow="orders", limit=10_000)}
    customer_errors = [e for e in errors.list(flow="customers", limit=10_000) if e.status == "open"]
    posted = 0
    synced = 0
    async with adapters(settings) as ad:
        ct = ad.commercetools("orders")
        for number, entity in front.good.items():
            rows = [
                row
                async for row in ad.odata.rows(
                    "SalesOrderHeadersV2",
                    filter=f"SalesOrderNumber eq {quote_literal(number)}",
                    select=["dataAreaId", "SalesOrderNumber"],
                    cross_company=True,
                )
            ]
            if len(rows) != 1:
                problems.append(f"order {number} is in D365 {len(rows)} times, not once")
            elif str(rows[0]["dataAreaId"]).lower() != entity:
                problems.append(f"order {number} went to {rows[0]['dataAreaId']}, not {entity}")
            else:
                posted += 1
            order = await ct.get_by_id("orders", front.orders[number]["id"])
            if order is None or not custom_field(order, SALES_ORDER_FIELD):
                problems.append(f"order {number} was not written back to commercetools")
            if number in open_orders:
                problems.append(f"good order {number} is in the error queue")
        for number in front.bad:
            if number not in open_orders:
                problems.append(f"bad order {number} is not in the error queue")
        customers = ad.commercetools("customers")
        for customer_id in front.customers:
            customer = await customers.get_by_id("customers", customer_id)
            if customer is not None and custom_field(customer, ACCOUNT_FIELD):
                synced += 1
            else:
                problems.append(f"customer {customer_id} has no D365 account written back")
    for entry in customer_errors:
        problems.append(f"customer error #{entry.id} {entry.business_key}: {entry.error}")
    return StorefrontOutcome(
        problems,
        synced,
        len(customer_errors),
        posted,
        {n: open_orders[n].error for n in front.bad if n in open_orders},
    )
