"""/healthz and /readyz: liveness without dependencies; readiness per dependency, cached."""

from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient

from d365ct.service.health import ReadinessProbe
from d365ct.service.logging import Redactor
from tests.service.conftest import FakeReadiness


def test_healthz_asks_nothing(anon: TestClient, readiness: FakeReadiness) -> None:
    readiness.failing["database"] = "down"
    assert anon.get("/healthz").status_code == 200
    assert readiness.calls == 0


def test_ready_when_every_dependency_is(anon: TestClient) -> None:
    response = anon.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {
            "database": {"ok": True, "detail": "database fine"},
            "d365_token": {"ok": True, "detail": "d365_token fine"},
        },
    }


def test_not_ready_names_the_dependency(anon: TestClient, readiness: FakeReadiness) -> None:
    readiness.failing["d365_token"] = "token endpoint answered 401: invalid_client"
    response = anon.get("/readyz")
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
