"""Unit tests of the D365 HTTP layer with httpx.MockTransport: retries, Retry-After, 401 refresh."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from d365ct.d365.auth import ClientCredentialsProvider
from d365ct.d365.http import D365Http, RetryPolicy, backoff_delay, parse_retry_after
from d365ct.errors import CredentialError, TransientError


class FakeTokens:
    client_id = "app-123"

    def __init__(self) -> None:
        self.issued = 0

    async def token(self, *, force_refresh: bool = False) -> str:
        if force_refresh or not self.issued:
            self.issued += 1
        return f"token-{self.issued}"

    async def close(self) -> None:
        return None


def make_http(handler, **kwargs):  # type: ignore[no-untyped-def]
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    http = D365Http(
        client, "https://d365.test", FakeTokens(), sleep=sleep, rng=random.Random(1), **kwargs
    )
    return http, sleeps


def test_retry_after_as_seconds_and_as_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30)), now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30)), now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_is_bounded_and_jittered() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=8.0)
    rng = random.Random(7)
    for attempt in range(12):
        delays = {backoff_delay(attempt, policy, rng) for _ in range(50)}
        assert all(0 <= d <= min(8.0, 0.5 * 2**attempt) for d in delays)
        assert len(delays) > 1  # jitter: callers do not retry in lock step


async def test_429_waits_retry_after_then_succeeds() -> None:
    answers = iter([httpx.Response(429, headers={"Retry-After": "3"}), httpx.Response(200)])
    http, sleeps = make_http(lambda request: next(answers))
    response = await http.request("GET", "data/LegalEntities")
    assert response.status_code == 200
    assert sleeps == [3.0]


async def test_5xx_retried_with_backoff_then_transient_error() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503, json={"error": {"message": "busy"}})

    http, sleeps = make_http(handler, policy=RetryPolicy(max_attempts=4))
    with pytest.raises(TransientError, match=r"HTTP 503 .* after 4 attempts: busy"):
        await http.request("GET", "data/CustomersV3")
    assert len(calls) == 4 and len(sleeps) == 3


async def test_timeouts_are_retried() -> None:
    state = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        state["n"] += 1
        if state["n"] < 3:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, json={"value": []})

    http, sleeps = make_http(handler)
    assert (await http.request("GET", "data/X")).status_code == 200
    assert len(sleeps) == 2


async def test_401_refreshes_once_then_names_the_client() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(401)

    http, _ = make_http(handler)
    with pytest.raises(CredentialError, match="client 'app-123'"):
        await http.request("GET", "data/X")
    assert seen == ["Bearer token-1", "Bearer token-2"]


async def test_401_then_fresh_token_succeeds() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        ok = request.headers["Authorization"] == "Bearer token-2"
        return httpx.Response(200 if ok else 401)

    http, _ = make_http(handler)
    assert (await http.request("GET", "data/X")).status_code == 200


async def test_4xx_is_returned_to_the_caller_untouched() -> None:
    http, sleeps = make_http(lambda request: httpx.Response(400, json={"error": {}}))
    assert (await http.request("POST", "data/X", json={})).status_code == 400
    assert sleeps == []


async def test_token_provider_caches_and_never_echoes_the_secret() -> None:
    issued = []

    def handler(request: httpx.Request) -> httpx.Response:
        issued.append(request)
        if b"client_secret=right" in request.content:
            return httpx.Response(200, json={"access_token": f"t{len(issued)}", "expires_in": 3599})
        return httpx.Response(
            401, json={"error": "invalid_client", "error_description": "AADSTS7000215: wrong"}
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        good = ClientCredentialsProvider(
            client, token_url="https://t/x", client_id="c1", client_secret="right", scope="s"
        )
        assert await good.token() == "t1"
        assert await good.token() == "t1"  # cached
        assert await good.token(force_refresh=True) == "t2"
        bad = ClientCredentialsProvider(
            client, token_url="https://t/x", client_id="c2", client_secret="wrong", scope="s"
        )
        with pytest.raises(CredentialError) as caught:
            await bad.token()
    assert "client 'c2'" in str(caught.value) and "AADSTS7000215" in str(caught.value)
    assert "wrong\n" not in str(caught.value) and "secret=wrong" not in str(caught.value)


async def test_token_refreshed_before_expiry() -> None:
    now = [0.0]
    count = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        count[0] += 1
        return httpx.Response(200, json={"access_token": f"t{count[0]}", "expires_in": 600})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        tokens = ClientCredentialsProvider(
            client, token_url="https://t", client_id="c", client_secret="s", clock=lambda: now[0]
        )
        assert await tokens.token() == "t1"
        now[0] = 250  # 600 s lifetime, refreshed 300 s early
        assert await tokens.token() == "t1"
        now[0] = 301
        assert await tokens.token() == "t2"
