"""Conformance: the DMF package API end to end over HTTP and Azurite, as the reference describes."""

from __future__ import annotations

import io
import json
import time
import uuid
import zipfile

import httpx
import pytest

from tests.d365sim.dmf_client import Dmf, package
from tests.sim_fixtures import RunningSim

SUBTYPE = "Microsoft.Dynamics.DataEntities.EcoResProductSubtype"


def _customer(account: str, group: str = "10") -> dict[str, str]:
    return {
        "CUSTOMERACCOUNT": account,
        "ORGANIZATIONNAME": f"Fabrikam {account}",
        "CUSTOMERGROUPID": group,
        "SALESCURRENCYCODE": "USD",
        "PRIMARYCONTACTEMAIL": f"{account.lower()}@example.com",
        "DELIVERYADDRESSCITY": "Seattle",
        "DELIVERYADDRESSCOUNTRYREGIONISOCODE": "US",
    }


def _first_item(client: httpx.Client) -> str:
    rows = client.get(
        "/data/ReleasedProductsV2",
        params={"$filter": f"ProductSubType eq {SUBTYPE}'Product'", "$top": "1"},
    ).json()["value"]
    return str(rows[0]["ItemNumber"])


def test_import_round_trip_with_a_bad_row(fresh_sim: RunningSim) -> None:
    with fresh_sim.client() as client:
        dmf = Dmf(client)
        item = _first_item(client)
        data = package(
            "d365ct-orders-test",
            [
                ("Customers V3", [_customer("WEB-0001"), _customer("WEB-0002", group="XX")]),
                (
                    "Sales order headers V2",
                    [
                        {
                            "SALESORDERNUMBER": "CT-1001",
                            "ORDERINGCUSTOMERACCOUNTNUMBER": "WEB-0001",
                            "CURRENCYCODE": "USD",
                        }
                    ],
                ),
                (
                    "Sales order lines V2",
                    [
                        {
                            "SALESORDERNUMBER": "CT-1001",
                            "LINENUMBER": "1",
                            "ITEMNUMBER": item,
                            "ORDEREDSALESQUANTITY": "2",
                            "SALESPRICE": "19.99",
                        },
                        {
                            "SALESORDERNUMBER": "CT-1001",
                            "LINENUMBER": "2",
                            "ITEMNUMBER": "NO-SUCH-ITEM",
                            "ORDEREDSALESQUANTITY": "1",
                            "SALESPRICE": "5",
                        },
                    ],
                ),
            ],
        )
        url = dmf.upload(data, f"{uuid.uuid4()}.zip")
        execution_id = dmf.value(
            "ImportFromPackage",
            packageUrl=url,
            definitionGroupId="d365ct-orders-test",
            executionId="",
            execute=True,
            overwrite=True,
            legalEntityId="USMF",
        )
        assert isinstance(execution_id, str) and execution_id.startswith("d365ct-orders-test-")
        assert dmf.wait(execution_id) == "PartiallySucceeded"

        errors = json.loads(str(dmf.value("GetExecutionErrors", executionId=execution_id)))
        assert any("XX" in e and "Customer groups" in e for e in errors)
        assert any("NO-SUCH-ITEM" in e for e in errors)

        assert (
            dmf.value(
                "GenerateImportTargetErrorKeysFile",
                executionId=execution_id,
                entityName="Customers V3",
            )
            is True
        )
        keys_url = ""
        for _ in range(100):
            keys_url = str(
                dmf.value(
                    "GetImportTargetErrorKeysFileUrl",
                    executionId=execution_id,
                    entityName="Customers V3",
                )
            )
            if keys_url:
                break
            time.sleep(0.05)
        keys_file = httpx.get(keys_url)
        assert keys_file.content.startswith(b"\xff\xfe")
        text = keys_file.content[2:].decode("utf-16-le")
        assert text.splitlines()[0] == "CUSTOMERACCOUNT" and "WEB-0002" in text
        assert "WEB-0001" not in text
        no_errors = dmf.value(
            "GenerateImportTargetErrorKeysFile",
            executionId=execution_id,
            entityName="Sales order headers V2",
        )
        assert no_errors is False
        staging = dmf.value(
            "GetImportStagingErrorFileUrl", executionId=execution_id, entityName="Customers V3"
        )
        assert "WEB-0002" in httpx.get(str(staging)).content[2:].decode("utf-16-le")

        good = client.get("/data/CustomersV3(dataAreaId='usmf',CustomerAccount='WEB-0001')")
        bad = client.get("/data/CustomersV3(dataAreaId='usmf',CustomerAccount='WEB-0002')")
        lines = client.get(
            "/data/SalesOrderLines", params={"$filter": "SalesOrderNumber eq 'CT-1001'"}
        ).json()["value"]
    assert good.status_code == 200 and good.json()["CustomerGroupId"] == "10"
    assert bad.status_code == 404
    assert [(line["LineNumber"], line["ItemNumber"]) for line in lines] == [(1, item)]
    assert lines[0]["LineAmount"] == pytest.approx(39.98)
    assert lines[0]["InventoryLotId"]


