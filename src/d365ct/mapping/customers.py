"""commercetools Customers → D365 CustomersV3 rows, routed to legal entities (SPEC U4, M10–M13).

Pure: no I/O, no clock. The D365 account derives from the customer id, so no retry makes a second.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from d365ct.config import LegalEntitySettings
from d365ct.errors import PermanentError
from d365ct.mapping.prices import customer_group_key

__all__ = [
    "ACCOUNT_FIELD",
    "CUSTOMER_TYPE_KEY",
    "LEGAL_ENTITIES_FIELD",
    "MAX_ACCOUNT_LENGTH",
    "MappingError",
    "account_of",
    "address_fields",
    "clip",
    "custom_field",
    "custom_fields_actions",
    "customer_account",
    "customer_legal_entities",
    "customer_row",
    "customer_write_back_actions",
    "d365_customer_group",
    "legal_entity_for",
    "stable_code",
    "synced_legal_entities",
]

CUSTOMER_TYPE_KEY = "d365ct-customer"  # commercetools custom Type of customers (d365ct setup)
ACCOUNT_FIELD = "d365Account"  # the D365 CustomerAccount: the persistent cross-system key
LEGAL_ENTITIES_FIELD = "d365LegalEntities"  # the legal entities the customer exists in
MAX_ACCOUNT_LENGTH = 20  # CustomersV3.CustomerAccount
_GROUP_PREFIX = customer_group_key("")  # "d365-": commercetools keys of D365 customer groups


class MappingError(PermanentError):
    """A record that cannot be mapped as configured; `reason` says why, for a person to act on."""

    def __init__(self, reason: str, *, key: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


def stable_code(text: str, length: int = 10) -> str:
    """`length` base32 characters of SHA-256(text): the same text always gives the same code.

    Base32 (A–Z, 2–7) because D365 number sequences and commercetools keys both take it and it
    reads unambiguously; 10 characters are 50 bits, so a collision among a million ids has odds
    of about 1 in 2 billion.
    """
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return base64.b32encode(digest).decode("ascii")[:length]


def customer_account(customer_id: str, prefix: str) -> str:
    """The deterministic D365 account of a commercetools customer: `{prefix}-{stable code}`."""
    account = f"{prefix}-{stable_code(customer_id)}"
    if len(account) > MAX_ACCOUNT_LENGTH:
        raise MappingError(
            f"customers.account_prefix '{prefix}' is too long: the account {account} has more "
            f"than {MAX_ACCOUNT_LENGTH} characters"
        )
    return account


def custom_field(resource: Mapping[str, Any], name: str) -> Any:
    """A custom field's value, None when the resource has no custom fields or not that one."""
    custom = resource.get("custom") or {}
    return (custom.get("fields") or {}).get(name)


def account_of(customer: Mapping[str, Any], prefix: str) -> str:
    """The D365 account of a customer: the one written back earlier (custom field), else its
    customerNumber (immutable once set, and the cross-system key M10), else the derived one."""
    for value in (custom_field(customer, ACCOUNT_FIELD), customer.get("customerNumber")):
        if isinstance(value, str) and value.strip():
            account = value.strip()
            if len(account) > MAX_ACCOUNT_LENGTH:
                raise MappingError(
                    f"customer {customer.get('id')}: customer number '{account}' is longer than "
                    f"the {MAX_ACCOUNT_LENGTH} characters of a D365 customer account",
                    key=str(customer.get("id")),
                )
            return account
    return customer_account(str(customer["id"]), prefix)


def synced_legal_entities(customer: Mapping[str, Any]) -> frozenset[str]:
    """The legal entities the customer was already imported into (custom field, lower case)."""
    value = custom_field(customer, LEGAL_ENTITIES_FIELD)
    if not isinstance(value, list):
        return frozenset()
    return frozenset(str(item).lower() for item in value if item)


def legal_entity_for(
    legal_entities: Sequence[LegalEntitySettings],
    *,
    store: str | None = None,
    countries: Iterable[str | None] = (),
) -> LegalEntitySettings:
    """Route by Store key first, then by the first country that a legal entity lists (C13)."""
    if store:
        for entity in legal_entities:
            if store in entity.stores:
                return entity
    tried = [c.upper() for c in countries if c]
    for country in tried:
        for entity in legal_entities:
            if country in (c.upper() for c in entity.countries):
                return entity
    shown = ", ".join(dict.fromkeys(tried)) or "(none)"
    raise MappingError(
        f"no legal entity for store {store or '(none)'} / country {shown}: add the store to "
        "[[legal_entities]] stores or the country to countries"
    )


