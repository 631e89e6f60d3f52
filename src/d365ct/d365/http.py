"""The one way d365ct talks HTTP to D365: bearer tokens, bounded concurrency, a token bucket,
429 with Retry-After honoured, back-off with jitter on 5xx and timeouts, one refresh on 401.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from aiolimiter import AsyncLimiter

from d365ct.errors import CredentialError, PermanentError, TransientError
from d365ct.tokens import TokenProvider

RETRYABLE_STATUS = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6  # for 5xx and transport errors
    max_throttled: int = 20  # 429s are expected under load; give them a larger budget
    base_delay: float = 0.5
    max_delay: float = 60.0
    max_retry_after: float = 300.0  # never sleep longer than this on one Retry-After


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_delay, base * 2^attempt)] (attempt counts from 0)."""
    ceiling = min(policy.max_delay, policy.base_delay * (2**attempt))
    return rng.uniform(0, ceiling)


def odata_error_message(response: httpx.Response) -> str:
    """D365's real reason lives in error.innererror.message; fall back to error.message."""
    try:
        error = response.json().get("error", {})
    except ValueError:
        return response.text[:500] or f"HTTP {response.status_code}"
    inner = error.get("innererror") or {}
    return str(inner.get("message") or error.get("message") or f"HTTP {response.status_code}")


RetryHook = Callable[[str, int, float], None]  # (reason, attempt, delay) — for metrics and logs


class D365Http:
    """Sends requests to one D365 environment; returns any non-retryable response to the caller.

    Raises TransientError when retries are exhausted and CredentialError when a refreshed token
    is still refused.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        tokens: TokenProvider,
        *,
        policy: RetryPolicy | None = None,
        max_concurrency: int = 8,
        rate_per_second: float | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        on_retry: RetryHook | None = None,
    ) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.policy = policy or RetryPolicy()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._bucket = AsyncLimiter(rate_per_second, 1) if rate_per_second else None
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._on_retry = on_retry

    def url(self, path: str) -> str:
        return (
            path
            if path.startswith(("http://", "https://"))
            else f"{self.base_url}/{path.lstrip('/')}"
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        url = self.url(path)
        failures = throttled = 0
        refreshed = False
        while True:
            token = await self.tokens.token()
            try:
                response = await self._send(method, url, params, json, headers, token)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                failures += 1
                reason = f"{type(exc).__name__} on {method} {url}"
                await self._wait_or_raise(reason, failures, None)
                continue
            if response.status_code == 401 and not refreshed:
                refreshed = True  # one refresh: the token may have expired in flight
                await self.tokens.token(force_refresh=True)
                continue
            if response.status_code == 401:
                raise CredentialError(
                    f"D365 refused a fresh token of client '{self.tokens.client_id}' "
                    f"on {method} {url}: check that the app is registered in D365 "
                    "(System administration > Setup > Microsoft Entra applications)"
                )
            if response.status_code == 429:
                throttled += 1
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                if throttled >= self.policy.max_throttled:
                    raise TransientError(
                        f"D365 kept throttling {method} {url} ({throttled} times)",
                        retry_after=retry_after,
                    )
                delay = (
                    min(retry_after, self.policy.max_retry_after)
                    if retry_after is not None
                    else backoff_delay(throttled, self.policy, self._rng)
                )
                self._notify("429", throttled, delay)
                await self._sleep(delay)
                continue
            if response.status_code in RETRYABLE_STATUS:
                failures += 1
                reason = f"HTTP {response.status_code} on {method} {url}"
                await self._wait_or_raise(reason, failures, response)
                continue
            return response

    async def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        json: Any,
        headers: Mapping[str, str] | None,
        token: str,
    ) -> httpx.Response:
        if self._bucket is not None:
            await self._bucket.acquire()
        async with self._slots:
            return await self.client.request(
                method,
                url,
                params=params,
                json=json,
                headers={**(headers or {}), "Authorization": f"Bearer {token}"},
            )

    async def _wait_or_raise(
        self, reason: str, failures: int, response: httpx.Response | None
    ) -> None:
        if failures >= self.policy.max_attempts:
            detail = f": {odata_error_message(response)}" if response is not None else ""
            raise TransientError(f"{reason} after {failures} attempts{detail}")
        retry_after = parse_retry_after(response.headers.get("Retry-After")) if response else None
        delay = (
            min(retry_after, self.policy.max_retry_after)
            if retry_after is not None
            else backoff_delay(failures, self.policy, self._rng)
        )
        self._notify(reason.split(" on ")[0], failures, delay)
        await self._sleep(delay)

    def _notify(self, reason: str, attempt: int, delay: float) -> None:
        if self._on_retry is not None:
            self._on_retry(reason, attempt, delay)

    async def get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET that must succeed; other statuses become PermanentError with D365's reason."""
        response = await self.request("GET", path, params=params)
        if response.status_code != 200:
            raise PermanentError(
                f"GET {self.url(path)} failed ({response.status_code}): "
                f"{odata_error_message(response)}"
            )
        return response.json()