def test_header_charges_need_their_sales_order(fresh_sim: RunningSim) -> None:
    with fresh_sim.client() as client:
        dmf = Dmf(client)
        item = _first_item(client)
        header = {
            "SALESORDERNUMBER": "CT-2001",
            "ORDERINGCUSTOMERACCOUNTNUMBER": "US-000002",
            "CURRENCYCODE": "USD",
        }
        line = {
            "SALESORDERNUMBER": "CT-2001",
            "LINENUMBER": "1",
            "ITEMNUMBER": item,
            "ORDEREDSALESQUANTITY": "1",
            "SALESPRICE": "10",
        }

        def charge(order: str) -> dict[str, str]:
            return {
                "SALESORDERNUMBER": order,
                "CHARGELINENUMBER": "1",
                "SALESCHARGECODE": "FREIGHT",
                "FIXEDCHARGEAMOUNT": "4.90",
                "CHARGEACCOUNTINGCURRENCYCODE": "USD",
            }

        data = package(
            "charges",
            [
                ("Sales order headers V2", [header]),
                ("Sales order lines V2", [line]),
                ("Sales order header charges V2", [charge("CT-2001"), charge("CT-NOPE")]),
            ],
        )
        url = dmf.upload(data, f"{uuid.uuid4()}.zip")
        execution_id = dmf.value(
            "ImportFromPackage",
            packageUrl=url,
            definitionGroupId="charges",
            executionId="",
            execute=True,
            overwrite=True,
            legalEntityId="usmf",
        )
        assert dmf.wait(str(execution_id)) == "PartiallySucceeded"
        errors = json.loads(str(dmf.value("GetExecutionErrors", executionId=execution_id)))
        charges = client.get(
            "/data/SalesOrderHeaderChargesV2",
            params={"$filter": "SalesOrderNumber eq 'CT-2001' or SalesOrderNumber eq 'CT-NOPE'"},
        ).json()["value"]
    assert any("CT-NOPE" in e and "Sales orders" in e for e in errors), errors
    held = [(c["SalesOrderNumber"], c["SalesChargeCode"], c["ChargeCategory"]) for c in charges]
    assert held == [("CT-2001", "FREIGHT", "Fixed")]  # the category defaults to a fixed amount
    assert charges[0]["FixedChargeAmount"] == pytest.approx(4.9)


