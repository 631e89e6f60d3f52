"""Conformance: OData reads, query options, paging, keys, companies and errors, over HTTP."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import quote

from d365sim.entities import BY_NAME
from tests.sim_fixtures import RunningSim

SAFE = "()=',"


def _all_pages(client, url: str) -> tuple[list[dict], int]:  # type: ignore[no-untyped-def]
    rows, calls = [], 0
    next_url: str | None = url
    while next_url:
        response = client.get(next_url)
        calls += 1
        assert response.status_code == 200, response.text
        body = response.json()
        rows += body["value"]
        next_url = body.get("@odata.nextLink")
    return rows, calls


def test_collection_shape_headers_and_etags(sim: RunningSim) -> None:
    with sim.client() as client:
        response = client.get("/data/CustomersV3", params={"$top": "3"})
    assert response.status_code == 200
    assert response.headers["OData-Version"] == "4.0"
    assert response.headers["Content-Type"].startswith("application/json; odata.metadata=minimal")
    body = response.json()
    assert body["@odata.context"] == f"{sim.base_url}/data/$metadata#CustomersV3"
    assert len(body["value"]) == 3
    first = body["value"][0]
    assert first["@odata.etag"].startswith('W/"')
    assert first["dataAreaId"] == "usmf"  # the default company only


def test_server_driven_paging_follows_next_links(sim: RunningSim) -> None:
    with sim.client() as client:
        total = int(client.get("/data/WarehousesOnHandV2/$count").text)
        rows, calls = _all_pages(client, "/data/WarehousesOnHandV2")
        assert total > 2 * sim.config.page_size
        assert len(rows) == total
        assert calls == -(-total // sim.config.page_size)
        key_fields = BY_NAME["WarehousesOnHandV2"].keys
        keys = {tuple(r[k] for k in key_fields) for r in rows}
        assert len(keys) == total  # no row twice, none skipped
        top = client.get("/data/WarehousesOnHandV2", params={"$top": "70"}).json()
        assert len(top["value"]) == 50
        rest = client.get(top["@odata.nextLink"]).json()
        assert len(rest["value"]) == 20
        assert "@odata.nextLink" not in rest


def test_cross_company_and_company_filter(sim: RunningSim) -> None:
    with sim.client() as client:
        default = client.get("/data/Warehouses").json()["value"]
        everything = client.get("/data/Warehouses", params={"cross-company": "true"}).json()
        only_demf = client.get(
            "/data/Warehouses",
            params={"cross-company": "true", "$filter": "dataAreaId eq 'demf'"},
        ).json()["value"]
        no_cross = client.get(
            "/data/Warehouses", params={"$filter": "dataAreaId eq 'demf'"}
        ).json()["value"]
    assert {w["dataAreaId"] for w in default} == {"usmf"}
    assert {w["dataAreaId"] for w in everything["value"]} == {"usmf", "demf"}
    assert only_demf and {w["dataAreaId"] for w in only_demf} == {"demf"}
    assert no_cross == []  # without cross-company D365 stays in the default company


def test_filter_select_orderby_count(sim: RunningSim) -> None:
    with sim.client() as client:
        response = client.get(
            "/data/ReleasedProductsV2",
            params={
                "$filter": "SalesPrice gt 20 and (ProductSubType eq "
                "Microsoft.Dynamics.DataEntities.EcoResProductSubtype'ProductMaster' "
                "or not (SalesPrice lt 50))",
                "$select": "ItemNumber,SalesPrice,ProductSubType",
                "$orderby": "SalesPrice desc,ItemNumber",
                "$count": "true",
            },
        )
        body = response.json()
        rows, _ = _all_pages(client, str(response.url))
    assert body["@odata.context"].endswith(
        "#ReleasedProductsV2(ItemNumber,SalesPrice,ProductSubType)"
    )
    assert body["@odata.count"] == len(rows) > 0
    assert all(
        set(r) == {"@odata.etag", "ItemNumber", "SalesPrice", "ProductSubType"} for r in rows
    )
    assert all(
        r["SalesPrice"] > 20 and (r["ProductSubType"] == "ProductMaster" or r["SalesPrice"] >= 50)
        for r in rows
    )
    prices = [r["SalesPrice"] for r in rows]
    assert prices == sorted(prices, reverse=True)


def test_wildcards_are_case_insensitive_like_d365(sim: RunningSim) -> None:
    with sim.client() as client:
        sample = client.get("/data/CustomersV3", params={"$top": "1"}).json()["value"][0]
        email = sample["PrimaryContactEmail"]
        fragment = email.split("@")[0][-4:].upper()
        found = client.get(
            "/data/CustomersV3", params={"$filter": f"PrimaryContactEmail eq '*{fragment}*'"}
        ).json()["value"]
    assert sample["CustomerAccount"] in {c["CustomerAccount"] for c in found}
    assert all(fragment.lower() in c["PrimaryContactEmail"].lower() for c in found)


def test_single_entity_by_composite_key(sim: RunningSim) -> None:
    with sim.client() as client:
        account = client.get("/data/CustomersV3", params={"$top": "1"}).json()["value"][0][
            "CustomerAccount"
        ]
        one = client.get(f"/data/CustomersV3(dataAreaId='usmf',CustomerAccount='{account}')")
        missing = client.get("/data/CustomersV3(dataAreaId='usmf',CustomerAccount='NOPE-1')")
        partial = client.get(f"/data/CustomersV3(CustomerAccount='{account}')")
        legal = client.get("/data/LegalEntities('demf')")
    assert one.status_code == 200
    assert one.json()["@odata.context"].endswith("#CustomersV3/$entity")
    assert one.json()["CustomerAccount"] == account
    assert one.headers["ETag"] == one.json()["@odata.etag"]
    assert missing.status_code == 404
    assert "error" in missing.json()
    assert partial.status_code == 400
    assert legal.status_code == 200 and legal.json()["LegalEntityId"] == "demf"


def test_unknown_sets_properties_and_bad_filters(sim: RunningSim) -> None:
    with sim.client() as client:
        unknown = client.get("/data/InventOnHandV2")
        bad_property = client.get(
            "/data/CustomersV3", params={"$filter": "AvailablePhysicalQuantity gt 1"}
        )
        bad_syntax = client.get("/data/CustomersV3", params={"$filter": "CustomerAccount eq"})
        has = client.get("/data/CustomersV3", params={"$filter": "CustomerAccount in ('a')"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"].startswith("No HTTP resource was found")
    for response in (bad_property, bad_syntax, has):
        assert response.status_code == 400
        assert response.json()["error"]["message"].startswith("The query specified in the URI")
    assert "AvailablePhysicalQuantity" in bad_property.json()["error"]["message"]


def test_metadata_describes_served_sets(sim: RunningSim) -> None:
    with sim.client() as client:
        response = client.get("/data/$metadata")
        service = client.get("/data/").json()
    assert response.status_code == 200
    root = ET.fromstring(response.content)
    ns = {"edm": "http://docs.oasis-open.org/odata/ns/edm"}
    sets = {s.get("Name") for s in root.iter(f"{{{ns['edm']}}}EntitySet")}
    assert {"ReleasedProductsV2", "WarehousesOnHandV2", "CustomersV3", "SalesOrderLines"} <= sets
    keys = [
        ref.get("Name")
        for et in root.iter(f"{{{ns['edm']}}}EntityType")
        if et.get("Name") == "CustomerV3"
        for ref in et.iter(f"{{{ns['edm']}}}PropertyRef")
    ]
    assert keys == ["dataAreaId", "CustomerAccount"]
    assert {"name": "CustomersV3", "kind": "EntitySet", "url": "CustomersV3"} in service["value"]


def test_create_update_delete(fresh_sim: RunningSim) -> None:
    key = "CustomerGroups(dataAreaId='usmf',CustomerGroupId='77')"
    with fresh_sim.client() as client:
        created = client.post(
            "/data/CustomerGroups", json={"CustomerGroupId": "77", "Description": "Outlet"}
        )
        duplicate = client.post("/data/CustomerGroups", json={"CustomerGroupId": "77"})
        before = client.get(f"/data/{key}").json()
        patched = client.patch(f"/data/{key}", json={"Description": "Outlet stores"})
        after = client.get(f"/data/{key}").json()
        deleted = client.delete(f"/data/{key}")
        gone = client.get(f"/data/{quote(key, safe=SAFE)}")
    assert created.status_code == 201 and created.json()["dataAreaId"] == "usmf"
    assert duplicate.status_code == 400
    assert patched.status_code == 204
    assert after["Description"] == "Outlet stores"
    assert after["@odata.etag"] != before["@odata.etag"]
    assert deleted.status_code == 204
    assert gone.status_code == 404
