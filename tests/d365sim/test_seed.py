"""Tests of d365sim.seed: deterministic, typed, referentially consistent and fast seed data.

Most tests share one generated data set of 500 products, the smallest with a 120-variant master.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from d365sim.entities import DATETIME, DECIMAL, ENTITY_SETS, ENUMS, INT32, INT64, EntitySet
from d365sim.seed import NO_DATE, generate, summary

Rows = dict[str, list[dict[str, object]]]
N = 500
DIMS = ("ProductColorId", "ProductConfigurationId", "ProductSizeId", "ProductStyleId")


def materialize(products: int, **kwargs: int) -> Rows:
    return {entity.name: list(rows) for entity, rows in generate(products, **kwargs)}


@pytest.fixture(scope="module")
def data() -> Rows:
    return materialize(N)


def keys(entity: EntitySet, row: dict[str, object]) -> tuple[object, ...]:
    return tuple(row[k] for k in entity.keys)


def by(rows: list[dict[str, object]], *fields: str) -> set[tuple[object, ...]]:
    return {tuple(r[f] for f in fields) for r in rows}


def test_same_arguments_give_identical_rows() -> None:
    assert materialize(50) == materialize(50)
    assert materialize(50, seed=7) == materialize(50, seed=7)
    other = materialize(50, seed=8)
    assert other["ReleasedProductsV2"] != materialize(50, seed=7)["ReleasedProductsV2"]


def test_every_entity_set_is_generated_in_order_and_not_empty(data: Rows) -> None:
    assert list(data) == [e.name for e in ENTITY_SETS]
    assert all(data.values())


def test_rows_have_exactly_the_fields_with_their_types(data: Rows) -> None:
    for entity in ENTITY_SETS:
        names = entity.field_names
        for row in data[entity.name]:
            assert tuple(row) == names, entity.name
            for f in entity.fields:
                value = row[f.name]
                where = (entity.name, f.name, value)
                if f.type == DECIMAL:
                    assert isinstance(value, Decimal) and value.is_finite(), where
                elif f.type in (INT32, INT64):
                    assert type(value) is int, where
                elif f.type == DATETIME:
                    assert isinstance(value, datetime), where
                    assert value.utcoffset() == timedelta(0), where
                elif f.is_enum:
                    assert value in ENUMS[f.type], where
                else:
                    assert isinstance(value, str), where
                    assert f.max_length is None or len(value) <= f.max_length, where
                if f.required:
                    assert value not in ("", None), where


@pytest.mark.parametrize("products", [300, N])
def test_keys_are_unique(products: int, data: Rows) -> None:
    rows = data if products == N else materialize(products)
    for entity in ENTITY_SETS:
        for key_fields in {entity.keys, entity.row_keys}:
            found = Counter(tuple(r[k] for k in key_fields) for r in rows[entity.name])
            duplicates = [k for k, n in found.items() if n > 1]
            assert not duplicates, (entity.name, duplicates[:3])


def test_legal_entities_warehouses_and_customer_groups(data: Rows) -> None:
    assert by(data["LegalEntities"], "LegalEntityId", "AccountingCurrency", "LanguageId") == {
        ("usmf", "USD", "en-us"),
        ("demf", "EUR", "de"),
    }
    warehouses = Counter(r["dataAreaId"] for r in data["Warehouses"])
    assert warehouses.keys() == {"usmf", "demf"} and min(warehouses.values()) >= 3
    groups = by(data["CustomerGroups"], "dataAreaId", "CustomerGroupId")
    assert groups == {(c, g) for c in ("usmf", "demf") for g in ("10", "20", "30", "90")}


def test_products_are_released_in_both_companies(data: Rows) -> None:
    products = data["ReleasedProductsV2"]
    items = {
        c: by([r for r in products if r["dataAreaId"] == c], "ItemNumber") for c in ("usmf", "demf")
    }
    assert len(items["usmf"]) == N and items["usmf"] == items["demf"]
    masters = [r for r in products if r["ProductSubType"] == "ProductMaster"]
    assert len(masters) == 2 * N // 5
    assert all(r["ProductDimensionGroupName"] for r in masters)
    assert not any(r["ProductDimensionGroupName"] for r in products if r not in masters)
    for r in products:
        assert isinstance(r["SalesPrice"], Decimal) and r["SalesPrice"].as_tuple().exponent == -2


def test_masters_over_the_variant_limit_exist(data: Rows) -> None:
    counts = Counter((r["dataAreaId"], r["ItemNumber"]) for r in data["ReleasedProductVariantsV2"])
    big = {item for (company, item), n in counts.items() if n > 100}
    assert big, "no master with more than 100 variants"
    typical = sorted(counts.values())[len(counts) // 2]
    assert 4 <= typical <= 20
    assert min(counts.values()) >= 2


def test_variants_belong_to_masters_released_in_the_same_company(data: Rows) -> None:
    masters = by(
        [r for r in data["ReleasedProductsV2"] if r["ProductSubType"] == "ProductMaster"],
        "dataAreaId",
        "ItemNumber",
    )
    variants = data["ReleasedProductVariantsV2"]
    assert by(variants, "dataAreaId", "ItemNumber") == masters
    for r in variants:
        assert r["ProductMasterNumber"] == r["ItemNumber"]
        dims = [r[f] for f in ("ProductColorId", "ProductConfigurationId", "ProductSizeId")]
        assert any(dims) or r["ProductStyleId"]
    numbers = Counter((r["dataAreaId"], r["ProductVariantNumber"]) for r in variants)
    assert max(numbers.values()) == 1


def test_translations_exist_in_english_and_german_for_every_product(data: Rows) -> None:
    translations = data["ProductTranslations"]
    assert len(translations) == 2 * N
    names: dict[object, dict[object, object]] = defaultdict(dict)
    for r in translations:
        names[r["ProductNumber"]][r["LanguageId"]] = r["ProductName"]
    assert all(set(n) == {"en-us", "de"} and n["en-us"] != n["de"] for n in names.values())
    assert names.keys() == {r["ItemNumber"] for r in data["ReleasedProductsV2"]}


def test_price_agreements(data: Rows) -> None:
    prices = data["SalesPriceAgreements"]
    items = by(data["ReleasedProductsV2"], "dataAreaId", "ItemNumber")
    skus = by(data["ReleasedProductVariantsV2"], "dataAreaId", "ItemNumber", *DIMS)
    home = {"usmf": "USD", "demf": "EUR"}
    base = {
        (r["dataAreaId"], r["ItemNumber"])
        for r in prices
        if r["PriceCurrencyCode"] == home[str(r["dataAreaId"])]
        and not r["PriceCustomerGroupCode"]
        and not r["CustomerAccountNumber"]
        and not any(r[d] for d in DIMS)
        and r["PriceApplicableToDate"] == NO_DATE
    }
    assert base == items
    currencies = by(prices, "dataAreaId", "PriceCurrencyCode")
    assert {("usmf", "CAD"), ("demf", "CHF"), ("demf", "JPY"), ("demf", "KWD")} <= currencies
    exponent = {"JPY": 0, "KWD": -3, "BHD": -3}
    for r in prices:
        price = r["Price"]
        assert isinstance(price, Decimal) and price > 0
        assert price.as_tuple().exponent == exponent.get(str(r["PriceCurrencyCode"]), -2)
        assert (r["dataAreaId"], r["ItemNumber"]) in items
        if any(r[d] for d in DIMS):
            assert (r["dataAreaId"], r["ItemNumber"], *(r[d] for d in DIMS)) in skus
        start, end = r["PriceApplicableFromDate"], r["PriceApplicableToDate"]
        assert isinstance(start, datetime) and isinstance(end, datetime)
        assert end == NO_DATE or start < end
    assert any(r["PriceCustomerGroupCode"] == "20" for r in prices)
    assert any(r["PriceApplicableToDate"] != NO_DATE for r in prices)
    assert any(any(r[d] for d in DIMS) for r in prices)
    customers = by(data["CustomersV3"], "dataAreaId", "CustomerAccount")
    accounts = {(r["dataAreaId"], r["CustomerAccountNumber"]) for r in prices}
    assert {a for a in accounts if a[1]} <= customers
    record_ids = [r["RecordId"] for r in prices]
    assert len(set(record_ids)) == len(record_ids) and record_ids[0] == 5637144576


def sellable(data: Rows) -> set[tuple[object, ...]]:
    """(company, item, dims...) of every product without variants and every variant."""
    plain = {
        (r["dataAreaId"], r["ItemNumber"], "", "", "", "")
        for r in data["ReleasedProductsV2"]
        if r["ProductSubType"] == "Product"
    }
    return plain | by(data["ReleasedProductVariantsV2"], "dataAreaId", "ItemNumber", *DIMS)


def test_onhand_references_warehouses_and_sellable_products(data: Rows) -> None:
    warehouses = by(data["Warehouses"], "dataAreaId", "WarehouseId", "OperationalSiteId")
    skus = sellable(data)
    onhand = data["WarehousesOnHandV2"]
    assert by(onhand, "dataAreaId", "InventoryWarehouseId", "InventorySiteId") == warehouses
    assert by(onhand, "dataAreaId", "ItemNumber", *DIMS) == skus
    for r in onhand:
        q = {k: v for k, v in r.items() if k.endswith("Quantity") and isinstance(v, Decimal)}
        assert len(q) == 8 and all(v >= 0 and v == v.to_integral() for v in q.values())
        assert q["AvailableOnHandQuantity"] == q["OnHandQuantity"] - q["ReservedOnHandQuantity"]
        assert q["AvailableOrderedQuantity"] == q["OrderedQuantity"] - q["ReservedOrderedQuantity"]
        assert q["TotalAvailableQuantity"] == (
            q["AvailableOnHandQuantity"] + q["AvailableOrderedQuantity"] - q["OnOrderQuantity"]
        )


def test_customers_reference_groups_and_use_the_company_currency(data: Rows) -> None:
    groups = by(data["CustomerGroups"], "dataAreaId", "CustomerGroupId")
    currency = {r["LegalEntityId"]: r["AccountingCurrency"] for r in data["LegalEntities"]}
    customers = data["CustomersV3"]
    assert Counter(r["dataAreaId"] for r in customers) == {"usmf": N // 10, "demf": N // 10}
    assert by(customers, "dataAreaId", "CustomerGroupId") == groups
    assert {r["PartyType"] for r in customers} == {"Organization", "Person"}
    for r in customers:
        assert r["SalesCurrencyCode"] == currency[r["dataAreaId"]]
        assert str(r["CustomerAccount"]).startswith(("US-", "DE-"))
        assert "@" in str(r["PrimaryContactEmail"])
        assert r["OrganizationName"] or (r["PersonFirstName"] and r["PersonLastName"])
    assert len({r["PartyNumber"] for r in customers}) == len(customers)


def test_orders_reference_customers_and_items_and_invoices_add_up(data: Rows) -> None:
    customers = by(data["CustomersV3"], "dataAreaId", "CustomerAccount")
    headers = {(r["dataAreaId"], r["SalesOrderNumber"]): r for r in data["SalesOrderHeadersV2"]}
    assert len(headers) == 2 * 200
    assert {h["SalesOrderStatus"] for h in headers.values()} == {"Invoiced", "Backorder"}
    for h in headers.values():
        assert (h["dataAreaId"], h["OrderingCustomerAccountNumber"]) in customers
    skus = sellable(data)
    totals: dict[tuple[object, object], Decimal] = defaultdict(Decimal)
    for line in data["SalesOrderLines"]:
        order = (line["dataAreaId"], line["SalesOrderNumber"])
        assert order in headers
        assert line["CurrencyCode"] == headers[order]["CurrencyCode"]
        assert line["SalesOrderLineStatus"] == headers[order]["SalesOrderStatus"]
        assert (line["dataAreaId"], line["ItemNumber"], *(line[d] for d in DIMS)) in skus
        amount = line["LineAmount"]
        assert isinstance(amount, Decimal)
        totals[order] += amount
    lines_per_order = Counter(
        (r["dataAreaId"], r["SalesOrderNumber"]) for r in data["SalesOrderLines"]
    )
    assert set(lines_per_order) == set(headers) and set(lines_per_order.values()) <= {1, 2, 3, 4}
    invoiced = {o for o, h in headers.items() if h["SalesOrderStatus"] == "Invoiced"}
    invoices = data["SalesInvoiceHeadersV2"]
    assert {(r["dataAreaId"], r["SalesOrderNumber"]) for r in invoices} == invoiced
    for inv in invoices:
        order = (inv["dataAreaId"], inv["SalesOrderNumber"])
        assert inv["TotalInvoiceAmount"] == totals[order]
        assert inv["InvoiceCustomerAccountNumber"] == headers[order]["InvoiceCustomerAccountNumber"]


def onhand_keys(products: int, onhand_rows: int) -> Counter[tuple[object, ...]]:
    for entity, rows in generate(products, onhand_rows=onhand_rows):
        if entity.name == "WarehousesOnHandV2":
            return Counter(keys(entity, r) for r in rows)
    raise AssertionError("no WarehousesOnHandV2")


def test_onhand_rows_gives_exactly_that_many_rows_with_unique_keys() -> None:
    found = onhand_keys(300, 50_000)
    assert sum(found.values()) == 50_000 and len(found) == 50_000


def test_onhand_rows_beyond_the_catalog_synthesise_item_numbers() -> None:
    found = onhand_keys(7, 5_000)
    assert sum(found.values()) == 5_000 and len(found) == 5_000
    assert len({k[1] for k in found}) > 7


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        generate(-1)
    with pytest.raises(ValueError):
        generate(10, onhand_rows=-1)
    with pytest.raises(ValueError):
        generate(0, onhand_rows=10)


def test_iterators_are_lazy_for_a_huge_catalog() -> None:
    start = time.process_time()
    firsts = {entity.name: next(rows) for entity, rows in generate(10_000_000)}
    assert time.process_time() - start < 5
    assert firsts["ReleasedProductsV2"]["ItemNumber"] == "D00000001"


def test_summary_counts_the_generated_rows(data: Rows) -> None:
    assert summary(N) == {name: len(rows) for name, rows in data.items()}


@pytest.mark.slow
def test_100k_products_generate_within_budget() -> None:
    start = time.process_time()
    total = sum(sum(1 for _ in rows) for _, rows in generate(100_000))
    elapsed = time.process_time() - start
    assert total > 2_000_000
    assert elapsed < 20, f"{elapsed:.1f} s CPU for {total} rows"
