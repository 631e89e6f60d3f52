"""The pure order mapping: numbers, routing, header and line rows, money, write-back actions."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from d365ct.config import LegalEntitySettings, OrderSettings
from d365ct.d365.entities import SALES_ORDER_HEADERS_V2, SALES_ORDER_LINES_V2
from d365ct.mapping.customers import ACCOUNT_FIELD, customer_account
from d365ct.mapping.orders import (
    EXECUTION_FIELD,
    ORDER_TYPE_KEY,
    PENDING_STATE,
    SALES_ORDER_FIELD,
    STATUS_FIELD,
    MappingError,
    effective_order_number,
    item_of,
    order_customer_account,
    order_number_for,
    order_write_back_actions,
    route_order,
    sales_order_rows,
)

US = LegalEntitySettings(
    id="usmf",
    currency="USD",
    stores=("us-store",),
    countries=("US",),
    guest_customer_account="US-000002",
)
DE = LegalEntitySettings(id="demf", currency="EUR", stores=("de-store",), countries=("DE",))
ENTITIES = (US, DE)
SETTINGS = OrderSettings()


def money(cents: int, currency: str = "USD", digits: int = 2) -> dict[str, Any]:
    return {
        "type": "centPrecision",
        "currencyCode": currency,
        "centAmount": cents,
        "fractionDigits": digits,
    }


def line(
    sku: str,
    quantity: int,
    cents: int,
    *,
    total: int | None = None,
    discounted: int | None = None,
    attributes: list[dict[str, Any]] | None = None,
    currency: str = "USD",
    digits: int = 2,
) -> dict[str, Any]:
    price: dict[str, Any] = {"value": money(cents, currency, digits)}
    if discounted is not None:
        price["discounted"] = {"value": money(discounted, currency, digits)}
    unit = discounted if discounted is not None else cents
    return {
        "id": f"li-{sku}",
        "name": {"en": f"Product {sku}", "de": f"Produkt {sku}"},
        "variant": {"id": 1, "sku": sku, "attributes": attributes or []},
        "price": price,
        "quantity": quantity,
        "totalPrice": money(unit * quantity if total is None else total, currency, digits),
    }


def order(*lines: dict[str, Any], shipping: int | None = 500, **fields: Any) -> dict[str, Any]:
    currency = lines[0]["totalPrice"]["currencyCode"]
    digits = lines[0]["totalPrice"]["fractionDigits"]
    total = sum(li["totalPrice"]["centAmount"] for li in lines) + (shipping or 0)
    body: dict[str, Any] = {
        "id": "0d8f5c3e-1111-4f00-9c00-000000000001",
        "version": 3,
        "orderNumber": "WEB-1001",
        "createdAt": "2026-11-20T10:15:00.000Z",
        "customerEmail": "ada@example.com",
        "customerId": "3c7f0a55-6a0e-4d1b-8d1c-2d6a7b0c1e11",
        "store": {"typeId": "store", "key": "us-store"},
        "locale": "en-US",
        "lineItems": list(lines),
        "customLineItems": [],
        "totalPrice": money(total, currency, digits),
        "shippingAddress": {
            "firstName": "Ada",
            "lastName": "Lovelace",
            "streetName": "Main St",
            "streetNumber": "1",
            "city": "Redmond",
            "postalCode": "98052",
            "state": "WA",
            "country": "US",
        },
    }
    if shipping is not None:
        body["shippingInfo"] = {
            "shippingMethodName": "Standard",
            "price": money(shipping, currency, digits),
        }
    body.update(fields)
    return body


def rows(o: dict[str, Any], **options: Any) -> Any:
    settings = OrderSettings(**options) if options else SETTINGS
    return sales_order_rows(
        o,
        US,
        order_number=effective_order_number(o, "CT"),
        customer_account="CT-1",
        settings=settings,
    )


def test_order_numbers() -> None:
    assert effective_order_number({"id": "x", "orderNumber": "WEB-1"}, "CT") == "WEB-1"
    number = effective_order_number({"id": "0d8f"}, "CT")
    assert number == order_number_for("0d8f", "CT") and re.fullmatch(r"CT-[A-Z2-7]{10}", number)
    with pytest.raises(MappingError, match="longer than"):
        effective_order_number({"id": "x", "orderNumber": "N" * 21}, "CT")


@given(st.uuids())
def test_assigned_numbers_fit_d365(uid: object) -> None:
    assert len(order_number_for(str(uid), "WEB")) <= 20


def test_routing() -> None:
    o = order(line("D0001", 1, 1000))
    assert route_order(o, ENTITIES).id == "usmf"
    by_country = {**o, "store": None, "shippingAddress": {"country": "DE"}}
    assert route_order(by_country, ENTITIES).id == "demf"
    nowhere = {**o, "store": {"key": "fr-store"}, "shippingAddress": {"country": "FR"}}
    with pytest.raises(MappingError) as caught:
        route_order(nowhere, ENTITIES)
    assert "no legal entity for store fr-store / country FR" in caught.value.reason
    assert caught.value.key == "WEB-1001"


def test_customer_accounts() -> None:
    o = order(line("D0001", 1, 1000))
    c = {"id": o["customerId"]}
    assert order_customer_account(o, US, c, "CT") == customer_account(o["customerId"], "CT")
    assert order_customer_account(o, US, {**c, "customerNumber": "US-9"}, "CT") == "US-9"
    written = {**c, "custom": {"fields": {ACCOUNT_FIELD: "CT-W"}}}
    assert order_customer_account(o, US, written, "CT") == "CT-W"
    guest = {**o, "customerId": None}
    assert order_customer_account(guest, US, None, "CT") == "US-000002"
    with pytest.raises(MappingError, match="guest_customer_account"):
        order_customer_account(guest, DE, None, "CT")


def test_items_from_variant_attributes_or_sku() -> None:
    attributes = [
        {"name": "d365-item-number", "value": "D0005"},
        {"name": "color", "value": "Black"},
        {"name": "size", "value": {"key": "M", "label": "Medium"}},
    ]
    assert item_of({"sku": "D0005-Black-M", "attributes": attributes}) == {
        "ItemNumber": "D0005",
        "ProductColorId": "Black",
        "ProductSizeId": "M",
    }
    assert item_of({"sku": "D0001"}) == {"ItemNumber": "D0001"}
    with pytest.raises(MappingError, match="neither a SKU"):
        item_of({})


def test_header_and_lines() -> None:
    attributes = [
        {"name": "d365-item-number", "value": "D0005"},
        {"name": "color", "value": "Black"},
        {"name": "size", "value": "M"},
    ]
    o = order(
        line("D0001", 2, 1999),  # $19.99 × 2
        line("D0005-Black-M", 3, 5000, discounted=4500, total=12000, attributes=attributes),
        purchaseOrderNumber="PO-77",
    )
    result = rows(o)
    assert result.order_number == "WEB-1001" and result.legal_entity == "usmf"
    assert result.header == {
        "dataAreaId": "usmf",
        "SalesOrderNumber": "WEB-1001",
        "OrderingCustomerAccountNumber": "CT-1",
        "InvoiceCustomerAccountNumber": "CT-1",
        "CurrencyCode": "USD",
        "SalesOrderName": "Ada Lovelace",
        "CustomersOrderReference": "PO-77",
        "OrderCreationDateTime": result.header["OrderCreationDateTime"],
        "LanguageId": "en-us",
        "Email": "ada@example.com",
        "DeliveryAddressName": "Ada Lovelace",
        "DeliveryAddressStreet": "Main St 1",
        "DeliveryAddressCity": "Redmond",
        "DeliveryAddressZipCode": "98052",
        "DeliveryAddressState": "WA",
        "DeliveryAddressCountryRegionISOCode": "US",
    }
    assert result.header["OrderCreationDateTime"].isoformat() == "2026-11-20T10:15:00+00:00"
    first, second, shipping = result.lines
    assert first == {
        "dataAreaId": "usmf",
        "SalesOrderNumber": "WEB-1001",
        "LineNumber": 1,
        "ItemNumber": "D0001",
        "LineDescription": "Product D0001",
        "OrderedSalesQuantity": 2,
        "SalesPrice": Decimal("19.99"),
        "LineDiscountAmount": Decimal("0.00"),
        "LineAmount": Decimal("39.98"),
        "CurrencyCode": "USD",
    }
    # product discount → the discounted unit price; cart discount → LineDiscountAmount
    assert second["ItemNumber"] == "D0005" and second["ProductColorId"] == "Black"
    assert second["SalesPrice"] == Decimal("45.00")
    assert second["LineDiscountAmount"] == Decimal("15.00")
    assert second["LineAmount"] == Decimal("120.00")
    assert shipping["ItemNumber"] == "SHIPPING" and shipping["LineNumber"] == 3
    assert shipping["LineAmount"] == Decimal("5.00")
    assert result.total == Decimal("164.98")
    for value in (*result.header.values(), *(v for li in result.lines for v in li.values())):
        assert not isinstance(value, float)
    assert set(result.header) <= set(SALES_ORDER_HEADERS_V2.fields)
    assert all(set(li) <= set(SALES_ORDER_LINES_V2.fields) for li in result.lines)
    labels = [label for label, _ in result.unit()]
    assert labels == ["Sales order headers V2"] + ["Sales order lines V2"] * 3


def test_money_follows_fraction_digits() -> None:
    yen = order(line("D0001", 3, 1500, currency="JPY", digits=0), shipping=None)
    (only,) = rows(yen).lines
    assert only["SalesPrice"] == Decimal("1500") and only["LineAmount"] == Decimal("4500")
    dinar = order(line("D0001", 1, 12345, currency="KWD", digits=3), shipping=None)
    assert rows(dinar).lines[0]["LineAmount"] == Decimal("12.345")
    precise = order(line("D0001", 3, 0), shipping=None)
    precise["lineItems"][0]["price"]["value"] = {
        "type": "highPrecision",
        "currencyCode": "USD",
        "centAmount": 333,
        "preciseAmount": 333333,
        "fractionDigits": 5,
    }
    precise["lineItems"][0]["totalPrice"] = money(1000)
    precise["totalPrice"] = money(1000)
    (li,) = rows(precise).lines
    # 3.33333 × 3 < 10.00: the total wins, the unit price follows it to 6 decimals
    assert li["LineAmount"] == Decimal("10.00")
    assert li["SalesPrice"] == Decimal("3.333333") and li["LineDiscountAmount"] == 0


def test_a_line_costing_more_than_price_times_quantity_carries_its_total() -> None:
    o = order(line("D0001", 2, 1000, total=2100), shipping=None)
    (li,) = rows(o).lines
    assert li["LineAmount"] == Decimal("21.00")
    assert li["SalesPrice"] == Decimal("10.50") and li["LineDiscountAmount"] == 0


def test_shipping_discount_and_shipping_as_charge() -> None:
    o = order(line("D0001", 1, 1000), shipping=None)
    o["shippingInfo"] = {
        "shippingMethodName": "Express",
        "price": money(900),
        "discountedPrice": {"value": money(0)},
    }
    shipping = rows(o).lines[-1]
    assert shipping["LineDescription"] == "Express"
    assert shipping["SalesPrice"] == Decimal("9.00") and shipping["LineAmount"] == Decimal("0.00")
    assert shipping["LineDiscountAmount"] == Decimal("9.00")
    charged = order(line("D0001", 1, 1000))
    assert [li["ItemNumber"] for li in rows(charged, shipping_as="charge").lines] == ["D0001"]
    assert rows(charged, shipping_item="FREIGHT").lines[-1]["ItemNumber"] == "FREIGHT"
    assert rows(charged).charges == ()  # as a line, nothing is charged on the header


def test_shipping_as_a_header_charge() -> None:
    o = order(line("D0001", 2, 1000), shipping=None)
    o["shippingInfo"] = {
        "shippingMethodName": "Express delivery",
        "price": money(900),
        "discountedPrice": {"value": money(450)},
    }
    o["totalPrice"] = money(2450)
    charged = rows(o, shipping_as="charge", shipping_charge_code="SHIP")
    (charge,) = charged.charges
    assert charge == {
        "dataAreaId": "usmf",
        "SalesOrderNumber": "WEB-1001",
        "ChargeLineNumber": 1,
        "SalesChargeCode": "SHIP",
        "ChargeCategory": "Fixed",
        "FixedChargeAmount": Decimal("4.50"),  # what the shopper paid: after the discount
        "ChargeAccountingCurrencyCode": "USD",
        "ChargeDescription": "Express delivery",
    }
    assert charged.total == Decimal("24.50")
    entities = [entity for entity, _ in charged.unit()]
    assert entities == [
        "Sales order headers V2",
        "Sales order lines V2",
        "Sales order header charges V2",
    ]
    # free shipping is no charge; several shippings (multi-shipping carts) are one charge each
    o["shippingInfo"]["discountedPrice"] = {"value": money(0)}
    o["totalPrice"] = money(2000)
    assert rows(o, shipping_as="charge").charges == ()
    multi = order(line("D0001", 1, 1000), shipping=None, shippingMode="Multiple")
    multi["shipping"] = [
        {"shippingInfo": {"shippingMethodName": name, "price": money(cents)}}
        for name, cents in (("Standard", 500), ("Express", 900))
    ]
    multi["totalPrice"] = money(2400)
    charges = rows(multi, shipping_as="charge").charges
    assert [(c["ChargeLineNumber"], c["ChargeDescription"]) for c in charges] == [
        (1, "Standard"),
        (2, "Express"),
    ]
    assert [c["FixedChargeAmount"] for c in charges] == [Decimal("5.00"), Decimal("9.00")]


def test_orders_the_ledger_could_not_match_are_refused() -> None:
    custom = order(line("D0001", 1, 1000))
    custom["customLineItems"] = [{"name": {"en": "Gift wrap"}, "totalPrice": money(300)}]
    with pytest.raises(MappingError, match="custom line items \\(Gift wrap\\)"):
        rows(custom)
    discounted_total = order(line("D0001", 1, 1000))
    discounted_total["totalPrice"] = money(1400)
    with pytest.raises(MappingError, match=r"add up to 15\.00 USD but the order total is 14\.00"):
        rows(discounted_total)
    with pytest.raises(MappingError, match="no line items"):
        rows({**order(line("D0001", 1, 1000)), "lineItems": []})


def test_write_back_actions() -> None:
    common = {"execution_id": "exec-1", "sales_order_number": "WEB-1", "posted_state": "posted"}
    fresh = {"id": "o", "version": 1}
    actions = order_write_back_actions(fresh, posted=True, posted_state_id="sid", **common)
    assert actions == [
        {
            "action": "setCustomType",
            "type": {"typeId": "type", "key": ORDER_TYPE_KEY},
            "fields": {
                SALES_ORDER_FIELD: "WEB-1",
                STATUS_FIELD: "posted",
                EXECUTION_FIELD: "exec-1",
            },
        },
        {"action": "transitionState", "state": {"typeId": "state", "key": PENDING_STATE}},
        {"action": "transitionState", "state": {"typeId": "state", "key": "posted"}},
    ]
    done = {
        "custom": {
            "type": {"id": "t"},
            "fields": {
                SALES_ORDER_FIELD: "WEB-1",
                STATUS_FIELD: "posted",
                EXECUTION_FIELD: "exec-1",
            },
        },
        "state": {"typeId": "state", "id": "sid"},
    }
    assert order_write_back_actions(done, posted=True, posted_state_id="sid", **common) == []
    failed = order_write_back_actions(
        {**done, "state": None}, posted=False, posted_state_id="sid", **common
    )
    assert failed == [{"action": "setCustomField", "name": STATUS_FIELD, "value": "failed"}]
