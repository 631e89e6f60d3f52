"""Pure update-action builders: minimal diffs, money in minor units, and a property test that
applying the computed product actions reaches the desired state.
"""

from __future__ import annotations

import copy
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d365ct.commercetools import (
    fraction_digits,
    inventory_actions,
    money,
    money_from_cents,
    money_value,
    product_actions,
    same_money,
    standalone_price_actions,
)


def variant(vid: int, sku: str | None, **attributes: Any) -> dict[str, Any]:
    return {
        "id": vid,
        "sku": sku,
        "attributes": [{"name": n, "value": v} for n, v in attributes.items()],
        "prices": [],
        "images": [],
    }


def product(
    name: str = "Chair",
    *,
    master: dict[str, Any] | None = None,
    variants: list[dict[str, Any]] | None = None,
    published: bool = True,
    has_staged_changes: bool = False,
) -> dict[str, Any]:
    data = {
        "name": {"en": name},
        "slug": {"en": name.lower()},
        "masterVariant": master or variant(1, "A", color="red"),
        "variants": variants if variants is not None else [variant(2, "B", color="blue")],
    }
    return {
        "id": "p1",
        "version": 3,
        "key": "chair",
        "masterData": {
            "current": copy.deepcopy(data),
            "staged": data,
            "published": published,
            "hasStagedChanges": has_staged_changes,
        },
    }


def draft(name: str = "Chair", **overrides: Any) -> dict[str, Any]:
    base = {
        "key": "chair",
        "name": {"en": name},
        "slug": {"en": name.lower()},
        "productType": {"typeId": "product-type", "key": "furniture"},
        "masterVariant": {"sku": "A", "attributes": [{"name": "color", "value": "red"}]},
        "variants": [{"sku": "B", "attributes": [{"name": "color", "value": "blue"}]}],
    }
    base.update(overrides)
    return base


# ---- products ---------------------------------------------------------------------------------


def test_unchanged_product_needs_no_actions() -> None:
    assert product_actions(product(), draft()) == []
    assert product_actions(product(), draft(), publish=True) == []


def test_name_slug_and_attribute_changes() -> None:
    desired = draft(
        "Stool",
        masterVariant={
            "sku": "A",
            "attributes": [{"name": "color", "value": "green"}, {"name": "legs", "value": 3}],
        },
        variants=[{"sku": "B", "attributes": []}],
    )
    assert product_actions(product(), desired) == [
        {"action": "changeName", "name": {"en": "Stool"}},
        {"action": "changeSlug", "slug": {"en": "stool"}},
        {"action": "setAttribute", "sku": "A", "name": "color", "value": "green"},
        {"action": "setAttribute", "sku": "A", "name": "legs", "value": 3},
        {"action": "setAttribute", "sku": "B", "name": "color"},  # no value: removed
    ]


def test_description_is_managed_only_when_the_draft_has_one() -> None:
    held = product()
    held["masterData"]["staged"]["description"] = {"en": "old"}
    assert product_actions(held, draft()) == []  # the default mapping leaves it to others
    assert product_actions(held, draft(description={"en": "new"})) == [
        {"action": "setDescription", "description": {"en": "new"}}
    ]
    assert product_actions(held, draft(description={"en": "old"})) == []
    assert product_actions(held, draft(description={})) == [
        {"action": "setDescription", "description": None}
    ]


def test_variants_added_removed_and_master_changed_in_a_valid_order() -> None:
    desired = draft(
        masterVariant={"sku": "C", "key": "c", "attributes": [{"name": "color", "value": "x"}]},
        variants=[{"sku": "B", "attributes": [{"name": "color", "value": "blue"}]}],
    )
    assert product_actions(product(), desired, publish=True) == [
        {
            "action": "addVariant",
            "sku": "C",
            "key": "c",
            "attributes": [{"name": "color", "value": "x"}],
        },
        {"action": "changeMasterVariant", "sku": "C"},
        {"action": "removeVariant", "sku": "A"},  # after it stopped being the master
        {"action": "publish"},
    ]


def test_publish_when_staged_changes_are_pending_or_never_published() -> None:
    assert product_actions(product(has_staged_changes=True), draft(), publish=True) == [
        {"action": "publish"}
    ]
    assert product_actions(product(published=False), draft(), publish=True) == [
        {"action": "publish"}
    ]
    assert product_actions(product(published=False), draft()) == []


def test_enum_values_compare_by_key_and_projections_are_accepted() -> None:
    enum = {"key": "red", "label": {"en": "Red"}}
    current = product(master=variant(1, "A", color=enum))
    assert product_actions(current, draft()) == []  # the draft sets the enum by key
    projection = {**current["masterData"]["staged"], "published": True, "hasStagedChanges": False}
    assert product_actions(projection, draft(), publish=True) == []


