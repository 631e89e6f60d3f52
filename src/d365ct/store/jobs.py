"""The D365 job store: one row per DMF import/export job, with atomic state transitions.

It correlates each D365 execution id with its workflow and source keys (SPEC C12).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Final, Literal, cast, get_args

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from d365ct.errors import D365ctError
from d365ct.store.tables import d365_jobs, d365_record_outcomes

JobKind = Literal["import", "export"]
JobState = Literal[
    "pending",
    "uploading",
    "triggered",
    "executing",
    "succeeded",
    "partially_succeeded",
    "failed",
    "canceled",
    "stuck",
]
Outcome = Literal["ok", "failed"]

ALL_STATES: Final[frozenset[str]] = frozenset(get_args(JobState))
# A job in one of these states is done: nothing moves it again (finish() replays are no-ops).
TERMINAL_STATES: Final[frozenset[str]] = frozenset(
    {"succeeded", "partially_succeeded", "failed", "canceled"}
)
# Stuck is not terminal: an operator (or a later poll) may still resolve it.
OPEN_STATES: Final[frozenset[str]] = ALL_STATES - TERMINAL_STATES
ACTIVE_STATES: Final[frozenset[str]] = OPEN_STATES - {"stuck"}

_OUTCOME_BATCH = 500  # rows per INSERT, so memory stays flat however many records a job has

# Execution option read by make_engine's SQLite "begin" hook: reads need no write lock.
READ_ONLY_OPTION: Final = "d365ct_read_only"


class JobStoreError(D365ctError):
    """A job store operation was refused."""


class JobNotFoundError(JobStoreError, LookupError):
    """No job has this id."""


class InvalidTransitionError(JobStoreError):
    """The job is not in a state the requested transition may start from."""

    def __init__(
        self,
        job_id: str,
        current: str,
        target: str,
        allowed: Collection[str],
        *,
        action: str | None = None,
    ) -> None:
        doing = action or f"moving it to {target!r}"
        super().__init__(
            f"job {job_id!r} is {current!r}, but {doing} needs one of {sorted(allowed)}; "
            "another worker or an earlier run has moved it on"
        )
        self.job_id = job_id
        self.current = current
        self.target = target


class ExecutionIdConflictError(JobStoreError):
    """The execution id is taken, or the job already has a different one."""


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What happened to one business record (an order, a customer) inside a job."""

    entity: str
    business_key: str
    outcome: Outcome
    error: str | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A snapshot of one row of ``d365_jobs``; times are timezone-aware UTC."""

    id: str
    kind: JobKind
    flow: str
    legal_entity: str
    definition_group: str
    source_keys: tuple[str, ...]
    package_blob: str | None
    execution_id: str | None
    state: JobState
    d365_status: str | None
    attempts: int
    last_error: str | None
    result: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _check_state(state: str) -> None:
    if state not in ALL_STATES:
        raise ValueError(f"unknown job state {state!r}; expected one of {sorted(ALL_STATES)}")


def _to_record(row: sa.Row[Any]) -> JobRecord:
    m = row._mapping
    return JobRecord(
        id=m["id"],
        kind=m["kind"],
        flow=m["flow"],
        legal_entity=m["legal_entity"],
        definition_group=m["definition_group"],
        source_keys=tuple(m["source_keys"]),
        package_blob=m["package_blob"],
        execution_id=m["execution_id"],
        state=m["state"],
        d365_status=m["d365_status"],
        attempts=m["attempts"],
        last_error=m["last_error"],
        result=m["result"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        finished_at=m["finished_at"],
    )


def _batches(items: Iterable[RecordOutcome], size: int) -> Iterator[list[RecordOutcome]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


class JobStore:
    """Explicit, atomic transitions of D365 jobs; every write is one committed transaction.

    Writes are single conditional UPDATEs (compare-and-set), so two workers racing on one job
    cannot both win, on SQLite or PostgreSQL. Methods return frozen ``JobRecord`` snapshots.
    """

    def __init__(self, engine: sa.Engine, *, clock: Callable[[], datetime] = _utcnow) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {engine.dialect.name!r}")
        self._engine = engine
        self._clock = clock

    # -- helpers -------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the job store clock must return timezone-aware datetimes")
        return now

    def _insert(self, table: sa.Table) -> sqlite.Insert | postgresql.Insert:
        if self._engine.dialect.name == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    @staticmethod
    def _fetch(conn: sa.Connection, job_id: str) -> JobRecord | None:
        row = conn.execute(sa.select(d365_jobs).where(d365_jobs.c.id == job_id)).first()
        return None if row is None else _to_record(row)

    def _fetch_existing(self, conn: sa.Connection, job_id: str) -> JobRecord:
        job = self._fetch(conn, job_id)
        if job is None:
            raise JobNotFoundError(f"no D365 job with id {job_id!r}")
        return job

    def _read(self) -> sa.Connection:
        return self._engine.connect().execution_options(**{READ_ONLY_OPTION: True})

    # -- writes --------------------------------------------------------------------------

    def create(
        self,
        job_id: str,
        *,
        kind: JobKind,
        flow: str,
        legal_entity: str,
        definition_group: str,
        source_keys: Iterable[str],
        package_blob: str | None = None,
    ) -> JobRecord:
        """Create a pending job; if ``job_id`` exists, return it unchanged (idempotent start)."""
        if kind not in get_args(JobKind):
            raise ValueError(f"unknown job kind {kind!r}; expected 'import' or 'export'")
        now = self._now()
        stmt = (
            self._insert(d365_jobs)
            .values(
                id=job_id,
                kind=kind,
                flow=flow,
                legal_entity=legal_entity,
                definition_group=definition_group,
                source_keys=list(source_keys),
                package_blob=package_blob,
                state="pending",
                attempts=0,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=[d365_jobs.c.id])
        )
        with self._engine.begin() as conn:
            conn.execute(stmt)
            return self._fetch_existing(conn, job_id)

    def record_package(self, job_id: str, package_blob: str) -> JobRecord:
        """Remember where the job's data package was uploaded (blob name or URL without SAS)."""
        with self._engine.begin() as conn:
            res = conn.execute(
                sa.update(d365_jobs)
                .where(d365_jobs.c.id == job_id, d365_jobs.c.state.in_(OPEN_STATES))
                .values(package_blob=package_blob, updated_at=self._now())
            )
            job = self._fetch_existing(conn, job_id)
            if res.rowcount == 0:
                raise InvalidTransitionError(
                    job_id, job.state, job.state, OPEN_STATES, action="recording its package"
                )
            return job

    def record_execution(self, job_id: str, execution_id: str) -> JobRecord:
        """Durably attach the D365 execution id, before the import is triggered.

        The workflow generates the execution id itself and calls this first, so a crash between
        ``ImportFromPackage`` and here cannot lose the correlation. Repeating the call with the
        same id is a no-op (a re-run step); a different id, or an id another job holds, raises
        ``ExecutionIdConflictError``.
        """
        try:
            with self._engine.begin() as conn:
                res = conn.execute(
                    sa.update(d365_jobs)
                    .where(
                        d365_jobs.c.id == job_id,
                        d365_jobs.c.state.in_(OPEN_STATES),
                        sa.or_(
                            d365_jobs.c.execution_id.is_(None),
                            d365_jobs.c.execution_id == execution_id,
                        ),
                    )
                    .values(execution_id=execution_id, updated_at=self._now())
                )
                job = self._fetch_existing(conn, job_id)
        except IntegrityError as exc:
            holder = self.by_execution_id(execution_id)
            raise ExecutionIdConflictError(
                f"execution id {execution_id!r} already belongs to job "
                f"{holder.id if holder else '?'!r}; job {job_id!r} needs a new one"
            ) from exc
        if res.rowcount == 0 and job.execution_id != execution_id:
            if job.execution_id is not None:
                raise ExecutionIdConflictError(
                    f"job {job_id!r} already has execution id {job.execution_id!r}; "
                    f"refusing to replace it with {execution_id!r}"
                )
            raise InvalidTransitionError(
                job_id, job.state, job.state, OPEN_STATES, action="recording an execution id"
            )
        return job

    def set_state(
        self,
        job_id: str,
        state: JobState,
        *,
        d365_status: str | None = None,
        error: str | None = None,
        expected: Collection[str] | None = None,
        count_attempt: bool = False,
    ) -> JobRecord:
        """Compare-and-set the job's state.

        ``expected`` lists the states the job may be in now (default: any non-terminal state);
        otherwise ``InvalidTransitionError``. ``d365_status`` and ``error`` overwrite the stored
        values when given; ``count_attempt`` adds one to ``attempts`` (one status poll).
        Terminal states go through ``finish``; ``stuck`` through ``mark_stuck``.
        """
        _check_state(state)
        if state in TERMINAL_STATES:
            raise ValueError(f"use finish() to move job {job_id!r} to terminal state {state!r}")
        allowed = OPEN_STATES if expected is None else frozenset(expected)
        for s in allowed:
            _check_state(s)
        values: dict[str, Any] = {"state": state, "updated_at": self._now()}
        if d365_status is not None:
            values["d365_status"] = d365_status
        if error is not None:
            values["last_error"] = error
        if count_attempt:
            values["attempts"] = d365_jobs.c.attempts + 1
        with self._engine.begin() as conn:
            res = conn.execute(
                sa.update(d365_jobs)
                .where(d365_jobs.c.id == job_id, d365_jobs.c.state.in_(allowed))
                .values(**values)
            )
            job = self._fetch_existing(conn, job_id)
        if res.rowcount == 0:
            raise InvalidTransitionError(job_id, job.state, state, allowed)
        return job

    def mark_stuck(self, job_id: str, *, reason: str, d365_status: str | None = None) -> JobRecord:
        """Raise the job to operators: polling gave up (SPEC C6). Repeating it is a no-op."""
        values: dict[str, Any] = {"state": "stuck", "last_error": reason}
        if d365_status is not None:
            values["d365_status"] = d365_status
        with self._engine.begin() as conn:
            res = conn.execute(
                sa.update(d365_jobs)
                .where(d365_jobs.c.id == job_id, d365_jobs.c.state.in_(ACTIVE_STATES))
                .values(updated_at=self._now(), **values)
            )
            job = self._fetch_existing(conn, job_id)
        if res.rowcount == 0 and job.state != "stuck":
            raise InvalidTransitionError(job_id, job.state, "stuck", ACTIVE_STATES)
        return job

    def finish(
        self,
        job_id: str,
        state: JobState,
        result: Mapping[str, Any] | None = None,
        outcomes: Iterable[RecordOutcome] = (),
        *,
        d365_status: str | None = None,
        error: str | None = None,
        expected: Collection[str] | None = None,
    ) -> JobRecord:
        """Move the job to a terminal state and store its result and per-record outcomes.

        One transaction: the job and its outcomes commit together or not at all. Finishing a job
        again in the same terminal state returns it unchanged (a replayed step); finishing it
        in another terminal state raises ``InvalidTransitionError``.
        """
        _check_state(state)
        if state not in TERMINAL_STATES:
            raise ValueError(f"finish() needs a terminal state, not {state!r}")
        allowed = OPEN_STATES if expected is None else frozenset(expected) - TERMINAL_STATES
        now = self._now()
        values: dict[str, Any] = {
            "state": state,
            "result": dict(result) if result is not None else None,
            "updated_at": now,
            "finished_at": now,
        }
        if d365_status is not None:
            values["d365_status"] = d365_status
        if error is not None:
            values["last_error"] = error
        with self._engine.begin() as conn:
            res = conn.execute(
                sa.update(d365_jobs)
                .where(d365_jobs.c.id == job_id, d365_jobs.c.state.in_(allowed))
                .values(**values)
            )
            if res.rowcount == 0:
                job = self._fetch_existing(conn, job_id)
                if job.state == state:
                    return job
                raise InvalidTransitionError(job_id, job.state, state, allowed)
            for batch in _batches(outcomes, _OUTCOME_BATCH):
                self._upsert_outcomes(conn, job_id, batch)
            return self._fetch_existing(conn, job_id)

    def _upsert_outcomes(
        self, conn: sa.Connection, job_id: str, batch: builtins.list[RecordOutcome]
    ) -> None:
        rows = []
        for o in batch:
            if o.outcome not in get_args(Outcome):
                raise ValueError(f"outcome of {o.entity} {o.business_key!r}: {o.outcome!r}")
            rows.append(
                {
                    "job_id": job_id,
                    "entity": o.entity,
                    "business_key": o.business_key,
                    "outcome": o.outcome,
                    "error": o.error,
                }
            )
        stmt = self._insert(d365_record_outcomes)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[
                    d365_record_outcomes.c.job_id,
                    d365_record_outcomes.c.entity,
                    d365_record_outcomes.c.business_key,
                ],
                set_={"outcome": stmt.excluded.outcome, "error": stmt.excluded.error},
            ),
            rows,
        )

    # -- reads ---------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        with self._read() as conn:
            return self._fetch(conn, job_id)

    def by_execution_id(self, execution_id: str) -> JobRecord | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(d365_jobs).where(d365_jobs.c.execution_id == execution_id)
            ).first()
        return None if row is None else _to_record(row)

    def outcomes(self, job_id: str) -> builtins.list[RecordOutcome]:
        """The job's per-record outcomes, ordered by entity and business key."""
        t = d365_record_outcomes
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.c.entity, t.c.business_key, t.c.outcome, t.c.error)
                .where(t.c.job_id == job_id)
                .order_by(t.c.entity, t.c.business_key)
            ).all()
        return [
            RecordOutcome(r.entity, r.business_key, cast(Outcome, r.outcome), r.error) for r in rows
        ]

    # Named like the builtin on purpose (the brief's API); annotations use builtins.list.
    def list(
        self,
        state: str | Collection[str] | None = None,
        *,
        flow: str | None = None,
        legal_entity: str | None = None,
        limit: int = 50,
    ) -> builtins.list[JobRecord]:
        """Jobs, newest first, filtered by state(s), flow and legal entity."""
        query = sa.select(d365_jobs)
        if state is not None:
            states = {state} if isinstance(state, str) else set(state)
            for s in states:
                _check_state(s)
            query = query.where(d365_jobs.c.state.in_(states))
        if flow is not None:
            query = query.where(d365_jobs.c.flow == flow)
        if legal_entity is not None:
            query = query.where(d365_jobs.c.legal_entity == legal_entity)
        query = query.order_by(d365_jobs.c.created_at.desc(), d365_jobs.c.id.desc()).limit(limit)
        with self._read() as conn:
            return [_to_record(row) for row in conn.execute(query)]
