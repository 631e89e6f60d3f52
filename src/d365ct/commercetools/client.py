"""The one way d365ct talks to the commercetools HTTP API: one client per concern (SPEC C2),
retries on 429/502/503/504 for every method (C9), re-fetch and recompute on 409 (C8), bulk reads.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple
from urllib.parse import quote

import httpx

from d365ct.d365.http import parse_retry_after
from d365ct.errors import CredentialError, PermanentError, TransientError
from d365ct.tokens import TokenProvider

RETRYABLE_STATUS = frozenset({502, 503, 504})  # and 429, with its own budget
MAX_LIMIT = 500  # the API's maximum page size
MAX_ACTIONS_PER_UPDATE = 500  # documented for Checkout; assumed for the HTTP API too
DEFAULT_MAX_URL_LENGTH = 8000  # stay under the common 8 KB request-line limit of proxies
# Values per `var.values` list: the mock's query parser (qs) turns more than 20 repeats of one
# parameter into an object and then matches nothing. Only values needing escapes go this way.
MAX_VARIABLE_VALUES = 20

Resource = dict[str, Any]
Action = dict[str, Any]
ComputeActions = Callable[[Mapping[str, Any]], Sequence[Mapping[str, Any]]]
ParamValue = str | int | Sequence[str]

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6  # for 502/503/504 and transport errors
    max_throttled: int = 20  # 429s are expected under load; give them a larger budget
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 300.0  # never sleep longer than this on one Retry-After


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_delay, base * 2^attempt)]."""
    return rng.uniform(0, min(policy.max_delay, policy.base_delay * (2**attempt)))


class CommercetoolsError(PermanentError):
    """commercetools rejected a request: {statusCode, message, errors:[{code, …}]}."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        codes: Sequence[str] = (),
        errors: Sequence[Mapping[str, Any]] = (),
        method: str = "",
        url: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.codes = tuple(codes)
        self.errors = [dict(error) for error in errors]
        self.method = method
        self.url = url

    @property
    def code(self) -> str | None:
        return self.codes[0] if self.codes else None


class ResourceNotFound(CommercetoolsError):
    """404: the resource (by id or key) does not exist, or no longer does."""


class ConcurrentModification(TransientError):
    """409: the version we sent is stale. Re-fetch, recompute the actions, retry (SPEC C8).

    Transient, not permanent: once `update_with_retry` gives up, a later retry of the whole step
    usually succeeds. `current_version` is the version commercetools holds, when it says so.
    """

    def __init__(
        self,
        message: str,
        *,
        current_version: int | None = None,
        errors: Sequence[Mapping[str, Any]] = (),
        method: str = "",
        url: str = "",
    ) -> None:
        super().__init__(message)
        self.status = 409
        self.current_version = current_version
        self.errors = [dict(error) for error in errors]
        self.codes = tuple(str(e.get("code")) for e in self.errors if e.get("code"))
        self.method = method
        self.url = url


class CachedVersion(NamedTuple):
    id: str
    version: int


class VersionCache:
    """Last seen (id, version) per resource type, by key and by id.

    Lets an update whose actions the caller already knows (from its own last-synced state) go out
    without a read; a stale entry costs one 409 and a re-fetch, never a lost write.
    """

    def __init__(self, max_entries: int = 500_000) -> None:
        self.max_entries = max_entries
        self._by_key: dict[str, dict[str, CachedVersion]] = {}
        self._by_id: dict[str, dict[str, CachedVersion]] = {}

    def remember(self, resource: str, body: Mapping[str, Any]) -> None:
        rid, version = body.get("id"), body.get("version")
        if not isinstance(rid, str) or not isinstance(version, int):
            return
        entry = CachedVersion(rid, version)
        self._put(self._by_id.setdefault(resource, {}), rid, entry)
        key = body.get("key")
        if isinstance(key, str):
            self._put(self._by_key.setdefault(resource, {}), key, entry)

    def _put(self, table: dict[str, CachedVersion], name: str, entry: CachedVersion) -> None:
        table.pop(name, None)  # re-insert so eviction drops the least recently written first
        table[name] = entry
        if len(table) > self.max_entries:
            del table[next(iter(table))]

    def by_key(self, resource: str, key: str) -> CachedVersion | None:
        return self._by_key.get(resource, {}).get(key)

    def by_id(self, resource: str, rid: str) -> CachedVersion | None:
        return self._by_id.get(resource, {}).get(rid)

    def lookup(self, resource: str, id_or_key: str) -> CachedVersion | None:
        if _UUID.match(id_or_key) and (entry := self.by_id(resource, id_or_key)):
            return entry
        return self.by_key(resource, id_or_key)

    def forget(self, resource: str, body: Mapping[str, Any]) -> None:
        if isinstance(rid := body.get("id"), str):
            self._by_id.get(resource, {}).pop(rid, None)
        if isinstance(key := body.get("key"), str):
            self._by_key.get(resource, {}).pop(key, None)

    def __len__(self) -> int:
        return sum(len(table) for table in self._by_id.values())


class Upserted(NamedTuple):
    resource: Resource
    outcome: Literal["created", "updated", "unchanged"]


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()  # upsert(current=UNKNOWN): look the resource up by key first


def quote_predicate_string(value: str) -> str:
    """A predicate string literal: double quotes, backslash-escaped quotes and backslashes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _needs_escape(value: str) -> bool:
    return '"' in value or "\\" in value