def test_diff_is_against_staged_data() -> None:
    current = product()
    current["masterData"]["current"]["name"] = {"en": "Old"}
    assert product_actions(current, draft()) == []


def test_a_desired_variant_without_sku_or_a_duplicate_sku_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a sku"):
        product_actions(product(), draft(variants=[{"attributes": []}]))
    with pytest.raises(ValueError, match="twice"):
        product_actions(product(), draft(variants=[{"sku": "A"}]))


# ---- property: applying the actions reaches the desired state ---------------------------------


def apply(current: dict[str, Any], actions: list[dict[str, Any]]) -> dict[str, Any]:
    """A tiny model of commercetools' product update semantics, strict where the API is."""
    result = copy.deepcopy(current)
    data: dict[str, Any] = result["masterData"]["staged"]

    def find(sku: str) -> dict[str, Any]:
        held_variants: list[dict[str, Any]] = [data["masterVariant"], *data["variants"]]
        for candidate in held_variants:
            if candidate.get("sku") == sku:
                return candidate
        raise AssertionError(f"no variant with sku {sku}")

    for action in actions:
        kind = action["action"]
        if kind == "changeName":
            data["name"] = action["name"]
        elif kind == "changeSlug":
            data["slug"] = action["slug"]
        elif kind == "addVariant":
            assert all(
                v.get("sku") != action["sku"] for v in [data["masterVariant"], *data["variants"]]
            )
            next_id = 1 + max(v["id"] for v in [data["masterVariant"], *data["variants"]])
            data["variants"].append(
                {"id": next_id, "sku": action["sku"], "attributes": action.get("attributes", [])}
            )
        elif kind == "changeMasterVariant":
            chosen = find(action["sku"])
            if chosen is not data["masterVariant"]:
                data["variants"].remove(chosen)
                data["variants"].append(data["masterVariant"])
                data["masterVariant"] = chosen
        elif kind == "setAttribute":
            target = find(action["sku"])
            target["attributes"] = [a for a in target["attributes"] if a["name"] != action["name"]]
            if "value" in action:
                target["attributes"].append({"name": action["name"], "value": action["value"]})
        elif kind == "removeVariant":
            doomed = find(action["sku"])
            assert doomed is not data["masterVariant"], "cannot remove the master variant"
            data["variants"].remove(doomed)
        elif kind == "publish":
            result["masterData"]["current"] = copy.deepcopy(data)
            result["masterData"]["published"] = True
        else:
            raise AssertionError(f"unexpected action {kind}")
    return result


SKUS = st.sampled_from([f"S{i}" for i in range(6)])
ATTRIBUTES = st.dictionaries(
    st.sampled_from(["color", "size", "weight"]),
    st.one_of(st.integers(-5, 5), st.sampled_from(["red", "blue", ""]), st.booleans()),
)
LOCALIZED = st.dictionaries(
    st.sampled_from(["en", "de"]), st.text(min_size=1, max_size=4), min_size=1
)


