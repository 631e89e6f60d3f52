"""Mapping overrides: declarative [catalog.mapping] fields, constants, lookups, defaults, and the
catalog and inventory hooks, applied to the default drafts (pure: no I/O)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from d365ct.config import CatalogSettings, WarehouseSettings
from d365ct.hooks import load_hook
from d365ct.mapping.catalog import (
    CatalogMappingError,
    CatalogOptions,
    product_plans,
    product_type_attributes,
    variant_of,
)
from d365ct.mapping.examples import (
    SAFETY_STOCK,
    describe_with_search_name,
    hold_back_safety_stock,
)
from d365ct.mapping.inventory import (
    StockTotals,
    WarehouseMap,
    aggregate,
    apply_inventory_hook,
    map_on_hand,
)
from tests.mapping import hook_samples

ROW = {
    "ItemNumber": "D0005",
    "ProductNumber": "D0005",
    "ProductName": "Fabrikam Classic Shirt",
    "ProductSubType": "ProductMaster",
    "SearchName": "SHIRT-CLASSIC",
    "ProductGroupId": "TShirts",
}
PLAIN = {**ROW, "ProductSubType": "Product"}  # a product without variants
VARIANTS = [
    variant_of({"ItemNumber": "D0005", "ProductColorId": c, "ProductSizeId": "M"})
    for c in ("Black", "White")
]


def options(hook: Any = None, **mapping: Any) -> CatalogOptions:
    settings = CatalogSettings.model_validate({"mapping": mapping})
    return CatalogOptions.from_settings(settings, hook)


def attributes(variant: dict[str, Any]) -> dict[str, str]:
    return {a["name"]: a["value"] for a in variant["attributes"]}


def test_without_overrides_the_default_mapping_is_unchanged() -> None:
    assert options() == CatalogOptions()
    assert options().product_fields == (
        "ItemNumber",
        "ProductNumber",
        "ProductName",
        "ProductSubType",
    )


def test_declarative_overrides_feed_name_slug_and_attributes_from_d365_fields() -> None:
    chosen = options(
        name_field="SearchName",
        slug_field="ItemNumber",
        attributes={
            "search-name": "SearchName",  # a plain string names the D365 field
            "brand": {"value": "Fabrikam"},  # a constant
            "category": {"field": "ProductGroupId", "lookup": {"TShirts": "shirts"}},
            "season": {"field": "SeasonCode", "default": "all-year"},  # empty: the default
            "color": {"field": "ProductGroupId"},  # replaces the dimension attribute
        },
    )
    assert chosen.product_fields == (
        "ItemNumber",
        "ProductNumber",
        "ProductName",
        "ProductSubType",
        "SearchName",
        "ProductGroupId",
        "SeasonCode",
    )
    assert chosen.custom_attributes == ("search-name", "brand", "category", "season")
    [plan] = product_plans(ROW, VARIANTS, {"de": "Fabrikam Klassikhemd"}, chosen)
    draft = plan.draft
    assert draft["name"] == {"de": "Fabrikam Klassikhemd", "en": "SHIRT-CLASSIC"}
    assert draft["slug"] == {"de": "d0005-d0005", "en": "d0005-d0005"}
    for variant in (draft["masterVariant"], *draft["variants"]):
        assert attributes(variant) == {
            "d365-item-number": "D0005",
            "color": "TShirts",
            "size": "M",
            "search-name": "SHIRT-CLASSIC",
            "brand": "Fabrikam",
            "category": "shirts",
            "season": "all-year",
        }
    # the overrides are part of the content hash: changing one re-syncs the product
    [default] = product_plans(ROW, VARIANTS, {"de": "Fabrikam Klassikhemd"}, CatalogOptions())
    assert plan.content_hash != default.content_hash


def test_an_unlisted_lookup_value_passes_through_and_an_empty_field_is_left_out() -> None:
    chosen = options(attributes={"category": {"field": "ProductGroupId", "lookup": {"X": "y"}}})
    [plan] = product_plans(PLAIN, [], {}, chosen)
    assert attributes(plan.draft["masterVariant"])["category"] == "TShirts"
    [plan] = product_plans({**PLAIN, "ProductGroupId": " "}, [], {}, chosen)
    assert "category" not in attributes(plan.draft["masterVariant"])


def test_the_product_type_gets_the_attributes_overrides_set() -> None:
    names = [a["name"] for a in product_type_attributes(("brand", "color"))]
    assert names[-1] == "brand" and names.count("color") == 1
    assert options(hook_attributes=["season"]).custom_attributes == ("season",)


def test_a_hook_changes_the_default_draft_of_every_part_and_the_hash_follows() -> None:
    calls: list[tuple[str, str]] = []

    def hook(draft: dict[str, Any], row: Any) -> dict[str, Any]:
        calls.append((draft["key"], row["ItemNumber"]))
        return describe_with_search_name(draft, row)

    chosen = CatalogOptions(variant_limit=1, hook=hook, hook_name="example")
    plans = product_plans(ROW, VARIANTS, {}, chosen)
    assert calls == [("D0005", "D0005"), ("D0005-2", "D0005")]  # once per split part
    for plan in plans:
        assert plan.draft["description"] == {
            "en": "Fabrikam Classic Shirt (D365 search name SHIRT-CLASSIC)"
        }
    unhooked = product_plans(ROW, VARIANTS, {}, CatalogOptions(variant_limit=1))
    assert [p.content_hash for p in plans] != [p.content_hash for p in unhooked]
    assert [p.skus for p in plans] == [p.skus for p in unhooked]


@pytest.mark.parametrize(
    ("hook", "row", "problem"),
    [
        (describe_with_search_name, {**PLAIN, "SearchName": ""}, "ValueError: item D0005 has no"),
        (hook_samples.refuse_d0007, {**PLAIN, "ItemNumber": "D0007"}, "blocked for the web shop"),
        (hook_samples.returns_nothing, PLAIN, "returned NoneType"),
        (hook_samples.renames_the_sku, PLAIN, "changed the key or the SKUs"),
    ],
)
def test_a_failing_hook_fails_the_record_with_a_reason(hook: Any, row: Any, problem: str) -> None:
    chosen = CatalogOptions(hook=hook, hook_name="my.hooks:product")
    with pytest.raises(CatalogMappingError) as failed:
        product_plans(row, [], {}, chosen)
    assert str(failed.value).startswith("mapping hook my.hooks:product ")
    assert problem in str(failed.value)


def test_the_hook_gets_a_copy_and_cannot_change_the_source_row() -> None:
    def meddle(draft: dict[str, Any], row: Any) -> dict[str, Any]:
        row["ProductName"] = "changed"
        return draft

    source = dict(PLAIN)
    [plan] = product_plans(source, [], {}, CatalogOptions(hook=meddle, hook_name="m"))
    assert source == PLAIN and plan.draft["name"]["en"] == "Fabrikam Classic Shirt"


# ---- inventory ------------------------------------------------------------------------------

WAREHOUSES = WarehouseMap(
    [
        WarehouseSettings(legal_entity="usmf", warehouse="11", supply_channel="usmf-11"),
        WarehouseSettings(legal_entity="usmf", warehouse="12", supply_channel="usmf-11"),
    ]
)


def on_hand(item: str, warehouse: str, quantity: str) -> dict[str, Any]:
    return {
        "ItemNumber": item,
        "InventoryWarehouseId": warehouse,
        "AvailableOnHandQuantity": quantity,
    }


def totals(*rows: dict[str, Any]) -> StockTotals:
    mapped = [map_on_hand(row, WAREHOUSES, legal_entity="usmf") for row in rows]
    return aggregate(m for m in mapped if not isinstance(m, Exception))  # type: ignore[misc]


def test_the_inventory_hook_sets_what_is_compared_and_created() -> None:
    stock = totals(on_hand("A", "11", "5.5"), on_hand("B", "11", "1"))
    failed = apply_inventory_hook(
        stock, {"usmf-11": "ch-1"}, hold_back_safety_stock, hook_name="ex", legal_entity="usmf"
    )
    assert failed == []
    a, b = stock.get("A", "usmf-11"), stock.get("B", "usmf-11")
    assert a is not None and b is not None
    assert (a.quantity, b.quantity) == (5 - SAFETY_STOCK, 0)
    assert a.draft == {
        "key": "usmf-11__A",
        "sku": "A",
        "supplyChannel": {"typeId": "channel", "id": "ch-1"},
        "quantityOnStock": 3,
    }


def test_an_inventory_hook_failure_takes_only_that_entry_out() -> None:
    stock = totals(on_hand("A", "11", "4"), on_hand("A", "12", "1"), on_hand("B", "11", "2"))
    hook = load_hook("tests.mapping.hook_samples:restock_days_or_fail", "inventory.mapping.hook")
    assert hook is not None
    failed = apply_inventory_hook(stock, {"usmf-11": "c"}, hook, hook_name="h", legal_entity="usmf")
    [(total, reason)] = failed
    assert total.sku == "A" and total.on_hand == Decimal(5)
    assert reason == "mapping hook h failed for A@usmf-11: RuntimeError: A has 2 rows"
    assert stock.get("A", "usmf-11") is None
    b = stock.get("B", "usmf-11")
    assert b is not None and b.draft is not None and b.draft["restockableInDays"] == 3


def test_an_inventory_hook_must_return_a_valid_quantity() -> None:
    stock = totals(on_hand("A", "11", "4"))
    [(_, reason)] = apply_inventory_hook(
        stock, {"usmf-11": "c"}, hook_samples.negative_stock, hook_name="h", legal_entity="usmf"
    )
    assert "quantityOnStock must be a non-negative int, not -1" in reason
