"""Unit tests of the commercetools client with httpx.MockTransport: retries, 401, errors, pager."""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from d365ct.commercetools import (
    CommercetoolsClient,
    CommercetoolsError,
    ConcurrentModification,
    ResourceNotFound,
    RetryPolicy,
    field_predicate,
    quote_predicate_string,
)
from d365ct.errors import CredentialError, PermanentError, TransientError

API = "https://api.ct.test"


class FakeTokens:
    client_id = "inventory-client"

    def __init__(self) -> None:
        self.issued = 0

    async def token(self, *, force_refresh: bool = False) -> str:
        if force_refresh or not self.issued:
            self.issued += 1
        return f"token-{self.issued}"

    async def close(self) -> None:
        return None


Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, **options: Any) -> tuple[CommercetoolsClient, list[float]]:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = CommercetoolsClient(
        http, API, "shop", FakeTokens(), sleep=sleep, rng=random.Random(3), **options
    )
    return client, sleeps


def ct_error(status: int, code: str, message: str, **extra: Any) -> httpx.Response:
    error = {"code": code, "message": message, **extra}
    return httpx.Response(
        status, json={"statusCode": status, "message": message, "errors": [error]}
    )


# ---- retries and credentials ------------------------------------------------------------------


async def test_401_refreshes_the_token_once_then_raises_credential_error() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return ct_error(401, "invalid_token", "invalid_token")

    client, _ = make_client(handler)
    with pytest.raises(CredentialError, match="API client 'inventory-client'") as caught:
        await client.request("GET", "inventory")
    assert seen == ["Bearer token-1", "Bearer token-2"]  # one refresh, then give up
    assert "secret" not in str(caught.value)


async def test_401_then_success_after_refresh() -> None:
    answers = iter([ct_error(401, "invalid_token", "expired"), httpx.Response(200, json={"a": 1})])
    client, _ = make_client(lambda request: next(answers))
    assert await client.request("GET", "inventory") == {"a": 1}
    assert client.calls["GET"] == 2


async def test_403_insufficient_scope_is_a_credential_error_naming_the_client() -> None:
    client, _ = make_client(
        lambda request: ct_error(403, "insufficient_scope", "Insufficient scope")
    )
    with pytest.raises(CredentialError, match="'inventory-client' may not POST"):
        await client.request("POST", "orders", json={})


async def test_429_waits_retry_after_for_post() -> None:
    bodies: list[bytes] = []
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "4"}),
            httpx.Response(503),
            httpx.Response(201, json={"id": "x", "version": 1}),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return next(answers)

    client, sleeps = make_client(handler)
    created = await client.create("inventory", {"sku": "A", "quantityOnStock": 1})
    assert created == {"id": "x", "version": 1}
    assert sleeps[0] == 4.0  # Retry-After honoured
    assert len(sleeps) == 2 and 0 <= sleeps[1] <= 1.0  # then jittered back-off
    assert len(set(bodies)) == 1 and len(bodies) == 3  # the same POST, three times
    assert client.calls["POST"] == 3


async def test_503_with_retry_after_and_timeouts_are_retried_then_transient_error() -> None:
    attempts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        if attempts % 2:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(503, headers={"Retry-After": "2"}, json={"message": "OverCapacity"})

    client, sleeps = make_client(handler, policy=RetryPolicy(max_attempts=4))
    with pytest.raises(TransientError, match=r"HTTP 503 .* after 4 attempts: OverCapacity"):
        await client.request("POST", "products/abc", json={"version": 1, "actions": []})
    assert attempts == 4
    assert sleeps[1] == 2.0  # the 503's Retry-After


async def test_throttling_budget_is_bounded() -> None:
    client, sleeps = make_client(
        lambda request: httpx.Response(429), policy=RetryPolicy(max_throttled=3)
    )
    with pytest.raises(TransientError, match="kept throttling"):
        await client.request("GET", "products")
    assert len(sleeps) == 2


# ---- errors -----------------------------------------------------------------------------------


async def test_error_body_becomes_commercetools_error_with_codes() -> None:
    client, _ = make_client(
        lambda request: httpx.Response(
            400,
            json={
                "statusCode": 400,
                "message": "Request body does not contain valid JSON.",
                "errors": [
                    {
                        "code": "InvalidJsonInput",
                        "message": "Request body does not contain valid JSON.",
                        "detailedErrorMessage": "productType: Missing required value",
                    }
                ],
            },
        )
    )
    with pytest.raises(CommercetoolsError) as caught:
        await client.create("products", {"name": {"en": "x"}})
    error = caught.value
    assert isinstance(error, PermanentError)
    assert error.status == 400 and error.codes == ("InvalidJsonInput",)
    assert "productType: Missing required value" in str(error)
    assert error.code == "InvalidJsonInput"


