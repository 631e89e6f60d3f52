"""Entra ID-compatible token endpoints (v1 and v2 client credentials) and bearer validation.

Error answers carry Entra's shape: `error`, `error_description` starting with an AADSTS code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from d365sim.config import SimConfig


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenIssuer:
    """Issues and validates JWT-shaped bearer tokens signed with a per-instance key."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._key = secrets.token_bytes(32)

    def issue(self, now: float | None = None) -> tuple[str, int]:
        now = time.time() if now is None else now
        expires = int(now) + self.config.token_seconds
        header = {"typ": "JWT", "alg": "HS256"}
        claims = {
            "aud": self.config.resource,
            "iss": f"https://sts.windows.net/{self.config.tenant}/",
            "iat": int(now),
            "nbf": int(now),
            "exp": expires,
            "appid": self.config.client_id,
            "tid": self.config.tenant,
            "ver": "1.0",
            "jti": uuid.uuid4().hex,
        }
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(signature)}", expires

    def validate(self, authorization: str | None, now: float | None = None) -> bool:
        """True when the header carries an unexpired token issued by this instance."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return False
        token = authorization[7:].strip()
        try:
            signing_input, signature = token.rsplit(".", 1)
            expected = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, _b64url_decode(signature)):
                return False
            claims = json.loads(_b64url_decode(signing_input.split(".")[1]))
        except (ValueError, IndexError):
            return False
        now = time.time() if now is None else now
        return bool(claims.get("exp", 0) > now)


def entra_error(status: int, error: str, code: int, description: str) -> JSONResponse:
    trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    timestamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    body = {
        "error": error,
        "error_description": (
            f"AADSTS{code}: {description}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation_id}\r\nTimestamp: {timestamp}"
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }
    return JSONResponse(body, status_code=status)


def router(config: SimConfig, issuer: TokenIssuer) -> APIRouter:
    api = APIRouter()

    def check(tenant: str, form: dict[str, Any]) -> JSONResponse | None:
        if tenant not in (config.tenant, "common", "organizations"):
            return entra_error(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
                "and are signing into the correct cloud.",
            )
        if form.get("grant_type") != "client_credentials":
            return entra_error(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{form.get('grant_type', '')}'.",
            )
        client_id = str(form.get("client_id", ""))
        if client_id != config.client_id:
            return entra_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{config.tenant}'. This can happen if the application has not been installed "
                "by the administrator of the tenant or consented to by any user in the tenant.",
            )
        if not hmac.compare_digest(str(form.get("client_secret", "")), config.client_secret):
            return entra_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                f"the client secret value, not the client secret ID, for a secret added to app "
                f"'{client_id}'.",
            )
        return None

    def unknown_resource(resource: str) -> JSONResponse:
        return entra_error(
            400,
            "invalid_resource",
            500011,
            f"The resource principal named {resource} was not found in the tenant named "
            f"{config.tenant}. This can happen if the application has not been installed by the "
            "administrator of the tenant or consented to by any user in the tenant.",
        )

    @api.post("/{tenant}/oauth2/v2.0/token")
    async def token_v2(tenant: str, request: Request) -> JSONResponse:
        form = dict(await request.form())
        if (failure := check(tenant, form)) is not None:
            return failure
        scope = str(form.get("scope", ""))
        if not scope:
            return entra_error(
                400, "invalid_request", 90014, "The required field 'scope' is missing."
            )
        if scope.rstrip("/") != f"{config.resource}/.default":
            return unknown_resource(scope.removesuffix("/.default"))
        token, expires = issuer.issue()
        lifetime = expires - int(time.time())
        return JSONResponse(
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            }
        )

    @api.post("/{tenant}/oauth2/token")
    async def token_v1(tenant: str, request: Request) -> JSONResponse:
        form = dict(await request.form())
        if (failure := check(tenant, form)) is not None:
            return failure
        resource = str(form.get("resource", ""))
        if resource != config.resource:  # v1 wants the URL without a trailing slash
            return unknown_resource(resource)
        now = int(time.time())
        token, expires = issuer.issue(now)
        # v1 answers carry numbers as strings
        return JSONResponse(
            {
                "token_type": "Bearer",
                "expires_in": str(expires - now),
                "ext_expires_in": str(expires - now),
                "expires_on": str(expires),
                "not_before": str(now),
                "resource": resource,
                "access_token": token,
            }
        )

    return api
