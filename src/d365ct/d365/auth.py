"""Access tokens for D365: Entra ID through azure-identity, or plain OAuth 2.0 client credentials.

Tokens are cached and refreshed before they expire; `force_refresh` is for the one retry on 401.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import httpx

from d365ct.config import D365Settings
from d365ct.errors import CredentialError, TransientError
from d365ct.tokens import CachedToken, TokenProvider


class ClientCredentialsProvider:
    """OAuth 2.0 client credentials against any token endpoint (AD FS, d365sim, Entra v1/v2)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        resource: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self._form = {"grant_type": "client_credentials", "client_id": client_id}
        if scope:
            self._form["scope"] = scope
        if resource:
            self._form["resource"] = resource
        self._cache = CachedToken(clock)

    async def token(self, *, force_refresh: bool = False) -> str:
        if not force_refresh and (value := self._cache.fresh()):
            return value
        async with self._cache.lock:
            if not force_refresh and (value := self._cache.fresh()):
                return value
            value, lifetime = await self._request()
            self._cache.store(value, lifetime)
            return value

    async def _request(self) -> tuple[str, float]:
        try:
            response = await self.http.post(
                self.token_url, data={**self._form, "client_secret": self._secret}
            )
        except httpx.TransportError as exc:
            raise TransientError(f"token endpoint {self.token_url} unreachable: {exc}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientError(f"token endpoint answered {response.status_code}")
        body: dict[str, Any] = {}
        with contextlib.suppress(ValueError):  # an HTML error page from a proxy, say
            body = response.json()
        if response.status_code != 200 or "access_token" not in body:
            # Entra and AD FS put the reason in error_description; never echo our secret.
            reason = str(body.get("error_description") or body.get("error") or response.text)
            reason = reason.replace(self._secret, "***").splitlines()[0] if reason else ""
            raise CredentialError(
                f"D365 token request for client '{self.client_id}' was refused "
                f"({response.status_code}): {reason}"
            )
        return str(body["access_token"]), float(body.get("expires_in", 3599))

    async def close(self) -> None:
        return None


class AzureIdentityProvider:
    """Entra ID tokens from an azure-identity async credential (secret, certificate, MI)."""

    def __init__(
        self,
        credential: Any,
        *,
        scope: str,
        client_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credential = credential
        self.scope = scope
        self.client_id = client_id
        self._cache = CachedToken(clock)
        self._clock = clock

    async def token(self, *, force_refresh: bool = False) -> str:
        if not force_refresh and (value := self._cache.fresh()):
            return value
        async with self._cache.lock:
            if not force_refresh and (value := self._cache.fresh()):
                return value
            from azure.core.exceptions import ClientAuthenticationError

            try:
                access = await self.credential.get_token(self.scope)
            except ClientAuthenticationError as exc:
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise CredentialError(
                    f"Entra ID refused client '{self.client_id}' for {self.scope}: {message}"
                ) from exc
            self._cache.store(access.token, float(access.expires_on) - self._clock())
            return str(access.token)

    async def close(self) -> None:
        await self.credential.close()


def token_provider(settings: D365Settings, http: httpx.AsyncClient) -> TokenProvider:
    """The provider the settings ask for; secrets are resolved here, at the last moment."""
    if settings.auth == "oauth2":
        if settings.client_secret is None:
            raise CredentialError("d365.client_secret is required for auth = 'oauth2'")
        return ClientCredentialsProvider(
            http,
            token_url=settings.effective_token_url,
            client_id=settings.client_id,
            client_secret=settings.client_secret.resolve(),
            scope=None if settings.token_resource else settings.scope,
            resource=settings.token_resource,
        )
    from azure.identity import aio

    authority = settings.authority.removeprefix("https://").rstrip("/")
    credential: Any
    if settings.auth == "client_secret":
        if settings.client_secret is None:
            raise CredentialError("d365.client_secret is required for auth = 'client_secret'")
        credential = aio.ClientSecretCredential(
            settings.tenant_id,
            settings.client_id,
            settings.client_secret.resolve(),
            authority=authority,
        )
    elif settings.auth == "certificate":
        if settings.certificate_path is None:
            raise CredentialError("d365.certificate_path is required for auth = 'certificate'")
        credential = aio.CertificateCredential(
            settings.tenant_id,
            settings.client_id,
            str(settings.certificate_path),
            authority=authority,
        )
    else:
        credential = aio.ManagedIdentityCredential(client_id=settings.client_id or None)
    return AzureIdentityProvider(credential, scope=settings.scope, client_id=settings.client_id)