async def test_409_is_concurrent_modification_with_current_version() -> None:
    client, _ = make_client(
        lambda request: ct_error(409, "ConcurrentModification", "stale", currentVersion=7)
    )
    with pytest.raises(ConcurrentModification) as caught:
        await client.update("products", "p1", 3, [{"action": "publish"}])
    assert caught.value.current_version == 7
    assert isinstance(caught.value, TransientError)


async def test_404_reads_as_none_and_delete_of_a_gone_resource_is_none() -> None:
    client, _ = make_client(lambda request: ct_error(404, "ResourceNotFound", "gone"))
    assert await client.get_by_key("products", "nope") is None
    assert await client.delete("products", str(uuid.uuid4()), 3) is None
    with pytest.raises(ResourceNotFound):
        await client.request("GET", "products/x")


async def test_update_without_actions_makes_no_call_and_large_updates_are_split() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append(body)
        return httpx.Response(200, json={"id": "p", "version": body["version"] + 1})

    client, _ = make_client(handler)
    current = {"id": "p", "version": 4, "key": "k"}
    assert await client.update("products", "p", 4, [], current=current) == current
    assert client.calls.total() == 0
    actions = [
        {"action": "setAttribute", "sku": "s", "name": f"a{i}", "value": i} for i in range(0, 1200)
    ]
    result = await client.update("products", "p", 4, actions)
    assert [len(body["actions"]) for body in sent] == [500, 500, 200]
    assert [body["version"] for body in sent] == [4, 5, 6]  # each at the version last returned
    assert result["version"] == 7


async def test_update_with_retry_gives_up_after_bounded_conflicts() -> None:
    posts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        if request.method == "GET":
            return httpx.Response(200, json={"id": "p", "version": 10 + posts, "key": "k"})
        posts += 1
        return ct_error(409, "ConcurrentModification", "stale", currentVersion=99)

    client, _ = make_client(handler)
    with pytest.raises(ConcurrentModification, match="still conflicting after 3 attempts"):
        await client.update_with_retry(
            "products", "k", lambda current: [{"action": "publish"}], max_attempts=3
        )
    assert posts == 3 and client.calls["GET"] == 3  # first read, then one per conflict


# ---- predicates and batching ------------------------------------------------------------------


def test_predicate_strings_escape_quotes_and_backslashes() -> None:
    assert quote_predicate_string('a"b\\c') == '"a\\"b\\\\c"'
    assert field_predicate("masterData.current.masterVariant.sku", '("x")') == (
        'masterData(current(masterVariant(sku in ("x"))))'
    )
    with pytest.raises(ValueError):
        field_predicate("key) or (id", "()")


class FakeProject:
    """An in-memory commercetools query endpoint that honours sort=id asc, limit, offset and the
    two predicate forms the client sends: `<field> in (...)`/`in :values` and `id > "..."`."""

    def __init__(self, resources: list[dict[str, Any]], *, honour_sort: bool = True) -> None:
        self.resources = resources
        self.honour_sort = honour_sort
        self.urls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(str(request.url))
        params = request.url.params
        rows = list(self.resources)
        for where in params.get_list("where"):
            rows = [row for row in rows if self._matches(row, where, params)]
        if self.honour_sort and params.get("sort") == "id asc":
            rows.sort(key=lambda row: row["id"])
        offset, limit = int(params.get("offset", 0)), int(params.get("limit", 20))
        page = rows[offset : offset + limit]
        return httpx.Response(
            200, json={"results": page, "count": len(page), "offset": offset, "limit": limit}
        )

    @staticmethod
    def _matches(row: dict[str, Any], where: str, params: httpx.QueryParams) -> bool:
        if match := re.fullmatch(r'id > "([^"]*)"', where):
            return bool(row["id"] > match.group(1))
        if match := re.fullmatch(r"(\w+) in :(\w+)", where):
            return row.get(match.group(1)) in params.get_list(f"var.{match.group(2)}")
        if match := re.fullmatch(r"(\w+) in \((.*)\)", where):
            literals = re.findall(r'"((?:\\.|[^"\\])*)"', match.group(2))
            values = {re.sub(r"\\(.)", r"\1", literal) for literal in literals}
            return row.get(match.group(1)) in values
        raise AssertionError(f"unexpected predicate {where}")


