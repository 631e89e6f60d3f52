"""The DMF client against d365sim and Azurite: uploads, imports, exports, errors and quirks."""

from __future__ import annotations

import asyncio
import io
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from d365ct.d365.auth import token_provider
from d365ct.d365.dmf import DmfActionError, DmfClient, ExecutionStatus, WriteUrl
from d365ct.d365.http import D365Http, RetryPolicy
from tests.d365.test_odata_reader import settings_for
from tests.d365sim.dmf_client import package
from tests.sim_fixtures import RunningSim


@pytest.fixture
async def dmf(sim: RunningSim, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DmfClient]:
    monkeypatch.setenv("D365CT_TEST_SECRET", sim.config.client_secret)
    async with httpx.AsyncClient(timeout=30) as client:
        settings = settings_for(sim)
        http = D365Http(
            client,
            settings.base_url,
            token_provider(settings, client),
            policy=RetryPolicy(base_delay=0.01, max_delay=0.05),
        )
        yield DmfClient(http)


async def wait_final(dmf: DmfClient, execution_id: str) -> ExecutionStatus:
    for _ in range(400):
        status = await dmf.status(execution_id)
        if status is not None and status.final:
            return status
        await asyncio.sleep(0.05)
    raise TimeoutError(execution_id)


def customers_package(tmp_path: Path, *accounts: tuple[str, str]) -> Path:
    rows = [
        {
            "CUSTOMERACCOUNT": account,
            "ORGANIZATIONNAME": f"Org {account}",
            "CUSTOMERGROUPID": group,
            "SALESCURRENCYCODE": "USD",
        }
        for account, group in accounts
    ]
    path = tmp_path / f"{uuid.uuid4()}.zip"
    path.write_bytes(package("dmf-client-test", [("Customers V3", rows)]))
    return path


async def test_import_with_a_bad_row_and_its_error_keys(
    fresh_sim: RunningSim, dmf: DmfClient, tmp_path: Path
) -> None:
    fresh_sim.config.faults.status_bad_requests = 2  # the transient 400 right after the start
    path = customers_package(tmp_path, ("DMF-1", "10"), ("DMF-2", "NOPE"))
    url = await dmf.upload_package(path, path.name)
    execution_id = await dmf.import_from_package(
        url, definition_group="dmf-client-test", legal_entity="usmf"
    )
    assert await dmf.status(execution_id) is None  # "Execution details were not found" at first
    assert await wait_final(dmf, execution_id) is ExecutionStatus.PARTIALLY_SUCCEEDED
    errors = await dmf.execution_errors(execution_id)
    assert len(errors) == 1 and "NOPE" in errors[0]
    assert await dmf.generate_error_keys_file(execution_id, "Customers V3") is True
    url = ""
    for _ in range(100):
        if url := await dmf.error_keys_file_url(execution_id, "Customers V3"):
            break
        await asyncio.sleep(0.05)
    assert await dmf.read_csv_file(url) == [{"CUSTOMERACCOUNT": "DMF-2"}]


async def test_expired_write_url_is_fetched_again(
    sim: RunningSim, dmf: DmfClient, tmp_path: Path
) -> None:
    sim.config.sas_seconds = 1
    fetched: list[WriteUrl] = []
    original = dmf.get_azure_write_url

    async def slow_first_url(name: str) -> WriteUrl:
        url = await original(name)
        fetched.append(url)
        if len(fetched) == 1:
            await asyncio.sleep(2.5)  # the first SAS expires before the upload starts
        return url

    dmf.get_azure_write_url = slow_first_url  # type: ignore[method-assign]
    path = customers_package(tmp_path, ("DMF-3", "10"))
    url = await dmf.upload_package(path, path.name)
    assert len(fetched) == 2 and url == fetched[1].blob_url
    async with httpx.AsyncClient() as client:
        blob = await client.get(url)
    assert blob.content == path.read_bytes()


async def test_export_round_trip_downloads_the_package(
    sim: RunningSim, dmf: DmfClient, tmp_path: Path
) -> None:
    sim.config.job_seconds = 2.0
    execution_id = await dmf.export_to_package(
        definition_group="d365ct-customers", legal_entity="demf"
    )
    assert await dmf.exported_package_url(execution_id) == ""  # not ready yet
    assert await wait_final(dmf, execution_id) is ExecutionStatus.SUCCEEDED
    url = await dmf.exported_package_url(execution_id)
    size = await dmf.download(url, tmp_path / "export.zip")
    assert size == (tmp_path / "export.zip").stat().st_size > 0
    with zipfile.ZipFile(tmp_path / "export.zip") as archive:
        data = archive.read("Customers V3.csv").decode("utf-16")
    rows = list(io.StringIO(data, newline=""))
    assert rows[0].startswith("DATAAREAID,CUSTOMERACCOUNT")
    assert all(line.startswith("demf,") for line in rows[1:])


async def test_refused_action_carries_d365s_reason(dmf: DmfClient, tmp_path: Path) -> None:
    path = customers_package(tmp_path, ("DMF-4", "10"))
    url = await dmf.upload_package(path, path.name)
    with pytest.raises(DmfActionError) as caught:
        await dmf.import_from_package(
            url, definition_group="d365ct-customers", legal_entity="usmf", overwrite=False
        )
    assert "exists and overwrite has not been specified" in str(caught.value)
