"""The JSON API under /api, mirroring the dashboard: jobs, error queue (replay, resolve), reports
(with CSV download), configuration and checks. Every route needs the service token.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Final

import sqlalchemy as sa
from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from d365ct.commands.jobs import workflow_id_of
from d365ct.config import Settings
from d365ct.service.auth import Auth
from d365ct.service.logging import Redactor
from d365ct.service.queries import StepView
from d365ct.service.replay import ReplayOutcome
from d365ct.service.state import ServiceState, service_state
from d365ct.store import ACTIVE_STATES, ALL_STATES, JobRecord, RecordOutcome
from d365ct.store.error_queue import ErrorEntry
from d365ct.store.reports import CSV_COLUMNS, Report, ReportLine

__all__ = [
    "KNOWN_FLOWS",
    "FlowSummary",
    "JobDetail",
    "ReportView",
    "api_router",
    "error_dict",
    "job_dict",
    "load_job_detail",
    "load_overview",
    "load_report_view",
    "settings_view",
]

# Shown on the overview even before their first run, so an idle flow is visible as idle.
KNOWN_FLOWS: Final = ("catalog", "prices", "inventory", "orders", "customers")
FAILED_STATES: Final = frozenset({"failed", "partially_succeeded"})
ERROR_STATUSES: Final = ("open", "replayed", "resolved")

State = Annotated[ServiceState, Depends(service_state)]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def job_dict(job: JobRecord, redactor: Redactor) -> dict[str, Any]:
    return {
        "id": job.id,
        "workflow_id": workflow_id_of(job.id),
        "kind": job.kind,
        "flow": job.flow,
        "legal_entity": job.legal_entity,
        "definition_group": job.definition_group,
        "state": job.state,
        "d365_status": job.d365_status,
        "execution_id": job.execution_id,
        "package_blob": None
        if job.package_blob is None
        else redactor.redact_text(job.package_blob),
        "source_keys": list(job.source_keys),
        "attempts": job.attempts,
        "last_error": None if job.last_error is None else redactor.redact_text(job.last_error),
        "result": redactor.redact(job.result),
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "finished_at": _iso(job.finished_at),
    }


def error_dict(entry: ErrorEntry, redactor: Redactor) -> dict[str, Any]:
    return {
        "id": entry.id,
        "flow": entry.flow,
        "business_key": entry.business_key,
        "step": entry.step,
        "error": redactor.redact_text(entry.error),
        "payload": redactor.redact(entry.payload),
        "correlation": redactor.redact(entry.correlation),
        "attempts": entry.attempts,
        "status": entry.status,
        "note": entry.note,
        "created_at": _iso(entry.created_at),
        "updated_at": _iso(entry.updated_at),
    }


def settings_view(settings: Settings, redactor: Redactor) -> dict[str, Any]:
    """The settings as configured: secrets appear as their env:/file: reference, never resolved,
    and a password inside the store URL is masked."""
    data = settings.model_dump(mode="json")
    url = data.get("store", {}).get("url")
    if isinstance(url, str):
        try:
            data["store"]["url"] = sa.make_url(url).render_as_string(hide_password=True)
        except sa.exc.ArgumentError:
            data["store"]["url"] = redactor.redact_text(url)
    redacted: dict[str, Any] = redactor.redact(data)
    return redacted


# -- overview ------------------------------------------------------------------------------------


@dataclass
class FlowSummary:
    flow: str
    states: dict[str, int]
    last_run: datetime | None
    open_errors: int
    recent: list[JobRecord] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.states.values())

    @property
    def failures(self) -> int:
        return sum(n for s, n in self.states.items() if s in FAILED_STATES)

    @property
    def stuck(self) -> int:
        return self.states.get("stuck", 0)

    @property
    def running(self) -> int:
        """Jobs under way: pending, uploading, triggered or executing (not stuck)."""
        return sum(n for s, n in self.states.items() if s in ACTIVE_STATES)

    def as_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "jobs": self.states,
            "total": self.total,
            "running": self.running,
            "failures": self.failures,
            "stuck": self.stuck,
            "open_errors": self.open_errors,
            "last_run": _iso(self.last_run),
            "recent": [j.id for j in self.recent],
        }


def load_overview(state: ServiceState, recent: int = 5) -> list[FlowSummary]:
    by_state = state.queries.jobs_by_flow_state()
    errors = state.queries.errors_open_by_flow()
    last = state.queries.last_run()
    names = list(KNOWN_FLOWS) + sorted(({f for f, _ in by_state} | set(errors)) - set(KNOWN_FLOWS))
    summaries = []
    for name in names:
        states = {s: n for (f, s), n in by_state.items() if f == name}
        summaries.append(
            FlowSummary(
                flow=name,
                states=states,
                last_run=last.get(name),
                open_errors=errors.get(name, 0),
                recent=state.jobs.list(flow=name, limit=recent) if states else [],
            )
        )
    return summaries


# -- job detail ----------------------------------------------------------------------------------


@dataclass
class JobDetail:
    job: JobRecord
    workflow_id: str
    packages: list[JobRecord]  # every job of the workflow: packages split for size
    outcomes: list[RecordOutcome]
    steps: list[StepView] | None  # None: no engine in this process to ask

    @property
    def failed(self) -> list[RecordOutcome]:
        return [o for o in self.outcomes if o.outcome == "failed"]

    def as_dict(self, redactor: Redactor) -> dict[str, Any]:
        return {
            "job": job_dict(self.job, redactor),
            "correlation": {
                "workflow_id": self.workflow_id,
                "execution_id": self.job.execution_id,
                "package_blob": self.job.package_blob
                and redactor.redact_text(self.job.package_blob),
                "records": list(self.job.source_keys),
                "packages": [p.id for p in self.packages],
            },
            "outcomes": [
                {
                    "entity": o.entity,
                    "business_key": o.business_key,
                    "outcome": o.outcome,
                    "error": None if o.error is None else redactor.redact_text(o.error),
                }
                for o in self.outcomes
            ],
            "d365_errors": sorted(
                {redactor.redact_text(o.error) for o in self.failed if o.error}
                | ({redactor.redact_text(self.job.last_error)} if self.job.last_error else set())
            ),
            "steps": None if self.steps is None else [s.as_dict() for s in self.steps],
        }


def load_job_detail(state: ServiceState, job_id: str) -> JobDetail | None:
    job = state.jobs.get(job_id)
    if job is None:
        return None
    workflow_id = workflow_id_of(job.id)
    packages = [
        j for j in (state.jobs.get(i) for i in state.queries.job_ids_of_workflow(workflow_id)) if j
    ]
    steps = None
    if state.step_history is not None:
        try:
            steps = state.step_history(workflow_id)
        except Exception:  # the timeline is a nicety: the page must render without it
            steps = None
    return JobDetail(job, workflow_id, packages, state.jobs.outcomes(job.id), steps)


# -- reports -------------------------------------------------------------------------------------


@dataclass
class WarehouseDrift:
    warehouse: str
    lines: int = 0
    drift_units: Decimal = Decimal(0)  # Σ |D365 − commercetools before|
    corrected: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, Any]:
        units = self.drift_units
        return {
            "warehouse": self.warehouse,
            "lines": self.lines,
            "drift_units": int(units) if units == units.to_integral_value() else str(units),
            "corrected": self.corrected,
            "failed": self.failed,
        }


@dataclass
class ReportView:
    report: Report
    total_lines: int
    lines: list[ReportLine]  # the first ones, for the page
    warehouses: list[WarehouseDrift]

    def as_dict(self) -> dict[str, Any]:
        return {
            "report": self.report.as_dict(),
            "total_lines": self.total_lines,
            "warehouses": [w.as_dict() for w in self.warehouses],
            "lines": [line.as_dict() for line in self.lines],
        }


def load_report_view(
    state: ServiceState, report_id: str, max_lines: int = 200
) -> ReportView | None:
    """One pass over the report's lines (streamed): the drift per warehouse and the first lines."""
    report = state.reports.get(report_id)
    if report is None:
        return None
    drift: dict[str, WarehouseDrift] = {}
    shown: list[ReportLine] = []
    total = 0
    for line in state.reports.lines(report_id):
        total += 1
        if len(shown) < max_lines:
            shown.append(line)
        name = line.warehouse or line.supply_channel or "(none)"
        entry = drift.setdefault(name, WarehouseDrift(name))
        entry.lines += 1
        if line.d365_quantity is not None and line.ct_before is not None:
            entry.drift_units += abs(Decimal(line.d365_quantity) - line.ct_before)
        elif line.d365_quantity is not None:
            entry.drift_units += abs(Decimal(line.d365_quantity))
        if line.action == "failed":
            entry.failed += 1
        elif line.action in ("corrected", "created", "zeroed"):
            entry.corrected += 1
    return ReportView(report, total, shown, sorted(drift.values(), key=lambda w: w.warehouse))


