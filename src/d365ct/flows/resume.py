"""Resume a stuck D365 job: poll the SAME execution id again and record how it ended.

Never re-imports a package (that could post orders twice); the operator's `d365ct jobs retry`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from d365ct.config import Settings
from d365ct.d365.dmf import DmfActionError, DmfClient, ExecutionStatus
from d365ct.d365.entities import CUSTOMERS_V3, DEFINITIONS, SALES_ORDER_HEADERS_V2
from d365ct.runtime import adapters
from d365ct.store import (
    JobNotFoundError,
    JobRecord,
    JobState,
    JobStore,
    JobStoreError,
    RecordOutcome,
)

__all__ = ["PollCallback", "ResumeRefusedError", "resume_stuck_job"]

# Status polls answering "not found" before we conclude D365 never received the trigger.
NOT_FOUND_LIMIT = 10
ERROR_FILE_POLLS = 60  # the error keys file is built in the background: "" until ready

# (attempt, max attempts, D365 status or None while D365 does not know the execution id)
PollCallback = Callable[[int, int, str | None], None]

_FINAL_STATE: dict[ExecutionStatus, JobState] = {
    ExecutionStatus.SUCCEEDED: "succeeded",
    ExecutionStatus.PARTIALLY_SUCCEEDED: "partially_succeeded",
    ExecutionStatus.FAILED: "failed",
    ExecutionStatus.CANCELED: "canceled",
    ExecutionStatus.UNKNOWN: "failed",
}
# The entity a flow's business keys belong to, for per-record outcomes when D365 names none.
_FLOW_ENTITY = {"customers": CUSTOMERS_V3.label, "orders": SALES_ORDER_HEADERS_V2.label}


class ResumeRefusedError(JobStoreError):
    """The job cannot be resumed: it is not stuck, or it has no execution id to poll."""

    def __init__(self, job: JobRecord, reason: str) -> None:
        super().__init__(reason)
        self.job = job


async def resume_stuck_job(
    settings: Settings,
    store: JobStore,
    job_id: str,
    *,
    on_poll: PollCallback | None = None,
    dmf: DmfClient | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> JobRecord:
    """Poll a stuck job's execution until D365 reports a final status, then finish the job.

    Imports get per-record outcomes (error keys files and execution errors, as the workflow
    does); exports get their package downloaded to ``[store] workdir``/exports. Polls follow
    ``poll_interval_seconds`` (±20 % jitter) up to ``poll_max_attempts``; the first poll is
    immediate. If D365 still has not finished, or does not know the execution id, the job stays
    ``stuck`` with the new last status and reason — the returned record says which.

    Raises ``JobNotFoundError``, or ``ResumeRefusedError`` when the job is not stuck.
    """
    job = store.get(job_id)
    if job is None:
        raise JobNotFoundError(f"no job {job_id!r}")
    if job.state != "stuck":
        raise ResumeRefusedError(job, f"job {job_id!r} is {job.state}, not stuck")
    if job.execution_id is None:
        raise ResumeRefusedError(
            job, f"job {job_id!r} has no D365 execution id: nothing was triggered to poll"
        )
    if dmf is not None:
        return await _resume(settings, store, job, job.execution_id, dmf, on_poll, sleep)
    async with adapters(settings) as opened:
        return await _resume(settings, store, job, job.execution_id, opened.dmf, on_poll, sleep)


async def _resume(
    settings: Settings,
    store: JobStore,
    job: JobRecord,
    execution_id: str,
    dmf: DmfClient,
    on_poll: PollCallback | None,
    sleep: Callable[[float], Awaitable[None]],
) -> JobRecord:
    d365 = settings.d365
    rng = random.Random()
    not_found = 0
    last = job.d365_status or "NotRun"
    status: ExecutionStatus | None = None
    attempts = d365.poll_max_attempts
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            await sleep(d365.poll_interval_seconds * rng.uniform(0.8, 1.2))
        status = await dmf.status(execution_id)
        if on_poll is not None:
            on_poll(attempt, attempts, None if status is None else status.value)
        if status is None:
            not_found += 1
            if not_found >= NOT_FOUND_LIMIT:
                return store.set_state(
                    job.id,
                    "stuck",
                    error=(
                        f"D365 does not know execution id {execution_id} "
                        f"({not_found} status polls on resume): the trigger never reached it"
                    ),
                    expected={"stuck"},
                )
            continue
        last = status.value
        if status.final:
            break
        store.set_state(job.id, "stuck", d365_status=last, expected={"stuck"}, count_attempt=True)
    if status is None or not status.final:
        return store.set_state(
            job.id,
            "stuck",
            d365_status=last,
            error=f"still {last} after {attempts} more status polls (resumed by an operator)",
            expected={"stuck"},
        )
    if job.kind == "import":
        return await _conclude_import(settings, store, job, execution_id, status, dmf, sleep)
    return await _conclude_export(settings, store, job, execution_id, status, dmf, sleep)


async def _conclude_import(
    settings: Settings,
    store: JobStore,
    job: JobRecord,
    execution_id: str,
    status: ExecutionStatus,
    dmf: DmfClient,
    sleep: Callable[[float], Awaitable[None]],
) -> JobRecord:
    keys = job.source_keys
    failed: dict[str, tuple[str, str]] = {}
    primary = _FLOW_ENTITY.get(job.flow, job.definition_group)
    if status is not ExecutionStatus.SUCCEEDED:
        failed, primary = await _failed_units(
            settings, dmf, execution_id, status, keys, primary, sleep
        )
    state = _FINAL_STATE[status]
    if status is ExecutionStatus.PARTIALLY_SUCCEEDED and keys and len(failed) == len(keys):
        state = "failed"
    outcomes = [
        RecordOutcome(failed[key][0], key, "failed", failed[key][1])
        if key in failed
        else RecordOutcome(primary, key, "ok")
        for key in keys
    ]
    errors = "; ".join(sorted({error for _, error in failed.values()}))[:2000]
    return store.finish(
        job.id,
        state,
        {
            "execution_id": execution_id,
            "succeeded": len(keys) - len(failed),
            "failed": len(failed),
            "resumed": True,
        },
        outcomes,
        d365_status=status.value,
        error=errors or None,
        expected={"stuck"},
    )


async def _failed_units(
    settings: Settings,
    dmf: DmfClient,
    execution_id: str,
    status: ExecutionStatus,
    keys: Sequence[str],
    primary: str,
    sleep: Callable[[float], Awaitable[None]],
) -> tuple[dict[str, tuple[str, str]], str]:
    """Failed business keys → (entity label, D365's error text), and the entity seen.

    The job store does not record which entities the package held, so every entity d365ct
    writes is asked for an error keys file; D365 answers false for those without errors. A key
    failed when it is one of the key values of a row in such a file.
    """
    messages = await dmf.execution_errors(execution_id)
    wanted = set(keys)
    entity_of: dict[str, str] = {}
    first_with_errors: str | None = None
    for label in DEFINITIONS:
        try:
            if not await dmf.generate_error_keys_file(execution_id, label):
                continue
        except DmfActionError:
            continue  # an entity this environment does not have
        first_with_errors = first_with_errors or label
        url = ""
        for _ in range(ERROR_FILE_POLLS):
            url = await dmf.error_keys_file_url(execution_id, label)
            if url:
                break
            await sleep(min(1.0, settings.d365.poll_interval_seconds))
        if not url:
            continue
        for row in await dmf.read_csv_file(url):
            for column, value in row.items():
                if column.upper() != "DATAAREAID" and value in wanted:
                    entity_of.setdefault(value, label)
    primary = first_with_errors or primary
    if status is not ExecutionStatus.PARTIALLY_SUCCEEDED and not entity_of:
        entity_of = dict.fromkeys(keys, primary)  # the whole package was refused or canceled
    failed: dict[str, tuple[str, str]] = {}
    for key in keys:
        if key not in entity_of:
            continue
        texts = [m for m in messages if key in m] or messages
        failed[key] = (entity_of[key], "; ".join(texts) or f"D365 import ended {status.value}")
    return failed, primary


async def _conclude_export(
    settings: Settings,
    store: JobStore,
    job: JobRecord,
    execution_id: str,
    status: ExecutionStatus,
    dmf: DmfClient,
    sleep: Callable[[float], Awaitable[None]],
) -> JobRecord:
    path: Path | None = None
    if status in (ExecutionStatus.SUCCEEDED, ExecutionStatus.PARTIALLY_SUCCEEDED):
        path = await _download_export(settings, job.id, execution_id, dmf, sleep)
    state: JobState = _FINAL_STATE[status] if path is not None else "failed"
    if status is ExecutionStatus.CANCELED:
        state = "canceled"
    errors = "" if state == "succeeded" else "; ".join(await dmf.execution_errors(execution_id))
    if path is None and status is ExecutionStatus.SUCCEEDED:
        errors = errors or "the exported package never became available"
    return store.finish(
        job.id,
        state,
        {
            "execution_id": execution_id,
            "package": None if path is None else str(path),
            "resumed": True,
        },
        d365_status=status.value,
        error=errors[:2000] or None,
        expected={"stuck"},
    )


async def _download_export(
    settings: Settings,
    job_id: str,
    execution_id: str,
    dmf: DmfClient,
    sleep: Callable[[float], Awaitable[None]],
) -> Path | None:
    """Where the export workflow would have put it: ``{workdir}/exports/{job id}.zip``."""
    path = settings.store.workdir / "exports" / f"{job_id}.zip"
    for attempt in range(settings.d365.poll_max_attempts):
        if attempt:
            await sleep(settings.d365.poll_interval_seconds)
        url = await dmf.exported_package_url(execution_id)  # "" until the package is ready
        if url:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".part")
            await dmf.download(url, partial)
            partial.replace(path)
            return path
    return None
