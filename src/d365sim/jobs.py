"""DMF executions and the batch runner that works them off like D365's batch server.

Jobs queue behind `batch_threads` workers; each takes `job_seconds` + `row_ms` per row.
"""

from __future__ import annotations

import csv
import io
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from d365sim.blob import BlobStore
from d365sim.config import SimConfig
from d365sim.entities import BY_NAME, by_label
from d365sim.importer import EntityResult, Importer
from d365sim.packages import PackageError, PackageReader, write_package
from d365sim.projects import DataProject, ProjectRegistry
from d365sim.store import EntityStore


class Status(StrEnum):
    """DMFExecutionSummaryStatus."""

    UNKNOWN = "Unknown"
    NOT_RUN = "NotRun"
    EXECUTING = "Executing"
    SUCCEEDED = "Succeeded"
    PARTIALLY_SUCCEEDED = "PartiallySucceeded"
    FAILED = "Failed"
    CANCELED = "Canceled"


FINAL = {Status.SUCCEEDED, Status.PARTIALLY_SUCCEEDED, Status.FAILED, Status.CANCELED}


@dataclass
class Execution:
    id: str
    kind: str  # "Import" or "Export"
    project: str
    legal_entity: str
    created_at: datetime
    status: Status = Status.NOT_RUN
    started_at: datetime | None = None
    finished_at: datetime | None = None
    package_path: Path | None = None  # import: the downloaded package
    export_blob: str | None = None  # export: the finished package in blob storage
    messages: list[str] = field(default_factory=list)  # job-level errors
    results: list[EntityResult] = field(default_factory=list)
    error_key_files: dict[str, str | None] = field(default_factory=dict)  # label → blob name
    bad_status_polls: int = 0  # transient 400s still to answer on status polls
    rows: int = 0
    canceled: threading.Event = field(default_factory=threading.Event, repr=False)

    def result_for(self, entity_name: str) -> EntityResult | None:
        wanted = BY_NAME.get(entity_name) or by_label(entity_name)
        for result in self.results:
            if wanted is not None and result.entity_set == wanted.name:
                return result
            if result.label.casefold() == entity_name.strip().casefold():
                return result
        return None

    def summary(self) -> dict[str, Any]:
        return {
            "executionId": self.id,
            "kind": self.kind,
            "project": self.project,
            "legalEntity": self.legal_entity,
            "status": self.status.value,
            "createdAt": self.created_at.isoformat(),
            "startedAt": self.started_at.isoformat() if self.started_at else None,
            "finishedAt": self.finished_at.isoformat() if self.finished_at else None,
            "rows": self.rows,
            "messages": self.messages,
            "entities": [
                {
                    "label": r.label,
                    "entitySet": r.entity_set,
                    "staged": r.staged,
                    "written": r.written,
                    "errors": len(r.errors),
                }
                for r in self.results
            ],
        }


def new_execution_id(project: str, now: datetime) -> str:
    """IDs look like RIS's: {project}-{yyyy-MM-dd_HH-mm-ss}-{guid}."""
    return f"{project}-{now:%Y-%m-%d_%H-%M-%S}-{uuid.uuid4()}"


@dataclass
class RunnerStats:
    """What the benchmarks and crash tests read to judge a client's behaviour."""

    import_overlaps: int = 0  # imports submitted while another for the same company ran
    max_in_flight_imports: dict[str, int] = field(default_factory=dict)

    def as_dict(self, executions: list[Execution]) -> dict[str, Any]:
        imports = [e for e in executions if e.kind == "Import"]
        return {
            "imports": len(imports),
            "exports": len(executions) - len(imports),
            "importOverlaps": self.import_overlaps,
            "maxInFlightImportsByLegalEntity": dict(self.max_in_flight_imports),
            "rowsImported": sum(r.written for e in imports for r in e.results),
            "byStatus": {
                status.value: sum(1 for e in executions if e.status == status) for status in Status
            },
        }


