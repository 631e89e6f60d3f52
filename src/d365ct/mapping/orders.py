"""commercetools Orders → D365 sales order header and line rows, routed to a legal entity (U3).

Pure: no I/O, no clock. Money comes from centAmount/fractionDigits as Decimal, never a float.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from d365ct.commercetools.actions import money_value
from d365ct.config import LegalEntitySettings, OrderSettings
from d365ct.d365.entities import (
    SALES_ORDER_HEADER_CHARGES_V2,
    SALES_ORDER_HEADERS_V2,
    SALES_ORDER_LINES_V2,
)
from d365ct.mapping.catalog import DIMENSION_ATTRIBUTES, ITEM_ATTRIBUTE
from d365ct.mapping.customers import (
    MappingError,
    account_of,
    address_fields,
    clip,
    custom_fields_actions,
    legal_entity_for,
    stable_code,
)

__all__ = [
    "CHARGE_ENTITY",
    "EXECUTION_FIELD",
    "KEY_FIELDS",
    "ORDER_ENTITIES",
    "ORDER_TYPE_KEY",
    "PENDING_STATE",
    "SALES_ORDER_FIELD",
    "STATUS_FIELD",
    "MappingError",
    "SalesOrderRows",
    "effective_order_number",
    "item_of",
    "order_customer_account",
    "order_number_for",
    "order_write_back_actions",
    "route_order",
    "sales_order_rows",
]

ORDER_TYPE_KEY = "d365ct-order"  # commercetools custom Type of orders (d365ct setup)
EXECUTION_FIELD = "d365ExecutionId"
SALES_ORDER_FIELD = "d365SalesOrderNumber"
STATUS_FIELD = "d365SyncStatus"  # posted | failed
PENDING_STATE = "d365-pending"  # initial order State; posted_state is reached from it
MAX_ORDER_NUMBER = 20  # SalesOrderHeadersV2.SalesOrderNumber
ORDER_ENTITIES = (SALES_ORDER_HEADERS_V2.label, SALES_ORDER_LINES_V2.label)
# Header charges (shipping posted as a charge) come after the headers they belong to; a package
# names the entity only when one of its orders has a charge.
CHARGE_ENTITY = SALES_ORDER_HEADER_CHARGES_V2.label
# The field of each entity's rows holding the order number: D365's error keys map back by it.
KEY_FIELDS = {label: "SalesOrderNumber" for label in (*ORDER_ENTITIES, CHARGE_ENTITY)}
MAX_CHARGE_DESCRIPTION = 60  # SalesOrderHeaderChargesV2.ChargeDescription
PRICE_QUANTUM = Decimal("0.000001")
_DIMENSIONS = {attribute: field for field, attribute in DIMENSION_ATTRIBUTES}


@dataclass(frozen=True)
class SalesOrderRows:
    """One order as D365 rows: the unit of a package (a header never travels without its lines
    and charges)."""

    order_number: str
    legal_entity: str
    header: dict[str, Any]
    lines: tuple[dict[str, Any], ...]
    charges: tuple[dict[str, Any], ...] = ()  # header charges: shipping when posted as a charge

    def unit(self) -> tuple[tuple[str, Mapping[str, Any]], ...]:
        header = ((SALES_ORDER_HEADERS_V2.label, self.header),)
        lines = tuple((SALES_ORDER_LINES_V2.label, line) for line in self.lines)
        return header + lines + tuple((CHARGE_ENTITY, charge) for charge in self.charges)

    @property
    def total(self) -> Decimal:
        """What D365 will invoice: the line amounts plus the fixed charges."""
        lines = sum((Decimal(line["LineAmount"]) for line in self.lines), Decimal(0))
        return lines + sum((Decimal(c["FixedChargeAmount"]) for c in self.charges), Decimal(0))


def order_number_for(order_id: str, prefix: str) -> str:
    """The number an order without one gets: `{prefix}-{stable code of its id}`, the same on
    every retry, so a crash between assigning and posting never yields two numbers."""
    number = f"{prefix}-{stable_code(order_id)}"
    if len(number) > MAX_ORDER_NUMBER:
        raise MappingError(
            f"orders.order_number_prefix '{prefix}' is too long: {number} has more than "
            f"{MAX_ORDER_NUMBER} characters"
        )
    return number


def effective_order_number(order: Mapping[str, Any], prefix: str) -> str:
    """The order's orderNumber, or the one `order_number_for` assigns; checked against D365."""
    number = order.get("orderNumber")
    if not number:
        return order_number_for(str(order["id"]), prefix)
    if len(str(number)) > MAX_ORDER_NUMBER:
        raise MappingError(
            f"order {order.get('id')}: orderNumber '{number}' is longer than the "
            f"{MAX_ORDER_NUMBER} characters of a D365 sales order number",
            key=str(number),
        )
    return str(number)


