"""Hooks that misbehave on purpose, named by the tests as tests.mapping.hook_samples:<name>."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NOT_A_FUNCTION = 42


def refuse_d0007(draft: dict[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """A catalog hook with a business rule: item D0007 may not be sold online."""
    if row.get("ItemNumber") == "D0007":
        raise ValueError("D0007 is blocked for the web shop")
    draft["name"] = {locale: name.upper() for locale, name in draft["name"].items()}
    return draft


def returns_nothing(draft: dict[str, Any], row: Mapping[str, Any]) -> None:
    draft["name"] = {"en": "forgot to return"}


def renames_the_sku(draft: dict[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    draft["masterVariant"]["sku"] = "X-" + draft["masterVariant"]["sku"]
    return draft


def negative_stock(draft: dict[str, Any], source: Mapping[str, Any]) -> dict[str, Any]:
    draft["quantityOnStock"] = -1
    return draft


def restock_days_or_fail(draft: dict[str, Any], source: Mapping[str, Any]) -> dict[str, Any]:
    """An inventory hook that adds a field and fails for entries fed by several rows."""
    if len(source["rows"]) > 1:
        raise RuntimeError(f"{source['sku']} has {len(source['rows'])} rows")
    draft["restockableInDays"] = 3
    return draft


def rekeys_the_price(draft: dict[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    draft["key"] = "my-" + draft["key"]
    return draft


def wholesale_group_or_fail(draft: dict[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """A price hook that scopes item D0002's prices to a customer group and refuses D0003's."""
    if row["ItemNumber"] == "D0003":
        raise LookupError("D0003 has no web price")
    if row["ItemNumber"] == "D0002":
        draft["customerGroup"] = {"typeId": "customer-group", "key": "wholesale"}
    return draft