@st.composite
def variants(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    skus = draw(st.lists(SKUS, min_size=1, max_size=4, unique=True))
    return [(sku, draw(ATTRIBUTES)) for sku in skus]


def as_attributes(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": name, "value": value} for name, value in values.items()]


@settings(max_examples=300, deadline=None)
@given(LOCALIZED, LOCALIZED, variants(), LOCALIZED, LOCALIZED, variants(), st.booleans())
def test_applying_computed_actions_reaches_the_desired_state(
    name: dict[str, str],
    slug: dict[str, str],
    held: list[tuple[str, dict[str, Any]]],
    new_name: dict[str, str],
    new_slug: dict[str, str],
    wanted: list[tuple[str, dict[str, Any]]],
    publish: bool,
) -> None:
    data = {
        "name": name,
        "slug": slug,
        "masterVariant": {"id": 1, "sku": held[0][0], "attributes": as_attributes(held[0][1])},
        "variants": [
            {"id": i + 2, "sku": sku, "attributes": as_attributes(values)}
            for i, (sku, values) in enumerate(held[1:])
        ],
    }
    current = {
        "id": "p",
        "version": 1,
        "masterData": {
            "current": copy.deepcopy(data),
            "staged": data,
            "published": True,
            "hasStagedChanges": False,
        },
    }
    desired = {
        "key": "p",
        "name": new_name,
        "slug": new_slug,
        "masterVariant": {"sku": wanted[0][0], "attributes": as_attributes(wanted[0][1])},
        "variants": [{"sku": s, "attributes": as_attributes(v)} for s, v in wanted[1:]],
    }
    actions = product_actions(current, desired, publish=publish)
    after = apply(current, actions)
    staged = after["masterData"]["staged"]
    assert staged["name"] == new_name and staged["slug"] == new_slug
    assert staged["masterVariant"]["sku"] == wanted[0][0]
    by_sku = {v["sku"]: v for v in [staged["masterVariant"], *staged["variants"]]}
    assert set(by_sku) == {sku for sku, _ in wanted}
    for sku, values in wanted:
        assert {a["name"]: a["value"] for a in by_sku[sku]["attributes"]} == values
    assert product_actions(after, desired) == []  # a fixpoint: the next run sends nothing
    if publish:
        assert after["masterData"]["current"] == staged


# ---- standalone prices and inventory ----------------------------------------------------------


def price(**overrides: Any) -> dict[str, Any]:
    base = {
        "id": "sp1",
        "version": 2,
        "sku": "A",
        "value": {
            "type": "centPrecision",
            "currencyCode": "EUR",
            "centAmount": 1250,
            "fractionDigits": 2,
        },
        "validFrom": "2026-01-01T00:00:00.000Z",
        "active": True,
    }
    base.update(overrides)
    return base


def test_unchanged_price_in_another_representation_needs_no_actions() -> None:
    desired = {
        "sku": "A",
        "value": {"currencyCode": "EUR", "centAmount": 1250},
        "validFrom": "2026-01-01T00:00:00+00:00",
        "active": True,
    }
    assert standalone_price_actions(price(), desired) == []
    high = {
        "type": "highPrecision",
        "currencyCode": "EUR",
        "preciseAmount": 125000,
        "fractionDigits": 4,
    }
    assert standalone_price_actions(price(value=high), desired) == []


def test_price_value_validity_and_active_changes() -> None:
    desired = {
        "sku": "A",
        "value": money(Decimal("13.00"), "EUR"),
        "validFrom": "2026-02-01T00:00:00Z",
        "validUntil": "2026-12-31T23:59:59Z",
        "active": False,
    }
    assert standalone_price_actions(price(), desired) == [
        {"action": "changeValue", "value": money_from_cents(1300, "EUR")},
        {
            "action": "setValidFromAndUntil",
            "validFrom": "2026-02-01T00:00:00Z",
            "validUntil": "2026-12-31T23:59:59Z",
        },
        {"action": "changeActive", "active": False},
    ]
    only_until = {"value": price()["value"], "validUntil": "2027-01-01T00:00:00Z"}
    assert standalone_price_actions(price(), only_until) == [
        {"action": "setValidUntil", "validUntil": "2027-01-01T00:00:00Z"}
    ]
    cleared = {"value": price()["value"], "validFrom": None}
    assert standalone_price_actions(price(), cleared) == [{"action": "setValidFrom"}]


def test_inventory_quantity_is_set_absolutely_and_only_when_changed() -> None:
    current = {"id": "i", "version": 5, "sku": "A", "quantityOnStock": 7, "availableQuantity": 7}
    assert inventory_actions(current, {"sku": "A", "quantityOnStock": 7}) == []
    assert inventory_actions(current, {"sku": "A", "quantityOnStock": 0}) == [
        {"action": "changeQuantity", "quantity": 0}
    ]
    assert inventory_actions(
        current,
        {"sku": "A", "quantityOnStock": 7, "restockableInDays": 3, "expectedDelivery": None},
    ) == [{"action": "setRestockableInDays", "restockableInDays": 3}]
    with pytest.raises(TypeError):
        inventory_actions(current, {"sku": "A", "quantityOnStock": 7.0})


# ---- money ------------------------------------------------------------------------------------


def test_money_uses_the_currency_minor_units() -> None:
    assert money(Decimal("12.5"), "EUR")["centAmount"] == 1250
    assert money("1500", "JPY") == {
        "type": "centPrecision",
        "currencyCode": "JPY",
        "centAmount": 1500,
        "fractionDigits": 0,
    }
    assert money("1.234", "KWD")["centAmount"] == 1234
    assert fraction_digits("USD") == 2 and fraction_digits("KWD") == 3
    assert money(Decimal("0.10"), "EUR")["centAmount"] == 10  # never 9.999…


def test_money_refuses_floats_and_silent_rounding() -> None:
    with pytest.raises(TypeError):
        money(0.1, "EUR")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="more than 2 fraction digits"):
        money("1.005", "EUR")
    assert money("1.005", "EUR", rounding=ROUND_HALF_EVEN)["centAmount"] == 100
    with pytest.raises(ValueError):
        money("12", "euro")


def test_money_value_and_comparison_across_precisions() -> None:
    cents = money_from_cents(1999, "USD")
    high = {
        "type": "highPrecision",
        "currencyCode": "USD",
        "preciseAmount": 19990,
        "fractionDigits": 3,
    }
    assert money_value(cents) == Decimal("19.99") == money_value(high)
    assert same_money(cents, high)
    assert not same_money(cents, money_from_cents(1999, "EUR"))
    assert not same_money(cents, None) and same_money(None, None)