def _address(customer: Mapping[str, Any], id_field: str, ids_field: str) -> dict[str, Any] | None:
    addresses = [a for a in customer.get("addresses") or () if isinstance(a, Mapping)]
    by_id = {a.get("id"): a for a in addresses}
    chosen = by_id.get(customer.get(id_field))
    if chosen is None:
        chosen = next((by_id[i] for i in customer.get(ids_field) or () if i in by_id), None)
    return dict(chosen) if chosen is not None else None


def _delivery_address(customer: Mapping[str, Any]) -> dict[str, Any] | None:
    found = _address(customer, "defaultShippingAddressId", "shippingAddressIds")
    if found is None and customer.get("addresses"):
        first = customer["addresses"][0]
        found = dict(first) if isinstance(first, Mapping) else None
    return found


def _invoice_address(customer: Mapping[str, Any]) -> dict[str, Any] | None:
    return _address(customer, "defaultBillingAddressId", "billingAddressIds") or _delivery_address(
        customer
    )


def customer_legal_entities(
    customer: Mapping[str, Any], legal_entities: Sequence[LegalEntitySettings]
) -> tuple[LegalEntitySettings, ...]:
    """Where a customer belongs: the legal entities of its Stores, else of its address country,
    plus those it was already imported into (so updates reach every copy)."""
    stores = [str(s.get("key")) for s in customer.get("stores") or () if s.get("key")]
    found: dict[str, LegalEntitySettings] = {}
    for store in stores:
        for entity in legal_entities:
            if store in entity.stores:
                found.setdefault(entity.id, entity)
    if not found:
        candidates: list[str | None] = [
            (address or {}).get("country")
            for address in (_delivery_address(customer), _invoice_address(customer))
        ]
        try:
            entity = legal_entity_for(legal_entities, countries=candidates)
        except MappingError:
            pass
        else:
            found[entity.id] = entity
    for entity in legal_entities:
        if entity.id in synced_legal_entities(customer):
            found.setdefault(entity.id, entity)
    if not found:
        countries = [
            str(a.get("country")) for a in customer.get("addresses") or () if a.get("country")
        ]
        raise MappingError(
            f"no legal entity for customer {customer.get('id')}: stores "
            f"[{', '.join(stores)}], countries [{', '.join(dict.fromkeys(countries))}]",
            key=str(customer.get("id")),
        )
    return tuple(found.values())


def clip(value: Any, length: int) -> str | None:
    """Text for a D365 field of at most `length` characters; blank becomes None (not sent)."""
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text[:length] or None


def address_fields(address: Mapping[str, Any] | None, prefix: str) -> dict[str, Any]:
    """A commercetools Address as D365 `{prefix}Street/City/ZipCode/State/CountryRegionISOCode`."""
    if not address:
        return {}
    street = " ".join(
        str(part).strip()
        for part in (address.get("streetName"), address.get("streetNumber"))
        if part and str(part).strip()
    )
    extra = address.get("additionalStreetInfo")
    if extra:
        street = f"{street}, {extra}" if street else str(extra)
    fields = {
        f"{prefix}Street": clip(street, 250),
        f"{prefix}City": clip(address.get("city"), 250),
        f"{prefix}ZipCode": clip(address.get("postalCode"), 250),
        f"{prefix}State": clip(address.get("state") or address.get("region"), 250),
        f"{prefix}CountryRegionISOCode": clip(address.get("country"), 250),
    }
    return {name: value for name, value in fields.items() if value is not None}


def d365_customer_group(group_key: str | None, default: str) -> str:
    """The D365 customer group of a commercetools one: 'd365-20' → '20' (the keys that setup
    creates from D365's groups); any other group, or none, → the configured default."""
    if group_key and group_key.startswith(_GROUP_PREFIX) and len(group_key) > len(_GROUP_PREFIX):
        return group_key[len(_GROUP_PREFIX) :][:10]
    return default


