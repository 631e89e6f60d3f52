"""Conformance: the Entra-compatible token endpoints and bearer checks, over HTTP."""

from __future__ import annotations

import time

import httpx

from tests.sim_fixtures import RunningSim


def _form(sim: RunningSim, **overrides: str) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_id": sim.config.client_id,
        "client_secret": sim.config.client_secret,
        "scope": f"{sim.base_url}/.default",
    }
    form.update(overrides)
    return form


def test_v2_token_grants_access_to_odata(sim: RunningSim) -> None:
    response = httpx.post(f"{sim.base_url}/sandbox/oauth2/v2.0/token", data=_form(sim))
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] in (3598, 3599)
    assert body["access_token"].count(".") == 2  # JWT-shaped
    data = httpx.get(
        f"{sim.base_url}/data/LegalEntities",
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert data.status_code == 200


def test_v1_token_takes_resource_without_trailing_slash(sim: RunningSim) -> None:
    form = _form(sim)
    del form["scope"]
    ok = httpx.post(f"{sim.base_url}/sandbox/oauth2/token", data={**form, "resource": sim.base_url})
    assert ok.status_code == 200
    assert ok.json()["resource"] == sim.base_url
    assert isinstance(ok.json()["expires_in"], str)  # v1 answers numbers as strings
    slash = httpx.post(
        f"{sim.base_url}/sandbox/oauth2/token", data={**form, "resource": sim.base_url + "/"}
    )
    assert slash.status_code == 400
    assert slash.json()["error_description"].startswith("AADSTS500011")


def test_wrong_secret_and_unknown_client_give_entra_errors(sim: RunningSim) -> None:
    bad_secret = httpx.post(
        f"{sim.base_url}/sandbox/oauth2/v2.0/token", data=_form(sim, client_secret="nope")
    )
    assert bad_secret.status_code == 401
    assert bad_secret.json()["error"] == "invalid_client"
    assert bad_secret.json()["error_description"].startswith("AADSTS7000215")
    assert "nope" not in bad_secret.text
    unknown = httpx.post(
        f"{sim.base_url}/sandbox/oauth2/v2.0/token", data=_form(sim, client_id="someone")
    )
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "unauthorized_client"
    assert unknown.json()["error_codes"] == [700016]
    tenant = httpx.post(f"{sim.base_url}/elsewhere/oauth2/v2.0/token", data=_form(sim))
    assert tenant.json()["error_description"].startswith("AADSTS90002")


def test_data_requires_a_valid_unexpired_token(sim: RunningSim) -> None:
    assert httpx.get(f"{sim.base_url}/data/CustomersV3").status_code == 401
    forged = httpx.get(
        f"{sim.base_url}/data/CustomersV3", headers={"Authorization": "Bearer a.b.c"}
    )
    assert forged.status_code == 401
    # Expiry is whole seconds from the second of issue: 2 s leaves at least 1 s of validity.
    sim.config.token_seconds = 2
    token = sim.token()
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{sim.base_url}/data/LegalEntities", headers=headers).status_code == 200
    time.sleep(2.2)
    assert httpx.get(f"{sim.base_url}/data/LegalEntities", headers=headers).status_code == 401