def field_predicate(field: str, literal: str) -> str:
    """`a.b.c` with `in (...)` → `a(b(c in (...)))`: predicates descend with parentheses."""
    if not _FIELD.match(field):
        raise ValueError(f"not a predicate field path: {field!r}")
    *outer, leaf = field.split(".")
    predicate = f"{leaf} in {literal}"
    for part in reversed(outer):
        predicate = f"{part}({predicate})"
    return predicate


def _field_values(body: Mapping[str, Any], field: str) -> list[str]:
    node: Any = body
    for part in field.split("."):
        if not isinstance(node, Mapping):
            return []
        node = node.get(part)
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):  # a field inside an array (variants, addresses) can match twice
        return [item for item in node if isinstance(item, str)]
    return []


def _encoded_length(text: str) -> int:
    # quote() with no safe characters encodes at least as much as httpx does: an upper bound.
    return len(quote(text, safe=""))


def _is_sorted_after(ids: Sequence[str], cursor: str | None) -> bool:
    previous = cursor
    for rid in ids:
        if previous is not None and not rid > previous:
            return False
        previous = rid
    return True


class CommercetoolsClient:
    """Requests to one project with one API client's tokens; raises typed errors.

    Create one per concern (catalog, inventory, orders, customers), each with its own token
    provider and least-privilege scopes. `calls` counts HTTP requests by method, retries included.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        api_url: str,
        project_key: str,
        tokens: TokenProvider,
        *,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        max_concurrency: int = 16,
        max_url_length: int = DEFAULT_MAX_URL_LENGTH,
        sort_honoured: bool = True,
        versions: VersionCache | None = None,
        on_retry: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.http = http
        self.api_url = api_url.rstrip("/")
        self.project_key = project_key
        self.tokens = tokens
        self.policy = policy or RetryPolicy()
        self.max_url_length = max_url_length
        # False for servers that ignore `sort` (the mock): scan() then pages by offset.
        self.sort_honoured = sort_honoured
        self.versions = versions if versions is not None else VersionCache()
        self.calls: Counter[str] = Counter()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._on_retry = on_retry

    # ---- core ---------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.api_url}/{self.project_key}/{path.lstrip('/')}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, ParamValue] | None = None,
        json: Any = None,
    ) -> Any:
        """Send with retries; return the JSON body of a 2xx answer, raise a typed error otherwise.

        Every method is retried, POST included: updates carry a version, so a repeat is refused
        rather than applied twice. A create without a key may be duplicated if a timeout hid a
        success; give drafts keys.
        """
        url = self.url(path)
        failures = throttled = 0
        refreshed = False
        while True:
            token = await self.tokens.token()
            try:
                response = await self._send(method, url, params, json, token)
            except httpx.UnsupportedProtocol:
                raise
            except httpx.TransportError as exc:  # timeouts included
                failures += 1
                await self._wait_or_raise(f"{type(exc).__name__} on {method} {url}", failures, None)
                continue
            status = response.status_code
            if status == 401 and not refreshed:
                refreshed = True  # one refresh: the token may have expired or been revoked
                await self.tokens.token(force_refresh=True)
                continue
            if status == 401:
                raise CredentialError(
                    f"commercetools refused a fresh token of API client "
                    f"'{self.tokens.client_id}' on {method} {url}: {_message(response)}"
                )
            if status == 403:
                raise CredentialError(
                    f"API client '{self.tokens.client_id}' may not {method} {url}: "
                    f"{_message(response)}; give it the scope this call needs"
                )
            if status == 429:
                throttled += 1
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                if throttled >= self.policy.max_throttled:
                    raise TransientError(
                        f"commercetools kept throttling {method} {url} ({throttled} times)",
                        retry_after=retry_after,
                    )
                delay = self._delay(retry_after, throttled)
                self._notify("429", throttled, delay)
                await self._sleep(delay)
                continue
            if status in RETRYABLE_STATUS:
                failures += 1
                await self._wait_or_raise(f"HTTP {status} on {method} {url}", failures, response)
                continue
            if status >= 400:
                raise _error(method, url, response)
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError as exc:
                raise TransientError(
                    f"commercetools answered {method} {url} with {status} but no JSON"
                ) from exc

    async def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, ParamValue] | None,
        json: Any,
        token: str,
    ) -> httpx.Response:
        async with self._slots:
            self.calls[method] += 1
            return await self.http.request(
                method,
                url,
                params=_flatten_params(params),
                json=json,
                headers={"Authorization": f"Bearer {token}"},
            )

    def _delay(self, retry_after: float | None, attempt: int) -> float:
        if retry_after is not None:
            return min(retry_after, self.policy.max_retry_after)
        return backoff_delay(attempt, self.policy, self._rng)

    async def _wait_or_raise(
        self, reason: str, failures: int, response: httpx.Response | None
    ) -> None:
        retry_after = (
            parse_retry_after(response.headers.get("Retry-After")) if response is not None else None
        )
        if failures >= self.policy.max_attempts:
            detail = f": {_message(response)}" if response is not None else ""
            raise TransientError(
                f"{reason} after {failures} attempts{detail}", retry_after=retry_after
            )
        delay = self._delay(retry_after, failures)
        self._notify(reason.split(" on ")[0], failures, delay)
        await self._sleep(delay)

    def _notify(self, reason: str, attempt: int, delay: float) -> None:
        if self._on_retry is not None:
            self._on_retry(reason, attempt, delay)

    # ---- single resources ---------------------------------------------------------------------

    async def get_by_id(
        self, resource: str, rid: str, *, expand: Sequence[str] = ()
    ) -> Resource | None:
        return await self._get(resource, quote(rid, safe=""), expand)

    async def get_by_key(
        self, resource: str, key: str, *, expand: Sequence[str] = ()
    ) -> Resource | None:
        return await self._get(resource, f"key={quote(key, safe='')}", expand)

    async def get(self, resource: str, id_or_key: str) -> Resource | None:
        """By id when the text is a UUID, else by key (a key shaped like a UUID is read as id)."""
        if _UUID.match(id_or_key):
            return await self.get_by_id(resource, id_or_key)
        return await self.get_by_key(resource, id_or_key)

    async def _get(self, resource: str, selector: str, expand: Sequence[str]) -> Resource | None:
        params = {"expand": list(expand)} if expand else None
        try:
            body = await self.request("GET", f"{resource}/{selector}", params=params)
        except ResourceNotFound:
            return None
        self.versions.remember(resource, body)
        return _as_resource(body)

    async def create(self, resource: str, draft: Mapping[str, Any]) -> Resource:
        body = await self.request("POST", resource, json=draft)
        # POST /customers answers a CustomerSignInResult: {"customer": {...}}
        if isinstance(body, dict) and "id" not in body and isinstance(body.get("customer"), dict):
            body = body["customer"]
        self.versions.remember(resource, body)
        return _as_resource(body)

    async def update(
        self,
        resource: str,
        rid: str,
        version: int,
        actions: Sequence[Mapping[str, Any]],
        *,
        current: Mapping[str, Any] | None = None,
    ) -> Resource:
        """Apply actions at `version`. No actions → no call: returns `current` (or {id, version}).

        More than 500 actions go out as consecutive requests, each at the version the last one
        returned. Raises ConcurrentModification on 409.
        """
        if not actions:
            return dict(current) if current is not None else {"id": rid, "version": version}
        body: Any = None
        for start in range(0, len(actions), MAX_ACTIONS_PER_UPDATE):
            chunk = [dict(action) for action in actions[start : start + MAX_ACTIONS_PER_UPDATE]]
            body = await self.request(
                "POST",
                f"{resource}/{quote(rid, safe='')}",
                json={"version": version, "actions": chunk},
            )
            self.versions.remember(resource, body)
            version = int(body["version"])
        return _as_resource(body)

    async def update_with_retry(
        self,
        resource: str,
        id_or_key: str,
        compute_actions: ComputeActions,
        max_attempts: int = 5,
        *,
        current: Mapping[str, Any] | None = None,
        actions: Sequence[Mapping[str, Any]] | None = None,
    ) -> Resource:
        """Update with optimistic concurrency (SPEC C8): on 409 re-fetch, recompute, retry.

        The first attempt diffs `current` when given; else, when the caller passes the `actions`
        it already knows and the version cache holds the resource, they go out at the cached
        version without a read; else the resource is read first. Each conflict costs one read and
        one recompute (possibly to no actions: somebody else already wrote what we wanted).
        Raises ConcurrentModification after `max_attempts` conflicts, ResourceNotFound when the
        resource is gone.
        """
        body, _ = await self._converge(
            resource, id_or_key, compute_actions, max_attempts, current, actions
        )
        return body

    async def _converge(
        self,
        resource: str,
        id_or_key: str,
        compute_actions: ComputeActions,
        max_attempts: int,
        current: Mapping[str, Any] | None,
        actions: Sequence[Mapping[str, Any]] | None,
    ) -> tuple[Resource, bool]:
        """update_with_retry, also saying whether anything was written."""
        rid: str
        version: int
        pending: list[Action]
        cached = self.versions.lookup(resource, id_or_key) if current is None else None
        if actions is not None and cached is not None:
            if not actions:
                return {"id": cached.id, "version": cached.version}, False
            rid, version, pending = cached.id, cached.version, [dict(a) for a in actions]
        else:
            if current is None:
                current = await self.get(resource, id_or_key)
                if current is None:
                    raise _not_found(resource, id_or_key)
            pending = [dict(a) for a in compute_actions(current)]
            if not pending:
                return dict(current), False
            rid, version = str(current["id"]), int(current["version"])
        conflict: ConcurrentModification | None = None
        for attempt in range(1, max_attempts + 1):
            try:
                return await self.update(resource, rid, version, pending, current=current), True
            except ConcurrentModification as exc:
                conflict = exc
                if attempt == max_attempts:
                    break
            current = await self.get_by_id(resource, rid)
            if current is None:
                raise _not_found(resource, id_or_key)
            pending = [dict(a) for a in compute_actions(current)]
            if not pending:
                return dict(current), False
            version = int(current["version"])
        assert conflict is not None
        raise ConcurrentModification(
            f"{resource} {id_or_key}: still conflicting after {max_attempts} attempts "
            f"(another writer keeps changing it): {conflict}",
            current_version=conflict.current_version,
            errors=conflict.errors,
            method=conflict.method,
            url=conflict.url,
        ) from conflict

    async def upsert(
        self,
        resource: str,
        draft: Mapping[str, Any],
        compute_actions: ComputeActions,
        *,
        current: Mapping[str, Any] | None = UNKNOWN,
        actions: Sequence[Mapping[str, Any]] | None = None,
        max_attempts: int = 5,
    ) -> Upserted:
        """Create the draft, or update the resource with its `key` to match it.

        `current`: the resource as a bulk lookup found it, None when the lookup found nothing
        (create without a read), or UNKNOWN (default): read by key unless `actions` can go out at
        a cached version. A create that loses a race to another creator (DuplicateField) falls
        back to an update.
        """
        key = draft.get("key")
        if not isinstance(key, str) or not key:
            raise ValueError(f"upsert into {resource} needs a draft with a key")
        if current is UNKNOWN:
            if actions is not None and self.versions.by_key(resource, key) is not None:
                return await self._update_outcome(
                    resource, key, compute_actions, None, actions, max_attempts
                )
            current = await self.get_by_key(resource, key)
        if current is None:
            try:
                return Upserted(await self.create(resource, draft), "created")
            except CommercetoolsError as exc:
                if "DuplicateField" not in exc.codes:
                    raise
                duplicate = exc
            current = await self.get_by_key(resource, key)
            if current is None:  # the duplicate is on another unique field than the key
                raise duplicate
        return await self._update_outcome(
            resource, key, compute_actions, current, None, max_attempts
        )

    async def _update_outcome(
        self,
        resource: str,
        key: str,
        compute_actions: ComputeActions,
        current: Mapping[str, Any] | None,
        actions: Sequence[Mapping[str, Any]] | None,
        max_attempts: int,
    ) -> Upserted:
        body, wrote = await self._converge(
            resource, key, compute_actions, max_attempts, current, actions
        )
        return Upserted(body, "updated" if wrote else "unchanged")

    async def delete(self, resource: str, rid: str, version: int | None = None) -> Resource | None:
        """Delete at `version` (default: the cached one, else read first). Gone already → None."""
        if version is None:
            cached = self.versions.by_id(resource, rid)
            if cached is None:
                found = await self.get_by_id(resource, rid)
                if found is None:
                    return None
                cached = CachedVersion(rid, int(found["version"]))
            version = cached.version
        try:
            body = await self.request(
                "DELETE", f"{resource}/{quote(rid, safe='')}", params={"version": version}
            )
        except ResourceNotFound:
            return None
        self.versions.forget(resource, body)
        return _as_resource(body)

    # ---- many resources -----------------------------------------------------------------------

    async def query(
        self,
        resource: str,
        *,
        where: str | Sequence[str] | None = None,
        variables: Mapping[str, str | Sequence[str]] | None = None,
        sort: Sequence[str] = (),
        limit: int = 20,
        offset: int = 0,
        with_total: bool = False,
    ) -> dict[str, Any]:
        """One page: {results, count, limit, offset[, total]}. Several where's are and-ed."""
        params: dict[str, ParamValue] = {"limit": limit, "withTotal": str(with_total).lower()}
        if offset:
            params["offset"] = offset
        if where:
            params["where"] = [where] if isinstance(where, str) else list(where)
        if sort:
            params["sort"] = list(sort)
        for name, value in (variables or {}).items():
            params[f"var.{name}"] = value if isinstance(value, str) else list(value)
        page = await self.request("GET", resource, params=params)
        for body in page.get("results", []):
            self.versions.remember(resource, body)
        return dict(page)

    async def scan(
        self,
        resource: str,
        where: str | Sequence[str] | None = None,
        page_size: int = MAX_LIMIT,
        *,
        variables: Mapping[str, str | Sequence[str]] | None = None,
    ) -> AsyncIterator[Resource]:
        """Every resource matching `where`, streamed page by page.

        On the real API: `sort=id asc`, `withTotal=false` and `where=id > "<last id>"` and-ed with
        the caller's predicate, so there is no offset limit (10,000) and no total to compute.
        Ids are unique and the cursor strictly increases, so no resource can come twice: there is
        nothing to de-duplicate. A resource created during the scan appears if its id sorts after
        the cursor; one deleted during it may be missed (reconciliation runs again anyway).

        A server that ignores `sort` (the mock, `sort_honoured=False`) is paged by offset; an
        unsorted first page switches to that too, since it proves the server ignores `sort`.
        A later unsorted page means entries may have been skipped: that raises. (Detection needs
        pages of several entries; a server known to ignore `sort` should say so up front.)
        """
        size = max(1, min(page_size, MAX_LIMIT))
        wheres = [where] if isinstance(where, str) else list(where or ())
        cursor: str | None = None
        offset = 0
        by_offset = not self.sort_honoured
        while True:
            if by_offset:
                page = await self.query(
                    resource, where=wheres, variables=variables, limit=size, offset=offset
                )
            else:
                cursor_where = [f"id > {quote_predicate_string(cursor)}"] if cursor else []
                page = await self.query(
                    resource,
                    where=wheres + cursor_where,
                    variables=variables,
                    sort=["id asc"],
                    limit=size,
                )
            results: list[Resource] = page.get("results", [])
            if not by_offset and not _is_sorted_after([r["id"] for r in results], cursor):
                if cursor is not None:
                    raise PermanentError(
                        f"scan of {resource}: the server ignored sort=id asc after the first "
                        "page, so entries may have been skipped; construct the client with "
                        "sort_honoured=False for this server"
                    )
                by_offset = True  # the first page is also the first page by offset
            for body in results:
                yield body
            if len(results) < size:
                return
            offset += len(results)
            cursor = results[-1]["id"]

    async def find_by_keys(self, resource: str, keys: Sequence[str]) -> dict[str, Resource]:
        """key → resource for the keys that exist, in as few requests as the URL limit allows."""
        found: dict[str, Resource] = {}
        for batch_key, bodies in (await self.find_by_field(resource, "key", keys)).items():
            found[batch_key] = bodies[0]
        return found

    async def find_by_field(
        self,
        resource: str,
        field: str,
        values: Sequence[str],
        *,
        where: str | None = None,
    ) -> dict[str, list[Resource]]:
        """value → resources whose `field` (dotted path, e.g. `masterData.current.masterVariant
        .sku`) has that value, batched as `field in (...)` under the URL limit.

        Lists, because a field need not be unique (an inventory sku has one entry per supply
        channel); `where` narrows further. Values with quotes or backslashes go in batches of their
        own as input variables (`var.values`), which need no escaping (the mock does not unescape
        `\\"` in literals).
        """
        wanted = list(dict.fromkeys(v for v in values if v))
        plain = [value for value in wanted if not _needs_escape(value)]
        odd = [value for value in wanted if _needs_escape(value)]
        batches = [
            *((batch, False) for batch in self._batches(resource, field, plain, where, False)),
            *((batch, True) for batch in self._batches(resource, field, odd, where, True)),
        ]
        found: dict[str, list[Resource]] = {}
        for batch, as_variables in batches:
            if as_variables:
                wheres, variables = [field_predicate(field, ":values")], {"values": batch}
            else:
                literal = "(" + ",".join(quote_predicate_string(v) for v in batch) + ")"
                wheres, variables = [field_predicate(field, literal)], {}
            if where:
                wheres.append(where)
            batch_set = set(batch)
            async for body in self.scan(resource, wheres, variables=variables):
                for value in dict.fromkeys(_field_values(body, field)):
                    if value in batch_set:
                        found.setdefault(value, []).append(body)
        return found

    def _batches(
        self,
        resource: str,
        field: str,
        values: Sequence[str],
        where: str | None,
        as_variables: bool,
    ) -> Iterator[list[str]]:
        # Fixed part of the longest URL a batch makes: scan's cursor, sort, limit and our where.
        cursor = quote_predicate_string("00000000-0000-0000-0000-000000000000")
        fixed = (
            len(self.url(resource))
            + len("?where=&where=&limit=500&withTotal=false&sort=")
            + _encoded_length(field_predicate(field, "()" if not as_variables else ":values"))
            + _encoded_length(f"id > {cursor}")
            + _encoded_length("id asc")
            + (len("&where=") + _encoded_length(where) if where else 0)
        )
        budget = self.max_url_length - fixed
        most = MAX_VARIABLE_VALUES if as_variables else MAX_LIMIT
        batch: list[str] = []
        used = 0
        for value in values:
            if as_variables:
                cost = len("&var.values=") + _encoded_length(value)
            else:
                cost = _encoded_length(quote_predicate_string(value)) + _encoded_length(",")
            if batch and (used + cost > budget or len(batch) >= most):
                yield batch
                batch, used = [], 0
            if cost > budget:
                raise ValueError(
                    f"{resource}.{field} value of {len(value)} characters does not fit in one "
                    f"URL of {self.max_url_length} characters"
                )
            batch.append(value)
            used += cost
        if batch:
            yield batch