def test_import_is_an_upsert_by_key(fresh_sim: RunningSim) -> None:
    with fresh_sim.client() as client:
        dmf = Dmf(client)
        for city in ("Seattle", "Redmond"):
            row = {**_customer("WEB-0100"), "DELIVERYADDRESSCITY": city}
            url = dmf.upload(package("upsert", [("Customers V3", [row])]), f"{uuid.uuid4()}.zip")
            execution_id = dmf.value(
                "ImportFromPackage",
                packageUrl=url,
                definitionGroupId="upsert",
                executionId="",
                execute=True,
                overwrite=True,
                legalEntityId="usmf",
            )
            assert dmf.wait(str(execution_id)) == "Succeeded"
        rows = client.get(
            "/data/CustomersV3", params={"$filter": "CustomerAccount eq 'WEB-0100'"}
        ).json()["value"]
    assert [r["DeliveryAddressCity"] for r in rows] == ["Redmond"]


def test_export_round_trip(sim: RunningSim) -> None:
    sim.config.job_seconds = 2.0
    with sim.client() as client:
        dmf = Dmf(client)
        execution_id = str(
            dmf.value(
                "ExportToPackage",
                definitionGroupId="d365ct-customers",
                packageName="customers",
                executionId="",
                reExecute=False,
                legalEntityId="usmf",
            )
        )
        assert dmf.value("GetExportedPackageUrl", executionId=execution_id) == ""
        assert dmf.wait(execution_id) == "Succeeded"
        url = str(dmf.value("GetExportedPackageUrl", executionId=execution_id))
        expected = int(
            client.get(
                "/data/CustomersV3/$count",
                params={"cross-company": "true", "$filter": "dataAreaId eq 'usmf'"},
            ).text
        )
    download = httpx.get(url)  # no auth header: the SAS is the credential
    assert download.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(download.content))
    names = set(archive.namelist())
    assert {"Manifest.xml", "PackageHeader.xml", "Customers V3.csv"} <= names
    for name in ("Manifest.xml", "PackageHeader.xml", "Customers V3.csv"):
        assert archive.read(name).startswith(b"\xff\xfe"), name
    manifest = archive.read("Manifest.xml")[2:].decode("utf-16-le")
    assert "<EntityName>Customers V3</EntityName>" in manifest
    assert "<InputFilePath>Customers V3.csv</InputFilePath>" in manifest
    data = archive.read("Customers V3.csv")[2:].decode("utf-16-le")
    lines = data.split("\r\n")
    assert lines[0].split(",")[:2] == ["DATAAREAID", "CUSTOMERACCOUNT"]
    assert len([line for line in lines[1:] if line]) == expected > 0


def test_export_with_unknown_project_fails_in_the_job(sim: RunningSim) -> None:
    with sim.client() as client:
        dmf = Dmf(client)
        execution_id = str(
            dmf.value("ExportToPackage", definitionGroupId="no-such-project", legalEntityId="usmf")
        )
        assert dmf.wait(execution_id) == "Failed"
        errors = json.loads(str(dmf.value("GetExecutionErrors", executionId=execution_id)))
    assert any("no-such-project" in e for e in errors)


def test_unknown_execution_id_gives_the_documented_error(sim: RunningSim) -> None:
    with sim.client() as client:
        response = Dmf(client).call("GetExecutionSummaryStatus", executionId="nope-123")
    assert response.status_code == 400
    inner = response.json()["error"]["innererror"]
    assert inner["message"].endswith("Execution details were not found for execution id: nope-123")
    assert inner["type"] == "System.InvalidOperationException"
    assert response.json()["error"]["message"] == "An error has occurred."


def test_transient_bad_requests_on_early_status_polls(sim: RunningSim) -> None:
    sim.config.faults.status_bad_requests = 2
    with sim.client() as client:
        dmf = Dmf(client)
        execution_id = str(
            dmf.value("ExportToPackage", definitionGroupId="d365ct-onhand", legalEntityId="demf")
        )
        first = dmf.call("GetExecutionSummaryStatus", executionId=execution_id)
        second = dmf.call("GetExecutionSummaryStatus", executionId=execution_id)
        third = dmf.call("GetExecutionSummaryStatus", executionId=execution_id)
    assert (first.status_code, second.status_code, third.status_code) == (400, 400, 200)


