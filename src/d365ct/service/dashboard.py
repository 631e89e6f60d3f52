"""The operations dashboard: server-rendered pages (Jinja2), with htmx for in-place actions and
plain forms underneath, so every action also works without JavaScript.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import escape

from d365ct.service.api import (
    ERROR_STATUSES,
    KNOWN_FLOWS,
    load_job_detail,
    load_overview,
    load_report_view,
    settings_view,
)
from d365ct.service.auth import COOKIE_NAME, SESSION_SECONDS, Auth, safe_next
from d365ct.service.queries import StepView
from d365ct.service.replay import ReplayOutcome
from d365ct.service.state import ServiceState, service_state
from d365ct.store import ALL_STATES

__all__ = ["Bar", "bar_chart", "dashboard_router", "login_router", "step_bars"]

State = Annotated[ServiceState, Depends(service_state)]
STATE_ORDER: Final = (
    "pending",
    "uploading",
    "triggered",
    "executing",
    "stuck",
    "succeeded",
    "partially_succeeded",
    "failed",
    "canceled",
)
LOGIN_FAILURE_DELAY: Final = 0.5  # seconds: slows guessing without bothering a person


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: str
    tick: bool  # whether the label is printed under the axis


def bar_chart(
    values: Sequence[tuple[str, float]],
    *,
    width: float = 720,
    height: float = 160,
    tick_every: int = 1,
) -> list[Bar]:
    """Bars for an inline SVG of ``width`` × ``height`` (plot area; labels go below)."""
    if not values:
        return []
    top = max(v for _, v in values) or 1.0
    slot = width / len(values)
    bars = []
    for index, (label, value) in enumerate(values):
        h = height * value / top
        bars.append(
            Bar(
                x=round(index * slot + slot * 0.1, 2),
                y=round(height - h, 2),
                width=round(slot * 0.8, 2),
                height=round(h, 2),
                label=label,
                value=f"{value:g}",
                tick=index % tick_every == 0,
            )
        )
    return bars


@dataclass(frozen=True)
class StepBar:
    step: StepView
    x: float  # percent of the workflow's span
    width: float


def step_bars(steps: Sequence[StepView]) -> list[StepBar]:
    """Where each step sits on the workflow's timeline, in percent, for a Gantt-like row."""
    starts = [s.started_at for s in steps if s.started_at is not None]
    ends = [s.completed_at or s.started_at for s in steps if s.started_at is not None]
    if not starts:
        return [StepBar(s, 0.0, 0.0) for s in steps]
    first, last = min(starts), max(e for e in ends if e is not None)
    span = max((last - first).total_seconds(), 1e-3)
    bars = []
    for step in steps:
        if step.started_at is None:
            bars.append(StepBar(step, 0.0, 0.0))
            continue
        end = step.completed_at or step.started_at
        x = (step.started_at - first).total_seconds() / span * 100
        w = max((end - step.started_at).total_seconds() / span * 100, 0.5)
        bars.append(StepBar(step, round(x, 2), round(min(w, 100 - x), 2)))
    return bars


def _render(
    state: ServiceState, request: Request, name: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    context.setdefault("auth_enabled", not state.auth.disabled)
    context.setdefault("now", datetime.now(UTC))
    return state.templates.TemplateResponse(request, name, context, status_code=status_code)


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _back(path: str, **params: str) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v})
    return RedirectResponse(path + ("?" + query if query else ""), status_code=303)


