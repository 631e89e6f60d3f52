"""Access tokens for commercetools API clients: OAuth 2.0 client credentials with HTTP Basic auth.

One provider per API client (SPEC C2); tokens are cached, refreshed before expiry and on demand.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from d365ct.config import SecretRef
from d365ct.errors import CredentialError, TransientError
from d365ct.tokens import CachedToken


class ClientCredentialsTokens:
    """Client-credentials tokens from `{auth_url}/oauth/token` for one commercetools API client.

    `scope_in_query=True` sends `grant_type` and `scope` in the query string instead of the form
    body: @labdigital/commercetools-mock 4.4.0 reads `scope` only from the query string (given in
    the body it answers scope "todo"). The real auth service accepts both; the body is standard.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        auth_url: str,
        client_id: str,
        client_secret: str,
        scopes: Sequence[str] = (),
        scope_in_query: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.token_url = f"{auth_url.rstrip('/')}/oauth/token"
        self.client_id = client_id
        self.scopes = tuple(scopes)
        self.scope_in_query = scope_in_query
        # A SecretRef stays a reference until a token is needed, so the value lives briefly.
        self._secret = client_secret
        self._cache = CachedToken(clock)
        self.granted_scopes: tuple[str, ...] = ()  # what the last token actually carries
        self.requests = 0  # token requests sent, for tests and metrics

    async def token(self, *, force_refresh: bool = False) -> str:
        if not force_refresh and (value := self._cache.fresh()):
            return value
        async with self._cache.lock:
            if not force_refresh and (value := self._cache.fresh()):
                return value
            value, lifetime = await self._request()
            self._cache.store(value, lifetime)
            return value

    def _secret_value(self) -> str:
        secret = self._secret
        return secret.resolve() if isinstance(secret, SecretRef) else secret

    async def _request(self) -> tuple[str, float]:
        secret = self._secret_value()
        fields = {"grant_type": "client_credentials"}
        if self.scopes:
            fields["scope"] = " ".join(self.scopes)
        params, data = (fields, None) if self.scope_in_query else (None, fields)
        self.requests += 1
        try:
            response = await self.http.post(
                self.token_url, params=params, data=data, auth=(self.client_id, secret)
            )
        except httpx.TransportError as exc:
            raise TransientError(
                f"commercetools auth service {self.token_url} unreachable: {exc}"
            ) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientError(
                f"commercetools auth service answered {response.status_code} "
                f"for API client '{self.client_id}'"
            )
        body: dict[str, Any] = {}
        with contextlib.suppress(ValueError):  # an HTML error page from a proxy, say
            parsed = response.json()
            body = parsed if isinstance(parsed, dict) else {}
        if response.status_code != 200 or "access_token" not in body:
            raise CredentialError(
                f"commercetools refused a token for API client '{self.client_id}' "
                f"({response.status_code}): {_reason(body, response, secret)}; check the client "
                "id, secret and scopes of this API client in the Merchant Center"
            )
        self.granted_scopes = tuple(str(body.get("scope", "")).split())
        return str(body["access_token"]), float(body.get("expires_in", 3600))

    async def close(self) -> None:
        return None


def _reason(body: dict[str, Any], response: httpx.Response, secret: str) -> str:
    """commercetools answers {message, errors:[{code}]} or OAuth's {error, error_description}."""
    errors = body.get("errors") or []
    code = errors[0].get("code") if errors and isinstance(errors[0], dict) else None
    reason = str(
        body.get("error_description")
        or body.get("message")
        or body.get("error")
        or code
        or response.text
        or f"HTTP {response.status_code}"
    )
    if code and code not in reason:
        reason = f"{code}: {reason}"
    # never echo our secret, even if a proxy reflects the request back at us
    return reason.replace(secret, "***").splitlines()[0][:300] if secret else reason[:300]
