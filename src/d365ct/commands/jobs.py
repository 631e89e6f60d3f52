"""``d365ct jobs``: read the D365 job store and act on it (list, show, retry, cancel).

Exit codes: 0 done; 1 no such job, or the command failed; 2 refused in the job's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import sqlalchemy as sa
import typer
from rich import box
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from d365ct.config import ENV_PREFIX, Settings, load_settings
from d365ct.errors import D365ctError
from d365ct.store import (
    ALL_STATES,
    OPEN_STATES,
    TERMINAL_STATES,
    InvalidTransitionError,
    JobRecord,
    JobStore,
    make_engine,
    migrate,
    normalise_url,
)

__all__ = ["jobs_app", "store_url"]

DEFAULT_CONFIG = Path("d365ct.toml")
DEFAULT_STORE_URL = "sqlite:///d365ct.sqlite"
CONFIG_ENV = "D365CT_CONFIG"

EXIT_NOT_FOUND = 1
EXIT_FAILED = 1
EXIT_REFUSED = 2

# A package of an import split for size is job "<workflow id>.p<n>" (flows/dmf_jobs.py).
_PACKAGE_SUFFIX = re.compile(r"\.p\d+$")
_STATE_STYLE = {
    "succeeded": "green",
    "partially_succeeded": "yellow",
    "failed": "red",
    "stuck": "bold magenta",
    "canceled": "dim",
}
_STATE_HELP = ", ".join(sorted(ALL_STATES))
_LIST_COLUMNS = (
    "id",
    "kind",
    "flow",
    "LE",
    "state",
    "D365 status",
    "execution id",
    "polls",
    "updated",
    "last error",
)
_WIDE_ONLY = frozenset({"kind", "execution id", "D365 status"})
NARROW_COLUMNS = 140

jobs_app = typer.Typer(
    help=(
        "D365 DMF jobs: list and inspect them, resume stuck ones, cancel open ones.\n\n"
        "Exit codes: 0 done; 1 no such job, or the command failed; 2 refused in the job's "
        "state."
    ),
    no_args_is_help=True,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar=CONFIG_ENV,
        help="TOML configuration; default ./d365ct.toml when it exists.",
        show_default=False,
        dir_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
JobIdArgument = Annotated[str, typer.Argument(help="Job id (the DBOS workflow id).")]


# -- configuration and store -------------------------------------------------------------------


def _config_path(config: Path | None) -> Path | None:
    if config is not None:
        if not config.is_file():
            _fail(f"configuration file {config} not found", EXIT_FAILED)
        return config
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def store_url(config: Path | None, environ: Mapping[str, str] | None = None) -> str:
    """``[store] url`` alone, so reading jobs needs no ``[d365]`` section.

    The TOML value, overridden by ``D365CT_STORE__URL``, default ``sqlite:///d365ct.sqlite``.
    """
    url = DEFAULT_STORE_URL
    if config is not None:
        try:
            data = tomllib.loads(config.read_text(encoding="utf-8"))
        except OSError as exc:
            raise D365ctError(f"{config}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise D365ctError(f"{config}: not valid TOML: {exc}") from exc
        store = data.get("store", {})
        if isinstance(store, dict) and isinstance(store.get("url"), str):
            url = store["url"]
    for name, value in (os.environ if environ is None else environ).items():
        if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX) :].lower() == "store__url":
            url = value
    return url


def _shown(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)


@contextlib.contextmanager
def _open_store(url: str) -> Iterator[JobStore]:
    try:
        parsed = normalise_url(url)
    except (ValueError, sa.exc.ArgumentError) as exc:
        _fail(f"[store] url: {exc}", EXIT_FAILED)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            _fail(
                f"no job store at {_shown(url)}: set [store] url (or D365CT_STORE__URL) to the "
                "store the service uses",
                EXIT_FAILED,
            )
    try:
        migrate(parsed)  # a no-op on an up-to-date store; reads need the current schema
        engine = make_engine(parsed)
    except sa.exc.SQLAlchemyError as exc:
        _fail(f"cannot open the job store at {_shown(url)}: {exc.__class__.__name__}", EXIT_FAILED)
    try:
        yield JobStore(engine)
    finally:
        engine.dispose()


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except D365ctError as exc:
        _fail(str(exc), EXIT_FAILED)


# -- output ------------------------------------------------------------------------------------


# markup=False everywhere: D365's error texts contain brackets ("[dbo].[CUSTTABLE]") that Rich
# would read as style tags; styles are applied through Text objects instead.
def _out() -> Console:
    console = Console(highlight=False, markup=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped or captured: no terminal to fit, so do not squeeze tables into 80 columns.
        console = Console(highlight=False, markup=False, soft_wrap=True, width=200)
    return console


def _err() -> Console:
    return Console(stderr=True, highlight=False, markup=False)


def _fail(message: str, code: int) -> NoReturn:
    _err().print(Text(f"d365ct jobs: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(code)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _short_time(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def workflow_id_of(job_id: str) -> str:
    """The DBOS workflow that runs a job: the job id, less ``.p<n>`` for a split package."""
    return _PACKAGE_SUFFIX.sub("", job_id)


def _job_dict(job: JobRecord) -> dict[str, Any]:
    data = asdict(job)
    data["source_keys"] = list(job.source_keys)
    for name in ("created_at", "updated_at", "finished_at"):
        data[name] = _iso(getattr(job, name))
    return data


def _print_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _state(job: JobRecord) -> Text:
    return Text(job.state, style=_STATE_STYLE.get(job.state, ""))


def _truncate(text: str | None, width: int) -> str:
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _job_or_exit(store: JobStore, job_id: str) -> JobRecord:
    job = store.get(job_id)
    if job is None:
        _fail(f"no job '{job_id}'", EXIT_NOT_FOUND)
    return job


# -- list --------------------------------------------------------------------------------------


@jobs_app.command("list")
def list_jobs(
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            "-s",
            metavar="STATE",
            help=f"Only jobs in this state (repeatable): {_STATE_HELP}.",
        ),
    ] = None,
    flow: Annotated[
        str | None, typer.Option(metavar="FLOW", help="Only jobs of this flow.")
    ] = None,
    legal_entity: Annotated[
        str | None,
        typer.Option("--legal-entity", metavar="ID", help="Only jobs of this dataAreaId."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, metavar="N", help="At most this many jobs.")] = 50,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List jobs, newest first."""
    unknown = sorted(set(state or ()) - ALL_STATES)
    if unknown:
        raise typer.BadParameter(
            f"unknown state {', '.join(unknown)}; expected one of {_STATE_HELP}",
            param_hint="--state",
        )
    url = _store_url_or_exit(config)
    with _open_store(url) as store:
        jobs = store.list(
            state or None,
            flow=flow,
            legal_entity=legal_entity.lower() if legal_entity else None,
            limit=limit,
        )
    if as_json:
        _print_json([_job_dict(job) for job in jobs])
        return
    console = _out()
    if not jobs:
        console.print("No jobs match.")
        return
    narrow = console.width < NARROW_COLUMNS  # `show` has what a narrow terminal leaves out
    table = Table(
        title=f"D365 jobs ({len(jobs)}, newest first)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for name in _LIST_COLUMNS:
        if not (narrow and name in _WIDE_ONLY):
            table.add_column(name, overflow="fold", justify="right" if name == "polls" else "left")
    for job in jobs:
        cells: dict[str, str | Text] = {
            "id": job.id,
            "kind": job.kind,
            "flow": job.flow,
            "LE": job.legal_entity,
            "state": _state(job),
            "D365 status": job.d365_status or "",
            "execution id": job.execution_id or "",
            "polls": str(job.attempts),
            "updated": _short_time(job.updated_at),
            "last error": _truncate(job.last_error, 30 if narrow else 40),
        }
        table.add_row(*(cells[n] for n in _LIST_COLUMNS if not (narrow and n in _WIDE_ONLY)))
    console.print(table)


def _store_url_or_exit(config: Path | None) -> str:
    try:
        return store_url(_config_path(config))
    except D365ctError as exc:
        _fail(str(exc), EXIT_FAILED)


# -- show --------------------------------------------------------------------------------------


@jobs_app.command("show")
def show_job(
    job_id: JobIdArgument, as_json: JsonOption = False, config: ConfigOption = None
) -> None:
    """Show one job: every field, per-record outcomes and the correlation chain."""
    with _open_store(_store_url_or_exit(config)) as store:
        job = _job_or_exit(store, job_id)
        outcomes = store.outcomes(job_id)
    failed = [o for o in outcomes if o.outcome == "failed"]
    correlation = {
        "workflow_id": workflow_id_of(job.id),
        "job_id": job.id,
        "execution_id": job.execution_id,
        "package_blob": job.package_blob,
        "source_keys": len(job.source_keys),
    }
    if as_json:
        _print_json(
            {
                **_job_dict(job),
                "correlation": correlation,
                "outcomes": {
                    "total": len(outcomes),
                    "ok": len(outcomes) - len(failed),
                    "failed": len(failed),
                    "failed_records": [
                        {"entity": o.entity, "business_key": o.business_key, "error": o.error}
                        for o in failed
                    ],
                },
            }
        )
        return
    console = _out()
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column(overflow="fold")
    rows: list[tuple[str, str | Text]] = [
        ("id", job.id),
        ("kind", job.kind),
        ("flow", job.flow),
        ("legal entity", job.legal_entity),
        ("definition group", job.definition_group),
        ("state", _state(job)),
        ("D365 status", job.d365_status or "—"),
        ("status polls", str(job.attempts)),
        ("created", _short_time(job.created_at)),
        ("updated", _short_time(job.updated_at)),
        ("finished", _short_time(job.finished_at) or "—"),
        ("last error", job.last_error or "—"),
        ("result", json.dumps(job.result, ensure_ascii=False) if job.result else "—"),
        ("source keys", _keys_preview(job.source_keys)),
    ]
    for name, value in rows:
        fields.add_row(name, value)
    console.print(fields)
    console.print()
    chain = Table.grid(padding=(0, 2))
    chain.add_column(style="bold")
    chain.add_column(overflow="fold")
    chain.add_row("workflow id", str(correlation["workflow_id"]))
    chain.add_row("D365 execution id", job.execution_id or "— (not triggered)")
    chain.add_row("package blob", job.package_blob or "—")
    console.print(Text("Correlation", style="bold underline"))
    console.print(chain)
    console.print()
    heading = Text("Record outcomes", style="bold underline")
    if not outcomes:
        note = "none yet" if not job.is_terminal else "none recorded"
        console.print(Text.assemble(heading, f": {note}"))
    else:
        console.print(
            Text.assemble(
                heading,
                f": {len(outcomes)} — ",
                (f"{len(outcomes) - len(failed)} ok", "green"),
                ", ",
                (f"{len(failed)} failed", "red"),
            )
        )
    if failed:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        table.add_column("entity")
        table.add_column("business key", overflow="fold")
        table.add_column("error (D365)", overflow="fold")
        for outcome in failed[:50]:
            table.add_row(outcome.entity, outcome.business_key, outcome.error or "")
        console.print(table)
        if len(failed) > 50:
            console.print(f"… and {len(failed) - 50} more (use --json for all)")


def _keys_preview(keys: tuple[str, ...]) -> str:
    if not keys:
        return "—"
    shown = ", ".join(keys[:10])
    return f"{len(keys)}: {shown}" + (", …" if len(keys) > 10 else "")


# -- retry -------------------------------------------------------------------------------------


@jobs_app.command("retry")
def retry_job(
    job_id: JobIdArgument, as_json: JsonOption = False, config: ConfigOption = None
) -> None:
    """Resume a stuck job: poll its SAME D365 execution again until it ends; never re-import.

    Also takes an active job whose workflow has ended without finishing it (first marked
    stuck). Needs the [d365] settings. Failed records of a finished job are not retried here:
    they are replayed from the error queue (d365ct errors replay).
    """
    from d365ct.d365.dmf import ExecutionStatus
    from d365ct.flows.resume import ResumeRefusedError, resume_stuck_job

    path = _config_path(config)
    url = _store_url_or_exit(path)
    with _open_store(url) as store:
        job = _job_or_exit(store, job_id)
        orphaned_by = _check_retry(url, job)
        settings = _settings(path)
        if orphaned_by is not None:
            # Its workflow ended without finishing it (an error it could not retry, a cancel):
            # no one polls it, so raise it to stuck first, then resume it like any stuck job.
            workflow_id, status = orphaned_by
            try:
                reason = f"its workflow {workflow_id} ended {status} while the job was {job.state}"
                job = store.mark_stuck(job.id, reason=reason)
            except InvalidTransitionError as exc:
                _fail(str(exc), EXIT_REFUSED)
        d365 = settings.d365
        console = _err()
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task(f"polling D365 execution {job.execution_id}", total=None)

            def on_poll(attempt: int, attempts: int, status: str | None) -> None:
                if status is not None and ExecutionStatus(status).final:
                    text = f"{job_id}: D365 says {status}; collecting the record outcomes"
                else:
                    text = (
                        f"{job_id}: {status or 'not known to D365 yet'} "
                        f"(poll {attempt}/{attempts}, every ~{d365.poll_interval_seconds:g} s)"
                    )
                progress.update(task, description=text)

            try:
                job = asyncio.run(resume_stuck_job(settings, store, job_id, on_poll=on_poll))
            except ResumeRefusedError as exc:  # moved on since we looked
                _fail(str(exc), EXIT_REFUSED)
            except InvalidTransitionError as exc:
                _fail(str(exc), EXIT_REFUSED)
            except D365ctError as exc:
                _fail(f"job {job_id} stays stuck: {exc}", EXIT_FAILED)
        outcomes = store.outcomes(job_id)
    if as_json:
        _print_json(_job_dict(job))
    else:
        out = _out()
        if job.state == "stuck":
            out.print(Text(f"{job_id}: still stuck — {job.last_error}", style="magenta"))
        else:
            failed = sum(1 for o in outcomes if o.outcome == "failed")
            summary = f", {len(outcomes) - failed} records ok, {failed} failed" if outcomes else ""
            out.print(
                Text.assemble(
                    f"{job_id}: ",
                    _state(job),
                    f" (D365 {job.d365_status}, execution {job.execution_id}){summary}",
                )
            )
            if failed:
                out.print(
                    "Failed records and D365's reasons: d365ct jobs show "
                    f"{job_id}; replay them with d365ct errors replay."
                )
    if job.state == "stuck":
        raise typer.Exit(EXIT_FAILED)


def _check_retry(url: str, job: JobRecord) -> tuple[str, str] | None:
    """Exit 2 unless the job may be resumed; (workflow id, status) when its workflow ended."""
    if job.state in ("failed", "partially_succeeded"):
        _fail(
            f"job {job.id} is {job.state}: D365 finished execution {job.execution_id}. "
            "Its failed records are replayed from the error queue (d365ct errors replay), "
            "never by importing the package again.",
            EXIT_REFUSED,
        )
    if job.state in TERMINAL_STATES:
        _fail(f"job {job.id} is {job.state}: nothing to retry", EXIT_REFUSED)
    if job.execution_id is None:
        _fail(
            f"job {job.id} is {job.state} and has no D365 execution id: nothing to poll",
            EXIT_REFUSED,
        )
    if job.state == "stuck":
        return None
    found = _workflow_status(url, job.id)
    if found is not None and found[1] in _ENDED:
        return found
    why = (
        f"its workflow {found[0]} is {found[1]}, still working on it"
        if found
        else "DBOS knows no workflow for it here, so it may still be running elsewhere"
    )
    _fail(
        f"job {job.id} is {job.state}: {why}; only stuck jobs, or jobs whose workflow has "
        "ended, can be retried",
        EXIT_REFUSED,
    )


# -- cancel ------------------------------------------------------------------------------------


@jobs_app.command("cancel")
def cancel_job(
    job_id: JobIdArgument,
    reason: Annotated[
        str, typer.Option(help="Why, recorded as the job's last error.")
    ] = "canceled by an operator",
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Cancel an open job: stop its workflow and mark it canceled.

    A D365 execution that was already triggered cannot be cancelled through the DMF API: it may
    still import its records in D365.
    """
    url = _store_url_or_exit(config)
    with _open_store(url) as store:
        job = _job_or_exit(store, job_id)
        if job.is_terminal:
            _fail(f"job {job_id} is already {job.state}: nothing to cancel", EXIT_REFUSED)
        # The workflow first: a running one would otherwise fail on its next write to the job.
        workflow_note = _cancel_workflow(url, job_id)
        try:
            canceled = store.finish(
                job_id,
                "canceled",
                {**(job.result or {}), "canceled_from": job.state},
                error=reason,
                expected=OPEN_STATES,
            )
        except InvalidTransitionError:
            now = _job_or_exit(store, job_id)
            _fail(f"job {job_id} became {now.state} meanwhile: not canceled", EXIT_REFUSED)
        siblings = _open_siblings(store, job)
    if as_json:
        _print_json({**_job_dict(canceled), "workflow": workflow_note, "open_siblings": siblings})
        return
    out = _out()
    out.print(Text.assemble(f"{job_id}: ", _state(canceled), f" (was {job.state})"))
    out.print(f"Workflow: {workflow_note}")
    if job.state in ("uploading", "triggered", "executing", "stuck"):
        maybe = "may have been" if job.state == "uploading" else "was"
        out.print(
            f"D365 execution {job.execution_id} {maybe} triggered already: the DMF API cannot "
            "cancel it, so D365 may still import its records. Check it in D365 under Data "
            "management > Job history before sending the records again."
        )
    if siblings:
        out.print(
            "Other packages of the same workflow are still open and no longer polled: "
            + ", ".join(siblings)
        )


class _NoWorkflowState(Exception):
    """The store holds no readable DBOS state: DBOS never ran on it, or it cannot be reached."""


_ENDED = frozenset({"SUCCESS", "ERROR", "CANCELLED"})


@contextlib.contextmanager
def _dbos(url: str) -> Iterator[Any]:
    """A DBOS client on the store's system database; DBOS itself is not launched."""
    from dbos import DBOSClient

    from d365ct.engine import dbos_system_url

    try:
        client = DBOSClient(system_database_url=dbos_system_url(url))
    except (sa.exc.SQLAlchemyError, ValueError) as exc:
        raise _NoWorkflowState(exc.__class__.__name__) from exc
    try:
        yield client
    except sa.exc.SQLAlchemyError as exc:
        raise _NoWorkflowState(exc.__class__.__name__) from exc
    finally:
        client.destroy()


def _find_workflow(client: Any, job_id: str) -> tuple[str, str] | None:
    """(workflow id, DBOS status) of the workflow running the job, if DBOS knows it."""
    for workflow_id in dict.fromkeys([job_id, workflow_id_of(job_id)]):
        found = client.list_workflows(
            workflow_ids=[workflow_id], load_input=False, load_output=False
        )
        if found:
            return workflow_id, str(found[0].status)
    return None


def _workflow_status(url: str, job_id: str) -> tuple[str, str] | None:
    try:
        with _dbos(url) as client:
            return _find_workflow(client, job_id)
    except _NoWorkflowState:
        return None


def _cancel_workflow(url: str, job_id: str) -> str:
    """Cancel the job's DBOS workflow through the system database, without launching DBOS."""
    try:
        with _dbos(url) as client:
            found = _find_workflow(client, job_id)
            if found is None:
                return "none found in this store"
            workflow_id, status = found
            if status in _ENDED:
                return f"{workflow_id} had already ended ({status})"
            client.cancel_workflow(workflow_id)
            return f"{workflow_id} canceled (was {status})"
    except _NoWorkflowState as exc:
        return f"none: no DBOS workflow state readable in this store ({exc})"


def _open_siblings(store: JobStore, job: JobRecord) -> list[str]:
    workflow_id = workflow_id_of(job.id)
    if workflow_id == job.id:
        return []
    open_jobs = store.list(OPEN_STATES, flow=job.flow, legal_entity=job.legal_entity, limit=10_000)
    return sorted(j.id for j in open_jobs if j.id != job.id and workflow_id_of(j.id) == workflow_id)
