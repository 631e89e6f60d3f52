"""Service fixtures: a migrated SQLite store, settings with a service token, the app and clients.

The app's readiness checks are replaced by ones the test controls; /readyz against real peers is
covered by the `d365ct run` subprocess test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from d365ct.config import Settings
from d365ct.service.app import create_app
from d365ct.store import make_engine, migrate

TOKEN = "svc-token-0123456789abcdef"
TOKEN_ENV = "D365CT_TEST_SERVICE_TOKEN"
D365_SECRET = "d365-secret-value-42"
D365_SECRET_ENV = "D365CT_TEST_D365_SECRET"


def make_settings(tmp_path: Path, **sections: Any) -> Settings:
    data: dict[str, Any] = {
        "d365": {
            "base_url": "http://127.0.0.1:9",
            "client_id": "sandbox-client",
            "client_secret": f"env:{D365_SECRET_ENV}",
            "auth": "oauth2",
        },
        "store": {"url": f"sqlite:///{tmp_path / 'd365ct.sqlite'}", "workdir": str(tmp_path)},
        "legal_entities": [{"id": "usmf", "currency": "USD"}],
        "service": {"bind": "127.0.0.1:8080", "token": f"env:{TOKEN_ENV}"},
    }
    data.update(sections)
    return Settings.model_validate(data)


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv(D365_SECRET_ENV, D365_SECRET)


@pytest.fixture
def settings(tmp_path: Path, secrets_env: None) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def store_engine(settings: Settings) -> Iterator[sa.Engine]:
    migrate(settings.store.url)
    engine = make_engine(settings.store.url)
    yield engine
    engine.dispose()


class FakeReadiness:
    """Readiness checks whose answers a test sets; counts calls to prove caching."""

    def __init__(self) -> None:
        self.failing: dict[str, str] = {}
        self.calls = 0

    def checks(self) -> dict[str, Any]:
        def make(name: str) -> Any:
            async def check() -> str:
                self.calls += 1
                if name in self.failing:
                    raise RuntimeError(self.failing[name])
                return f"{name} fine"

            return check

        return {name: make(name) for name in ("database", "d365_token")}


@pytest.fixture
def readiness() -> FakeReadiness:
    return FakeReadiness()


@pytest.fixture
def app(settings: Settings, store_engine: sa.Engine, readiness: FakeReadiness) -> FastAPI:
    return create_app(settings, store_engine=store_engine, readiness=readiness.checks())


@pytest.fixture
def anon(app: FastAPI) -> Iterator[TestClient]:
    """A client without credentials (follows no redirects, so tests see them)."""
    with TestClient(app, follow_redirects=False) as client:
        yield client


@pytest.fixture
def api(app: FastAPI) -> Iterator[TestClient]:
    """A client sending the service token as a bearer header."""
    with TestClient(
        app, headers={"Authorization": f"Bearer {TOKEN}"}, follow_redirects=False
    ) as client:
        yield client


@pytest.fixture
def browser(app: FastAPI) -> Iterator[TestClient]:
    """A client logged in through the form, holding the session cookie."""
    with TestClient(app, follow_redirects=False) as client:
        response = client.post("/login", data={"token": TOKEN, "next": "/"})
        assert response.status_code == 303, response.text
        yield client
