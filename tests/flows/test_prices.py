"""Flow U1 prices against d365sim and the commercetools mock: multi-currency standalone prices in
minor units, zero-call re-sync, value changes, removed agreements, scope changes, lost state.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

from d365ct.commercetools import fraction_digits
from d365ct.config import PriceMappingSettings
from d365ct.flows.prices import sync_prices
from d365ct.store.error_queue import ErrorQueue
from d365ct.store.sync_state import SyncStateStore
from tests.flows.test_catalog import Harness, harness  # noqa: F401

PRICED_CURRENCIES = {"USD", "EUR", "CAD", "CHF", "JPY", "KWD"}  # the seed of 60 products


def ct_prices(h: Harness) -> list[dict[str, Any]]:
    return h.ct_all("standalone-prices")


def minor(amount: Any, currency: str) -> int:
    # the simulator's JSON number, read back exactly as its text
    scaled = Decimal(str(amount)).scaleb(fraction_digits(currency))
    assert scaled == scaled.to_integral_value()
    return int(scaled)


def plain_list_prices(h: Harness, legal_entity: str) -> dict[tuple[str, str], int]:
    """(sku, currency) → minor units of every open-ended, group-less price of a plain product."""
    masters = {row["ItemNumber"] for row in h.sim_rows("ReleasedProductVariantsV2", legal_entity)}
    expected = {}
    for row in h.sim_rows("SalesPriceAgreements", legal_entity):
        if (
            row["ItemNumber"] in masters
            or row["PriceCustomerGroupCode"]
            or row["CustomerAccountNumber"]
            or not row["PriceApplicableToDate"].startswith("1900")
        ):
            continue
        currency = row["PriceCurrencyCode"]
        expected[(row["ItemNumber"], currency)] = minor(row["Price"], currency)
    return expected


async def test_multi_currency_prices_land_in_minor_units_and_resync_is_free(
    harness: Harness,  # noqa: F811
) -> None:
    h = harness
    summary = await sync_prices(h.settings, h.engine, event_hooks=h.hooks())
    assert summary.ok and summary.legal_entities == ["usmf", "demf"]
    prices = ct_prices(h)
    assert len(prices) == summary.created == summary.records
    assert summary.ct_calls["POST"] == summary.created + 1  # + customer group d365-20, on demand
    assert {p["value"]["currencyCode"] for p in prices} == PRICED_CURRENCIES
    assert all(p["active"] is True for p in prices)
    assert all(isinstance(p["value"]["centAmount"], int) for p in prices)
    digits = {p["value"]["currencyCode"]: p["value"]["fractionDigits"] for p in prices}
    assert digits == {"USD": 2, "EUR": 2, "CAD": 2, "CHF": 2, "JPY": 0, "KWD": 3}
    assert {p.get("country") for p in prices} == {"US", "DE"}

    # The mock drops a price's customerGroup (reference doc §5), so a sku's group price and its
    # list price look alike here: the list price must be among the undated ones.
    held: dict[tuple[str, str, str], list[int]] = {}
    for p in prices:
        if "validFrom" not in p and "validUntil" not in p:
            scope = (p["sku"], p["value"]["currencyCode"], p["country"])
            held.setdefault(scope, []).append(p["value"]["centAmount"])
    for legal_entity, country in (("usmf", "US"), ("demf", "DE")):
        expected = plain_list_prices(h, legal_entity)
        assert expected, legal_entity
        for (sku, currency), cents in expected.items():
            assert cents in held[(sku, currency, country)], (sku, currency)
    # the 0- and 3-digit currencies, against the simulator's own numbers
    jpy = [r for r in h.sim_rows("SalesPriceAgreements", "demf") if r["PriceCurrencyCode"] == "JPY"]
    kwd = [r for r in h.sim_rows("SalesPriceAgreements", "demf") if r["PriceCurrencyCode"] == "KWD"]
    assert jpy and kwd
    assert held[(jpy[0]["ItemNumber"], "JPY", "DE")] == [int(Decimal(str(jpy[0]["Price"])))]
    assert held[(kwd[0]["ItemNumber"], "KWD", "DE")] == [minor(kwd[0]["Price"], "KWD")]

    seen = len(h.ct.api_responses())
    again = await sync_prices(h.settings, h.engine, event_hooks=h.hooks())
    assert len(h.ct.api_responses()) == seen  # zero commercetools calls
    assert again.unchanged == summary.created and again.created == again.updated == 0
    assert again.skipped_reasons == summary.skipped_reasons
    assert set(summary.skipped_reasons) <= {"customer-specific", "expired", "superseded"}


def price_row(h: Harness, legal_entity: str, currency: str) -> dict[str, Any]:
    """A group-less, open-ended agreement of a plain product in that currency."""
    masters = {row["ItemNumber"] for row in h.sim_rows("ReleasedProductVariantsV2", legal_entity)}
    return next(
        row
        for row in h.sim_rows("SalesPriceAgreements", legal_entity)
        if row["PriceCurrencyCode"] == currency
        and row["ItemNumber"] not in masters
        and not row["PriceCustomerGroupCode"]
        and not row["CustomerAccountNumber"]
        and row["PriceApplicableToDate"].startswith("1900")
    )


def find(prices: list[dict[str, Any]], sku: str, currency: str) -> list[dict[str, Any]]:
    return [p for p in prices if p["sku"] == sku and p["value"]["currencyCode"] == currency]


async def test_changed_removed_and_rescoped_agreements(harness: Harness) -> None:  # noqa: F811
    h = harness
    await sync_prices(h.settings, h.engine)
    before_prices = ct_prices(h)
    before = {p["id"]: p["version"] for p in before_prices}
    chf = price_row(h, "demf", "CHF")
    kwd = price_row(h, "demf", "KWD")
    usd = price_row(h, "usmf", "USD")
    h.sim_patch(
        f"SalesPriceAgreements(dataAreaId='demf',RecordId={chf['RecordId']})", {"Price": 12.345}
    )
    with h.sim.client() as client:
        gone = client.delete(
            f"/data/SalesPriceAgreements(dataAreaId='demf',RecordId={kwd['RecordId']})",
            params={"cross-company": "true"},
        )
    assert gone.status_code == 204
    h.sim_patch(
        f"SalesPriceAgreements(dataAreaId='usmf',RecordId={usd['RecordId']})",
        {"PriceCustomerGroupCode": "10"},
    )

    summary = await sync_prices(h.settings, h.engine, event_hooks=h.hooks())
    assert summary.ok
    assert (summary.updated, summary.deleted, summary.created) == (1, 2, 1)
    methods = Counter(r.request.method for r in h.ct.api_responses())
    # a value change is one POST at the stored version: no read; the new group is created
    assert methods["DELETE"] == 2 and methods["POST"] == 3  # changeValue, create, customer group
    assert methods["GET"] <= 3  # customer group lookup and the sku lookup of the new price

    prices = ct_prices(h)
    [changed] = find(prices, chf["ItemNumber"], "CHF")
    assert changed["value"]["centAmount"] == 1234  # 12.345 CHF, half-even to 12.34
    assert find(prices, kwd["ItemNumber"], "KWD") == []
    # a new customer group is a new scope: the old price went, a new one came
    old_usd = {p["id"] for p in find(before_prices, usd["ItemNumber"], "USD")}
    new_usd = {p["id"] for p in find(prices, usd["ItemNumber"], "USD")}
    assert len(new_usd) == len(old_usd) and len(new_usd - old_usd) == 1
    untouched = [p for p in prices if p["id"] in before and p["id"] != changed["id"]]
    assert all(p["version"] == before[p["id"]] for p in untouched)
    assert len(prices) == len(before) - 1

    again = await sync_prices(h.settings, h.engine)
    assert sum(again.ct_calls.values()) == 0 and again.unchanged == summary.records


async def test_one_legal_entity_and_a_lost_state_entry(harness: Harness) -> None:  # noqa: F811
    h = harness
    demf = await sync_prices(h.settings, h.engine, legal_entity="DEMF")
    assert demf.legal_entities == ["demf"]
    prices = ct_prices(h)
    assert {p["country"] for p in prices} == {"DE"} and len(prices) == demf.created

    # The store forgets one price (say a crash between create and commit): it is found again by
    # sku and scope, updated in place rather than duplicated.
    state = SyncStateStore(h.engine)
    jpy = price_row(h, "demf", "JPY")
    [key] = [k for k in state.items("prices", "demf-") if k.startswith(f"demf-{jpy['RecordId']}@")]
    state.delete("prices", [key])
    recovered = await sync_prices(h.settings, h.engine, legal_entity="demf", event_hooks=h.hooks())
    assert (recovered.created, recovered.updated, recovered.unchanged) == (0, 0, demf.created)
    assert not [r for r in h.ct.api_responses() if r.request.method != "GET"]
    assert len(ct_prices(h)) == demf.created
    assert state.get_many("prices", [key])[key].ct_id is not None


async def test_full_mode_repairs_a_value_changed_in_commercetools(harness: Harness) -> None:  # noqa: F811
    h = harness
    await sync_prices(h.settings, h.engine, legal_entity="usmf")
    usd = price_row(h, "usmf", "USD")
    [held] = [
        p
        for p in find(ct_prices(h), usd["ItemNumber"], "USD")
        if p.get("customerGroup") is None and "validUntil" not in p
    ][:1]
    with h.ct_client() as client:
        response = client.post(
            f"/standalone-prices/{held['id']}",
            json={
                "version": held["version"],
                "actions": [
                    {"action": "changeValue", "value": {"currencyCode": "USD", "centAmount": 1}}
                ],
            },
        )
    assert response.status_code == 200, response.text

    delta = await sync_prices(h.settings, h.engine, legal_entity="usmf")
    assert delta.unchanged == delta.records  # hashes alone cannot see a change made there
    full = await sync_prices(h.settings, h.engine, legal_entity="usmf", full=True)
    assert (full.updated, full.unchanged + full.updated) == (1, full.records)
    [repaired] = [p for p in ct_prices(h) if p["id"] == held["id"]]
    assert repaired["value"]["centAmount"] == minor(usd["Price"], "USD")


async def test_dry_run_writes_nothing(harness: Harness) -> None:  # noqa: F811
    h = harness
    plan = await sync_prices(h.settings, h.engine, dry_run=True, event_hooks=h.hooks())
    assert plan.created == plan.records > 0 and plan.plan[0]["action"] == "create"
    assert h.ct.api_responses() == [] and SyncStateStore(h.engine).count("prices") == 0
    assert isinstance(plan.plan[0]["draft"]["value"]["centAmount"], int)


def charmed(cents: int, digits: int) -> int:
    """The example hook's rule, written out independently: down to the nearest …99."""
    unit = 10**digits
    return cents if cents + 1 < unit else (cents + 1) // unit * unit - 1