def products(count: int) -> list[dict[str, Any]]:
    rng = random.Random(count)
    return [
        {"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "version": 1, "key": f"k-{i}"}
        for i in range(count)
    ]


async def test_scan_pages_by_id_cursor_on_a_sorting_server() -> None:
    fake = FakeProject(products(1234))
    client, _ = make_client(fake)
    seen = [body["id"] async for body in client.scan("products", page_size=500)]
    assert sorted(seen) == sorted(r["id"] for r in fake.resources)
    assert len(seen) == len(set(seen))
    assert len(fake.urls) == 3
    first, second = httpx.URL(fake.urls[0]).params, httpx.URL(fake.urls[1]).params
    assert first.get("sort") == "id asc" and first.get("withTotal") == "false"
    assert "offset" not in first and "offset" not in second
    assert second.get_list("where") == [f'id > "{seen[499]}"']


async def test_scan_combines_the_callers_where_with_the_cursor() -> None:
    fake = FakeProject(products(50))
    client, _ = make_client(fake)
    wanted = [f"k-{i}" for i in range(0, 50, 2)]
    where = "key in (" + ",".join(quote_predicate_string(k) for k in wanted) + ")"
    seen = [body["key"] async for body in client.scan("products", where, page_size=10)]
    assert sorted(seen) == sorted(wanted)
    last = httpx.URL(fake.urls[-1]).params.get_list("where")
    assert last[0] == where and last[1].startswith("id > ")


async def test_scan_of_a_server_ignoring_sort_falls_back_to_offsets() -> None:
    fake = FakeProject(products(230), honour_sort=False)
    client, _ = make_client(fake)
    seen = [body["id"] async for body in client.scan("products", page_size=50)]
    assert sorted(seen) == sorted(r["id"] for r in fake.resources)
    assert len(seen) == len(set(seen))
    assert [httpx.URL(u).params.get("offset") for u in fake.urls] == [
        None,
        "50",
        "100",
        "150",
        "200",
    ]


async def test_scan_refuses_to_continue_when_a_later_page_is_unsorted() -> None:
    rows = sorted(products(6), key=lambda row: row["id"])
    pages = iter([rows[0:2], [rows[5], rows[3]]])  # the second page ignores the sort

    def handler(request: httpx.Request) -> httpx.Response:
        page = next(pages)
        return httpx.Response(200, json={"results": page, "count": len(page)})

    client, _ = make_client(handler)
    with pytest.raises(PermanentError, match="sort_honoured=False"):
        _ = [body async for body in client.scan("products", page_size=2)]


async def test_find_by_keys_batches_under_the_url_limit_and_escapes_quotes() -> None:
    resources = products(300)
    resources[7]["key"] = 'odd "quoted" key'
    resources[8]["key"] = "back\\slash"
    fake = FakeProject(resources)
    client, _ = make_client(fake, max_url_length=1200)
    keys = [r["key"] for r in resources] + ["missing-1", "missing-2"]
    found = await client.find_by_keys("products", keys)
    assert set(found) == {r["key"] for r in resources}
    assert found['odd "quoted" key']["id"] == resources[7]["id"]
    lengths = [len(url) for url in fake.urls]
    assert len(lengths) >= 4 and max(lengths) <= 1200  # several batches, each under the limit
    assert min(lengths[:-2]) > 900  # and each one nearly filled (room is kept for a cursor)
    # the two keys that need escapes go last, as input variables; the rest as literals
    assert ["var.values" in url for url in fake.urls] == [False] * (len(lengths) - 1) + [True]
    # versions went into the cache: an update by key needs no read
    assert client.versions.by_key("products", "k-0") == (resources[0]["id"], 1)


async def test_update_with_known_actions_uses_the_cached_version_without_a_read() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        body = json.loads(request.content)
        return httpx.Response(200, json={"id": "i1", "key": "inv", "version": body["version"] + 1})

    client, _ = make_client(handler)
    client.versions.remember("inventory", {"id": "i1", "key": "inv", "version": 3})
    change = [{"action": "changeQuantity", "quantity": 5}]
    updated = await client.update_with_retry(
        "inventory", "inv", lambda current: change, actions=change
    )
    assert updated["version"] == 4
    assert [r.method for r in requests] == ["POST"]
    assert client.versions.by_key("inventory", "inv") == ("i1", 4)


async def test_a_conflict_whose_recompute_finds_nothing_to_do_stops_there() -> None:
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request.method)
        if request.method == "POST":
            return ct_error(409, "ConcurrentModification", "stale", currentVersion=2)
        # somebody else already set the quantity we wanted
        return httpx.Response(200, json={"id": "i1", "version": 2, "quantityOnStock": 5})

    client, _ = make_client(handler)
    stale = {"id": "i1", "version": 1, "quantityOnStock": 9}
    result = await client.update_with_retry(
        "inventory",
        "i1",
        lambda current: (
            [] if current["quantityOnStock"] == 5 else [{"action": "changeQuantity", "quantity": 5}]
        ),
        current=stale,
    )
    assert requests == ["POST", "GET"]
    assert result == {"id": "i1", "version": 2, "quantityOnStock": 5}
