"""Price mapping: minor units per ISO 4217, half-even rounding, scopes, validity and precedence."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d365ct.commercetools import money_value
from d365ct.mapping.catalog import Variant, variant_of
from d365ct.mapping.examples import charm_prices
from d365ct.mapping.prices import (
    PriceOptions,
    customer_group_key,
    price_plans,
    to_decimal,
    unit_price,
)
from tests.mapping import hook_samples

NOW = datetime(2026, 6, 1, 8, tzinfo=UTC)
NO_DATE = "1900-01-01T12:00:00Z"
OPTIONS = PriceOptions("usmf", country="US")


def row(record_id: int, item: str = "D0001", price: Any = "12.50", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "RecordId": record_id,
        "ItemNumber": item,
        "ProductColorId": "",
        "ProductSizeId": "",
        "ProductStyleId": "",
        "ProductConfigurationId": "",
        "Price": price,
        "PriceCurrencyCode": "USD",
        "SalesPriceQuantity": Decimal(1),
        "PriceApplicableFromDate": NO_DATE,
        "PriceApplicableToDate": NO_DATE,
        "PriceCustomerGroupCode": "",
        "CustomerAccountNumber": "",
        "PriceWarehouseId": "",
        "PriceSiteId": "",
    }
    base.update(fields)
    return base


def variants(item: str, *dims: tuple[str, str]) -> dict[str, list[Variant]]:
    return {
        item: [
            variant_of({"ItemNumber": item, "ProductColorId": c, "ProductSizeId": s})
            for c, s in dims
        ]
    }


@pytest.mark.parametrize(
    ("price", "currency", "cents", "digits"),
    [
        (Decimal("12.50"), "USD", 1250, 2),
        (Decimal("12.5"), "EUR", 1250, 2),
        (Decimal("17.00"), "CAD", 1700, 2),
        (Decimal("11.99"), "CHF", 1199, 2),
        (Decimal("2025"), "JPY", 2025, 0),
        (Decimal("4.125"), "KWD", 4125, 3),
        (Decimal("5.1"), "BHD", 5100, 3),
        ("0.99", "USD", 99, 2),
    ],
)
def test_money_is_in_the_currencys_minor_units(
    price: Any, currency: str, cents: int, digits: int
) -> None:
    mapping = price_plans([row(1, price=price, PriceCurrencyCode=currency)], {}, OPTIONS, now=NOW)
    [plan] = mapping.plans
    assert plan.draft["value"] == {
        "type": "centPrecision",
        "currencyCode": currency,
        "centAmount": cents,
        "fractionDigits": digits,
    }
    assert isinstance(plan.draft["value"]["centAmount"], int)


def test_price_per_quantity_and_excess_digits_round_half_even() -> None:
    # 100.5 cents and 101.5 cents: half-even goes to the even neighbour both times
    assert unit_price(Decimal("100.50"), Decimal(100), "USD")["centAmount"] == 100
    assert unit_price(Decimal("101.50"), Decimal(100), "USD")["centAmount"] == 102
    assert unit_price(Decimal("2024.5"), 1, "JPY")["centAmount"] == 2024
    assert unit_price(Decimal("2025.5"), 1, "JPY")["centAmount"] == 2026
    assert unit_price(Decimal("1.0005"), 1, "KWD")["centAmount"] == 1000
    assert unit_price(Decimal("10"), Decimal(0), "USD")["centAmount"] == 1000  # quantity 0 is 1
    with pytest.raises(ValueError, match="non-negative"):
        unit_price(Decimal("-1"), 1, "USD")


def test_amounts_never_need_a_float() -> None:
    assert to_decimal("19.99") == Decimal("19.99")
    assert to_decimal(19.99) == Decimal("19.99")  # the shortest repr, not the binary expansion
    assert to_decimal(7) == Decimal(7)
    with pytest.raises(ValueError):
        to_decimal(None)
    with pytest.raises(ValueError):
        to_decimal("twelve")


def test_scope_country_customer_group_and_deterministic_key() -> None:
    [plan] = price_plans([row(5637144576, PriceCustomerGroupCode="20")], {}, OPTIONS, now=NOW).plans
    assert plan.key == "usmf-5637144576" and plan.sku == "D0001"
    assert plan.draft["country"] == "US"
    assert plan.draft["customerGroup"] == {"typeId": "customer-group", "key": "d365-20"}
    assert plan.group == customer_group_key("20") == "d365-20"
    assert plan.draft["active"] is True
    assert "validFrom" not in plan.draft and "validUntil" not in plan.draft
    [no_country] = price_plans([row(1)], {}, PriceOptions("demf"), now=NOW).plans
    assert "country" not in no_country.draft and no_country.key == "demf-1"


def test_validity_from_d365_dates() -> None:
    rows = [
        row(1, PriceApplicableFromDate="2024-03-01T12:00:00Z"),  # started, open-ended: undated
        row(2, PriceApplicableFromDate="2026-07-01T12:00:00Z"),  # future list price
        row(
            3,
            PriceApplicableFromDate="2026-05-20T12:00:00Z",
            PriceApplicableToDate="2026-06-30T12:00:00Z",
        ),
        row(4, PriceApplicableToDate="2026-05-31T12:00:00Z"),  # expired yesterday
        row(
            5,
            PriceApplicableFromDate="2026-06-10T12:00:00Z",
            PriceApplicableToDate="2026-06-01T12:00:00Z",
        ),
    ]
    mapping = price_plans(rows, {}, OPTIONS, now=NOW)
    by_key = {p.key: p.draft for p in mapping.plans}
    assert "validFrom" not in by_key["usmf-1"] and "validUntil" not in by_key["usmf-1"]
    assert by_key["usmf-2"]["validFrom"] == "2026-07-01T00:00:00.000Z"
    assert "validUntil" not in by_key["usmf-2"]
    assert by_key["usmf-3"]["validFrom"] == "2026-05-20T00:00:00.000Z"
    assert by_key["usmf-3"]["validUntil"] == "2026-06-30T23:59:59.999Z"  # the whole last day
    assert [(r.record, r.kind) for r in mapping.skipped] == [("usmf-4", "expired")]
    assert [r.record for r in mapping.errors] == ["usmf-5"]
    assert "after valid to" in mapping.errors[0].reason


def test_rows_without_a_standalone_price_scope_are_skipped_with_a_reason() -> None:
    mapping = price_plans(
        [row(1, CustomerAccountNumber="US-000002"), row(2, PriceWarehouseId="11")],
        {},
        OPTIONS,
        now=NOW,
    )
    assert mapping.plans == []
    assert [r.kind for r in mapping.skipped] == ["customer-specific", "site-specific"]
    assert all(not r.error for r in mapping.rejected)


def test_a_master_price_covers_its_variants_unless_a_variant_has_its_own() -> None:
    known = variants("D0005", ("Black", "M"), ("Black", "L"), ("Red", "M"))
    rows = [
        row(10, "D0005", "50.00"),  # the master: every variant
        row(11, "D0005", "55.00", ProductColorId="Black", ProductSizeId="L"),  # one variant
        row(12, "D0005", "40.00", ProductColorId="Red"),  # all red ones
    ]
    mapping = price_plans(rows, known, OPTIONS, now=NOW)
    cents = {p.sku: p.draft["value"]["centAmount"] for p in mapping.plans}
    assert cents == {"D0005-Black-M": 5000, "D0005-Black-L": 5500, "D0005-Red-M": 4000}
    keys = {p.sku: p.key for p in mapping.plans}
    assert keys["D0005-Black-L"] == "usmf-11"  # the row names this variant itself
    assert keys["D0005-Black-M"] == "usmf-10-D0005-Black-M"
    assert sorted(r.kind for r in mapping.skipped) == ["superseded", "superseded"]


def test_unknown_variants_are_errors_with_a_reason() -> None:
    known = variants("D0005", ("Black", "M"))
    mapping = price_plans(
        [
            row(1, "D0005", ProductColorId="Pink"),
            row(2, "D0001", ProductColorId="Red"),
            row(3, PriceCurrencyCode="EURO"),
        ],
        known,
        OPTIONS,
        now=NOW,
    )
    assert mapping.plans == []
    reasons = [r.reason for r in mapping.errors]
    assert "no released variant with ProductColorId=Pink" in reasons[0]
    assert "D0001 has no released variants" in reasons[1]
    assert "ISO 4217" in reasons[2]


def test_overlapping_dated_prices_keep_the_higher_priority_one() -> None:
    rows = [
        row(
            1,
            PriceApplicableFromDate="2026-07-01T12:00:00Z",
            PriceApplicableToDate="2026-07-31T12:00:00Z",
        ),
        row(
            2,
            PriceApplicableFromDate="2026-07-15T12:00:00Z",
            PriceApplicableToDate="2026-08-15T12:00:00Z",
        ),
        row(3),  # undated: never conflicts with a dated price
        row(4, PriceCurrencyCode="CAD", price="17.00"),  # another scope
    ]
    mapping = price_plans(rows, {}, OPTIONS, now=NOW)
    assert sorted(p.key for p in mapping.plans) == ["usmf-2", "usmf-3", "usmf-4"]
    assert [r.record for r in mapping.skipped] == ["usmf-1"]


def test_state_key_follows_the_scope_and_the_hash_follows_the_value() -> None:
    [base] = price_plans([row(1)], {}, OPTIONS, now=NOW).plans
    [dearer] = price_plans([row(1, price="13.00")], {}, OPTIONS, now=NOW).plans
    [grouped] = price_plans([row(1, PriceCustomerGroupCode="10")], {}, OPTIONS, now=NOW).plans
    assert dearer.state_key == base.state_key and dearer.content_hash != base.content_hash
    assert grouped.state_key != base.state_key and grouped.key == base.key
    again = price_plans([row(1)], {}, OPTIONS, now=NOW).plans[0]
    assert (again.state_key, again.content_hash) == (base.state_key, base.content_hash)


def test_skus_that_are_no_valid_key_get_a_digest_in_the_price_key() -> None:
    known = {"D 7": [variant_of({"ItemNumber": "D 7", "ProductColorId": "Grün"})]}
    [plan] = price_plans([row(9, "D 7")], known, OPTIONS, now=NOW).plans
    assert plan.sku == "D 7-Grün" and plan.key.startswith("usmf-9-h")
    assert all(ch.isalnum() or ch in "-_" for ch in plan.key)


@settings(max_examples=300, deadline=None)
@given(
    amount=st.decimals(min_value=0, max_value=10**9, places=5, allow_nan=False),
    quantity=st.sampled_from([Decimal(1), Decimal(10), Decimal(100), Decimal(3)]),
    currency=st.sampled_from(["USD", "EUR", "CAD", "CHF", "JPY", "KWD", "BHD"]),
)
def test_unit_price_is_the_half_even_rounding_of_the_exact_quotient(
    amount: Decimal, quantity: Decimal, currency: str
) -> None:
    value = unit_price(amount, quantity, currency)
    digits = value["fractionDigits"]
    expected = (amount / quantity).scaleb(digits).to_integral_value(rounding=ROUND_HALF_EVEN)
    assert value["centAmount"] == int(expected)
    assert abs(money_value(value) - amount / quantity) <= Decimal(1).scaleb(-digits) / 2


def test_of_two_running_open_ended_prices_the_later_start_wins_in_any_order() -> None:
    # Both have started, so neither keeps a validFrom; the priority must still follow the start
    # date D365 holds, not the RecordId (the older agreement here has the higher RecordId).
    newer_start = row(7, price="11.00", PriceApplicableFromDate="2026-03-01T12:00:00Z")
    older_start = row(9, price="13.00", PriceApplicableFromDate="2025-01-01T12:00:00Z")
    for rows in ([newer_start, older_start], [older_start, newer_start]):
        mapping = price_plans(rows, {}, OPTIONS, now=NOW)
        (plan,) = mapping.plans
        assert plan.key == "usmf-7"
        assert plan.draft["value"]["centAmount"] == 1100
        assert "validFrom" not in plan.draft
        assert [(r.record, r.kind) for r in mapping.skipped] == [("usmf-9", "superseded")]


def test_a_more_specific_price_beats_a_later_start() -> None:
    known = variants("D0005", ("Black", "M"))
    master = row(1, item="D0005", PriceApplicableFromDate="2026-05-01T12:00:00Z")
    variant = row(
        2,
        item="D0005",
        price="9.00",
        ProductColorId="Black",
        ProductSizeId="M",
        PriceApplicableFromDate="2024-01-01T12:00:00Z",
    )
    mapping = price_plans([master, variant], known, OPTIONS, now=NOW)
    assert [p.key for p in mapping.plans] == ["usmf-2"]
    assert [r.kind for r in mapping.skipped] == ["superseded"]


def hooked(hook: Any) -> PriceOptions:
    return PriceOptions("usmf", country="US", hook=hook, hook_name="my.hooks:price")


def test_a_price_hook_changes_the_value_and_the_hash_follows() -> None:
    rows = [row(1, price="12.50"), row(2, item="D0002", price="13.00"), row(3, price="0.50")]
    rows[2]["PriceCurrencyCode"] = "EUR"
    default = price_plans(rows, {}, OPTIONS, now=NOW).plans
    charmed = price_plans(rows, {}, hooked(charm_prices), now=NOW)
    assert not charmed.rejected
    cents = {
        (p.sku, p.draft["value"]["currencyCode"]): p.draft["value"]["centAmount"]
        for p in charmed.plans
    }
    assert cents == {("D0001", "USD"): 1199, ("D0002", "USD"): 1299, ("D0001", "EUR"): 50}
    # a new value is an update of the same price: same state key, new content hash
    assert [p.state_key for p in charmed.plans] == [p.state_key for p in default]
    hashes = {p.state_key: p.content_hash for p in default}
    changed = [p for p in charmed.plans if p.content_hash != hashes[p.state_key]]
    assert {p.sku for p in changed} == {"D0001", "D0002"} and len(changed) == 2


def test_a_price_hook_that_raises_or_rekeys_fails_only_that_price() -> None:
    rows = [row(1), row(2, item="D0002"), row(3, item="D0003")]
    mapping = price_plans(rows, {}, hooked(hook_samples.wholesale_group_or_fail), now=NOW)
    [failure] = mapping.errors
    assert failure.record == "usmf-3" and failure.row["ItemNumber"] == "D0003"
    assert failure.reason == (
        "mapping hook my.hooks:price failed for price usmf-3: LookupError: D0003 has no web price"
    )
    plans = {p.sku: p for p in mapping.plans}
    assert set(plans) == {"D0001", "D0002"}
    # a customer group is scope: a new state key, and the group the flow makes sure exists
    assert plans["D0002"].group == "wholesale"
    assert plans["D0002"].draft["customerGroup"]["key"] == "wholesale"
    assert plans["D0001"].group is None

    rekeyed = price_plans(rows[:1], {}, hooked(hook_samples.rekeys_the_price), now=NOW)
    assert not rekeyed.plans
    assert rekeyed.errors[0].reason == (
        "mapping hook my.hooks:price failed for price usmf-1: changed key, which d365ct manages"
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"sku": "OTHER"}, "changed sku, which d365ct manages"),
        ({"value": {"currencyCode": "USD", "centAmount": -1}}, "non-negative int"),
        ({"value": {"currencyCode": "USD", "centAmount": 1.5}}, "non-negative int"),
        ({"validFrom": "2027-01-02T00:00:00Z", "validUntil": "2027-01-01T00:00:00Z"}, "after"),
        ({"country": "usa"}, "ISO 3166"),
        ({"channel": {"typeId": "channel", "id": "abc"}}, "'key'"),
    ],
)
def test_a_price_hook_draft_is_checked(change: dict[str, Any], problem: str) -> None:
    def hook(draft: dict[str, Any], source: Any) -> dict[str, Any]:
        return {**draft, **change}

    mapping = price_plans([row(1)], {}, hooked(hook), now=NOW)
    assert not mapping.plans and problem in mapping.errors[0].reason


def test_a_price_hook_sets_validity_and_channel_as_scope() -> None:
    def hook(draft: dict[str, Any], source: Any) -> dict[str, Any]:
        draft["validFrom"] = "2026-07-01T00:00:00.000Z"
        draft["channel"] = {"typeId": "channel", "key": "web"}
        return draft

    [default] = price_plans([row(1)], {}, OPTIONS, now=NOW).plans
    [plan] = price_plans([row(1)], {}, hooked(hook), now=NOW).plans
    assert plan.key == default.key and plan.state_key != default.state_key
    assert plan.scope[-1] == "web" and len(default.scope) == 6