def _vat_id(customer: Mapping[str, Any]) -> str | None:
    value = customer.get("vatId") or custom_field(customer, "vatId")
    if not value:
        return None
    text = str(value).strip()
    if len(text) > 20:
        # a cut VAT number is a wrong VAT number on invoices: refuse it instead
        raise MappingError(
            f"customer {customer.get('id')}: VAT id '{text}' is longer than the 20 characters of "
            "D365's TaxExemptNumber",
            key=str(customer.get("id")),
        )
    return text


def customer_row(
    customer: Mapping[str, Any],
    legal_entity: LegalEntitySettings,
    *,
    account: str,
    default_group: str,
    group_key: str | None = None,
) -> dict[str, Any]:
    """The CustomersV3 row of a customer in one legal entity (M10–M13).

    A company name makes an Organization party, else a Person (first and last name; a customer
    with neither gets the local part of the e-mail as last name, which D365 needs for a person).
    Addresses: the default shipping one as delivery address, the default billing one as invoice
    address (each falling back to the other, then to the first address).
    """
    company = clip(customer.get("companyName"), 100)
    delivery = _delivery_address(customer)
    invoice = _invoice_address(customer)
    email = clip(customer.get("email"), 255)
    row: dict[str, Any] = {
        "dataAreaId": legal_entity.id,
        "CustomerAccount": account,
        "CustomerGroupId": d365_customer_group(group_key, default_group),
        "SalesCurrencyCode": legal_entity.currency,
        "PrimaryContactEmail": email,
    }
    if company:
        row["PartyType"] = "Organization"
        row["OrganizationName"] = company
    else:
        first = clip(customer.get("firstName"), 25)
        last = clip(customer.get("lastName"), 25)
        if not first and not last:
            last = clip((email or str(customer.get("id", ""))).split("@")[0], 25)
        row["PartyType"] = "Person"
        row["PersonFirstName"] = first
        row["PersonLastName"] = last
    locale = customer.get("locale")
    if locale:
        row["LanguageId"] = clip(str(locale).lower(), 7)
    phone = (delivery or {}).get("phone") or (delivery or {}).get("mobile")
    if phone:
        row["PrimaryContactPhone"] = clip(phone, 255)
    row.update(address_fields(delivery, "DeliveryAddress"))
    row.update(address_fields(invoice, "InvoiceAddress"))
    vat = _vat_id(customer)
    if vat:
        row["TaxExemptNumber"] = vat
    return {name: value for name, value in row.items() if value is not None}


def _same(current: Any, desired: Any) -> bool:
    if isinstance(current, list) and isinstance(desired, list):
        return sorted(map(str, current)) == sorted(map(str, desired))  # Set fields
    return bool(current == desired)


def custom_fields_actions(
    current: Mapping[str, Any],
    type_key: str,
    fields: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Actions that make the resource's custom fields hold `fields`, touching nothing else.

    No custom type yet: `setCustomType` with our type. Our type: `setCustomField` per differing
    field. Another type: `setCustomField` too, never `setCustomType`, which would wipe the
    fields the storefront keeps there (that type needs our fields; see d365ct setup).
    """
    custom = current.get("custom")
    if not custom:
        return [
            {
                "action": "setCustomType",
                "type": {"typeId": "type", "key": type_key},
                "fields": dict(fields),
            }
        ]
    held = custom.get("fields") or {}
    return [
        {"action": "setCustomField", "name": name, "value": value}
        for name, value in fields.items()
        if not _same(held.get(name), value)
    ]


def customer_write_back_actions(
    current: Mapping[str, Any],
    *,
    account: str,
    legal_entities: Iterable[str],
) -> list[dict[str, Any]]:
    """Record the D365 account on the customer: `setCustomerNumber` only when none is set (it is
    immutable), and the custom fields (account, legal entities it now exists in)."""
    actions: list[dict[str, Any]] = []
    if not current.get("customerNumber"):
        actions.append({"action": "setCustomerNumber", "customerNumber": account})
    entities = sorted(synced_legal_entities(current) | {e.lower() for e in legal_entities})
    actions.extend(
        custom_fields_actions(
            current,
            CUSTOMER_TYPE_KEY,
            {ACCOUNT_FIELD: account, LEGAL_ENTITIES_FIELD: entities},
        )
    )
    return actions
