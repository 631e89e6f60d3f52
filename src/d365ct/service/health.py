"""Readiness of the service: the store answers, and a D365 token and each commercetools client's
token can be obtained. Results are cached for a few seconds so probes cannot hammer the IdPs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from d365ct.config import Settings
from d365ct.runtime import Adapters, adapters
from d365ct.service.logging import Redactor
from d365ct.service.queries import StoreQueries

__all__ = ["CheckOutcome", "ReadinessCheck", "ReadinessProbe", "TokenChecks", "default_checks"]

CACHE_SECONDS: Final = 5.0
CHECK_TIMEOUT_SECONDS: Final = 10.0

# Returns a short detail when the dependency is fine; raises when it is not.
ReadinessCheck = Callable[[], Awaitable[str]]


@dataclass(frozen=True)
class CheckOutcome:
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


class ReadinessProbe:
    def __init__(
        self,
        checks: Mapping[str, ReadinessCheck],
        *,
        cache_seconds: float = CACHE_SECONDS,
        timeout_seconds: float = CHECK_TIMEOUT_SECONDS,
        redactor: Redactor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks = dict(checks)
        self._cache_seconds = cache_seconds
        self._timeout = timeout_seconds
        self._redactor = redactor or Redactor()
        self._clock = clock
        self._lock = asyncio.Lock()
        self._cached: tuple[float, dict[str, CheckOutcome]] | None = None

    async def _one(self, check: ReadinessCheck) -> CheckOutcome:
        try:
            detail = await asyncio.wait_for(check(), self._timeout)
        except TimeoutError:
            return CheckOutcome(False, f"no answer within {self._timeout:.0f} s")
        except Exception as exc:  # any failure means "not ready"; the detail says which
            text = str(exc) or exc.__class__.__name__
            return CheckOutcome(False, self._redactor.redact_text(text))
        return CheckOutcome(True, self._redactor.redact_text(detail))

    async def results(self) -> dict[str, CheckOutcome]:
        cached = self._cached
        if cached is not None and self._clock() - cached[0] < self._cache_seconds:
            return cached[1]
        async with self._lock:  # concurrent probes share one round of checks
            cached = self._cached
            if cached is not None and self._clock() - cached[0] < self._cache_seconds:
                return cached[1]
            names = list(self._checks)
            outcomes = await asyncio.gather(*(self._one(self._checks[n]) for n in names))
            result = dict(zip(names, outcomes, strict=True))
            self._cached = (self._clock(), result)
            return result


class TokenChecks:
    """Token checks on long-lived adapters: their token caches make a repeated probe free until
    a token nears expiry. Built on first use, inside the serving event loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stack: contextlib.AsyncExitStack | None = None
        self._adapters: Adapters | None = None
        self._lock = asyncio.Lock()  # the checks run concurrently: build the adapters once

    async def _ctx(self) -> Adapters:
        async with self._lock:
            return await self._open()

    async def _open(self) -> Adapters:
        if self._adapters is None:
            stack = contextlib.AsyncExitStack()
            try:
                self._adapters = await stack.enter_async_context(adapters(self._settings))
            except BaseException:
                await stack.aclose()
                raise
            self._stack = stack
        return self._adapters

    async def d365(self) -> str:
        ctx = await self._ctx()
        await ctx.d365_http.tokens.token()
        return f"token for client {self._settings.d365.client_id}"

    def commercetools(self, concern: str) -> ReadinessCheck:
        async def check() -> str:
            ctx = await self._ctx()
            client = ctx.commercetools(concern)
            await client.tokens.token()
            return f"token for {concern} client"

        return check

    async def aclose(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = None
        self._adapters = None


def default_checks(
    settings: Settings, queries: StoreQueries, tokens: TokenChecks
) -> dict[str, ReadinessCheck]:
    async def database() -> str:
        await asyncio.to_thread(queries.ping)
        return "reachable"

    checks: dict[str, ReadinessCheck] = {"database": database, "d365_token": tokens.d365}
    if settings.commercetools is not None:
        for concern in sorted(settings.commercetools.clients):
            checks[f"commercetools_{concern}_token"] = tokens.commercetools(concern)
    return checks
