"""`d365ct check` against d365sim, Azurite and the commercetools mock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from d365ct.check import run_checks, sas_validity_seconds
from d365ct.flows.setup import run_setup
from tests.ct_fixtures import CtMock
from tests.flows.support import SECRET_ENV, full_settings
from tests.sim_fixtures import RunningSim


def by_name(results: list) -> dict[str, tuple[str, str]]:  # type: ignore[type-arg]
    return {r.name: (r.status, r.detail) for r in results}


async def test_everything_answers(
    sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, sim.config.client_secret)
    for warehouse in ("usmf-11", "usmf-12", "usmf-21", "demf-de-01", "demf-de-02"):
        httpx.post(
            f"{ct_mock.url}/{ct_mock.project_key}/channels",
            json={"key": warehouse, "roles": ["InventorySupply"]},
        ).raise_for_status()
    settings = full_settings(sim.base_url, ct_mock.url, ct_mock.project_key, str(tmp_path))
    results = by_name(await run_checks(settings))
    assert results["D365 token"][0] == "ok"
    assert results["legal entity usmf"] == ("ok", "exists")
    assert results["DMF storage upload"][0] == "ok"
    assert "MB/s" in results["DMF storage upload"][1]
    assert results["commercetools inventory client"][0] == "ok"
    assert results["supply channels"] == ("ok", "5 found")
    assert results["intake.token"][0] == "warn"
    # What d365ct setup creates is missing until it runs, and named.
    assert results["product type d365-product"] == ("fail", "missing: run d365ct setup")
    assert results["order custom type d365ct-order"][0] == "fail"
    await run_setup(settings)
    after = by_name(await run_checks(settings))
    assert after["product type d365-product"] == ("ok", "exists")
    assert after["order custom type d365ct-order"] == ("ok", "exists")
    assert after["order state d365-pending"] == ("ok", "exists")
    assert after["customer custom type d365ct-customer"] == ("ok", "exists")
    assert all(sim.config.client_secret not in detail for _, detail in results.values())


async def test_failures_name_the_problem(
    sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "wrong-secret")
    settings = full_settings(
        sim.base_url,
        ct_mock.url,
        ct_mock.project_key,
        str(tmp_path),
        legal_entities=[{"id": "zzzz", "currency": "USD"}],
    )
    results = by_name(await run_checks(settings))
    assert results["D365 token"][0] == "fail"
    assert "sandbox-client" in results["D365 token"][1]
    assert "wrong-secret" not in results["D365 token"][1]
    monkeypatch.delenv(SECRET_ENV)
    unresolved = by_name(await run_checks(settings))
    assert unresolved["secret d365.client_secret"][0] == "fail"
    assert SECRET_ENV in unresolved["secret d365.client_secret"][1]


def test_sas_validity_is_read_from_the_url() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    url = "https://a.blob.core.windows.net/dmf/x?sv=1&se=2026-01-01T00%3A35%3A00Z&sp=rw"
    assert sas_validity_seconds(url, now) == 35 * 60
    assert sas_validity_seconds("https://a/x?sv=1", now) is None
