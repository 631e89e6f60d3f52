"""The error queue: every record that failed, with its payload, step, error and correlation.

Operators list, replay and resolve entries; a replay re-drives the record through its flow.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from d365ct.store.tables import error_queue

__all__ = ["EntryClosedError", "ErrorEntry", "ErrorQueue"]


@dataclass(frozen=True)
class ErrorEntry:
    id: int
    flow: str
    business_key: str
    step: str
    error: str
    payload: Any
    correlation: dict[str, Any]
    attempts: int
    status: str  # open | replayed | resolved
    note: str | None
    created_at: datetime
    updated_at: datetime


def _entry(row: sa.Row[Any]) -> ErrorEntry:
    m = row._mapping
    return ErrorEntry(
        id=int(m["id"]),
        flow=m["flow"],
        business_key=m["business_key"],
        step=m["step"],
        error=m["error"],
        payload=m["payload"],
        correlation=dict(m["correlation"] or {}),
        attempts=int(m["attempts"]),
        status=m["status"],
        note=m["note"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


class EntryClosedError(Exception):
    """The entry was no longer open: someone else replayed or resolved it first."""

    def __init__(self, entry: ErrorEntry) -> None:
        super().__init__(f"error queue entry {entry.id} is already {entry.status}")
        self.entry = entry


class ErrorQueue:
    def __init__(
        self, engine: sa.Engine, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._engine = engine
        self._now = clock

    def add(
        self,
        *,
        flow: str,
        business_key: str,
        step: str,
        error: str,
        payload: Any = None,
        correlation: Mapping[str, Any] | None = None,
    ) -> ErrorEntry:
        """Record a failure; a record already open for the same key counts one more attempt."""
        now = self._now()
        with self._engine.begin() as conn:
            open_id = conn.execute(
                sa.select(error_queue.c.id).where(
                    error_queue.c.flow == flow,
                    error_queue.c.business_key == business_key,
                    error_queue.c.status == "open",
                )
            ).scalar()
            if open_id is not None:
                conn.execute(
                    sa.update(error_queue)
                    .where(error_queue.c.id == open_id)
                    .values(
                        step=step,
                        error=error,
                        payload=payload,
                        correlation=dict(correlation or {}),
                        attempts=error_queue.c.attempts + 1,
                        updated_at=now,
                    )
                )
                entry_id = int(open_id)
            else:
                entry_id = int(
                    conn.execute(
                        sa.insert(error_queue)
                        .values(
                            flow=flow,
                            business_key=business_key,
                            step=step,
                            error=error,
                            payload=payload,
                            correlation=dict(correlation or {}),
                            attempts=1,
                            status="open",
                            created_at=now,
                            updated_at=now,
                        )
                        .returning(error_queue.c.id)
                    ).scalar_one()
                )
            row = conn.execute(sa.select(error_queue).where(error_queue.c.id == entry_id)).one()
        return _entry(row)

    def add_once(
        self, *, flow: str, business_key: str, step: str, error: str, payload: Any = None
    ) -> bool:
        """Record a condition once, ever: nothing when any entry (open or closed) has this key.
        For notices a person settles once, such as a message type nobody handles."""
        with self._engine.connect() as conn:
            seen = conn.execute(
                sa.select(error_queue.c.id)
                .where(error_queue.c.flow == flow, error_queue.c.business_key == business_key)
                .limit(1)
            ).first()
        if seen is not None:
            return False
        self.add(flow=flow, business_key=business_key, step=step, error=error, payload=payload)
        return True

    def get(self, entry_id: int) -> ErrorEntry | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(error_queue).where(error_queue.c.id == entry_id)).first()
        return None if row is None else _entry(row)

    def list(
        self,
        *,
        status: str | None = "open",
        flow: str | None = None,
        limit: int = 100,
    ) -> builtins.list[ErrorEntry]:
        query = sa.select(error_queue).order_by(error_queue.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(error_queue.c.status == status)
        if flow is not None:
            query = query.where(error_queue.c.flow == flow)
        with self._engine.connect() as conn:
            return [_entry(row) for row in conn.execute(query)]

    def count_open(self) -> int:
        with self._engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(error_queue.c.status == "open")
                ).scalar_one()
            )

    def close(self, entry_id: int, status: str, note: str | None = None) -> ErrorEntry:
        """Mark an open entry replayed (it went through) or resolved (by a person, with a note).

        The first close wins: the UPDATE is conditional on the entry still being open, so a
        resolve racing a replay (or two resolves) cannot overwrite each other. The loser gets
        EntryClosedError carrying the entry as the winner left it; LookupError if it is unknown.
        """
        if status not in ("replayed", "resolved"):
            raise ValueError(f"an entry closes as replayed or resolved, not {status!r}")
        with self._engine.begin() as conn:
            changed = conn.execute(
                sa.update(error_queue)
                .where(error_queue.c.id == entry_id, error_queue.c.status == "open")
                .values(status=status, note=note, updated_at=self._now())
            ).rowcount
            row = conn.execute(sa.select(error_queue).where(error_queue.c.id == entry_id)).first()
        if row is None:
            raise LookupError(f"no error queue entry {entry_id}")
        entry = _entry(row)
        if changed != 1:
            raise EntryClosedError(entry)
        return entry