def csv_rows(state: ServiceState, report_id: str) -> Iterator[str]:
    """The report as CSV text, a chunk per batch of lines, so memory stays flat."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for index, line in enumerate(state.reports.lines(report_id), 1):
        values = line.as_dict()
        writer.writerow(["" if values[c] is None else values[c] for c in CSV_COLUMNS])
        if index % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


# -- routes --------------------------------------------------------------------------------------


class ResolveBody(BaseModel):
    note: str | None = Field(None, max_length=2000)


class BulkBody(BaseModel):
    ids: list[int] = Field(..., min_length=1, max_length=1000)
    note: str | None = Field(None, max_length=2000)


_OUTCOME_STATUS: Final = {
    "replayed": 200,
    "resolved": 200,
    "pending": 202,
    "failed": 422,
    "refused": 409,
    "not_found": 404,
}


def _outcome_response(outcome: ReplayOutcome, redactor: Redactor) -> JSONResponse:
    body = outcome.as_dict()
    if outcome.entry is not None:
        body["entry"] = error_dict(outcome.entry, redactor)
    return JSONResponse(body, status_code=_OUTCOME_STATUS[outcome.result])


def api_router(auth: Auth) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["api"], dependencies=[Depends(auth.require_api)])

    @router.get("/overview")
    async def overview(state: State) -> dict[str, Any]:
        flows = await asyncio.to_thread(load_overview, state)
        return {
            "flows": [f.as_dict() for f in flows],
            "open_errors": sum(f.open_errors for f in flows),
        }

    @router.get("/jobs")
    async def jobs(
        state: State,
        status: Annotated[list[str] | None, Query(alias="state")] = None,
        flow: str | None = None,
        legal_entity: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> dict[str, Any]:
        states = [s for s in (status or []) if s]
        unknown = sorted(set(states) - ALL_STATES)
        if unknown:
            raise HTTPException(422, f"unknown state(s) {unknown}; known: {sorted(ALL_STATES)}")
        found = await asyncio.to_thread(
            state.jobs.list,
            states or None,
            flow=flow or None,
            legal_entity=legal_entity or None,
            limit=limit,
        )
        return {"jobs": [job_dict(j, state.redactor) for j in found]}

    @router.get("/jobs/{job_id}")
    async def job(state: State, job_id: str) -> dict[str, Any]:
        detail = await asyncio.to_thread(load_job_detail, state, job_id)
        if detail is None:
            raise HTTPException(404, f"no D365 job with id {job_id!r}")
        return detail.as_dict(state.redactor)

    @router.get("/errors")
    async def errors(
        state: State,
        status: Annotated[str, Query(description="open, replayed, resolved or all")] = "open",
        flow: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        if status != "all" and status not in ERROR_STATUSES:
            raise HTTPException(422, f"status must be one of {[*ERROR_STATUSES, 'all']}")
        entries = await asyncio.to_thread(
            state.errors.list,
            status=None if status == "all" else status,
            flow=flow or None,
            limit=limit,
        )
        return {"errors": [error_dict(e, state.redactor) for e in entries]}

    @router.post("/errors/replay")
    async def replay_many(state: State, body: BulkBody) -> dict[str, Any]:
        outcomes = await state.replayer.replay_many(body.ids)
        return {"results": [o.as_dict() for o in outcomes]}

    @router.post("/errors/resolve")
    async def resolve_many(state: State, body: BulkBody) -> dict[str, Any]:
        outcomes = await state.replayer.resolve_many(body.ids, body.note)
        return {"results": [o.as_dict() for o in outcomes]}

    @router.get("/errors/{entry_id}")
    async def error(state: State, entry_id: int) -> dict[str, Any]:
        entry = await asyncio.to_thread(state.errors.get, entry_id)
        if entry is None:
            raise HTTPException(404, f"no error queue entry {entry_id}")
        return error_dict(entry, state.redactor)

    @router.post("/errors/{entry_id}/replay")
    async def replay(state: State, entry_id: int) -> JSONResponse:
        """200 replayed; 202 re-driven in the background; 422 failed again (still open);
        409 already closed; 404 unknown."""
        return _outcome_response(await state.replayer.replay(entry_id), state.redactor)

    @router.post("/errors/{entry_id}/resolve")
    async def resolve(
        state: State, entry_id: int, body: Annotated[ResolveBody | None, Body()] = None
    ) -> JSONResponse:
        outcome = await state.replayer.resolve(entry_id, body.note if body else None)
        return _outcome_response(outcome, state.redactor)

    @router.get("/reports")
    async def reports(
        state: State,
        flow: str | None = None,
        legal_entity: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 20,
    ) -> dict[str, Any]:
        found = await asyncio.to_thread(
            state.reports.list, flow=flow or None, legal_entity=legal_entity or None, limit=limit
        )
        return {"reports": [r.as_dict() for r in found]}

    # Before /reports/{report_id}: that pattern would also match "<id>.csv".
    @router.get("/reports/{report_id}.csv")
    async def report_csv(state: State, report_id: str) -> StreamingResponse:
        if await asyncio.to_thread(state.reports.get, report_id) is None:
            raise HTTPException(404, f"no reconciliation report {report_id!r}")
        filename = "".join(c if c.isalnum() or c in "-_." else "_" for c in report_id)
        return StreamingResponse(
            csv_rows(state, report_id),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'},
        )

    @router.get("/reports/{report_id}")
    async def report(
        state: State, report_id: str, lines: Annotated[int, Query(ge=0, le=10000)] = 1000
    ) -> dict[str, Any]:
        view = await asyncio.to_thread(load_report_view, state, report_id, lines)
        if view is None:
            raise HTTPException(404, f"no reconciliation report {report_id!r}")
        return view.as_dict()

    @router.get("/config")
    async def config(state: State) -> dict[str, Any]:
        return settings_view(state.settings, state.redactor)

    @router.post("/check")
    async def check(state: State, request: Request) -> dict[str, Any]:
        results = await state.check_runner(state.settings)
        return {
            "ok": not any(r.status == "fail" for r in results),
            "results": [
                {
                    "name": r.name,
                    "status": r.status,
                    "detail": state.redactor.redact_text(r.detail),
                }
                for r in results
            ],
        }

    return router
