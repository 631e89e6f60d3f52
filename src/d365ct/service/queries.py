"""Read-only aggregates over the store for the dashboard, the JSON API and /metrics.

Counts are computed in SQL (GROUP BY), so a page or a scrape costs the same at any store size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from d365ct.store import OPEN_STATES, TERMINAL_STATES
from d365ct.store.jobs import READ_ONLY_OPTION
from d365ct.store.tables import d365_jobs, error_queue, intake_messages

__all__ = ["HourBucket", "StepView", "StoreQueries"]


@dataclass(frozen=True)
class HourBucket:
    start: datetime  # UTC, on the hour
    count: int


@dataclass(frozen=True)
class StepView:
    """One recorded step of a DBOS workflow, as the job timeline shows it."""

    function_id: int
    name: str
    started_at: datetime | None
    completed_at: datetime | None
    error: str | None
    child_workflow_id: str | None

    @property
    def seconds(self) -> float | None:
        if self.started_at is None or self.completed_at is None:
            return None
        return (self.completed_at - self.started_at).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        return {
            "function_id": self.function_id,
            "name": self.name,
            "started_at": None if self.started_at is None else self.started_at.isoformat(),
            "completed_at": None if self.completed_at is None else self.completed_at.isoformat(),
            "seconds": self.seconds,
            "error": self.error,
            "child_workflow_id": self.child_workflow_id,
        }


class StoreQueries:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def _read(self) -> sa.Connection:
        return self._engine.connect().execution_options(**{READ_ONLY_OPTION: True})

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(sa.text("SELECT 1"))

    def jobs_by_flow_state(self) -> dict[tuple[str, str], int]:
        t = d365_jobs
        query = sa.select(t.c.flow, t.c.state, sa.func.count()).group_by(t.c.flow, t.c.state)
        with self._read() as conn:
            return {(flow, state): int(n) for flow, state, n in _rows(conn, query)}

    def open_jobs(self) -> dict[str, int]:
        t = d365_jobs
        query = (
            sa.select(t.c.flow, sa.func.count())
            .where(t.c.state.in_(sorted(OPEN_STATES)))
            .group_by(t.c.flow)
        )
        with self._read() as conn:
            return {flow: int(n) for flow, n in _rows(conn, query)}

    def last_run(self) -> dict[str, datetime]:
        """Per flow, when its newest job was created."""
        t = d365_jobs
        query = sa.select(t.c.flow, sa.func.max(t.c.created_at)).group_by(t.c.flow)
        with self._read() as conn:
            return {flow: _aware(when) for flow, when in _rows(conn, query) if when is not None}

    def errors_open_by_flow(self) -> dict[str, int]:
        t = error_queue
        query = sa.select(t.c.flow, sa.func.count()).where(t.c.status == "open").group_by(t.c.flow)
        with self._read() as conn:
            return {flow: int(n) for flow, n in _rows(conn, query)}

    def error_count_open(self) -> int:
        t = error_queue
        with self._read() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).where(t.c.status == "open")).scalar_one()
            )

    def intake_pending(self) -> int:
        t = intake_messages
        with self._read() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).where(t.c.status == "pending")).scalar_one()
            )

    def _hour(self, dialect: str) -> sa.ColumnElement[Any]:
        column = d365_jobs.c.finished_at
        if dialect == "postgresql":
            return sa.func.to_char(
                sa.func.date_trunc("hour", sa.func.timezone("UTC", column)), "YYYY-MM-DD HH24"
            )
        # SQLite stores the UTC time as text; strftime reads it.
        return sa.func.strftime("%Y-%m-%d %H", column)

    def finished_per_hour(
        self, *, hours: int = 24, flow: str | None = None, now: datetime | None = None
    ) -> list[HourBucket]:
        """Jobs finished in each of the last ``hours`` hours (oldest first), zeros included."""
        end = (now or datetime.now(UTC)).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        start = end - timedelta(hours=hours - 1)
        hour = self._hour(self._engine.dialect.name).label("hour")
        query = (
            sa.select(hour, sa.func.count())
            .where(d365_jobs.c.finished_at.is_not(None), d365_jobs.c.finished_at >= start)
            .group_by(hour)
        )
        if flow is not None:
            query = query.where(d365_jobs.c.flow == flow)
        with self._read() as conn:
            counts = {str(h): int(n) for h, n in _rows(conn, query)}
        buckets = []
        for index in range(hours):
            at = start + timedelta(hours=index)
            buckets.append(HourBucket(at, counts.get(at.strftime("%Y-%m-%d %H"), 0)))
        return buckets

    def job_duration_buckets(
        self, bounds: Sequence[float]
    ) -> dict[tuple[str, str], tuple[list[int], int, float]]:
        """Per (flow, kind) of finished jobs: counts ≤ each bound (cumulative), total, Σ seconds."""
        t = d365_jobs
        if self._engine.dialect.name == "postgresql":
            seconds: sa.ColumnElement[Any] = sa.cast(
                sa.func.extract("epoch", t.c.finished_at - t.c.created_at), sa.Numeric
            )
        else:
            seconds = (sa.func.julianday(t.c.finished_at) - sa.func.julianday(t.c.created_at)) * (
                86400.0
            )
        # Milliseconds: julianday arithmetic is binary floating point, and 120 s must not come
        # out as 120.0000001 and miss the 120 s bucket.
        seconds = sa.func.round(seconds, 3)
        columns = [sa.func.sum(sa.case((seconds <= bound, 1), else_=0)) for bound in bounds]
        query = (
            sa.select(t.c.flow, t.c.kind, sa.func.count(), sa.func.sum(seconds), *columns)
            .where(t.c.finished_at.is_not(None), t.c.state.in_(sorted(TERMINAL_STATES)))
            .group_by(t.c.flow, t.c.kind)
        )
        result: dict[tuple[str, str], tuple[list[int], int, float]] = {}
        with self._read() as conn:
            for row in _rows(conn, query):
                flow, kind, total, total_seconds, *cumulative = row
                result[(flow, kind)] = (
                    [int(n or 0) for n in cumulative],
                    int(total),
                    float(total_seconds or 0.0),
                )
        return result

    def job_ids_of_workflow(self, workflow_id: str) -> list[str]:
        """The jobs of one workflow: its own and its size-split packages (``<id>.p<n>``)."""
        t = d365_jobs
        query = (
            sa.select(t.c.id)
            .where(
                sa.or_(
                    t.c.id == workflow_id,
                    t.c.id.startswith(f"{workflow_id}.p", autoescape=True),
                )
            )
            .order_by(t.c.created_at, t.c.id)
        )
        with self._read() as conn:
            return [r[0] for r in conn.execute(query)]

    def flows(self) -> list[str]:
        """Every flow with a job or an error-queue entry."""
        with self._read() as conn:
            names = {r[0] for r in conn.execute(sa.select(d365_jobs.c.flow).distinct())}
            names |= {r[0] for r in conn.execute(sa.select(error_queue.c.flow).distinct())}
        return sorted(names)


def _rows(conn: sa.Connection, query: sa.Select[Any]) -> list[Any]:
    # Rows of aggregate queries, untyped: their column types are ours to know, not mypy's.
    return list(conn.execute(query).all())


def _aware(value: Any) -> datetime:
    # max() over a UTCDateTime column bypasses the type on SQLite and comes back naive text.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
