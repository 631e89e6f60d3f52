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


def full_settings(sim_url: str, ct_url: str, project_key: str, workdir: str, **sections: Any):  # type: ignore[no-untyped-def]
    """Settings for a whole flow: d365sim, the commercetools mock (scope in the query, as the
    mock wants it), the two seeded legal entities and a warehouse → channel map."""
    from d365ct.config import CONCERNS, Settings, client_scopes

    secret = {"client_secret": f"env:{SECRET_ENV}"}
    clients = {
        concern: {
            "client_id": f"{concern}-client",
            **secret,
            "scopes": client_scopes(concern, project_key),
        }
        for concern in CONCERNS
    }
    data: dict[str, Any] = {
        "d365": sim_settings(sim_url).model_dump(mode="json"),
        "store": {"url": f"sqlite:///{workdir}/d365ct.sqlite", "workdir": f"{workdir}/work"},
        "commercetools": {
            "project_key": project_key,
            "api_url": ct_url,
            "auth_url": ct_url,
            "scope_in_query": True,
            "clients": clients,
        },
        "legal_entities": [
            {"id": "usmf", "currency": "USD", "stores": ["us-store"], "countries": ["US"]},
            {"id": "demf", "currency": "EUR", "stores": ["de-store"], "countries": ["DE"]},
        ],
        # usmf 24 and demf DE-03 stay unmapped on purpose: their rows must become errors.
        "warehouses": [
            {"legal_entity": le, "warehouse": wh, "supply_channel": f"{le}-{wh}".lower()}
            for le, wh in (
                ("usmf", "11"),
                ("usmf", "12"),
                ("usmf", "21"),
                ("demf", "DE-01"),
                ("demf", "DE-02"),
            )
        ],
    }
    data.update(sections)
    return Settings.model_validate(data)
