"""Example mapping hooks, ready to name in the configuration and to copy into your own module.

Hooks are pure like the rest of the mapping: no I/O, no clock; d365ct calls them per record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["SAFETY_STOCK", "charm_prices", "describe_with_search_name", "hold_back_safety_stock"]

SAFETY_STOCK = 2  # units per entry the storefront must not sell (a damaged box, a miscount)


def describe_with_search_name(draft: dict[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """Catalog hook: a description in every locale of the name, built from D365's SearchName.

    `[catalog.mapping] fields = ["SearchName"]` makes the sync read that field. A released
    product without one is refused, so it lands in the error queue with this reason.
    """
    search_name = str(row.get("SearchName") or "").strip()
    if not search_name:
        raise ValueError(f"item {row.get('ItemNumber')} has no SearchName to describe it with")
    draft["description"] = {
        locale: f"{name} (D365 search name {search_name})" for locale, name in draft["name"].items()
    }
    return draft


def hold_back_safety_stock(draft: dict[str, Any], source: Mapping[str, Any]) -> dict[str, Any]:
    """Inventory hook: publish SAFETY_STOCK units less than D365 has available, never below 0."""
    draft["quantityOnStock"] = max(0, draft["quantityOnStock"] - SAFETY_STOCK)
    return draft


def charm_prices(draft: dict[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """Price hook: every price drops to the nearest amount ending in …99 minor units at or below
    it (12.50 → 11.99, 13.00 → 12.99, 12.99 stays); prices below one unit, and currencies
    without minor units (JPY), stay as they are."""
    value = draft["value"]
    unit = 10 ** value["fractionDigits"]
    cents = value["centAmount"]
    if cents + 1 >= unit:
        value["centAmount"] = (cents + 1) // unit * unit - 1
    return draft