def _country(address: Any) -> str | None:
    return address.get("country") if isinstance(address, Mapping) else None


def route_order(
    order: Mapping[str, Any], legal_entities: Sequence[LegalEntitySettings]
) -> LegalEntitySettings:
    """The legal entity of an order: by its Store key, else shipping, billing, order country."""
    store = (order.get("store") or {}).get("key")
    countries = (
        _country(order.get("shippingAddress")),
        _country(order.get("billingAddress")),
        order.get("country"),
    )
    try:
        return legal_entity_for(legal_entities, store=store, countries=countries)
    except MappingError as exc:
        raise MappingError(
            f"order {order.get('orderNumber') or order.get('id')}: {exc.reason}",
            key=order.get("orderNumber") or str(order.get("id")),
        ) from None


def order_customer_account(
    order: Mapping[str, Any],
    legal_entity: LegalEntitySettings,
    customer: Mapping[str, Any] | None,
    prefix: str,
) -> str:
    """The ordering customer's D365 account: the customer's (U4), or for a guest order the
    legal entity's configured guest account."""
    if order.get("customerId"):
        if customer is None:
            # deleted since: post under its derived account, which D365 knows if it was synced
            return account_of({"id": order["customerId"]}, prefix)
        return account_of(customer, prefix)
    if not legal_entity.guest_customer_account:
        raise MappingError(
            f"order {order.get('orderNumber') or order.get('id')} is a guest order, and legal "
            f"entity {legal_entity.id} has no guest_customer_account configured",
            key=order.get("orderNumber"),
        )
    return legal_entity.guest_customer_account


def _text_value(value: Any) -> str:
    if isinstance(value, Mapping):  # an enum attribute: its key
        value = value.get("key", "")
    return "" if value is None else str(value).strip()


def item_of(variant: Mapping[str, Any]) -> dict[str, str]:
    """ItemNumber and product dimensions of a variant: from the attributes the catalog flow
    writes (d365-item-number, color, size, style, configuration), else its SKU as ItemNumber
    (a plain product's SKU is its item number; see mapping/skus.py)."""
    attributes = {
        str(a.get("name")): _text_value(a.get("value")) for a in variant.get("attributes") or ()
    }
    item = attributes.get(ITEM_ATTRIBUTE) or _text_value(variant.get("sku"))
    if not item:
        raise MappingError("a line item's variant has neither a SKU nor a D365 item number")
    fields = {"ItemNumber": item}
    for attribute, field in _DIMENSIONS.items():
        if attributes.get(attribute):
            fields[field] = attributes[attribute]
    if len(item) > 20 or any(len(v) > 10 for k, v in fields.items() if k != "ItemNumber"):
        raise MappingError(
            f"SKU {variant.get('sku')}: item number or dimension too long for D365 ({fields})"
        )
    return fields


def _name(value: Any, locale: str | None) -> str | None:
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping) or not value:
        return None
    language = (locale or "").split("-")[0]
    for candidate in (locale, language, "en"):
        if candidate and value.get(candidate):
            return str(value[candidate])
    return str(next(iter(value.values())))