def test_overwrite_rules_for_existing_projects(fresh_sim: RunningSim) -> None:
    with fresh_sim.client() as client:
        dmf = Dmf(client)
        data = package("d365ct-customers", [("Customers V3", [_customer("WEB-0200")])])
        url = dmf.upload(data, f"{uuid.uuid4()}.zip")
        refused = dmf.call(
            "ImportFromPackage",
            packageUrl=url,
            definitionGroupId="d365ct-customers",
            executionId="",
            execute=True,
            overwrite=False,
            legalEntityId="usmf",
        )
        accepted = dmf.call(
            "ImportFromPackage",
            packageUrl=url,
            definitionGroupId="new-project-1",
            executionId="",
            execute=True,
            overwrite=False,
            legalEntityId="usmf",
        )
        again = dmf.call(
            "ImportFromPackage",
            packageUrl=url,
            definitionGroupId="new-project-1",
            executionId="",
            execute=True,
            overwrite=False,
            legalEntityId="usmf",
        )
    assert refused.status_code == 400
    assert refused.json()["error"]["innererror"]["message"].endswith(
        "The data project 'd365ct-customers' exists and overwrite has not been specified."
    )
    assert accepted.status_code == 200
    assert again.status_code == 400


def test_bare_file_instead_of_a_package_is_rejected(sim: RunningSim) -> None:
    with sim.client() as client:
        dmf = Dmf(client)
        url = dmf.upload(b"\xff\xfe" + "CUSTOMERACCOUNT\r\n".encode("utf-16-le"), "bare.csv")
        response = dmf.call(
            "ImportFromPackage",
            packageUrl=url,
            definitionGroupId=f"bare-{uuid.uuid4()}",
            executionId="",
            execute=True,
            overwrite=True,
            legalEntityId="usmf",
        )
    assert response.status_code == 400
    assert "PackageHeader.xml" in response.json()["error"]["innererror"]["message"]


def test_write_url_is_double_encoded_and_expires(sim: RunningSim) -> None:
    sim.config.sas_seconds = 1
    with sim.client() as client:
        response = Dmf(client).call("GetAzureWriteUrl", uniqueFileName="expiring.zip")
        body = response.json()
        assert body["@odata.context"].endswith("$metadata#Edm.String")
        assert isinstance(body["value"], str)
        inner = json.loads(body["value"])
        assert set(inner) == {"BlobId", "BlobUrl"}
        assert inner["BlobId"].startswith("{") and inner["BlobId"].endswith("}")
        time.sleep(2.5)
        late = httpx.put(inner["BlobUrl"], content=b"x", headers={"x-ms-blob-type": "BlockBlob"})
        assert late.status_code == 403
        sim.config.sas_seconds = 1800
        fresh = json.loads(
            Dmf(client).call("GetAzureWriteUrl", uniqueFileName="expiring.zip").json()["value"]
        )
        put = httpx.put(fresh["BlobUrl"], content=b"x", headers={"x-ms-blob-type": "BlockBlob"})
        assert put.status_code == 201


def test_throttling_answers_429_with_retry_after(sim: RunningSim) -> None:
    sim.config.faults.throttle_rps = 5
    with sim.client() as client:
        started = time.monotonic()
        statuses = [client.get("/data/LegalEntities") for _ in range(15)]
        elapsed = time.monotonic() - started
    throttled = [r for r in statuses if r.status_code == 429]
    # 5 per one-second window: a slow machine spreads the 15 requests over more windows.
    assert 5 <= len(statuses) - len(throttled) <= 5 * (int(elapsed) + 1)
    assert throttled
    assert all(int(r.headers["Retry-After"]) >= 1 for r in throttled)
    assert "high resource utilization" in throttled[0].json()["error"]["message"]
    counters = httpx.get(f"{sim.base_url}/_sim/counters").json()
    assert counters["429"] == len(throttled)
    assert counters["GET /data/LegalEntities"] == 15
