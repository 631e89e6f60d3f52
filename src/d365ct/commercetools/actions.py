"""Update-action builders, pure (no I/O): diff the state d365ct wants against what commercetools
holds and return the minimal action list, empty when nothing differs (then no request is made).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

Action = dict[str, Any]

# ISO 4217 minor units that differ from 2 (commercetools uses the ISO default per currency).
_FRACTION_DIGITS = {
    **dict.fromkeys(
        ["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG"]  # noqa: RUF005
        + ["RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
    **dict.fromkeys(["CLF", "UYW"], 4),
}
_CURRENCY = re.compile(r"^[A-Z]{3}$")


# ---- money ------------------------------------------------------------------------------------


def fraction_digits(currency: str) -> int:
    """The ISO 4217 minor units of a currency: JPY 0, EUR 2, KWD 3."""
    if not _CURRENCY.match(currency):
        raise ValueError(f"not an ISO 4217 currency code: {currency!r}")
    return _FRACTION_DIGITS.get(currency, 2)


def money(amount: Decimal | int | str, currency: str, *, rounding: str | None = None) -> Action:
    """A cent-precision Money draft from an amount in major units (12.5 EUR → 1250 cents).

    Binary floats are refused. An amount finer than the currency allows raises unless a
    `rounding` mode (e.g. decimal.ROUND_HALF_EVEN) says how to drop the excess.
    """
    if isinstance(amount, float | bool):
        raise TypeError(f"money amounts are Decimal, int or str, never {type(amount).__name__}")
    digits = fraction_digits(currency)
    try:
        value = amount if isinstance(amount, Decimal) else Decimal(amount)
    except InvalidOperation as exc:
        raise ValueError(f"not an amount: {amount!r}") from exc
    if not value.is_finite():
        raise ValueError(f"not an amount: {amount!r}")
    scaled = value.scaleb(digits)
    whole = scaled.to_integral_value(rounding=rounding or ROUND_HALF_EVEN)
    if rounding is None and whole != scaled:
        raise ValueError(
            f"{amount} {currency} has more than {digits} fraction digits; pass a rounding mode"
        )
    return money_from_cents(int(whole), currency)


def money_from_cents(cent_amount: int, currency: str) -> Action:
    """A cent-precision Money draft from an amount already in minor units."""
    if isinstance(cent_amount, bool) or not isinstance(cent_amount, int):
        raise TypeError(f"centAmount must be an int, not {type(cent_amount).__name__}")
    return {
        "type": "centPrecision",
        "currencyCode": currency,
        "centAmount": cent_amount,
        "fractionDigits": fraction_digits(currency),
    }


def money_value(value: Mapping[str, Any]) -> Decimal:
    """The exact amount of a Money or TypedMoney (cent or high precision) in major units."""
    currency = str(value["currencyCode"])
    if value.get("type") == "highPrecision" or "preciseAmount" in value:
        return Decimal(int(value["preciseAmount"])).scaleb(-int(value["fractionDigits"]))
    digits = value.get("fractionDigits")
    digits = fraction_digits(currency) if digits is None else int(digits)
    return Decimal(int(value["centAmount"])).scaleb(-digits)


def same_money(current: Mapping[str, Any] | None, desired: Mapping[str, Any] | None) -> bool:
    if current is None or desired is None:
        return current is None and desired is None
    return current.get("currencyCode") == desired.get("currencyCode") and money_value(
        current
    ) == money_value(desired)


# ---- helpers ----------------------------------------------------------------------------------


def _instant(value: Any) -> datetime | None:
    """ISO 8601 text or datetime → aware datetime; the API echoes `…T00:00:00.000Z` forms."""
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


def _localized(value: Mapping[str, Any] | None) -> dict[str, str]:
    return {lang: text for lang, text in (value or {}).items() if text is not None}


def _same_value(current: Any, desired: Any) -> bool:
    """Attribute values as commercetools returns them vs as a draft may give them."""
    if current == desired:
        return True
    if isinstance(current, Mapping) and isinstance(desired, Mapping):
        if "currencyCode" in current and "currencyCode" in desired:
            return same_money(current, desired)
        if "typeId" in current and "typeId" in desired and "id" in desired:
            return bool(
                current.get("typeId") == desired["typeId"] and current.get("id") == desired["id"]
            )
        if {"key", "label"} <= current.keys() and "key" in desired:  # (l)enum: compare keys
            return bool(current["key"] == desired["key"])
        return False
    if isinstance(current, Mapping) and {"key", "label"} <= current.keys():
        return bool(current["key"] == desired)  # an enum set by its key
    if isinstance(current, list) and isinstance(desired, list) and len(current) == len(desired):
        if all(_same_value(c, d) for c, d in zip(current, desired, strict=True)):
            return True
        return sorted(map(_canonical, current)) == sorted(map(_canonical, desired))  # sets
    return False


def _canonical(value: Any) -> str:
    if isinstance(value, Mapping) and {"key", "label"} <= value.keys():
        value = value["key"]
    return json.dumps(value, sort_keys=True, default=str)


def _attributes(variant: Mapping[str, Any]) -> dict[str, Any]:
    """name → value, without attributes that have no value (that is how removal reads back)."""
    return {
        str(attribute["name"]): attribute["value"]
        for attribute in variant.get("attributes") or ()
        if attribute.get("value") is not None
    }


def _variants_by_sku(variants: Iterable[Mapping[str, Any]], *, strict: bool) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for variant in variants:
        sku = variant.get("sku")
        if not sku:
            if strict:
                raise ValueError("every desired variant needs a sku")
            continue  # a variant without sku is not ours to manage
        if strict and sku in found:
            raise ValueError(f"sku {sku} appears twice in the desired product")
        found[str(sku)] = variant
    return found


# ---- products ---------------------------------------------------------------------------------


def product_actions(
    current: Mapping[str, Any], desired: Mapping[str, Any], *, publish: bool = False
) -> list[Action]:
    """Actions that turn a Product (or a staged ProductProjection) into the desired draft.

    Compared against the staged data, which updates change; `publish` adds a `publish` action when
    anything changed or staged changes are pending, or the product is not yet published. Managed:
    name, slug, description (when the draft has one), variants by sku (added, removed, master),
    and the full attribute list of each variant (attributes absent from the draft are removed).
    Not managed: productType (cannot be changed in place), key, prices (standalone), variant
    keys and images.
    """
    master_data = current.get("masterData")
    if master_data is not None:
        data = master_data.get("staged") or master_data["current"]
        has_staged_changes = bool(master_data.get("hasStagedChanges"))
        published = bool(master_data.get("published"))
    else:  # a ProductProjection
        data = current
        has_staged_changes = bool(current.get("hasStagedChanges"))
        published = bool(current.get("published"))

    actions: list[Action] = []
    name = _localized(desired.get("name"))
    if name != _localized(data.get("name")):
        actions.append({"action": "changeName", "name": name})
    slug = _localized(desired.get("slug"))
    if slug != _localized(data.get("slug")):
        actions.append({"action": "changeSlug", "slug": slug})
    if "description" in desired:  # managed only when the draft has one (a mapping hook's)
        description = _localized(desired.get("description"))
        if description != _localized(data.get("description")):
            actions.append({"action": "setDescription", "description": description or None})

    desired_master = desired.get("masterVariant") or {}
    wanted = _variants_by_sku([desired_master, *(desired.get("variants") or ())], strict=True)
    current_master = data.get("masterVariant") or {}
    held = _variants_by_sku([current_master, *(data.get("variants") or ())], strict=False)

    for sku, variant in wanted.items():
        if sku not in held:
            add: Action = {"action": "addVariant", "sku": sku}
            if variant.get("key"):
                add["key"] = variant["key"]
            attributes = [
                {"name": name, "value": value} for name, value in _attributes(variant).items()
            ]
            if attributes:
                add["attributes"] = attributes
            actions.append(add)
    master_sku = str(desired_master["sku"])
    if current_master.get("sku") != master_sku:
        # before removeVariant: the old master cannot be removed while it is the master
        actions.append({"action": "changeMasterVariant", "sku": master_sku})
    for sku, variant in wanted.items():
        if sku in held:
            actions.extend(_attribute_actions(sku, _attributes(held[sku]), _attributes(variant)))
    for sku in held:
        if sku not in wanted:
            actions.append({"action": "removeVariant", "sku": sku})

    if publish and (actions or has_staged_changes or not published):
        actions.append({"action": "publish"})
    return actions


def _attribute_actions(
    sku: str, current: Mapping[str, Any], desired: Mapping[str, Any]
) -> list[Action]:
    actions: list[Action] = []
    for name, value in desired.items():
        if name not in current or not _same_value(current[name], value):
            actions.append({"action": "setAttribute", "sku": sku, "name": name, "value": value})
    for name in current:
        if name not in desired:
            actions.append({"action": "setAttribute", "sku": sku, "name": name})  # no value: remove
    return actions


# ---- standalone prices ------------------------------------------------------------------------


def standalone_price_actions(
    current: Mapping[str, Any], desired: Mapping[str, Any]
) -> list[Action]:
    """Actions that bring a StandalonePrice to the desired draft's value, validity and active flag.

    `validFrom`, `validUntil` and `active` are managed only when the draft names them (None
    clears a date). Scope fields (sku, currency, country, channel, customer group) identify a
    price and cannot be changed: match prices on them before diffing.
    """
    actions: list[Action] = []
    if not same_money(current.get("value"), desired.get("value")):
        actions.append({"action": "changeValue", "value": dict(desired["value"])})
    changed = {
        field: _iso(desired[field])
        for field in ("validFrom", "validUntil")
        if field in desired and _instant(desired[field]) != _instant(current.get(field))
    }
    if len(changed) == 2:
        actions.append({"action": "setValidFromAndUntil", **_present(changed)})
    elif "validFrom" in changed:
        actions.append({"action": "setValidFrom", **_present(changed)})
    elif "validUntil" in changed:
        actions.append({"action": "setValidUntil", **_present(changed)})
    if "active" in desired and bool(desired["active"]) != bool(current.get("active", True)):
        actions.append({"action": "changeActive", "active": bool(desired["active"])})
    return actions


def _present(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


# ---- inventory --------------------------------------------------------------------------------


def inventory_actions(current: Mapping[str, Any], desired: Mapping[str, Any]) -> list[Action]:
    """Actions that bring an InventoryEntry to the desired quantity (absolute, `changeQuantity`).

    `restockableInDays` and `expectedDelivery` are managed only when the draft names them.
    """
    actions: list[Action] = []
    quantity = desired["quantityOnStock"]
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise TypeError(f"quantityOnStock must be an int, not {type(quantity).__name__}")
    if current.get("quantityOnStock") != quantity:
        actions.append({"action": "changeQuantity", "quantity": quantity})
    if "restockableInDays" in desired and desired["restockableInDays"] != current.get(
        "restockableInDays"
    ):
        action: Action = {"action": "setRestockableInDays"}
        if desired["restockableInDays"] is not None:
            action["restockableInDays"] = desired["restockableInDays"]
        actions.append(action)
    if "expectedDelivery" in desired and _instant(desired["expectedDelivery"]) != _instant(
        current.get("expectedDelivery")
    ):
        action = {"action": "setExpectedDelivery"}
        if desired["expectedDelivery"] is not None:
            action["expectedDelivery"] = _iso(desired["expectedDelivery"])
        actions.append(action)
    return actions
