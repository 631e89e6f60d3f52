"""Shared setup for workflow tests: D365 settings pointing at d365sim and records to import."""

from __future__ import annotations

from typing import Any

from d365ct.config import D365Settings
from d365ct.flows.dmf_jobs import ImportRequest

SECRET_ENV = "D365CT_TEST_SECRET"


def sim_settings(base_url: str, **overrides: Any) -> D365Settings:
    values: dict[str, Any] = {
        "base_url": base_url,
        "tenant_id": "sandbox",
        "client_id": "sandbox-client",
        "client_secret": f"env:{SECRET_ENV}",
        "auth": "oauth2",
        "authority": base_url,
        "poll_interval_seconds": 0.1,
        "poll_max_attempts": 600,
    }
    values.update(overrides)
    return D365Settings(**values)


def customer(account: str, group: str = "10") -> dict[str, Any]:
    return {
        "dataAreaId": "usmf",
        "CustomerAccount": account,
        "OrganizationName": f"Org {account}",
        "CustomerGroupId": group,
        "SalesCurrencyCode": "USD",
        "PrimaryContactEmail": f"{account.lower()}@example.com",
    }


def customers_request(*rows: dict[str, Any], legal_entity: str = "usmf") -> ImportRequest:
    return ImportRequest(
        flow="customers",
        legal_entity=legal_entity,
        definition_group="d365ct-customer-import",
        entities=("Customers V3",),
        units=tuple((("Customers V3", {**row, "dataAreaId": legal_entity}),) for row in rows),
        unit_keys=tuple(row["CustomerAccount"] for row in rows),
        key_fields={"Customers V3": "CustomerAccount"},
    )
