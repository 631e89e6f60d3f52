"""Builds the adapters a flow needs from settings: D365 (OData, DMF) and commercetools clients.

Clients are bound to an event loop, so flows build them inside the loop that uses them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from d365ct.commercetools import ClientCredentialsTokens, CommercetoolsClient
from d365ct.config import Settings
from d365ct.d365.auth import token_provider
from d365ct.d365.dmf import DmfClient
from d365ct.d365.http import D365Http, RetryPolicy
from d365ct.d365.odata import ODataReader
from d365ct.service.metrics import retry_hook


@dataclass
class Adapters:
    """Everything a flow talks to, sharing one connection pool per target."""

    settings: Settings
    d365_http: D365Http
    odata: ODataReader
    dmf: DmfClient
    http: httpx.AsyncClient
    _commercetools: dict[str, CommercetoolsClient] = field(default_factory=dict)

    def commercetools(self, concern: str) -> CommercetoolsClient:
        """The client of one concern (catalog, inventory, orders, customers), with its scopes."""
        client = self._commercetools.get(concern)
        if client is None:
            ct = self.settings.require_commercetools()
            credentials = ct.client(concern)
            tokens = ClientCredentialsTokens(
                self.http,
                auth_url=ct.auth_url,
                client_id=credentials.client_id,
                client_secret=credentials.client_secret,
                scopes=credentials.scopes,
                scope_in_query=ct.scope_in_query,
            )
            client = CommercetoolsClient(
                self.http,
                ct.api_url,
                ct.project_key,
                tokens,
                max_concurrency=ct.max_concurrency,
                on_retry=retry_hook("commercetools"),
            )
            self._commercetools[concern] = client
        return client


@asynccontextmanager
async def adapters(
    settings: Settings, *, event_hooks: dict[str, list[object]] | None = None
) -> AsyncIterator[Adapters]:
    """Open the adapters for one unit of work; connections close when the block ends."""
    async with httpx.AsyncClient(
        timeout=settings.d365.request_timeout_seconds,
        event_hooks=event_hooks or {},  # type: ignore[arg-type]
    ) as http:
        d365 = D365Http(
            http,
            settings.d365.base_url,
            token_provider(settings.d365, http),
            policy=RetryPolicy(max_attempts=settings.d365.max_attempts),
            max_concurrency=settings.d365.max_concurrency,
            rate_per_second=settings.d365.rate_per_second,
            on_retry=retry_hook("d365"),  # 429s and retried failures show in /metrics
        )
        yield Adapters(settings, d365, ODataReader(d365), DmfClient(d365), http)
