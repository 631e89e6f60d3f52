"""What the last successful sync wrote per record (content hash, commercetools id and version).

Delta detection reads it in batches, so an unchanged record costs no call to commercetools.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from d365ct.store.tables import sync_state

__all__ = ["SyncRecord", "SyncStateStore"]

# Bound parameters per statement: SQLite allows 32,766 (3.32+), PostgreSQL 65,535; six columns
# per upserted row and one per looked-up key stay far below either.
_READ_BATCH = 900
_WRITE_BATCH = 500


class SyncRecord(NamedTuple):
    content_hash: str
    ct_id: str | None
    ct_version: int | None


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _record(row: sa.Row[Any]) -> SyncRecord:
    version = row.ct_version
    return SyncRecord(
        str(row.content_hash),
        None if row.ct_id is None else str(row.ct_id),
        None if version is None else int(version),
    )


class SyncStateStore:
    """sync_state rows of one flow ('catalog', 'prices', …), keyed by the flow's business key."""

    def __init__(
        self, engine: sa.Engine, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._engine = engine
        self._now = clock

    def get_many(self, flow: str, keys: Iterable[str]) -> dict[str, SyncRecord]:
        """key → (content_hash, ct_id, ct_version) for the keys that have a row."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, SyncRecord] = {}
        columns = (
            sync_state.c.key,
            sync_state.c.content_hash,
            sync_state.c.ct_id,
            sync_state.c.ct_version,
        )
        with self._engine.connect() as conn:
            for batch in _batches(wanted, _READ_BATCH):
                query = sa.select(*columns).where(
                    sync_state.c.flow == flow, sync_state.c.key.in_(batch)
                )
                for row in conn.execute(query):
                    found[str(row.key)] = _record(row)
        return found

    def items(self, flow: str, prefix: str = "") -> dict[str, SyncRecord]:
        """Every row of the flow whose key starts with `prefix` (e.g. one legal entity's)."""
        query = sa.select(
            sync_state.c.key, sync_state.c.content_hash, sync_state.c.ct_id, sync_state.c.ct_version
        ).where(sync_state.c.flow == flow)
        if prefix:
            # LIKE with % and _ escaped; a key range would depend on the database's collation
            query = query.where(sync_state.c.key.startswith(prefix, autoescape=True))
        with self._engine.connect() as conn:
            return {
                str(row.key): _record(row)
                for row in conn.execute(query)
                if str(row.key).startswith(prefix)
            }

    def put_many(self, flow: str, items: Iterable[tuple[str, str, str | None, int | None]]) -> int:
        """Insert or replace (key, content_hash, ct_id, ct_version) rows, in batched statements."""
        now = self._now()
        rows = {
            key: {
                "flow": flow,
                "key": key,
                "content_hash": digest,
                "ct_id": ct_id,
                "ct_version": version,
                "updated_at": now,
            }
            for key, digest, ct_id, version in items
        }
        if not rows:
            return 0
        values = list(rows.values())
        with self._engine.begin() as conn:
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            for batch in _batches(values, _WRITE_BATCH):
                statement = insert(sync_state).values(list(batch))
                statement = statement.on_conflict_do_update(
                    index_elements=[sync_state.c.flow, sync_state.c.key],
                    set_={
                        "content_hash": statement.excluded.content_hash,
                        "ct_id": statement.excluded.ct_id,
                        "ct_version": statement.excluded.ct_version,
                        "updated_at": statement.excluded.updated_at,
                    },
                )
                conn.execute(statement)
        return len(values)

    def delete(self, flow: str, keys: Iterable[str]) -> int:
        """Forget records (their commercetools resource is gone); returns the rows removed."""
        wanted = list(dict.fromkeys(keys))
        removed = 0
        with self._engine.begin() as conn:
            for batch in _batches(wanted, _READ_BATCH):
                result = conn.execute(
                    sa.delete(sync_state).where(
                        sync_state.c.flow == flow, sync_state.c.key.in_(batch)
                    )
                )
                removed += result.rowcount
        return removed

    def count(self, flow: str) -> int:
        with self._engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(sync_state.c.flow == flow)
                ).scalar_one()
            )