def _person(address: Any) -> str | None:
    if not isinstance(address, Mapping):
        return None
    name = " ".join(
        str(address[part]).strip() for part in ("firstName", "lastName") if address.get(part)
    )
    return address.get("company") or name or None


def _created(order: Mapping[str, Any]) -> datetime | None:
    text = order.get("createdAt")
    if not text:
        return None
    moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _shipping_infos(order: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if order.get("shippingMode") == "Multiple":
        return [s["shippingInfo"] for s in order.get("shipping") or () if s.get("shippingInfo")]
    info = order.get("shippingInfo")
    return [info] if isinstance(info, Mapping) else []


def _line(
    number: str,
    line_number: int,
    item: Mapping[str, str],
    *,
    description: str | None,
    quantity: int,
    unit_price: Decimal,
    amount: Decimal,
    currency: str,
) -> dict[str, Any]:
    gross = unit_price * quantity
    discount = gross - amount
    if discount < 0:
        # the line costs more than price × quantity (an external total, or a high-precision price
        # rounded up): D365 must see the total; 6 decimals are as fine as its prices go
        unit_price = (amount / quantity).quantize(PRICE_QUANTUM, rounding=ROUND_HALF_EVEN)
        discount = Decimal(0)
    return {
        "SalesOrderNumber": number,
        "LineNumber": line_number,
        **item,
        "LineDescription": clip(description, 1000),
        "OrderedSalesQuantity": quantity,
        "SalesPrice": unit_price,
        "LineDiscountAmount": discount,
        "LineAmount": amount,
        "CurrencyCode": currency,
    }


def sales_order_rows(
    order: Mapping[str, Any],
    legal_entity: LegalEntitySettings,
    *,
    order_number: str,
    customer_account: str,
    settings: OrderSettings,
) -> SalesOrderRows:
    """The SalesOrderHeadersV2 row and SalesOrderLines rows of an order (M7–M9).

    Lines 1..n in line-item order: ItemNumber and dimensions from the variant, quantity,
    SalesPrice = the unit price (the product-discounted one when there is one),
    LineAmount = the line's totalPrice (after cart discounts), LineDiscountAmount = the
    difference. Shipping becomes one more line with `shipping_item` when `shipping_as` is
    "line", or a fixed header charge with `shipping_charge_code` (the discounted shipping price)
    when it is "charge". Custom line items have no D365 item and refuse the order; so does a
    total that the lines and charges do not add up to (a discount on the total price, say),
    since the ledger would be off.
    """
    currency = str((order.get("totalPrice") or {}).get("currencyCode") or "")
    if not currency:
        raise MappingError(f"order {order_number} has no totalPrice", key=order_number)
    if order.get("customLineItems"):
        names = ", ".join(
            _name(c.get("name"), order.get("locale")) or "?" for c in order["customLineItems"]
        )
        raise MappingError(
            f"order {order_number} has custom line items ({names}), which have no D365 item",
            key=order_number,
        )
    locale = order.get("locale")
    shipping = order.get("shippingAddress") or order.get("billingAddress")
    header: dict[str, Any] = {
        "dataAreaId": legal_entity.id,
        "SalesOrderNumber": order_number,
        "OrderingCustomerAccountNumber": customer_account,
        "InvoiceCustomerAccountNumber": customer_account,
        "CurrencyCode": currency,
        "SalesOrderName": clip(
            _person(order.get("billingAddress")) or _person(shipping) or order.get("customerEmail"),
            100,
        ),
        "CustomersOrderReference": clip(order.get("purchaseOrderNumber"), 60),
        "OrderCreationDateTime": _created(order),
        "LanguageId": clip(str(locale).lower(), 7) if locale else None,
        "Email": clip(order.get("customerEmail"), 255),
        "DeliveryAddressName": clip(_person(shipping), 100),
        **address_fields(shipping, "DeliveryAddress"),
    }
    lines: list[dict[str, Any]] = []
    for line_item in order.get("lineItems") or ():
        variant = line_item.get("variant") or {}
        try:
            item = item_of(variant)
        except MappingError as exc:
            raise MappingError(f"order {order_number}: {exc.reason}", key=order_number) from None
        price = line_item.get("price") or {}
        discounted = (price.get("discounted") or {}).get("value")
        unit_price = money_value(discounted or price["value"])
        lines.append(
            _line(
                order_number,
                len(lines) + 1,
                item,
                description=_name(line_item.get("name"), locale),
                quantity=int(line_item["quantity"]),
                unit_price=unit_price,
                amount=money_value(line_item["totalPrice"]),
                currency=currency,
            )
        )
    if not lines:
        raise MappingError(f"order {order_number} has no line items", key=order_number)
    expected = money_value(order["totalPrice"])
    charges: list[dict[str, Any]] = []
    for info in _shipping_infos(order):
        price = money_value(info["price"])
        amount = money_value((info.get("discountedPrice") or {}).get("value") or info["price"])
        if settings.shipping_as == "charge" and amount:
            charges.append(
                {
                    "dataAreaId": legal_entity.id,
                    "SalesOrderNumber": order_number,
                    "ChargeLineNumber": len(charges) + 1,
                    "SalesChargeCode": settings.shipping_charge_code,
                    "ChargeCategory": "Fixed",
                    "FixedChargeAmount": amount,
                    "ChargeAccountingCurrencyCode": currency,
                    "ChargeDescription": clip(
                        info.get("shippingMethodName") or "Shipping", MAX_CHARGE_DESCRIPTION
                    ),
                }
            )
        elif settings.shipping_as == "line" and (price or amount):
            lines.append(
                _line(
                    order_number,
                    len(lines) + 1,
                    {"ItemNumber": settings.shipping_item},
                    description=info.get("shippingMethodName") or "Shipping",
                    quantity=1,
                    unit_price=price,
                    amount=amount,
                    currency=currency,
                )
            )
    rows = SalesOrderRows(
        order_number,
        legal_entity.id,
        {k: v for k, v in header.items() if v is not None},
        tuple(
            {"dataAreaId": legal_entity.id, **{k: v for k, v in line.items() if v is not None}}
            for line in lines
        ),
        tuple(charges),
    )
    posted = rows.total
    if posted != expected:
        raise MappingError(
            f"order {order_number}: the lines add up to {posted} {currency} but the order total "
            f"is {expected} {currency} (a discount on the total price?); not posted, so the "
            "ledger is never off",
            key=order_number,
        )
    return rows


def order_write_back_actions(
    current: Mapping[str, Any],
    *,
    posted: bool,
    execution_id: str | None,
    sales_order_number: str,
    posted_state: str,
    posted_state_id: str | None,
) -> list[dict[str, Any]]:
    """Custom fields (execution id, sales order number, status) and, once posted, the posted
    State. An order with no State yet passes the initial `d365-pending` first, since the first
    State of an order must be an initial one. Nothing that already holds is sent again."""
    fields: dict[str, Any] = {
        SALES_ORDER_FIELD: sales_order_number,
        STATUS_FIELD: "posted" if posted else "failed",
    }
    if execution_id:
        fields[EXECUTION_FIELD] = execution_id
    actions = custom_fields_actions(current, ORDER_TYPE_KEY, fields)
    if posted:
        state = current.get("state") or {}
        at_posted = state and (
            state.get("id") == posted_state_id
            or (state.get("obj") or {}).get("key") == posted_state
        )
        if not state:
            actions.append(
                {"action": "transitionState", "state": {"typeId": "state", "key": PENDING_STATE}}
            )
        if not at_posted:
            actions.append(
                {"action": "transitionState", "state": {"typeId": "state", "key": posted_state}}
            )
    return actions
