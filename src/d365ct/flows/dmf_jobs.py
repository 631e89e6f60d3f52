"""D365 package jobs as durable workflows: import a batch of records, export a data project.

Each D365 execution id is derived from the job and recorded before the job is triggered, so a
restarted workflow resumes polling the same execution instead of importing the package twice.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from dbos import DBOS, DBOSConfiguredInstance
from dbos._error import DBOSMaxStepRetriesExceeded

from d365ct.config import D365Settings
from d365ct.d365.auth import token_provider
from d365ct.d365.dmf import DmfActionError, DmfClient, ExecutionStatus
from d365ct.d365.entities import by_label
from d365ct.d365.http import D365Http, RetryPolicy
from d365ct.d365.packages import PackageWriter, Unit
from d365ct.engine import enqueue_import_async
from d365ct.errors import D365ctError, TransientError
from d365ct.service.metrics import retry_hook
from d365ct.store import ACTIVE_STATES, JobStore, RecordOutcome

EXECUTION_NAMESPACE = uuid.UUID("6f1c1f5e-0b1d-4c4e-9a55-3d365c7a0001")
# A job may be (re)triggered from these states; polling may see it in any active one.
TRIGGERABLE = frozenset({"pending", "uploading", "triggered"})
NOT_FOUND_LIMIT = 10  # status polls answering "not found" before the trigger is presumed lost


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientError)


F = TypeVar("F", bound=Callable[..., Any])


def d365_step() -> Callable[[F], F]:
    """A step that talks to D365: transient failures retried with back-off, others at once."""
    step: Callable[[F], F] = DBOS.step(  # type: ignore[assignment]
        retries_allowed=True,
        max_attempts=6,
        interval_seconds=2.0,
        backoff_rate=2.0,
        should_retry=_transient,
    )
    return step


def failure_text(exc: BaseException) -> str:
    """The underlying reason, also when DBOS wraps exhausted step retries."""
    if isinstance(exc, DBOSMaxStepRetriesExceeded) and exc.errors:
        exc = exc.errors[-1]
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, D365ctError) else str(exc)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientError | DBOSMaxStepRetriesExceeded)


def execution_id_for(job_id: str) -> str:
    """Deterministic per job, so a re-run trigger step can ask D365 whether it already ran."""
    return f"d365ct-{uuid.uuid5(EXECUTION_NAMESPACE, job_id)}"


@dataclass(frozen=True)
class ImportRequest:
    """Records to import, grouped into units that must land in the same package (an order and
    its lines); each unit has a business key that per-record outcomes are reported against."""

    flow: str
    legal_entity: str
    definition_group: str
    entities: tuple[str, ...]  # entity labels, in import order
    units: tuple[tuple[tuple[str, Mapping[str, Any]], ...], ...]  # per unit: (label, row)
    unit_keys: tuple[str, ...]
    # the field of each entity's rows that holds the unit key, to map D365's error keys back
    key_fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.units) != len(self.unit_keys):
            raise ValueError("every unit needs exactly one business key")


@dataclass(frozen=True)
class PackageResult:
    job_id: str
    execution_id: str
    state: str  # succeeded | partially_succeeded | failed | stuck
    d365_status: str
    succeeded: tuple[str, ...]
    failed: Mapping[str, str]  # unit key → D365's error text


@dataclass(frozen=True)
class ImportResult:
    packages: tuple[PackageResult, ...]

    @property
    def succeeded(self) -> tuple[str, ...]:
        return tuple(key for p in self.packages for key in p.succeeded)

    @property
    def failed(self) -> dict[str, str]:
        return {key: error for p in self.packages for key, error in p.failed.items()}

    @property
    def stuck(self) -> tuple[str, ...]:
        return tuple(p.job_id for p in self.packages if p.state == "stuck")


@dataclass(frozen=True)
class ExportResult:
    job_id: str
    execution_id: str
    state: str
    d365_status: str
    package_path: str | None  # downloaded package, when the export succeeded


@dataclass(frozen=True)
class _Package:
    index: int
    path: str
    first_unit: int
    last_unit: int


_FINAL_STATE = {
    ExecutionStatus.SUCCEEDED: "succeeded",
    ExecutionStatus.PARTIALLY_SUCCEEDED: "partially_succeeded",
    ExecutionStatus.FAILED: "failed",
    ExecutionStatus.CANCELED: "canceled",
    ExecutionStatus.UNKNOWN: "failed",
}


@DBOS.dbos_class()
class PackageJobs(DBOSConfiguredInstance):
    """Import and export workflows bound to one D365 environment and one job store."""

    def __init__(
        self,
        settings: D365Settings,
        store: JobStore,
        workdir: Path,
        *,
        config_name: str = "d365",
    ) -> None:
        self.settings = settings
        self.store = store
        self.workdir = workdir
        self._clients: dict[int, DmfClient] = {}
        super().__init__(config_name)

    # -- clients -------------------------------------------------------------------------------
    def dmf(self) -> DmfClient:
        """A client bound to the running event loop (DBOS runs queued workflows in its own)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(id(loop))
        if client is None:
            http = httpx.AsyncClient(timeout=self.settings.request_timeout_seconds)
            d365 = D365Http(
                http,
                self.settings.base_url,
                token_provider(self.settings, http),
                policy=RetryPolicy(max_attempts=self.settings.max_attempts),
                max_concurrency=self.settings.max_concurrency,
                rate_per_second=self.settings.rate_per_second,
                on_retry=retry_hook("d365"),
            )
            client = self._clients[id(loop)] = DmfClient(d365)
        return client

    # -- import --------------------------------------------------------------------------------
    async def start_import(self, request: ImportRequest, workflow_id: str) -> Any:
        """Enqueue the import, serialised with the other imports of its legal entity (C4)."""
        return await enqueue_import_async(
            self.import_records, request, legal_entity=request.legal_entity, workflow_id=workflow_id
        )

    @DBOS.workflow()
    async def import_records(self, request: ImportRequest) -> ImportResult:
        base_id = str(DBOS.workflow_id)
        packages = await self.build_packages(base_id, request)
        results = []
        for package in packages:
            job_id = base_id if len(packages) == 1 else f"{base_id}.p{package.index}"
            keys = request.unit_keys[package.first_unit : package.last_unit + 1]
            execution_id = await self.prepare_job(job_id, request, keys)
            try:
                await self.upload_and_trigger(job_id, execution_id, request, package)
                status = await self.poll(job_id, execution_id)
                result = await self.conclude_import(job_id, execution_id, status, request, keys)
            except Exception as exc:  # whatever happened, the job ends in a state operators see
                result = await self.abandon(
                    job_id, execution_id, request, keys, failure_text(exc), is_transient(exc)
                )
            results.append(result)
        await self.remove_workdir(base_id)
        return ImportResult(tuple(results))

    def _write(self, base_id: str, request: ImportRequest) -> list[_Package]:
        directory = self.workdir / base_id
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        writer = PackageWriter(
            directory,
            definition_group=request.definition_group,
            max_bytes=self.settings.package_max_bytes,
        )
        entities = [by_label(label) for label in request.entities]
        units: list[Unit] = [
            [(by_label(label), row) for label, row in unit] for unit in request.units
        ]
        written = writer.write_units(entities, units)
        return [
            _Package(i, str(p.path), p.first_unit, p.last_unit)
            for i, p in enumerate(written, start=1)
        ]

    @DBOS.step()
    async def build_packages(self, base_id: str, request: ImportRequest) -> list[_Package]:
        return await asyncio.to_thread(self._write, base_id, request)

    @DBOS.step()
    async def prepare_job(self, job_id: str, request: ImportRequest, keys: Sequence[str]) -> str:
        """Create the job and record its execution id durably, before anything is triggered."""
        self.store.create(
            job_id,
            kind="import",
            flow=request.flow,
            legal_entity=request.legal_entity,
            definition_group=request.definition_group,
            source_keys=keys,
        )
        execution_id = execution_id_for(job_id)
        self.store.record_execution(job_id, execution_id)
        return execution_id

    async def _already_triggered(self, job_id: str, execution_id: str) -> bool:
        """Whether D365 knows this execution. On a re-run, ask a few times: right after a
        trigger D365 may still answer "not found", and a second trigger would import twice."""
        dmf = self.dmf()
        job = self.store.get(job_id)
        checks = 1 if job is None or job.state == "pending" else 4
        for attempt in range(checks):
            if await dmf.status(execution_id) is not None:
                return True
            if attempt + 1 < checks:
                await asyncio.sleep(2.0)
        return False

    @d365_step()
    async def upload_and_trigger(
        self, job_id: str, execution_id: str, request: ImportRequest, package: _Package
    ) -> None:
        dmf = self.dmf()
        if await self._already_triggered(job_id, execution_id):
            # Triggered before a crash: never import the same package twice; poll it instead.
            self.store.set_state(job_id, "triggered", expected=TRIGGERABLE)
            return
        path = Path(package.path)
        if not path.exists():  # the work directory did not survive a restart: rebuild
            rebuilt = await asyncio.to_thread(self._write, job_id.split(".p")[0], request)
            path = Path(rebuilt[package.index - 1].path)
        self.store.set_state(job_id, "uploading", expected=TRIGGERABLE)
        url = await dmf.upload_package(path, f"{execution_id}.zip")
        self.store.record_package(job_id, url.split("?", 1)[0])
        try:
            await dmf.import_from_package(
                url,
                definition_group=request.definition_group,
                legal_entity=request.legal_entity,
                execution_id=execution_id,
                overwrite=True,
            )
        except DmfActionError as exc:
            if "already exists" not in exc.reason:
                raise
            # An earlier attempt's trigger reached D365 after all: poll that execution.
        self.store.set_state(job_id, "triggered", expected={"uploading"})

    async def poll(self, job_id: str, execution_id: str) -> str:
        """Poll with durable sleeps and jitter until a final status, or mark the job stuck."""
        rng = random.Random(job_id)  # deterministic jitter: a replay sleeps the same
        not_found = 0
        last = "NotRun"
        for _attempt in range(self.settings.poll_max_attempts):
            await DBOS.sleep_async(self.settings.poll_interval_seconds * rng.uniform(0.8, 1.2))
            status = await self.poll_once(job_id, execution_id)
            if status is None:
                not_found += 1
                if not_found >= NOT_FOUND_LIMIT:
                    await self.mark_stuck(job_id, "D365 does not know the execution id", last)
                    return "stuck"
                continue
            last = status
            if ExecutionStatus(status).final:
                return status
        await self.mark_stuck(
            job_id, f"still {last} after {self.settings.poll_max_attempts} status polls", last
        )
        return "stuck"

    @d365_step()
    async def poll_once(self, job_id: str, execution_id: str) -> str | None:
        status = await self.dmf().status(execution_id)
        if status is not None and not status.final:
            self.store.set_state(
                job_id,
                "executing",
                d365_status=status.value,
                expected=ACTIVE_STATES,
                count_attempt=True,
            )
        return None if status is None else status.value

    @DBOS.step()
    async def mark_stuck(self, job_id: str, reason: str, last_status: str) -> None:
        self.store.mark_stuck(job_id, reason=reason, d365_status=last_status)

    @d365_step()
    async def conclude_import(
        self,
        job_id: str,
        execution_id: str,
        status: str,
        request: ImportRequest,
        keys: Sequence[str],
    ) -> PackageResult:
        if status == "stuck":
            job = self.store.get(job_id)
            last = (job.d365_status if job else None) or "NotRun"
            return PackageResult(job_id, execution_id, "stuck", last, (), {})
        final = ExecutionStatus(status)
        failed: dict[str, str] = {}
        if final is not ExecutionStatus.SUCCEEDED:
            failed = await self._failed_units(execution_id, final, request, keys)
        state = _FINAL_STATE[final]
        if final is ExecutionStatus.PARTIALLY_SUCCEEDED and len(failed) == len(keys):
            state = "failed"
        succeeded = tuple(k for k in keys if k not in failed)
        outcomes = [
            RecordOutcome(
                request.entities[0], key, "failed" if key in failed else "ok", failed.get(key)
            )
            for key in keys
        ]
        self.store.finish(
            job_id,
            state,  # type: ignore[arg-type]
            {"execution_id": execution_id, "succeeded": len(succeeded), "failed": len(failed)},
            outcomes,
            d365_status=final.value,
            error="; ".join(sorted(set(failed.values())))[:2000] or None,
        )
        return PackageResult(job_id, execution_id, state, final.value, succeeded, failed)

    async def _failed_units(
        self,
        execution_id: str,
        status: ExecutionStatus,
        request: ImportRequest,
        keys: Sequence[str],
    ) -> dict[str, str]:
        """Which units failed, with D365's error text: error keys file + execution errors."""
        dmf = self.dmf()
        messages = await dmf.execution_errors(execution_id)
        failed_keys: set[str] = set()
        for label in request.entities:
            key_field = request.key_fields.get(label)
            if key_field is None or not await dmf.generate_error_keys_file(execution_id, label):
                continue
            url = ""
            for _ in range(60):  # generated in the background: "" until ready
                url = await dmf.error_keys_file_url(execution_id, label)
                if url:
                    break
                await asyncio.sleep(min(1.0, self.settings.poll_interval_seconds))
            if url:
                for row in await dmf.read_csv_file(url):
                    failed_keys.add(row.get(key_field.upper(), ""))
        if status in (ExecutionStatus.FAILED, ExecutionStatus.CANCELED) and not failed_keys:
            failed_keys = set(keys)  # the whole package was refused
        text_for = {
            key: [m for m in messages if key and key in m] or messages for key in failed_keys
        }
        return {
            key: "; ".join(text_for[key]) or f"D365 import ended {status.value}"
            for key in keys
            if key in failed_keys
        }

    @DBOS.step()
    async def abandon(
        self,
        job_id: str,
        execution_id: str,
        request: ImportRequest,
        keys: Sequence[str],
        reason: str,
        transient: bool,
    ) -> PackageResult:
        """Transient trouble → stuck (an operator resumes it); a refusal → every record failed."""
        job = self.store.get(job_id)
        if transient:
            if job is not None and job.state not in ("succeeded", "partially_succeeded", "failed"):
                self.store.mark_stuck(job_id, reason=reason, d365_status=job.d365_status)
            last = (job.d365_status if job else None) or "NotRun"
            return PackageResult(job_id, execution_id, "stuck", last, (), {})
        failed = {key: reason for key in keys}
        self.store.finish(
            job_id,
            "failed",
            {"execution_id": execution_id, "succeeded": 0, "failed": len(keys)},
            [RecordOutcome(request.entities[0], key, "failed", reason) for key in keys],
            error=reason[:2000],
        )
        return PackageResult(job_id, execution_id, "failed", "NotRun", (), failed)

    @DBOS.step()
    async def remove_workdir(self, base_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.workdir / base_id, True)

    # -- export --------------------------------------------------------------------------------
    @DBOS.workflow()
    async def export_project(
        self, flow: str, definition_group: str, legal_entity: str
    ) -> ExportResult:
        job_id = str(DBOS.workflow_id)
        execution_id = await self.prepare_export(job_id, flow, definition_group, legal_entity)
        await self.trigger_export(job_id, execution_id, definition_group, legal_entity)
        status = await self.poll(job_id, execution_id)
        if status == "stuck":
            return ExportResult(job_id, execution_id, "stuck", "Executing", None)
        final = ExecutionStatus(status)
        path = None
        if final in (ExecutionStatus.SUCCEEDED, ExecutionStatus.PARTIALLY_SUCCEEDED):
            path = await self.download_export(job_id, execution_id)
        return await self.conclude_export(job_id, execution_id, final.value, path)

    @DBOS.step()
    async def prepare_export(
        self, job_id: str, flow: str, definition_group: str, legal_entity: str
    ) -> str:
        self.store.create(
            job_id,
            kind="export",
            flow=flow,
            legal_entity=legal_entity,
            definition_group=definition_group,
            source_keys=(),
        )
        execution_id = execution_id_for(job_id)
        self.store.record_execution(job_id, execution_id)
        return execution_id

    @d365_step()
    async def trigger_export(
        self, job_id: str, execution_id: str, definition_group: str, legal_entity: str
    ) -> None:
        dmf = self.dmf()
        if await dmf.status(execution_id) is None:
            await dmf.export_to_package(
                definition_group=definition_group,
                legal_entity=legal_entity,
                execution_id=execution_id,
            )
        self.store.set_state(job_id, "triggered", expected=TRIGGERABLE)

    async def download_export(self, job_id: str, execution_id: str) -> str | None:
        for _ in range(self.settings.poll_max_attempts):
            path = await self.try_download(job_id, execution_id)
            if path is not None:
                return path
            await DBOS.sleep_async(self.settings.poll_interval_seconds)
        return None

    @d365_step()
    async def try_download(self, job_id: str, execution_id: str) -> str | None:
        """Download once the URL is there ("" until the package is ready)."""
        return await self.ensure_export_file(job_id, execution_id)

    async def ensure_export_file(self, job_id: str, execution_id: str) -> str | None:
        """The package on local disk; downloaded again if a restart lost it."""
        path = self.workdir / "exports" / f"{job_id}.zip"
        if path.exists():
            return str(path)
        dmf = self.dmf()
        url = await dmf.exported_package_url(execution_id)
        if not url:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        await dmf.download(url, partial)
        partial.replace(path)
        return str(path)

    @d365_step()
    async def conclude_export(
        self, job_id: str, execution_id: str, status: str, path: str | None
    ) -> ExportResult:
        final = ExecutionStatus(status)
        state = _FINAL_STATE[final] if path is not None or not final.final else "failed"
        errors = (
            ""
            if state == "succeeded"
            else "; ".join(await self.dmf().execution_errors(execution_id))
        )
        if path is None and final is ExecutionStatus.SUCCEEDED:
            errors = errors or "the exported package never became available"
        self.store.finish(
            job_id,
            state,  # type: ignore[arg-type]
            {"execution_id": execution_id, "package": path},
            d365_status=final.value,
            error=errors or None,
        )
        return ExportResult(job_id, execution_id, state, final.value, path)
