"""The admin API under /_sim/: faults, settings, counters, stats and reseeding."""

from __future__ import annotations

import uuid

import httpx

from tests.d365sim.dmf_client import Dmf, package
from tests.sim_fixtures import SEED_PRODUCTS, RunningSim


def test_faults_and_settings_change_at_run_time(sim: RunningSim) -> None:
    admin = f"{sim.base_url}/_sim"
    assert httpx.put(f"{admin}/faults", json={"error_rate": 1.0}).json()["error_rate"] == 1.0
    with sim.client() as client:
        failing = client.get("/data/LegalEntities")
    assert failing.status_code in (500, 503)
    assert failing.json()["error"]["message"] == "An error has occurred."
    httpx.put(f"{admin}/faults", json={"error_rate": 0})
    assert httpx.put(f"{admin}/faults", json={"nope": 1}).status_code == 400
    settings = httpx.put(f"{admin}/settings", json={"page_size": 7}).json()
    assert settings["page_size"] == 7
    with sim.client() as client:
        assert len(client.get("/data/CustomersV3").json()["value"]) == 7
    counters = httpx.get(f"{admin}/counters").json()
    assert counters["5xx"] == 1
    assert counters["POST /oauth2/token"] >= 2


def test_timeouts_answer_504_after_hanging(sim: RunningSim) -> None:
    httpx.put(f"{sim.base_url}/_sim/faults", json={"timeout_rate": 1.0, "timeout_seconds": 0.3})
    with sim.client() as client:
        response = client.get("/data/LegalEntities")
    assert response.status_code == 504


def test_stats_count_overlapping_imports_per_legal_entity(fresh_sim: RunningSim) -> None:
    fresh_sim.config.job_seconds = 3.0
    row = {
        "CUSTOMERACCOUNT": "OVL-1",
        "CUSTOMERGROUPID": "10",
        "SALESCURRENCYCODE": "USD",
        "ORGANIZATIONNAME": "Overlap Inc",
    }
    with fresh_sim.client() as client:
        dmf = Dmf(client)
        ids = []
        for company in ("usmf", "usmf", "demf"):
            url = dmf.upload(package("ovl", [("Customers V3", [row])]), f"{uuid.uuid4()}.zip")
            ids.append(
                dmf.value(
                    "ImportFromPackage",
                    packageUrl=url,
                    definitionGroupId="ovl",
                    executionId="",
                    execute=True,
                    overwrite=True,
                    legalEntityId=company,
                )
            )
        for execution_id in ids:
            dmf.wait(str(execution_id))
    stats = httpx.get(f"{fresh_sim.base_url}/_sim/stats").json()
    assert stats["imports"] == 3
    assert stats["importOverlaps"] == 1
    assert stats["maxInFlightImportsByLegalEntity"] == {"usmf": 2, "demf": 1}
    assert stats["byStatus"]["Succeeded"] == 3


def test_reset_reseeds_deterministically(sim: RunningSim) -> None:
    admin = f"{sim.base_url}/_sim"
    before = httpx.post(f"{admin}/reset", json={"products": SEED_PRODUCTS}).json()["entities"]
    small = httpx.post(f"{admin}/reset", json={"products": 10}).json()["entities"]
    assert small["ReleasedProductsV2"] == 20  # released in two companies
    again = httpx.post(f"{admin}/reset", json={"products": SEED_PRODUCTS}).json()
    assert again["entities"] == before == httpx.get(f"{admin}/entities").json()
    assert httpx.get(f"{admin}/jobs").json() == []
