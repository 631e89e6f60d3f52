"""The pure customer mapping: deterministic accounts, routing, CustomersV3 rows, write-back."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from d365ct.config import LegalEntitySettings
from d365ct.d365.entities import CUSTOMERS_V3
from d365ct.mapping.customers import (
    ACCOUNT_FIELD,
    CUSTOMER_TYPE_KEY,
    LEGAL_ENTITIES_FIELD,
    MappingError,
    account_of,
    custom_fields_actions,
    customer_account,
    customer_legal_entities,
    customer_row,
    customer_write_back_actions,
    d365_customer_group,
    legal_entity_for,
)

US = LegalEntitySettings(id="USMF", currency="USD", stores=("us-store",), countries=("US",))
DE = LegalEntitySettings(id="demf", currency="EUR", stores=("de-store",), countries=("DE", "AT"))
ENTITIES = (US, DE)


def customer(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "3c7f0a55-6a0e-4d1b-8d1c-2d6a7b0c1e11",
        "version": 1,
        "email": "ada@example.com",
        "firstName": "Ada",
        "lastName": "Lovelace",
        "addresses": [],
    }
    base.update(fields)
    return base


ADDRESS_DE = {
    "id": "a1",
    "streetName": "Hauptstraße",
    "streetNumber": "5",
    "postalCode": "20095",
    "city": "Hamburg",
    "country": "DE",
    "phone": "+49 40 1234",
}
ADDRESS_US = {
    "id": "a2",
    "streetName": "Main St",
    "streetNumber": "1",
    "postalCode": "98052",
    "city": "Redmond",
    "state": "WA",
    "country": "US",
}


def test_the_account_is_derived_from_the_id_and_stable() -> None:
    first = customer_account("3c7f0a55-6a0e-4d1b-8d1c-2d6a7b0c1e11", "CT")
    assert first == customer_account("3c7f0a55-6a0e-4d1b-8d1c-2d6a7b0c1e11", "CT")
    assert re.fullmatch(r"CT-[A-Z2-7]{10}", first)
    assert first != customer_account("3c7f0a55-6a0e-4d1b-8d1c-2d6a7b0c1e12", "CT")


@given(st.uuids())
def test_accounts_fit_d365(uid: object) -> None:
    assert len(customer_account(str(uid), "WEB")) <= 20


def test_a_too_long_prefix_is_a_mapping_error() -> None:
    with pytest.raises(MappingError, match="account_prefix"):
        customer_account("x", "A-VERY-LONG-PREFIX")


def test_account_prefers_the_written_back_field_then_the_customer_number() -> None:
    c = customer()
    derived = customer_account(c["id"], "CT")
    assert account_of(c, "CT") == derived
    assert account_of({**c, "customerNumber": "US-000002"}, "CT") == "US-000002"
    written = {**c, "customerNumber": "SHOP-1", "custom": {"fields": {ACCOUNT_FIELD: "CT-X"}}}
    assert account_of(written, "CT") == "CT-X"
    with pytest.raises(MappingError, match="longer than"):
        account_of({**c, "customerNumber": "N" * 21}, "CT")


def test_routing_by_store_then_country() -> None:
    assert legal_entity_for(ENTITIES, store="de-store", countries=["US"]).id == "demf"
    assert legal_entity_for(ENTITIES, store="fr-store", countries=[None, "at"]).id == "demf"
    with pytest.raises(MappingError) as caught:
        legal_entity_for(ENTITIES, store="fr-store", countries=["FR"])
    assert "no legal entity for store fr-store / country FR" in caught.value.reason


def test_customer_legal_entities() -> None:
    in_stores = customer(stores=[{"key": "us-store"}, {"key": "de-store"}])
    assert [e.id for e in customer_legal_entities(in_stores, ENTITIES)] == ["usmf", "demf"]
    by_address = customer(addresses=[ADDRESS_DE], defaultShippingAddressId="a1")
    assert [e.id for e in customer_legal_entities(by_address, ENTITIES)] == ["demf"]
    # already imported into usmf by an order: updates reach that copy too
    both = {**by_address, "custom": {"fields": {LEGAL_ENTITIES_FIELD: ["usmf"]}}}
    assert {e.id for e in customer_legal_entities(both, ENTITIES)} == {"usmf", "demf"}
    with pytest.raises(MappingError, match="no legal entity for customer"):
        customer_legal_entities(customer(), ENTITIES)


def test_person_row_with_addresses_and_vat() -> None:
    c = customer(
        addresses=[ADDRESS_DE, ADDRESS_US],
        defaultShippingAddressId="a1",
        defaultBillingAddressId="a2",
        vatId="DE123456789",
        locale="de-DE",
    )
    row = customer_row(c, DE, account="CT-ABC", default_group="30")
    assert row == {
        "dataAreaId": "demf",
        "CustomerAccount": "CT-ABC",
        "CustomerGroupId": "30",
        "SalesCurrencyCode": "EUR",
        "PrimaryContactEmail": "ada@example.com",
        "PartyType": "Person",
        "PersonFirstName": "Ada",
        "PersonLastName": "Lovelace",
        "LanguageId": "de-de",
        "PrimaryContactPhone": "+49 40 1234",
        "DeliveryAddressStreet": "Hauptstraße 5",
        "DeliveryAddressCity": "Hamburg",
        "DeliveryAddressZipCode": "20095",
        "DeliveryAddressCountryRegionISOCode": "DE",
        "InvoiceAddressStreet": "Main St 1",
        "InvoiceAddressCity": "Redmond",
        "InvoiceAddressZipCode": "98052",
        "InvoiceAddressState": "WA",
        "InvoiceAddressCountryRegionISOCode": "US",
        "TaxExemptNumber": "DE123456789",
    }
    assert set(row) <= set(CUSTOMERS_V3.fields)  # the package writer writes exactly these


def test_company_row_group_and_custom_vat() -> None:
    c = customer(
        companyName="Contoso GmbH",
        custom={"fields": {"vatId": "ATU1234567"}},
        addresses=[ADDRESS_DE],
    )
    row = customer_row(c, DE, account="CT-ABC", default_group="30", group_key="d365-20")
    assert row["PartyType"] == "Organization"
    assert row["OrganizationName"] == "Contoso GmbH"
    assert "PersonFirstName" not in row
    assert row["CustomerGroupId"] == "20"
    assert row["TaxExemptNumber"] == "ATU1234567"
    # without an explicit default address the first one serves both
    assert row["InvoiceAddressCity"] == row["DeliveryAddressCity"] == "Hamburg"


def test_names_are_clipped_and_a_nameless_person_gets_one() -> None:
    row = customer_row(
        customer(firstName="A" * 40, lastName=None), US, account="A", default_group="30"
    )
    assert row["PersonFirstName"] == "A" * 25 and "PersonLastName" not in row
    nameless = customer_row(
        customer(firstName=None, lastName=None), US, account="A", default_group="30"
    )
    assert nameless["PersonLastName"] == "ada"
    with pytest.raises(MappingError, match="VAT id"):
        customer_row(customer(vatId="X" * 21), US, account="A", default_group="30")


def test_customer_groups() -> None:
    assert d365_customer_group("d365-10", "30") == "10"
    assert d365_customer_group("vip", "30") == "30"
    assert d365_customer_group(None, "30") == "30"


def test_custom_fields_never_replace_a_foreign_type() -> None:
    fields = {ACCOUNT_FIELD: "CT-1"}
    assert custom_fields_actions({}, CUSTOMER_TYPE_KEY, fields) == [
        {
            "action": "setCustomType",
            "type": {"typeId": "type", "key": CUSTOMER_TYPE_KEY},
            "fields": fields,
        }
    ]
    foreign = {"custom": {"type": {"id": "t"}, "fields": {"vatId": "X"}}}
    assert custom_fields_actions(foreign, CUSTOMER_TYPE_KEY, fields) == [
        {"action": "setCustomField", "name": ACCOUNT_FIELD, "value": "CT-1"}
    ]
    same = {"custom": {"type": {"id": "t"}, "fields": fields}}
    assert custom_fields_actions(same, CUSTOMER_TYPE_KEY, fields) == []


def test_write_back_sets_the_number_once() -> None:
    fresh = customer()
    actions = customer_write_back_actions(fresh, account="CT-1", legal_entities=["usmf"])
    assert actions[0] == {"action": "setCustomerNumber", "customerNumber": "CT-1"}
    assert actions[1]["fields"] == {ACCOUNT_FIELD: "CT-1", LEGAL_ENTITIES_FIELD: ["usmf"]}
    done = {
        **fresh,
        "customerNumber": "CT-1",
        "custom": {"fields": {ACCOUNT_FIELD: "CT-1", LEGAL_ENTITIES_FIELD: ["usmf"]}},
    }
    assert customer_write_back_actions(done, account="CT-1", legal_entities=["usmf"]) == []
    more = customer_write_back_actions(done, account="CT-1", legal_entities=["demf"])
    assert more == [
        {"action": "setCustomField", "name": LEGAL_ENTITIES_FIELD, "value": ["demf", "usmf"]}
    ]
