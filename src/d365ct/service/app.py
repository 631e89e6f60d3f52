"""The service's FastAPI application: health and readiness, metrics, the JSON API, the operations
dashboard, and whatever routers the runner adds (the webhook intake).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from importlib.resources import files
from typing import Any, Final

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from d365ct.check import run_checks
from d365ct.config import Settings
from d365ct.intake.inbox import InboxStats
from d365ct.service import metrics
from d365ct.service.api import api_router
from d365ct.service.auth import Auth, LoginRequiredError
from d365ct.service.dashboard import dashboard_router, format_age, login_router
from d365ct.service.health import ReadinessCheck, ReadinessProbe, TokenChecks, default_checks
from d365ct.service.logging import Redactor
from d365ct.service.queries import StoreQueries
from d365ct.service.replay import Replayer, ReplayRegistry
from d365ct.service.state import CheckRunner, ServiceState, StepHistory
from d365ct.store import JobStore
from d365ct.store.error_queue import ErrorQueue
from d365ct.store.reports import ReportStore

__all__ = ["Background", "create_app"]

# Started with the app and stopped (in reverse order) when it shuts down: intake consumers.
Background = Callable[[], AbstractAsyncContextManager[Any]]

_PACKAGE: Final = files("d365ct.service")
_SECURITY_HEADERS: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (
        b"content-security-policy",
        # Scripts only from our own /static (htmx is vendored: no CDN); inline SVG charts and
        # htmx's indicator style need inline styles.
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    ),
)


class _SecurityHeaders:
    """Plain ASGI middleware (not BaseHTTPMiddleware): streaming CSV responses stay streamed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in _SECURITY_HEADERS if k not in names]
                if not path.startswith("/static/") and b"cache-control" not in names:
                    # Pages and API answers carry business data: keep them out of caches.
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _templates(redactor: Redactor) -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(_PACKAGE / "templates"))
    env = templates.env
    env.autoescape = True
    env.filters["redact"] = lambda value: redactor.redact_text(str(value))
    env.filters["age"] = format_age
    return templates


def create_app(
    settings: Settings,
    *,
    store_engine: sa.Engine,
    extra_routers: Sequence[APIRouter] = (),
    auth_disabled: bool = False,
    redactor: Redactor | None = None,
    replay_registry: ReplayRegistry | None = None,
    step_history: StepHistory | None = None,
    readiness: dict[str, ReadinessCheck] | None = None,
    inbox_stats: InboxStats | None = None,
    background: Sequence[Background] = (),
    check_runner: CheckRunner = run_checks,
) -> FastAPI:
    """Build the service app on an open store engine (migrated by the caller).

    ``readiness`` replaces the default checks (database, D365 token, commercetools tokens);
    ``step_history`` reads DBOS's step records (the runner passes one when the engine runs);
    ``replay_registry`` is where flows register their error-queue replay handlers.
    """
    redactor = redactor or Redactor()
    auth = Auth.from_settings(settings.service, disabled=auth_disabled)
    queries = StoreQueries(store_engine)
    errors = ErrorQueue(store_engine)
    registry = replay_registry or ReplayRegistry()
    state = ServiceState(
        settings=settings,
        engine=store_engine,
        auth=auth,
        redactor=redactor,
        jobs=JobStore(store_engine),
        errors=errors,
        reports=ReportStore(store_engine),
        queries=queries,
        replayer=Replayer(errors, registry, describe_error=lambda e: redactor.redact_text(str(e))),
        replay_registry=registry,
        registry=metrics.build_registry(queries, inbox_stats=inbox_stats),
        probe=None,
        step_history=step_history,
        check_runner=check_runner,
        templates=_templates(redactor),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            checks = readiness
            if checks is None:
                tokens = TokenChecks(settings)
                stack.push_async_callback(tokens.aclose)
                checks = default_checks(settings, queries, tokens)
            # Built here: its lock belongs to the serving event loop.
            state.probe = ReadinessProbe(checks, redactor=redactor)
            for start in background:
                await stack.enter_async_context(start())
            yield

    app = FastAPI(
        title="d365ct",
        summary="Dynamics 365 F&O ⇄ commercetools integration service",
        lifespan=lifespan,
        # The OpenAPI UI would load scripts from a CDN: no /docs, /redoc. The schema is served
        # below, behind the token like the API it describes.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = state
    app.add_middleware(_SecurityHeaders)
    app.mount("/static", StaticFiles(directory=str(_PACKAGE / "static")), name="static")

    @app.exception_handler(LoginRequiredError)
    async def _to_login(request: Request, exc: LoginRequiredError) -> Response:
        target = app.url_path_for("login_form") + "?" + _query(next=exc.next_path)
        if request.headers.get("hx-request"):
            # htmx follows HX-Redirect with a full page load; a 303 would be swapped in place.
            return Response(status_code=401, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive and serving (no dependency is asked)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        """The store answers and tokens can be had; 503 if not. Each check's detail (client
        ids, why a host is unreachable) only with the service token: probes need no more."""
        if state.probe is None:  # served without lifespan: nothing checked, so not ready
            return JSONResponse({"status": "starting", "checks": {}}, status_code=503)
        results = await state.probe.results()
        ready = all(r.ok for r in results.values())
        detailed = auth.authenticated(request)
        body = {
            "status": "ready" if ready else "not ready",
            "checks": {
                name: r.as_dict() if detailed else {"ok": r.ok} for name, r in results.items()
            },
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], dependencies=[Depends(auth.require_api)])
    async def metrics_text() -> Response:
        """Prometheus text; needs the service token as a bearer header, like the API."""
        body = await asyncio.to_thread(metrics.render, state.registry)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    @app.get("/api/openapi.json", include_in_schema=False, dependencies=[Depends(auth.require_api)])
    async def openapi_schema() -> JSONResponse:
        """The JSON API's OpenAPI schema; needs the service token."""
        return JSONResponse(app.openapi())

    app.include_router(api_router(auth))
    app.include_router(login_router(auth))
    app.include_router(dashboard_router(auth))
    for router in extra_routers:
        app.include_router(router)
    return app


def _query(**params: str) -> str:
    from urllib.parse import urlencode

    return urlencode(params)
