"""The pure inventory mapping: SKUs, quantities, warehouse → channel map, sums and keys."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from d365ct.config import WarehouseSettings
from d365ct.errors import ConfigurationError
from d365ct.mapping.inventory import (
    OnHandError,
    StockRow,
    StockTotals,
    WarehouseMap,
    aggregate,
    inventory_draft,
    inventory_key,
    map_on_hand,
    on_hand_fields,
    parse_quantity,
    state_key,
    stock_quantity,
)
from d365ct.mapping.skus import sku_of, variant_sku

WAREHOUSES = WarehouseMap(
    [
        WarehouseSettings(legal_entity="usmf", warehouse="11", supply_channel="usmf-11"),
        WarehouseSettings(legal_entity="usmf", warehouse="12", supply_channel="usmf-12"),
        WarehouseSettings(legal_entity="demf", warehouse="DE-01", supply_channel="demf-de-01"),
        # two warehouses feeding one channel
        WarehouseSettings(legal_entity="demf", warehouse="DE-02", supply_channel="demf-south"),
        WarehouseSettings(legal_entity="demf", warehouse="DE-04", supply_channel="demf-south"),
    ]
)


def row(
    item: str = "D0001", warehouse: str = "11", quantity: Any = 5, **dims: str
) -> dict[str, Any]:
    return {
        "ItemNumber": item,
        "ProductColorId": dims.get("color", ""),
        "ProductSizeId": dims.get("size", ""),
        "ProductStyleId": dims.get("style", ""),
        "ProductConfigurationId": dims.get("config", ""),
        "InventorySiteId": "1",
        "InventoryWarehouseId": warehouse,
        "AvailableOnHandQuantity": quantity,
    }


# ---- SKUs ---------------------------------------------------------------------------------------


def test_variant_sku_joins_the_non_empty_dimensions_in_a_fixed_order() -> None:
    assert variant_sku("D0005", "Black", "M", "", "") == "D0005-Black-M"
    assert variant_sku("D0001") == "D0001"
    assert variant_sku("D0007", "", "", "", "C2") == "D0007-C2"
    assert variant_sku("D0008", "Red", "XL", "Slim", "C1") == "D0008-Red-XL-Slim-C1"
    assert variant_sku(" D0009 ", " Light Blue ", "") == "D0009-Light Blue"
    with pytest.raises(ValueError, match="ItemNumber"):
        variant_sku("  ", "Black")


def test_sku_of_reads_d365_field_names() -> None:
    assert sku_of(row("D0005", color="Black", size="M")) == "D0005-Black-M"
    assert sku_of({"ItemNumber": "D0002", "ProductColorId": None}) == "D0002"


@given(
    st.text(alphabet="ABCD0123", min_size=1, max_size=6),
    st.lists(st.sampled_from(["", "Black", "M", "C1"]), min_size=4, max_size=4),
)
def test_variant_sku_is_deterministic_and_starts_with_the_item(item: str, dims: list[str]) -> None:
    sku = variant_sku(item, *dims)
    assert sku == variant_sku(item, *dims)
    assert sku.startswith(item)
    assert sku.count("-") == sum(1 for d in dims if d)


# ---- quantities ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("12"), 12),
        (Decimal("2.6"), 2),  # floor, never round up: that would oversell
        (Decimal("0.999"), 0),
        (Decimal("-3"), 0),  # over-reserved: nothing to sell
        (Decimal("-0.5"), 0),
        (Decimal("0"), 0),
    ],
)
def test_stock_quantity_floors_and_clamps(value: Decimal, expected: int) -> None:
    assert stock_quantity(value) == expected


def test_parse_quantity_takes_json_numbers_and_package_text() -> None:
    assert parse_quantity(7) == Decimal(7)
    assert parse_quantity(7.25) == Decimal("7.25")
    assert parse_quantity("266.000000") == Decimal("266")
    assert parse_quantity(Decimal("1.5")) == Decimal("1.5")
    for bad in ("", "abc", None, True, "NaN", "Infinity", [1]):
        with pytest.raises(ValueError, match="not a quantity"):
            parse_quantity(bad)


@given(st.decimals(min_value=-10_000, max_value=10_000, allow_nan=False, places=3))
def test_stock_quantity_is_never_negative_nor_above_d365(value: Decimal) -> None:
    quantity = stock_quantity(value)
    assert isinstance(quantity, int) and quantity >= 0
    assert quantity <= max(value, Decimal(0))
    assert max(value, Decimal(0)) - quantity < 1


# ---- rows → stock -------------------------------------------------------------------------------


def test_a_mapped_row_gives_sku_channel_and_integer_quantity() -> None:
    mapped = map_on_hand(
        row("D0005", "11", 213.75, color="Silver", size="L"), WAREHOUSES, legal_entity="USMF"
    )
    assert isinstance(mapped, StockRow)
    assert (mapped.sku, mapped.channel, mapped.quantity) == ("D0005-Silver-L", "usmf-11", 213)
    assert mapped.on_hand == Decimal("213.75")
    assert mapped.business_key == "D0005-Silver-L@usmf/11"
    assert mapped.as_row()["AvailableOnHandQuantity"] == "213.75"
    assert mapped.as_row()["ProductColorId"] == "Silver"


def test_warehouse_ids_match_case_insensitively_as_in_d365() -> None:
    mapped = map_on_hand(row(warehouse="de-01"), WAREHOUSES, legal_entity="demf")
    assert isinstance(mapped, StockRow) and mapped.channel == "demf-de-01"


def test_an_unmapped_warehouse_is_an_error_result_naming_entity_and_warehouse() -> None:
    original = row("D0001", "24")
    mapped = map_on_hand(original, WAREHOUSES, legal_entity="usmf")
    assert isinstance(mapped, OnHandError)
    assert "warehouse '24'" in mapped.reason and "'usmf'" in mapped.reason
    assert "[[warehouses]]" in mapped.reason
    assert mapped.business_key == "D0001@usmf/24"
    assert mapped.row == original
    # the same warehouse id in another legal entity is not mapped either
    other = map_on_hand(row(warehouse="11"), WAREHOUSES, legal_entity="demf")
    assert isinstance(other, OnHandError) and "'demf'" in other.reason


def test_rows_with_bad_fields_are_error_results() -> None:
    no_item = map_on_hand(row(item=""), WAREHOUSES, legal_entity="usmf")
    assert isinstance(no_item, OnHandError) and "ItemNumber" in no_item.reason
    bad = map_on_hand(row(quantity="lots"), WAREHOUSES, legal_entity="usmf")
    assert isinstance(bad, OnHandError) and "AvailableOnHandQuantity" in bad.reason
    missing = map_on_hand(
        row(), WAREHOUSES, legal_entity="usmf", quantity_field="AvailablePhysicalQuantity"
    )
    assert isinstance(missing, OnHandError) and "AvailablePhysicalQuantity" in missing.reason


def test_the_quantity_field_is_configuration() -> None:
    source = {**row(quantity=1), "OnHandQuantity": "9.5"}
    mapped = map_on_hand(source, WAREHOUSES, legal_entity="usmf", quantity_field="OnHandQuantity")
    assert isinstance(mapped, StockRow) and mapped.quantity == 9
    assert "OnHandQuantity" in on_hand_fields("OnHandQuantity")


def test_rows_of_one_sku_and_channel_are_summed_exactly_then_floored() -> None:
    rows = [
        map_on_hand(row("D1", "DE-02", "0.5"), WAREHOUSES, legal_entity="demf"),
        map_on_hand(row("D1", "DE-04", "0.5"), WAREHOUSES, legal_entity="demf"),
        map_on_hand(row("D1", "DE-01", "4"), WAREHOUSES, legal_entity="demf"),
        map_on_hand(
            {**row("D1", "DE-01", "3"), "InventorySiteId": "2"}, WAREHOUSES, legal_entity="demf"
        ),
        map_on_hand(row("D2", "DE-02", "-2"), WAREHOUSES, legal_entity="demf"),
        map_on_hand(row("D2", "DE-04", "5"), WAREHOUSES, legal_entity="demf"),
    ]
    totals = aggregate(r for r in rows if isinstance(r, StockRow))
    assert len(totals) == 3
    south = totals.get("D1", "demf-south")
    assert south is not None and south.quantity == 1 and south.warehouse == "DE-02+DE-04"
    two_sites = totals.get("D1", "demf-de-01")
    assert two_sites is not None and two_sites.quantity == 7 and len(two_sites.rows) == 2
    over_reserved = totals.get("D2", "demf-south")
    assert over_reserved is not None and over_reserved.quantity == 3  # -2 + 5
    assert south.payload()["AvailableOnHandQuantity"] == "1.0"
    assert len(south.payload()["rows"]) == 2
    assert list(totals.unmatched()) == list(totals)
    lean = StockTotals(keep_rows=False)
    for mapped in rows:
        assert isinstance(mapped, StockRow)
        lean.add(mapped)
    assert [(t.key, t.quantity, t.rows) for t in lean] == [(t.key, t.quantity, []) for t in totals]


def test_warehouse_map_lists_channels_and_refuses_a_channel_of_two_entities() -> None:
    assert WAREHOUSES.channels("DEMF") == ("demf-de-01", "demf-south")
    assert WAREHOUSES.warehouse_label("demf-south") == "DE-02+DE-04"
    assert WAREHOUSES.legal_entity("usmf-12") == "usmf"
    with pytest.raises(ConfigurationError, match="fed by legal entities"):
        WarehouseMap(
            [
                WarehouseSettings(legal_entity="usmf", warehouse="11", supply_channel="shared"),
                WarehouseSettings(legal_entity="demf", warehouse="DE-01", supply_channel="shared"),
            ]
        )
    with pytest.raises(ConfigurationError, match="mapped to both"):
        WarehouseMap(
            [
                WarehouseSettings(legal_entity="usmf", warehouse="11", supply_channel="a"),
                WarehouseSettings(legal_entity="usmf", warehouse="11", supply_channel="b"),
            ]
        )


# ---- commercetools shapes -----------------------------------------------------------------------


def test_keys_and_drafts() -> None:
    assert state_key("D0005-Black-M", "usmf-11") == "D0005-Black-M@usmf-11"
    assert inventory_key("D0005-Black-M", "usmf-11") == "usmf-11__D0005-Black-M"
    odd = inventory_key("D0009-Light Blue", "usmf-11")
    assert re.fullmatch(r"inv-[0-9a-f]{40}", odd)
    assert odd == inventory_key("D0009-Light Blue", "usmf-11")
    assert odd != inventory_key("D0009-Light Blue", "usmf-12")
    draft = inventory_draft("D0001", "usmf-11", "chan-id", 7)
    assert draft == {
        "key": "usmf-11__D0001",
        "sku": "D0001",
        "supplyChannel": {"typeId": "channel", "id": "chan-id"},
        "quantityOnStock": 7,
    }
    with pytest.raises(ValueError, match="non-negative int"):
        inventory_draft("D0001", "usmf-11", "chan-id", -1)


@given(st.text(min_size=1, max_size=300), st.sampled_from(["usmf-11", "demf_de-01", "a__b"]))
def test_inventory_keys_are_always_valid_commercetools_keys(sku: str, channel: str) -> None:
    assert re.fullmatch(r"[A-Za-z0-9_-]{2,256}", inventory_key(sku, channel))