def login_router(auth: Auth) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/login", name="login_form")
    async def login_form(state: State, request: Request, next: str = "/") -> Response:
        if auth.disabled:
            return RedirectResponse(safe_next(next), status_code=303)
        return _render(state, request, "login.html", next=safe_next(next), error=None)

    @router.post("/login")
    async def login(
        state: State,
        request: Request,
        token: Annotated[str, Form(max_length=4096)] = "",
        next: Annotated[str, Form()] = "/",
    ) -> Response:
        target = safe_next(next)
        if auth.disabled:
            return RedirectResponse(target, status_code=303)
        if not token or not auth.token_matches(token):
            await asyncio.sleep(LOGIN_FAILURE_DELAY)
            return _render(
                state, request, "login.html", status_code=401, next=target, error="Wrong token."
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            auth.session_cookie(),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            # Secure only over HTTPS: the default bind is plain HTTP on 127.0.0.1, where a
            # Secure cookie would never be sent back.
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @router.post("/logout")
    async def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
        return response

    return router


def dashboard_router(auth: Auth) -> APIRouter:
    router = APIRouter(include_in_schema=False, dependencies=[Depends(auth.require_page)])

    @router.get("/", name="overview")
    async def overview(state: State, request: Request) -> HTMLResponse:
        flows = await asyncio.to_thread(load_overview, state)
        hours = await asyncio.to_thread(state.queries.finished_per_hour, hours=24)
        chart = bar_chart([(b.start.strftime("%H:00"), b.count) for b in hours], tick_every=3)
        stuck = await asyncio.to_thread(state.jobs.list, "stuck", limit=20)
        return _render(
            state,
            request,
            "overview.html",
            flows=flows,
            chart=chart,
            chart_total=sum(b.count for b in hours),
            chart_from=hours[0].start if hours else None,
            stuck=stuck,
            stuck_total=sum(f.stuck for f in flows),
            open_errors=sum(f.open_errors for f in flows),
            state_order=STATE_ORDER,
        )

    @router.get("/jobs", name="jobs")
    async def jobs(
        state: State,
        request: Request,
        status: Annotated[str, Query(alias="state")] = "",
        flow: str = "",
        legal_entity: str = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> HTMLResponse:
        if status and status not in ALL_STATES:
            raise HTTPException(422, f"unknown state {status!r}")
        found = await asyncio.to_thread(
            state.jobs.list,
            status or None,
            flow=flow or None,
            legal_entity=legal_entity or None,
            limit=limit,
        )
        flows = sorted(set(KNOWN_FLOWS) | set(await asyncio.to_thread(state.queries.flows)))
        return _render(
            state,
            request,
            "jobs.html",
            jobs=found,
            filters={"state": status, "flow": flow, "legal_entity": legal_entity},
            states=STATE_ORDER,
            flows=flows,
            legal_entities=[e.id for e in state.settings.legal_entities],
            limit=limit,
        )

    @router.get("/jobs/{job_id}", name="job")
    async def job(state: State, request: Request, job_id: str) -> HTMLResponse:
        detail = await asyncio.to_thread(load_job_detail, state, job_id)
        if detail is None:
            return _render(
                state, request, "not_found.html", status_code=404, what=f"D365 job {job_id}"
            )
        return _render(
            state,
            request,
            "job.html",
            detail=detail,
            steps=None if detail.steps is None else step_bars(detail.steps),
            d365_errors=detail.as_dict(state.redactor)["d365_errors"],
        )

    @router.get("/errors", name="errors")
    async def errors(
        state: State,
        request: Request,
        status: str = "open",
        flow: str = "",
        msg: str = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> HTMLResponse:
        if status != "all" and status not in ERROR_STATUSES:
            raise HTTPException(422, f"unknown status {status!r}")
        entries = await asyncio.to_thread(
            state.errors.list,
            status=None if status == "all" else status,
            flow=flow or None,
            limit=limit,
        )
        flows = sorted(set(KNOWN_FLOWS) | set(await asyncio.to_thread(state.queries.flows)))
        return _render(
            state,
            request,
            "errors.html",
            entries=entries,
            filters={"status": status, "flow": flow},
            statuses=[*ERROR_STATUSES, "all"],
            flows=flows,
            message=msg,
            replayable=state.replay_registry.flows,
            pretty=_pretty,
        )

    def _row(state: ServiceState, request: Request, outcome: ReplayOutcome) -> Response:
        if outcome.entry is None:
            return HTMLResponse(
                f"<tr><td colspan='8'>{escape(outcome.detail)}</td></tr>", status_code=404
            )
        return _render(
            state,
            request,
            "_error_row.html",
            entry=outcome.entry,
            outcome=outcome,
            replayable=state.replay_registry.flows,
            pretty=_pretty,
        )

    @router.post("/errors/bulk")
    async def errors_bulk(
        state: State,
        request: Request,
        action: Annotated[str, Form()],
        ids: Annotated[list[int] | None, Form()] = None,
        note: Annotated[str, Form(max_length=2000)] = "",
        status: Annotated[str, Form()] = "open",
        flow: Annotated[str, Form()] = "",
    ) -> Response:
        chosen = ids or []
        if action not in ("replay", "resolve"):
            raise HTTPException(422, "action must be replay or resolve")
        if not chosen:
            return _back("/errors", status=status, flow=flow, msg="Select at least one entry.")
        if action == "replay":
            outcomes = await state.replayer.replay_many(chosen)
        else:
            outcomes = await state.replayer.resolve_many(chosen, note or None)
        done = sum(o.ok for o in outcomes)
        failed = [f"#{o.entry_id}: {o.detail}" for o in outcomes if not o.ok]
        text = f"{action}: {done} of {len(outcomes)} done."
        if failed:
            text += " " + "; ".join(failed[:5]) + (" …" if len(failed) > 5 else "")
        return _back("/errors", status=status, flow=flow, msg=state.redactor.redact_text(text))

    @router.post("/errors/{entry_id}/replay")
    async def error_replay(state: State, request: Request, entry_id: int) -> Response:
        outcome = await state.replayer.replay(entry_id)
        if _is_htmx(request):
            return _row(state, request, outcome)
        return _back("/errors", msg=f"#{entry_id} {outcome.result}: {outcome.detail}")

    @router.post("/errors/{entry_id}/resolve")
    async def error_resolve(
        state: State,
        request: Request,
        entry_id: int,
        note: Annotated[str, Form(max_length=2000)] = "",
    ) -> Response:
        outcome = await state.replayer.resolve(entry_id, note or None)
        if _is_htmx(request):
            return _row(state, request, outcome)
        return _back("/errors", msg=f"#{entry_id} {outcome.result}: {outcome.detail}")

    @router.get("/reports", name="reports")
    async def reports(state: State, request: Request, flow: str = "") -> HTMLResponse:
        found = await asyncio.to_thread(state.reports.list, flow=flow or None, limit=100)
        return _render(state, request, "reports.html", reports=found, flow=flow)

    @router.get("/reports/{report_id}", name="report")
    async def report(state: State, request: Request, report_id: str) -> HTMLResponse:
        view = await asyncio.to_thread(load_report_view, state, report_id)
        if view is None:
            return _render(
                state,
                request,
                "not_found.html",
                status_code=404,
                what=f"reconciliation report {report_id}",
            )
        chart = bar_chart(
            [(w.warehouse, float(w.drift_units)) for w in view.warehouses], height=140
        )
        return _render(state, request, "report.html", view=view, chart=chart)

    @router.get("/config", name="config")
    async def config(state: State, request: Request) -> HTMLResponse:
        view = settings_view(state.settings, state.redactor)
        return _render(
            state,
            request,
            "config.html",
            sections=_sections(view),
            replayable=state.replay_registry.flows,
        )

    @router.post("/config/check")
    async def config_check(state: State, request: Request) -> HTMLResponse:
        started = datetime.now(UTC)
        try:
            results = await state.check_runner(state.settings)
            failure = None
        except Exception as exc:  # a check that crashes is itself a result to show
            results, failure = [], state.redactor.redact_text(f"{type(exc).__name__}: {exc}")
        took = datetime.now(UTC) - started
        template = "_check_results.html" if _is_htmx(request) else "config.html"
        context: dict[str, Any] = {
            "results": results,
            "failure": failure,
            "took": took,
            "replayable": state.replay_registry.flows,
        }
        if template == "config.html":
            context["sections"] = _sections(settings_view(state.settings, state.redactor))
        return _render(state, request, template, **context)

    return router


def _pretty(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return str(value)
    text: str = json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=True)
    return text


def _sections(view: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The settings as (section, [(key, shown value)]) for the configuration page."""
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    for name, value in view.items():
        if isinstance(value, dict):
            rows = [(k, _shown(v)) for k, v in value.items()]
        elif isinstance(value, list):
            rows = [(f"[{i}]", _shown(v)) for i, v in enumerate(value)]
        else:
            rows = [("", _shown(value))]
        sections.append((name, rows))
    return sections


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def format_age(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "never"
    delta = now - value
    if delta < timedelta(minutes=1):
        return f"{int(delta.total_seconds())} s ago"
    if delta < timedelta(hours=1):
        return f"{int(delta.total_seconds() // 60)} min ago"
    if delta < timedelta(days=2):
        return f"{delta.total_seconds() / 3600:.1f} h ago"
    return f"{delta.days} d ago"
