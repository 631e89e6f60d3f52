"""U4 customer master against the real peers: d365sim (+ Azurite), the commercetools mock, DBOS
on SQLite; CustomerCreated and update messages built as commercetools sends them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from d365ct.flows.customers import FLOW
from d365ct.flows.orders import process_inbox
from d365ct.flows.replay import replay_entries
from d365ct.mapping.customers import ACCOUNT_FIELD, LEGAL_ENTITIES_FIELD, customer_account
from tests.ct_fixtures import CtMock
from tests.flows.test_orders import (
    CommerceEnv,
    create_customer,
    ct_get,
    import_order,
    make_commerce_env,
    message,
    order_created,
    seed_commercetools,
)
from tests.sim_fixtures import RunningSim

US_ADDRESS = {
    "streetName": "Pine St",
    "streetNumber": "9",
    "city": "Seattle",
    "postalCode": "98101",
    "state": "WA",
    "country": "US",
}
DE_ADDRESS = {
    "streetName": "Hafenstraße",
    "streetNumber": "3",
    "city": "Hamburg",
    "postalCode": "20095",
    "country": "DE",
}


@pytest.fixture
def env(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CommerceEnv]:
    yield from make_commerce_env(fresh_sim, ct_mock, tmp_path, monkeypatch)


@pytest.fixture
async def commerce(env: CommerceEnv) -> CommerceEnv:
    await seed_commercetools(env)
    async with env.ct() as ct:
        for key, name in (("d365-20", "Wholesale"), ("d365-77", "Unknown in D365")):
            await ct.create("customer-groups", {"key": key, "groupName": name})
    return env


async def in_group(
    env: CommerceEnv, customer: dict[str, Any], key: str, vat_id: str | None = None
) -> dict[str, Any]:
    """The mock drops customerGroup and vatId from a CustomerDraft; update actions keep them."""
    actions: list[dict[str, Any]] = [
        {"action": "setCustomerGroup", "customerGroup": {"typeId": "customer-group", "key": key}}
    ]
    if vat_id:
        actions.append({"action": "setVatId", "vatId": vat_id})
    async with env.ct() as ct:
        return await ct.update("customers", customer["id"], customer["version"], actions)


def created(env: CommerceEnv, customer: dict[str, Any]) -> dict[str, Any]:
    return message(env.mock.project_key, "customer", customer, "CustomerCreated", customer=customer)


def account(env: CommerceEnv, customer: dict[str, Any]) -> str:
    return customer_account(customer["id"], env.settings.customers.account_prefix)


def d365_customers(env: CommerceEnv, acct: str) -> list[dict[str, Any]]:
    return env.sim_rows("CustomersV3", f"CustomerAccount eq '{acct}'")


async def test_new_customers_are_imported_and_get_their_account(commerce: CommerceEnv) -> None:
    env = commerce
    company = await create_customer(
        env,
        companyName="Contoso Retail Inc",
        stores=[{"typeId": "store", "key": "us-store"}],
        addresses=[US_ADDRESS],
        defaultShippingAddress=0,
        defaultBillingAddress=0,
    )
    company = await in_group(env, company, "d365-20", vat_id="US-4711")
    person = await create_customer(env, addresses=[DE_ADDRESS], defaultShippingAddress=0)
    signup = await create_customer(env)  # no store, no address: its first order decides
    for customer in (company, person, signup):
        assert env.deliver(created(env, customer)) == "accepted"

    summary = await process_inbox(env.flows, env.inbox, worker_id="test")

    statuses = {r.resource_id: r.status for r in summary.customers}
    assert statuses == {company["id"]: "done", person["id"]: "done", signup["id"]: "skipped"}
    assert env.sim_stats()["imports"] == 2  # one package per legal entity
    (row,) = d365_customers(env, account(env, company))
    assert row["dataAreaId"] == "usmf" and row["PartyType"] == "Organization"
    assert row["OrganizationName"] == "Contoso Retail Inc"
    assert row["CustomerGroupId"] == "20"  # the d365-20 group maps back to D365's 20
    assert row["TaxExemptNumber"] == "US-4711"
    assert row["DeliveryAddressCity"] == "Seattle" and row["InvoiceAddressState"] == "WA"
    assert row["SalesCurrencyCode"] == "USD"
    (row,) = d365_customers(env, account(env, person))
    assert row["dataAreaId"] == "demf" and row["PersonLastName"] == "Lovelace"
    assert row["CustomerGroupId"] == env.settings.customers.customer_group
    assert row["DeliveryAddressStreet"] == "Hafenstraße 3"
    assert row["PrimaryContactEmail"] == person["email"]
    for customer, company_id in ((company, "usmf"), (person, "demf")):
        current = await ct_get(env, "customers", customer["id"])
        assert current["customerNumber"] == account(env, customer)
        assert current["custom"]["fields"][ACCOUNT_FIELD] == account(env, customer)
        assert current["custom"]["fields"][LEGAL_ENTITIES_FIELD] == [company_id]
    assert d365_customers(env, account(env, signup)) == []
    stored = env.inbox.get(summary.customers[2].message_id)
    assert stored is not None and stored.status == "processed"
    assert "imported with its first order" in (stored.outcome or "")


async def test_updates_reimport_the_same_account_and_unchanged_ones_cost_nothing(
    commerce: CommerceEnv,
) -> None:
    env = commerce
    customer = await create_customer(env, addresses=[DE_ADDRESS], defaultShippingAddress=0)
    env.deliver(created(env, customer))
    await process_inbox(env.flows, env.inbox, worker_id="test")
    assert env.sim_stats()["imports"] == 1

    moved = {**DE_ADDRESS, "city": "Bremen", "postalCode": "28195", "key": "new"}
    async with env.ct() as ct:
        current = await ct_get(env, "customers", customer["id"])
        updated = await ct.update(
            "customers",
            customer["id"],
            current["version"],
            [{"action": "addAddress", "address": moved}],
        )
        address_id = next(a["id"] for a in updated["addresses"] if a.get("key") == "new")
        updated = await ct.update(
            "customers",
            customer["id"],
            updated["version"],
            [{"action": "setDefaultShippingAddress", "addressId": address_id}],
        )
    added = message(
        env.mock.project_key, "customer", updated, "CustomerAddressAdded", sequence=2, address=moved
    )
    assert env.deliver(added) == "accepted"
    await process_inbox(env.flows, env.inbox, worker_id="test")

    (row,) = d365_customers(env, account(env, customer))  # the same account, not a second one
    assert row["DeliveryAddressCity"] == "Bremen"
    assert env.sim_stats()["imports"] == 2

    same = message(
        env.mock.project_key,
        "customer",
        updated,
        "CustomerAddressChanged",
        sequence=3,
        address=moved,
    )
    env.deliver(same)
    summary = await process_inbox(env.flows, env.inbox, worker_id="test")
    (result,) = summary.customers
    assert "unchanged" in result.outcome
    assert env.sim_stats()["imports"] == 2  # nothing changed, nothing imported


async def test_a_customer_d365_refuses_is_queued_and_replays_after_the_fix(
    commerce: CommerceEnv,
) -> None:
    env = commerce
    customer = await create_customer(env, stores=[{"typeId": "store", "key": "us-store"}])
    customer = await in_group(env, customer, "d365-77")
    env.deliver(created(env, customer))

    summary = await process_inbox(env.flows, env.inbox, worker_id="test")

    assert summary.customers[0].status == "failed"
    (entry,) = env.errors.list(flow=FLOW)
    assert entry.business_key == customer["id"] and entry.step == "import"
    assert "'77'" in entry.error and "Customer groups" in entry.error  # D365's own words
    assert entry.correlation["execution_id"] and entry.correlation["message_id"]
    unsynced = await ct_get(env, "customers", customer["id"])
    assert not unsynced.get("customerNumber")

    # the operator moves the customer to a group D365 knows, then replays
    async with env.ct() as ct:
        await ct.update(
            "customers",
            customer["id"],
            unsynced["version"],
            [
                {
                    "action": "setCustomerGroup",
                    "customerGroup": {"typeId": "customer-group", "key": "d365-20"},
                }
            ],
        )
    (outcome,) = await replay_entries(env.settings, env.engine, [entry])
    assert outcome.ok, outcome
    (row,) = d365_customers(env, account(env, customer))
    assert row["CustomerGroupId"] == "20"
    synced = await ct_get(env, "customers", customer["id"])
    assert synced["customerNumber"] == account(env, customer)
    closed = env.errors.get(entry.id)
    assert closed is not None and closed.status == "replayed"


async def test_a_customer_d365_already_has_is_not_imported_again(commerce: CommerceEnv) -> None:
    """A customer migrated with its D365 account as customerNumber orders: the account is found
    in D365 (OData) and only recorded on the customer; no customer import."""
    env = commerce
    (seeded,) = env.sim_rows(
        "CustomersV3", "dataAreaId eq 'usmf' and CustomerAccount eq 'US-000003'"
    )
    customer = await create_customer(env, customerNumber="US-000003")
    order = await import_order(
        env, [("D0001", 1, 1000)], order_number="MIG-1", customer_id=customer["id"]
    )
    env.deliver(order_created(env, order))

    summary = await process_inbox(env.flows, env.inbox, worker_id="test")

    assert summary.counts()["orders_posted"] == 1
    assert env.sim_stats()["imports"] == 1  # the order package only
    headers, _ = env.order_in_d365("MIG-1")
    assert headers[0]["OrderingCustomerAccountNumber"] == "US-000003"
    current = await ct_get(env, "customers", customer["id"])
    assert current["custom"]["fields"][LEGAL_ENTITIES_FIELD] == ["usmf"]
    assert d365_customers(env, "US-000003") == [seeded]  # untouched