class JobRunner:
    def __init__(
        self,
        config: SimConfig,
        store: EntityStore,
        blobs: BlobStore,
        projects: ProjectRegistry,
    ) -> None:
        self.config = config
        self.store = store
        self.blobs = blobs
        self.projects = projects
        self._lock = threading.Lock()
        self._executions: dict[str, Execution] = {}
        self._queue: queue.Queue[Execution | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workdir = tempfile.TemporaryDirectory(prefix="d365sim-jobs-")
        self.stats = RunnerStats()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        for index in range(max(1, self.config.batch_threads)):
            thread = threading.Thread(target=self._work, name=f"dmf-batch-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self.reset()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        self._workdir.cleanup()

    def reset(self) -> None:
        with self._lock:
            for execution in self._executions.values():
                if execution.status not in FINAL:
                    execution.status = Status.CANCELED
                    execution.canceled.set()  # frees its batch thread at once
            self._executions.clear()
            self.stats = RunnerStats()

    # -- executions ----------------------------------------------------------------------------
    def get(self, execution_id: str) -> Execution | None:
        with self._lock:
            return self._executions.get(execution_id)

    def all(self) -> list[Execution]:
        with self._lock:
            return list(self._executions.values())

    def register(self, execution: Execution) -> bool:
        """Record a new execution; False when the id is taken."""
        with self._lock:
            if execution.id in self._executions:
                return False
            if execution.kind == "Import":
                # Clients should serialise imports per legal entity (C4); count when they don't.
                in_flight = sum(
                    1
                    for other in self._executions.values()
                    if other.kind == "Import"
                    and other.legal_entity == execution.legal_entity
                    and other.status not in FINAL
                )
                if in_flight:
                    self.stats.import_overlaps += 1
                peak = self.stats.max_in_flight_imports
                peak[execution.legal_entity] = max(
                    peak.get(execution.legal_entity, 0), in_flight + 1
                )
            execution.bad_status_polls = self.config.faults.status_bad_requests
            self._executions[execution.id] = execution
            return True

    def forget(self, execution_id: str) -> None:
        with self._lock:
            self._executions.pop(execution_id, None)

    def workfile(self, name: str) -> Path:
        return Path(self._workdir.name) / name

    def enqueue(self, execution: Execution) -> None:
        self._queue.put(execution)

    # -- the batch thread ----------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            execution = self._queue.get()
            if execution is None:
                return
            if execution.status == Status.CANCELED:
                continue
            execution.status = Status.EXECUTING
            execution.started_at = datetime.now(UTC)
            began = time.monotonic()
            try:
                if execution.kind == "Import":
                    final = self._run_import(execution)
                else:
                    final = self._run_export(execution)
            except Exception as exc:  # a job that crashes ends Failed, like a batch task would
                execution.messages.append(f"{type(exc).__name__}: {exc}")
                final = Status.FAILED
            # The latency model: D365's batch takes a fixed cost plus a cost per row.
            target = self.config.job_seconds + self.config.row_ms * execution.rows / 1000
            remaining = max(0.0, target - (time.monotonic() - began))
            if not self._stop.is_set():
                execution.canceled.wait(remaining)
            execution.finished_at = datetime.now(UTC)
            if execution.status != Status.CANCELED:
                execution.status = final

    def _run_import(self, execution: Execution) -> Status:
        assert execution.package_path is not None
        importer = Importer(self.store, execution.legal_entity)
        if not importer.company_exists:
            execution.messages.append(f"Company '{execution.legal_entity}' does not exist.")
            return Status.FAILED
        try:
            with PackageReader(execution.package_path, by_label) as reader:
                for result in importer.run(reader):
                    execution.results.append(result)
                    execution.rows += result.staged
        except PackageError as exc:
            execution.messages.append(str(exc))
            return Status.FAILED
        finally:
            execution.package_path.unlink(missing_ok=True)
        errors = sum(len(r.errors) for r in execution.results)
        written = sum(r.written for r in execution.results)
        if errors == 0:
            return Status.SUCCEEDED
        return Status.PARTIALLY_SUCCEEDED if written else Status.FAILED

    def _export_rows(self, project: DataProject, legal_entity: str) -> Iterator[Any]:
        for name in project.entities:
            entity = BY_NAME[name]
            where, params = ("", [])
            if entity.company_scoped:
                where, params = '"dataAreaId" = ?', [legal_entity]
            rows = (row for row, _ in self.store.query(entity, where=where, params=params))
            yield entity, rows

    def _run_export(self, execution: Execution) -> Status:
        project = self.projects.get(execution.project)
        if project is None:
            execution.messages.append(f"Data project '{execution.project}' was not found.")
            return Status.FAILED
        if not Importer(self.store, execution.legal_entity).company_exists:
            execution.messages.append(f"Company '{execution.legal_entity}' does not exist.")
            return Status.FAILED
        path = self.workfile(f"{uuid.uuid4().hex}.zip")
        try:
            counts = write_package(
                path,
                definition_group=project.name,
                entities=self._export_rows(project, execution.legal_entity),
                description=project.description or project.name,
            )
            for label, count in counts.items():
                entity = by_label(label)
                execution.results.append(
                    EntityResult(label, entity.name if entity else label, count, count)
                )
            execution.rows = sum(counts.values())
            blob = f"exports/{execution.id}.zip"
            self.blobs.upload_file(blob, path)
            execution.export_blob = blob
        finally:
            path.unlink(missing_ok=True)
        return Status.SUCCEEDED

    # -- error files ---------------------------------------------------------------------------
    def generate_error_keys(self, execution: Execution, result: EntityResult) -> None:
        """Write the keys of the failed records as a CSV-Unicode file, in the background."""
        label = result.label
        execution.error_key_files[label] = None

        def generate() -> None:
            time.sleep(min(1.0, self.config.job_seconds / 10))  # D365 builds it in a batch task
            keys = sorted({k for error in result.errors for k in error.keys})
            blob = f"errors/{execution.id}/{label} error keys.csv"
            self.blobs.upload_bytes(blob, _csv_unicode(keys, (e.keys for e in result.errors)))
            execution.error_key_files[label] = blob

        threading.Thread(target=generate, daemon=True).start()

    def staging_error_file(self, execution: Execution, result: EntityResult) -> str:
        blob = f"errors/{execution.id}/{result.label} staging errors.csv"
        if not self.blobs.exists(blob):
            columns = sorted({k for error in result.errors for k in error.raw})
            rows = ({**e.raw, "ERROR": e.message} for e in result.errors)
            self.blobs.upload_bytes(blob, _csv_unicode([*columns, "ERROR"], rows))
        return blob


def _csv_unicode(columns: list[str], rows: Iterator[dict[str, str]] | Any) -> bytes:
    """UTF-16LE with BOM and CRLF, uppercase headers: the way D365 writes CSV-Unicode."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow([c.upper() for c in columns])
    for row in rows:
        writer.writerow([row.get(c, "") for c in columns])
    return b"\xff\xfe" + text.getvalue().encode("utf-16-le")
