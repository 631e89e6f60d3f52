"""The one rule that turns a D365 item and its product dimensions into a commercetools SKU.

Catalog (U1), inventory (U2) and orders (U3) must agree on it, so it lives here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["DIMENSION_FIELDS", "SEPARATOR", "sku_of", "variant_sku"]

SEPARATOR = "-"

# D365 field names of the product dimensions, in the order they appear in a SKU. Released product
# variants, on-hand rows and sales order lines all use these names.
DIMENSION_FIELDS = ("ProductColorId", "ProductSizeId", "ProductStyleId", "ProductConfigurationId")


def variant_sku(
    item: str, color: str = "", size: str = "", style: str = "", config: str = ""
) -> str:
    """The SKU of a D365 item with its product dimensions.

    The rule: ItemNumber, then each non-empty dimension in the order colour, size, style,
    configuration, joined by "-"; surrounding blanks are dropped. A plain product (no dimension)
    keeps its ItemNumber as SKU. Examples: ("D0005", "Black", "M") → "D0005-Black-M",
    ("D0001",) → "D0001", ("D0007", "", "", "", "C2") → "D0007-C2".

    Deterministic and stable across runs. Values are kept as D365 holds them (case, inner
    blanks), since commercetools takes any text as SKU. Two items collide only if one item number
    equals another's plus "-" and a dimension value (item "A-1" vs item "A" in colour "1"); keep
    item numbers free of that pattern, or give the catalog flow a mapping hook.
    """
    item = item.strip()
    if not item:
        raise ValueError("a SKU needs an ItemNumber")
    parts = [item, *(d.strip() for d in (color, size, style, config))]
    return SEPARATOR.join(part for part in parts if part)


def sku_of(row: Mapping[str, object]) -> str:
    """`variant_sku` of a D365 row that carries ItemNumber and the dimension fields."""
    color, size, style, config = (_text(row.get(name)) for name in DIMENSION_FIELDS)
    return variant_sku(_text(row.get("ItemNumber")), color, size, style, config)


def _text(value: object) -> str:
    return "" if value is None else str(value)