async def test_a_price_hook_change_lands_and_a_second_sync_writes_nothing(
    harness: Harness,  # noqa: F811
) -> None:
    h = harness
    await sync_prices(h.settings, h.engine)
    before = {p["id"]: p for p in ct_prices(h)}
    moved = {
        rid: charmed(p["value"]["centAmount"], p["value"]["fractionDigits"])
        for rid, p in before.items()
        if charmed(p["value"]["centAmount"], p["value"]["fractionDigits"])
        != p["value"]["centAmount"]
    }
    assert moved  # the seed has prices that do not end in …99
    prices = h.settings.prices.model_copy(
        update={
            "mapping": PriceMappingSettings(hook="d365ct.mapping.examples:charm_prices"),
        }
    )
    settings = h.settings.model_copy(update={"prices": prices})

    # dry runs apply the hook too: the plan names the values it would write, and nothing moves
    plan = await sync_prices(settings, h.engine, dry_run=True, event_hooks=h.hooks())
    assert plan.updated == len(moved) and plan.created == plan.deleted == 0
    assert h.ct.api_responses() == []

    summary = await sync_prices(settings, h.engine, event_hooks=h.hooks())
    assert summary.ok and summary.updated == len(moved)
    assert summary.created == summary.deleted == 0  # a value is no scope change
    after = {p["id"]: p for p in ct_prices(h)}
    assert set(after) == set(before)
    for rid, price in after.items():
        assert price["value"]["centAmount"] == moved.get(rid, before[rid]["value"]["centAmount"])
    usd = price_row(h, "usmf", "USD")
    held = [p["value"]["centAmount"] for p in find(list(after.values()), usd["ItemNumber"], "USD")]
    assert charmed(minor(usd["Price"], "USD"), 2) in held

    seen = len(h.ct.api_responses())
    again = await sync_prices(settings, h.engine, event_hooks=h.hooks())
    assert len(h.ct.api_responses()) == seen  # zero commercetools calls
    assert again.unchanged == summary.records and again.updated == again.created == 0

    # a hook that fails every price sends each to the error queue and deletes none of them
    broken = settings.prices.model_copy(
        update={"mapping": PriceMappingSettings(hook="tests.mapping.hook_samples:rekeys_the_price")}
    )
    failing = await sync_prices(
        settings.model_copy(update={"prices": broken}), h.engine, event_hooks=h.hooks()
    )
    # (before the priority rules: rows another would supersede fail too)
    assert failing.failed >= summary.records and failing.records == failing.deleted == 0
    assert len(h.ct.api_responses()) == seen
    entries = ErrorQueue(h.engine).list(flow="prices", limit=1000)
    assert len(entries) == failing.failed and {e.step for e in entries} == {"map"}
    assert "changed key, which d365ct manages" in entries[0].error
    assert {p["id"] for p in ct_prices(h)} == set(before)
