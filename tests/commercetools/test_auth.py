"""Token provider: Basic auth, scope placement, cache with early refresh, credential errors."""

from __future__ import annotations

import base64

import httpx
import pytest

from d365ct.commercetools import ClientCredentialsTokens
from d365ct.config import SecretRef
from d365ct.errors import CredentialError, TransientError
from tests.ct_fixtures import CtMock, ct_mock, ct_mock_server  # noqa: F401

SECRET = "s3cr3t-value"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def provider(
    handler: httpx.MockTransport | None = None,
    *,
    requests: list[httpx.Request] | None = None,
    expires_in: int = 172800,
    **options: object,
) -> tuple[ClientCredentialsTokens, Clock]:
    issued = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal issued
        issued += 1
        if requests is not None:
            requests.append(request)
        return httpx.Response(
            200,
            json={
                "access_token": f"tok-{issued}",
                "expires_in": expires_in,
                "scope": "manage_products:shop",
                "token_type": "Bearer",
            },
        )

    clock = Clock()
    http = httpx.AsyncClient(transport=handler or httpx.MockTransport(answer))
    tokens = ClientCredentialsTokens(
        http,
        auth_url="https://auth.ct.test/",
        client_id="catalog-client",
        client_secret=SECRET,
        scopes=("manage_products:shop", "view_products:shop"),
        clock=clock,
        **options,  # type: ignore[arg-type]
    )
    return tokens, clock


async def test_basic_auth_and_scope_in_the_form_body() -> None:
    requests: list[httpx.Request] = []
    tokens, _ = provider(requests=requests)
    assert await tokens.token() == "tok-1"
    request = requests[0]
    assert str(request.url) == "https://auth.ct.test/oauth/token"
    expected = base64.b64encode(f"catalog-client:{SECRET}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    form = dict(httpx.QueryParams(request.content.decode()))
    assert form == {
        "grant_type": "client_credentials",
        "scope": "manage_products:shop view_products:shop",
    }
    assert tokens.granted_scopes == ("manage_products:shop",)


async def test_scope_in_the_query_string_when_asked() -> None:
    requests: list[httpx.Request] = []
    tokens, _ = provider(requests=requests, scope_in_query=True)
    await tokens.token()
    assert requests[0].url.params["scope"] == "manage_products:shop view_products:shop"
    assert requests[0].url.params["grant_type"] == "client_credentials"
    assert not requests[0].content


async def test_cached_until_shortly_before_expiry_and_force_refresh() -> None:
    requests: list[httpx.Request] = []
    tokens, clock = provider(requests=requests, expires_in=3600)
    assert await tokens.token() == "tok-1"
    clock.now += 3600 - 301  # still outside the refresh margin
    assert await tokens.token() == "tok-1"
    clock.now += 2  # inside the margin: refreshed before it expires
    assert await tokens.token() == "tok-2"
    assert await tokens.token(force_refresh=True) == "tok-3"
    assert len(requests) == 3


async def test_refused_credentials_name_the_client_never_the_secret() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            401,
            json={
                "statusCode": 401,
                "message": f"Please provide valid client credentials ({SECRET}).",
                "errors": [{"code": "invalid_client", "message": "bad"}],
            },
        )

    tokens, _ = provider(httpx.MockTransport(refuse))
    with pytest.raises(CredentialError, match="'catalog-client'") as caught:
        await tokens.token()
    assert SECRET not in str(caught.value)
    assert "invalid_client" in str(caught.value)


async def test_auth_service_outage_is_transient() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    tokens, _ = provider(httpx.MockTransport(down))
    with pytest.raises(TransientError, match="unreachable"):
        await tokens.token()
    tokens, _ = provider(httpx.MockTransport(lambda request: httpx.Response(503)))
    with pytest.raises(TransientError, match="503"):
        await tokens.token()


async def test_secret_reference_is_resolved_when_a_token_is_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"access_token": "t", "expires_in": 60})

    tokens = ClientCredentialsTokens(
        httpx.AsyncClient(transport=httpx.MockTransport(answer)),
        auth_url="https://auth.ct.test",
        client_id="c",
        client_secret=SecretRef("env:CT_TEST_SECRET"),
    )
    monkeypatch.setenv("CT_TEST_SECRET", "from-env")
    await tokens.token()
    expected = base64.b64encode(b"c:from-env").decode()
    assert requests[0].headers["Authorization"] == f"Basic {expected}"


async def test_mock_reads_scope_from_the_query_string_only(ct_mock: CtMock) -> None:  # noqa: F811
    async with ct_mock.http() as http:
        in_query = ct_mock.tokens(http)
        assert await in_query.token()
        assert in_query.granted_scopes == (f"manage_products:{ct_mock.project_key}",)
        in_body = ClientCredentialsTokens(
            http,
            auth_url=ct_mock.auth_url,
            client_id="catalog",
            client_secret="x",
            scopes=(f"manage_products:{ct_mock.project_key}",),
        )
        await in_body.token()
        # the mock's quirk (the real service honours the body): scope "todo"
        assert in_body.granted_scopes == ("todo",)


async def test_mock_refuses_a_token_request_without_basic_auth(ct_mock: CtMock) -> None:  # noqa: F811
    async with ct_mock.http() as http:
        response = await http.post(
            f"{ct_mock.auth_url}/oauth/token", params={"grant_type": "client_credentials"}
        )
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "invalid_client"