_Error = CommercetoolsError | ConcurrentModification | TransientError


def _flatten_params(params: Mapping[str, ParamValue] | None) -> httpx.QueryParams | None:
    if params is None:
        return None
    pairs: list[tuple[str, str | int | float | bool | None]] = []
    for name, value in params.items():
        if isinstance(value, str | int):
            pairs.append((name, str(value)))
        else:
            pairs.extend((name, str(item)) for item in value)
    return httpx.QueryParams(pairs)


def _as_resource(body: Any) -> Resource:
    if not isinstance(body, dict):
        raise PermanentError(
            f"commercetools answered {type(body).__name__} where a resource was due"
        )
    return body


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        parsed = response.json()
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _message(response: httpx.Response) -> str:
    body = _body(response)
    message = body.get("message") or body.get("error_description") or body.get("error")
    if message:
        return str(message)
    return response.text[:300] or f"HTTP {response.status_code}"


def _error(method: str, url: str, response: httpx.Response) -> _Error:
    body = _body(response)
    errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
    codes = [str(e["code"]) for e in errors if e.get("code")]
    status = response.status_code
    message = _message(response)
    # the field-level reason of InvalidJsonInput and friends is the useful part
    details = [str(e["detailedErrorMessage"]) for e in errors if e.get("detailedErrorMessage")]
    if details:
        message = f"{message} ({'; '.join(details)})"
    text = (
        f"commercetools {method} {url} failed ({status} {', '.join(codes) or 'error'}): {message}"
    )
    if status == 409:
        versions = [e.get("currentVersion") for e in errors if "currentVersion" in e]
        current = versions[0] if versions and isinstance(versions[0], int) else None
        return ConcurrentModification(
            text, current_version=current, errors=errors, method=method, url=url
        )
    if status == 404:
        return ResourceNotFound(
            text, status=status, codes=codes, errors=errors, method=method, url=url
        )
    if status >= 500:
        return TransientError(text)
    return CommercetoolsError(
        text, status=status, codes=codes, errors=errors, method=method, url=url
    )


def _not_found(resource: str, id_or_key: str) -> ResourceNotFound:
    return ResourceNotFound(
        f"commercetools {resource} {id_or_key} does not exist (deleted meanwhile?)",
        status=404,
        codes=["ResourceNotFound"],
    )
