"""HTTP push intake: auth, Event Grid / CloudEvents handshakes, batches, bad input; in-process
through httpx's ASGI transport and over a real uvicorn server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from d365ct.config import IntakeSettings
from d365ct.errors import ConfigurationError
from d365ct.intake import INTAKE_PATH, Inbox, intake_router, settings_token_provider
from d365ct.store.error_queue import ErrorQueue
from tests.asgi_server import serve_in_thread
from tests.intake import samples

TOKEN = "s3cret-intake-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_app(inbox: Inbox, token: str | None = TOKEN, **kw: Any) -> FastAPI:
    app = FastAPI()
    app.include_router(intake_router(inbox, lambda: token, **kw))
    return app


@pytest.fixture
async def client(sqlite_inbox: Inbox) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(sqlite_inbox))
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as c:
        yield c


async def test_push_one_message_then_its_duplicate(
    client: httpx.AsyncClient, sqlite_inbox: Inbox
) -> None:
    body = samples.order_created("o-1", message_id="m-1")
    first = await client.post(INTAKE_PATH, json=body, headers=AUTH)
    assert first.status_code == 200, first.text
    assert first.json()["accepted"] == 1
    second = await client.post(INTAKE_PATH, json=body, headers=AUTH)
    assert second.status_code == 200
    assert second.json()["results"] == [{"id": "m-1", "status": "duplicate"}]
    [entry] = sqlite_inbox.pending()
    assert entry.message.message_id == "m-1" and entry.source == "http"


async def test_cloudevent_push(client: httpx.AsyncClient, sqlite_inbox: Inbox) -> None:
    event = samples.cloud_event(samples.customer_created("c-1"))
    r = await client.post(
        INTAKE_PATH,
        content=json.dumps(event),
        headers={**AUTH, "Content-Type": "application/cloudevents+json"},
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1
    assert sqlite_inbox.pending()[0].message.envelope == "cloudevents"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
    ],
)
async def test_401_without_the_right_token(
    client: httpx.AsyncClient, sqlite_inbox: Inbox, headers: dict[str, str]
) -> None:
    r = await client.post(INTAKE_PATH, json=samples.order_created(), headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert sqlite_inbox.pending() == []


async def test_no_token_configured_refuses_to_serve(sqlite_inbox: Inbox) -> None:
    transport = httpx.ASGITransport(app=make_app(sqlite_inbox, token=None))
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as c:
        r = await c.post(INTAKE_PATH, json=samples.order_created())
        assert r.status_code == 500
        assert "no token is set" in r.json()["detail"]
        assert (await c.options(INTAKE_PATH)).status_code == 500
    assert sqlite_inbox.pending() == []


async def test_unresolvable_token_reference_is_a_configuration_error(
    sqlite_inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("D365CT_TEST_NO_SUCH_TOKEN", raising=False)
    provider = settings_token_provider(IntakeSettings(token="env:D365CT_TEST_NO_SUCH_TOKEN"))
    with pytest.raises(ConfigurationError):
        provider()
    app = FastAPI()
    app.include_router(intake_router(sqlite_inbox, provider))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://intake"
    ) as c:
        r = await c.post(INTAKE_PATH, json=samples.order_created(), headers=AUTH)
    assert r.status_code == 500
    assert "D365CT_TEST_NO_SUCH_TOKEN" in r.json()["detail"]
    monkeypatch.setenv("D365CT_TEST_NO_SUCH_TOKEN", TOKEN)
    assert provider() == TOKEN  # resolved per request: a rotated secret takes effect


async def test_event_grid_validation_handshake(client: httpx.AsyncClient) -> None:
    r = await client.post(INTAKE_PATH, json=samples.validation_event("abc-123"), headers=AUTH)
    assert r.status_code == 200
    assert r.json() == {"validationResponse": "abc-123"}
    unauthenticated = await client.post(INTAKE_PATH, json=samples.validation_event())
    assert unauthenticated.status_code == 401


async def test_cloudevents_options_handshake(client: httpx.AsyncClient) -> None:
    r = await client.options(INTAKE_PATH, headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
    assert r.status_code == 200
    assert r.headers["webhook-allowed-origin"] == "eventgrid.azure.net"
    assert "POST" in r.headers["allow"]


async def test_event_grid_batch_with_a_malformed_event(
    client: httpx.AsyncClient, sqlite_inbox: Inbox, sqlite_engine: sa.Engine
) -> None:
    order = samples.order_created("o-1")
    batch = [
        samples.cloud_event(order),
        samples.cloud_event(order),  # the same event twice in one batch
        samples.cloud_event(samples.customer_created("c-1")),
        samples.cloud_event(samples.order_state_changed("o-1")),
        {"specversion": "1.0", "id": "broken", "type": "com.commercetools.order.message.X"},
    ]
    r = await client.post(INTAKE_PATH, json=batch, headers=AUTH)
    assert r.status_code == 200
    summary = r.json()
    assert {k: summary[k] for k in ("accepted", "duplicate", "ignored", "malformed")} == {
        "accepted": 2,
        "duplicate": 1,
        "ignored": 1,
        "malformed": 1,
    }
    [error] = ErrorQueue(sqlite_engine).list(flow="intake")
    assert error.flow == "intake" and "must be a JSON object" in error.error
    assert json.loads(error.payload["body"])["id"] == "broken"


async def test_bad_json_is_400_and_recorded(
    client: httpx.AsyncClient, sqlite_engine: sa.Engine
) -> None:
    r = await client.post(INTAKE_PATH, content=b"{this is not json", headers=AUTH)
    assert r.status_code == 400
    assert "not JSON" in r.json()["detail"]
    [error] = ErrorQueue(sqlite_engine).list(flow="intake")
    assert error.payload["body"] == "{this is not json"
    assert error.payload["source"] == "http"


async def test_missing_fields_is_400_and_recorded(
    client: httpx.AsyncClient, sqlite_engine: sa.Engine
) -> None:
    body = samples.order_created(message_id="m-nores")
    del body["resource"]
    r = await client.post(INTAKE_PATH, json=body, headers=AUTH)
    assert r.status_code == 400
    [error] = ErrorQueue(sqlite_engine).list(flow="intake")
    assert error.business_key == "m-nores"
    assert "resource" in error.error


async def test_oversized_body_is_413_and_recorded_truncated(
    sqlite_inbox: Inbox, sqlite_engine: sa.Engine
) -> None:
    transport = httpx.ASGITransport(app=make_app(sqlite_inbox, max_body_bytes=1000))
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as c:
        r = await c.post(INTAKE_PATH, content=b"[" + b" " * 5000 + b"]", headers=AUTH)
    assert r.status_code == 413
    [error] = ErrorQueue(sqlite_engine).list(flow="intake")
    assert len(error.payload["body"]) <= 1001


async def test_store_failure_is_503_so_the_sender_retries(
    sqlite_inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_a: Any, **_k: Any) -> Any:
        raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(sqlite_inbox, "accept_many", broken)
    transport = httpx.ASGITransport(app=make_app(sqlite_inbox))
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as c:
        r = await c.post(INTAKE_PATH, json=samples.order_created(), headers=AUTH)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"


# -- over a real server -------------------------------------------------------------------------


@pytest.fixture
def served(sqlite_inbox: Inbox) -> Iterator[str]:
    with serve_in_thread(make_app(sqlite_inbox)) as base_url:
        yield base_url


def test_over_a_real_server(served: str, sqlite_inbox: Inbox) -> None:
    with httpx.Client(base_url=served, timeout=10) as c:
        assert c.post(INTAKE_PATH, json=samples.order_created()).status_code == 401
        handshake = c.post(INTAKE_PATH, json=samples.validation_event("v-1"), headers=AUTH)
        assert handshake.json() == {"validationResponse": "v-1"}
        created = samples.customer_created("c-1")
        batch = [
            samples.cloud_event(samples.customer_address_added("c-1", seq=2)),
            samples.cloud_event(created),
        ]
        r = c.post(INTAKE_PATH, json=batch, headers=AUTH)
        assert r.status_code == 200 and r.json()["accepted"] == 2
        r = c.post(INTAKE_PATH, json=created, headers=AUTH)  # redelivered, platform format
        assert r.json()["duplicate"] == 1
    # durable once answered: what a flow would now see, in per-resource order
    assert [e.message.type for e in sqlite_inbox.pending()] == [
        "CustomerCreated",
        "CustomerAddressAdded",
    ]
