"""HTTP push intake: ``POST /intake/commercetools`` for Event Grid / CloudEvents webhooks, with
bearer-token authentication, both validation handshakes, and 2xx only after a durable accept.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import Any, Final

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from d365ct.config import IntakeSettings
from d365ct.errors import ConfigurationError
from d365ct.intake.inbox import ERROR_BODY_LIMIT, AcceptResult, Inbox
from d365ct.intake.messages import (
    IntakeMessage,
    MalformedMessageError,
    SubscriptionValidation,
    parse_body,
)

__all__ = ["INTAKE_PATH", "MAX_BODY_BYTES", "intake_router", "settings_token_provider"]

INTAKE_PATH: Final = "/intake/commercetools"
# commercetools caps a message at 256 KB on SQS and Event Grid batches stay below 1 MB;
# anything far larger is not a delivery and must not be buffered whole.
MAX_BODY_BYTES: Final = 4 * 1024 * 1024

log = logging.getLogger(__name__)

TokenProvider = Callable[[], str | None]


def settings_token_provider(settings: IntakeSettings) -> TokenProvider:
    """The intake token from settings, resolved on every call so a rotated secret takes effect."""

    def provide() -> str | None:
        return None if settings.token is None else settings.token.resolve()

    return provide


def _problem(status: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


def _configured_token(token_provider: TokenProvider) -> str | JSONResponse:
    """The shared secret, or the 500 that says why the intake cannot serve."""
    try:
        token = token_provider()
    except ConfigurationError as exc:
        log.error("intake token cannot be resolved: %s", exc)
        return _problem(500, f"intake is misconfigured: {exc}")
    if not token:
        # Serving unauthenticated pushes would let anyone post orders: refuse instead.
        return _problem(
            500,
            "intake is misconfigured: no token is set; configure [intake] token = "
            '"env:NAME" (or D365CT_INTAKE__TOKEN) to accept pushes',
        )
    return token


def _authorise(request: Request, token_provider: TokenProvider) -> JSONResponse | None:
    """None when the caller may push; otherwise the response that refuses it."""
    token = _configured_token(token_provider)
    if isinstance(token, JSONResponse):
        return token
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken must not tell how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8"), token.encode("utf-8")
    ):
        return _problem(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
    return None


async def _read_body(request: Request, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[: limit + 1], True
    return b"".join(chunks), False


def intake_router(
    inbox: Inbox,
    token_provider: TokenProvider,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    source: str = "http",
) -> APIRouter:
    """The webhook intake routes, to include in the service's FastAPI app.

    ``token_provider`` returns the shared secret (None when unconfigured: then every push is
    refused with 500, never served unauthenticated); see ``settings_token_provider``.
    """
    router = APIRouter(tags=["intake"])

    @router.options(INTAKE_PATH)
    async def handshake(request: Request) -> Response:
        # CloudEvents webhook abuse protection (Event Grid with the CloudEvents schema): the
        # sender asks whether it may deliver. It carries no credentials, and answering grants
        # nothing: every POST still needs the token.
        configured = _configured_token(token_provider)
        if isinstance(configured, JSONResponse):
            return configured
        headers = {"Allow": "POST, OPTIONS"}
        origin = request.headers.get("webhook-request-origin")
        if origin:
            headers["WebHook-Allowed-Origin"] = origin
            headers["WebHook-Allowed-Rate"] = "*"
        return Response(status_code=200, headers=headers)

    @router.post(INTAKE_PATH)
    async def push(request: Request) -> Response:
        refused = _authorise(request, token_provider)
        if refused is not None:
            return refused
        body, too_large = await _read_body(request, max_body_bytes)
        if too_large:
            await asyncio.to_thread(
                inbox.reject,
                body[:ERROR_BODY_LIMIT],
                f"body larger than {max_body_bytes} bytes",
                source=source,
            )
            return _problem(413, f"body larger than {max_body_bytes} bytes")
        try:
            parsed = parse_body(body)
        except MalformedMessageError as exc:
            await asyncio.to_thread(inbox.reject, body, exc.reason, source=source)
            return _problem(400, exc.reason)

        validations = [p for p in parsed if isinstance(p, SubscriptionValidation)]
        messages = [p for p in parsed if isinstance(p, IntakeMessage)]
        malformed = [p for p in parsed if isinstance(p, MalformedMessageError)]
        try:
            results: list[AcceptResult] = await asyncio.to_thread(
                inbox.accept_many, messages, source=source
            )
            for err in malformed:
                await asyncio.to_thread(inbox.reject_error, err, source=source)
        except sa.exc.SQLAlchemyError:
            # Not durable, so not acknowledged: the sender retries later.
            log.exception("intake store unavailable; %d deliveries refused", len(messages))
            return _problem(503, "intake store unavailable; retry later", **{"Retry-After": "5"})

        if validations:
            # Event Grid sends the handshake alone; answer it (after storing anything beside it).
            return JSONResponse({"validationResponse": validations[0].validation_code})
        summary: dict[str, Any] = {
            "accepted": sum(r.status == "accepted" for r in results),
            "duplicate": sum(r.status == "duplicate" for r in results),
            "stale": sum(r.status == "stale" for r in results),
            "ignored": sum(r.status == "ignored" for r in results),
            "malformed": len(malformed),
            "results": [{"id": r.message_id, "status": r.status} for r in results]
            + [{"id": e.message_id, "status": "malformed", "reason": e.reason} for e in malformed],
        }
        # Nothing usable: 400 so the sender does not retry (Event Grid dead-letters a 400);
        # the bad deliveries are already in the error queue.
        return JSONResponse(summary, status_code=400 if malformed and not results else 200)

    return router
