"""/healthz and /readyz: liveness without dependencies; readiness per dependency, cached."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from d365ct.service.app import create_app
from d365ct.service.health import ReadinessProbe
from d365ct.service.logging import Redactor
from tests.flows.support import SECRET_ENV as SIM_SECRET_ENV
from tests.flows.support import sim_settings
from tests.service.conftest import TOKEN, FakeReadiness, make_settings
from tests.sim_fixtures import RunningSim


def test_healthz_asks_nothing(anon: TestClient, readiness: FakeReadiness) -> None:
    readiness.failing["database"] = "down"
    assert anon.get("/healthz").status_code == 200
    assert readiness.calls == 0


def test_ready_when_every_dependency_is(anon: TestClient, api: TestClient) -> None:
    response = anon.get("/readyz")
    assert response.status_code == 200
    # Anonymous probes learn only what is ready; details need the service token.
    assert response.json() == {
        "status": "ready",
        "checks": {"database": {"ok": True}, "d365_token": {"ok": True}},
    }
    assert api.get("/readyz").json() == {
        "status": "ready",
        "checks": {
            "database": {"ok": True, "detail": "database fine"},
            "d365_token": {"ok": True, "detail": "d365_token fine"},
        },
    }


def test_not_ready_names_the_dependency(
    anon: TestClient, api: TestClient, readiness: FakeReadiness
) -> None:
    readiness.failing["d365_token"] = "token endpoint answered 401: invalid_client"
    assert anon.get("/readyz").json()["checks"]["d365_token"] == {"ok": False}
    response = api.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["d365_token"] == {
        "ok": False,
        "detail": "token endpoint answered 401: invalid_client",
    }


def test_results_are_cached_for_a_few_seconds(anon: TestClient, readiness: FakeReadiness) -> None:
    for _ in range(5):
        anon.get("/readyz")
    assert readiness.calls == 2  # one round of two checks


def test_probe_expiry_timeout_and_redaction() -> None:
    now = [0.0]
    calls = []

    async def slow() -> str:
        await asyncio.sleep(5)
        return "never"

    async def leaky() -> str:
        calls.append(1)
        raise RuntimeError("refused secret hunter2-secret")

    probe = ReadinessProbe(
        {"slow": slow, "leaky": leaky},
        cache_seconds=5,
        timeout_seconds=0.05,
        redactor=Redactor(["hunter2-secret"]),
        clock=lambda: now[0],
    )

    async def scenario() -> None:
        first = await probe.results()
        assert first["slow"].ok is False and "no answer within" in first["slow"].detail
        assert first["leaky"].detail == "refused secret [redacted]"
        await probe.results()
        assert len(calls) == 1
        now[0] = 6.0
        await probe.results()
        assert len(calls) == 2

    asyncio.run(scenario())


def test_readyz_asks_the_real_dependencies(
    running_sim: RunningSim,
    tmp_path: Path,
    secrets_env: None,
    store_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default checks: the store, a D365 token from d365sim (real), and a token per
    commercetools client; one unreachable identity provider makes the service not ready."""
    monkeypatch.setenv(SIM_SECRET_ENV, running_sim.config.client_secret)
    closed_port = "http://127.0.0.1:9"  # discard port: nothing listens there
    settings = make_settings(
        tmp_path,
        d365=sim_settings(running_sim.base_url).model_dump(mode="json"),
        commercetools={
            "project_key": "acme",
            "api_url": closed_port,
            "auth_url": closed_port,
            "clients": {
                "orders": {
                    "client_id": "orders-client",
                    "client_secret": f"env:{SIM_SECRET_ENV}",
                    "scopes": ["manage_orders:acme"],
                }
            },
        },
    )
    app = create_app(settings, store_engine=store_engine)
    token = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(app) as client:
        response = client.get("/readyz", headers=token)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert set(body["checks"]) == {"database", "d365_token", "commercetools_orders_token"}
    assert body["checks"]["database"] == {"ok": True, "detail": "reachable"}
    assert body["checks"]["d365_token"] == {"ok": True, "detail": "token for client sandbox-client"}
    orders = body["checks"]["commercetools_orders_token"]
    assert orders["ok"] is False and "unreachable" in orders["detail"], orders
    assert running_sim.config.client_secret not in response.text
