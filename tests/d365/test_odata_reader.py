"""The D365 adapter's auth + OData reader against d365sim over real HTTP, with injected faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from d365ct.config import D365Settings
from d365ct.d365.auth import token_provider
from d365ct.d365.http import D365Http, RetryPolicy
from d365ct.d365.odata import ODataReader
from d365ct.errors import CredentialError
from tests.sim_fixtures import RunningSim


def settings_for(sim: RunningSim, secret_env: str = "env:D365CT_TEST_SECRET") -> D365Settings:
    return D365Settings(
        base_url=sim.base_url,
        tenant_id=sim.config.tenant,
        client_id=sim.config.client_id,
        client_secret=secret_env,
        auth="oauth2",
        token_url=f"{sim.base_url}/{sim.config.tenant}/oauth2/v2.0/token",
    )


@pytest.fixture
async def reader(
    sim: RunningSim, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[ODataReader, list[str]]]:
    monkeypatch.setenv("D365CT_TEST_SECRET", sim.config.client_secret)
    retries: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        settings = settings_for(sim)
        http = D365Http(
            client,
            settings.base_url,
            token_provider(settings, client),
            policy=RetryPolicy(base_delay=0.01, max_delay=0.05),
            on_retry=lambda reason, attempt, delay: retries.append(reason),
        )
        yield ODataReader(http), retries


async def test_reads_every_page_of_a_legal_entity(
    sim: RunningSim, reader: tuple[ODataReader, list[str]]
) -> None:
    odata, _ = reader
    expected = await odata.count("WarehousesOnHandV2", legal_entity="demf")
    rows = [r async for r in odata.rows("WarehousesOnHandV2", legal_entity="DEMF")]
    assert len(rows) == expected > sim.config.page_size
    assert {r["dataAreaId"] for r in rows} == {"demf"}
    assert odata.calls == 1 + -(-expected // sim.config.page_size)


async def test_select_filter_and_single_get(reader: tuple[ODataReader, list[str]]) -> None:
    odata, _ = reader
    customers = [
        r
        async for r in odata.rows(
            "CustomersV3",
            legal_entity="usmf",
            select=["CustomerAccount", "CustomerGroupId"],
            filter="CustomerGroupId eq '20'",
        )
    ]
    assert customers and all(
        set(c) == {"@odata.etag", "CustomerAccount", "CustomerGroupId"} for c in customers
    )
    one = await odata.get(
        "CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": customers[0]["CustomerAccount"]}
    )
    assert one is not None and one["CustomerGroupId"] == "20"
    assert (
        await odata.get("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "O'Neil"}) is None
    )


async def test_throttling_storm_is_ridden_out(
    sim: RunningSim, reader: tuple[ODataReader, list[str]]
) -> None:
    odata, retries = reader
    expected = await odata.count("WarehousesOnHandV2", cross_company=True)
    sim.config.faults.throttle_rps = 4
    results = await asyncio.gather(
        *(
            _count_rows(odata, "WarehousesOnHandV2", legal_entity=company)
            for company in ("usmf", "demf", "usmf", "demf")
        )
    )
    assert sum(results) == 2 * expected
    assert "429" in retries


async def test_server_errors_are_retried(
    sim: RunningSim, reader: tuple[ODataReader, list[str]]
) -> None:
    odata, retries = reader
    odata.http.policy = RetryPolicy(max_attempts=12, base_delay=0.01, max_delay=0.05)
    expected = await odata.count("WarehousesOnHandV2", cross_company=True)
    sim.config.faults.error_rate = 0.4
    assert await _count_rows(odata, "WarehousesOnHandV2", cross_company=True) == expected
    injected = httpx.get(f"{sim.base_url}/_sim/counters").json().get("5xx", 0)
    assert injected > 0
    assert len([r for r in retries if r.startswith("HTTP 5")]) == injected


async def test_token_expiry_mid_read_is_refreshed(
    sim: RunningSim, reader: tuple[ODataReader, list[str]]
) -> None:
    odata, _ = reader
    sim.config.token_seconds = 1
    pages = 0
    async for _ in odata.pages("WarehousesOnHandV2", legal_entity="usmf"):
        pages += 1
        if pages <= 2:
            await asyncio.sleep(1.2)  # the token expires between pages
    assert pages > 2


async def test_wrong_secret_is_a_credential_error_naming_the_client(
    sim: RunningSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("D365CT_WRONG_SECRET", "not-the-secret")
    async with httpx.AsyncClient() as client:
        settings = settings_for(sim, "env:D365CT_WRONG_SECRET")
        http = D365Http(client, settings.base_url, token_provider(settings, client))
        with pytest.raises(CredentialError) as caught:
            await ODataReader(http).count("CustomersV3")
    assert sim.config.client_id in str(caught.value)
    assert "AADSTS7000215" in str(caught.value)
    assert "not-the-secret" not in str(caught.value)


async def _count_rows(odata: ODataReader, entity_set: str, **options: object) -> int:
    return sum([1 async for _ in odata.rows(entity_set, **options)])


async def test_v1_resource_form_for_ad_fs_style_endpoints(
    sim: RunningSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("D365CT_TEST_SECRET", sim.config.client_secret)
    settings = settings_for(sim).model_copy(
        update={
            "token_url": f"{sim.base_url}/{sim.config.tenant}/oauth2/token",
            "token_resource": sim.base_url,
        }
    )
    async with httpx.AsyncClient() as client:
        http = D365Http(client, settings.base_url, token_provider(settings, client))
        assert await ODataReader(http).count("LegalEntities") == 2
