"""The simulator's entity store: one SQLite table per entity set, on disk so memory stays flat.

String columns compare case-insensitively (NOCASE), as D365's SQL Server collation does.
"""

from __future__ import annotations

import base64
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from d365sim.entities import DATETIME, DECIMAL, ENTITY_SETS, INT32, INT64, EntitySet, Field

Row = dict[str, Any]

EMPTY_DATE = datetime(1900, 1, 1, tzinfo=UTC)  # how D365 represents "no date"

# Extra columns the store keeps per row: a RecId (row identity) and RecVersion (for ETags).
_REC_ID = "__RecId"
_REC_VERSION = "__RecVersion"


def _column_type(field: Field) -> str:
    if field.type == DECIMAL:
        return "REAL"
    if field.type in (INT32, INT64):
        return "INTEGER"
    return "TEXT COLLATE NOCASE"


def to_db(field: Field, value: object) -> object:
    """Python value → SQLite value (see odata_query for the storage contract)."""
    if value is None:
        return "" if field.type not in (DECIMAL, INT32, INT64, DATETIME) else None
    if field.type == DECIMAL:
        return float(value)  # type: ignore[arg-type]
    if field.type in (INT32, INT64):
        return int(value)  # type: ignore[call-overload]
    if field.type == DATETIME:
        if isinstance(value, datetime):
            return format_datetime(value)
        return str(value)
    return str(value)


def from_db(field: Field, value: object) -> object:
    if value is None:
        return EMPTY_DATE if field.type == DATETIME else None
    if field.type == DECIMAL:
        # repr of the stored double is the shortest decimal that round-trips, e.g. 129.99
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    if field.type == DATETIME:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return value


def format_datetime(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def etag(rec_id: int, rec_version: int) -> str:
    """An opaque weak ETag in the shape D365 uses (base64 of a quoted record version)."""
    token = base64.b64encode(f"'1,{rec_id};{rec_version}'".encode()).decode()
    return f'W/"{token}"'


class StoreError(Exception):
    """A write the store refused, e.g. a duplicate key on insert."""


class EntityStore:
    """Thread-safe access to the entity tables; one SQLite connection per thread."""

    def __init__(self, path: Path | None = None, entities: Sequence[EntitySet] = ENTITY_SETS):
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="d365sim-")
            path = Path(self._tmpdir.name) / "entities.sqlite"
        self.path = path
        self.entities = {e.name: e for e in entities}
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._create_tables()

    # -- connections ---------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("PRAGMA cache_size=-16000")
            self._local.conn = conn
            self._connections.append(conn)
        return conn

    def close(self) -> None:
        for conn in self._connections:
            conn.close()
        self._connections.clear()
        self._local = threading.local()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def _create_tables(self) -> None:
        conn = self._conn()
        with self._write_lock, conn:
            for entity in self.entities.values():
                cols = ", ".join(f'"{f.name}" {_column_type(f)}' for f in entity.fields)
                conn.execute(
                    f'CREATE TABLE IF NOT EXISTS "{entity.name}" ('
                    f'"{_REC_ID}" INTEGER PRIMARY KEY, "{_REC_VERSION}" INTEGER NOT NULL, {cols})'
                )
                key_cols = ", ".join(f'"{k}"' for k in entity.keys)
                conn.execute(
                    f'CREATE UNIQUE INDEX IF NOT EXISTS "{entity.name}_key" '
                    f'ON "{entity.name}" ({key_cols})'
                )
                if entity.row_keys != entity.keys:
                    row_cols = ", ".join(f'"{k}"' for k in entity.row_keys)
                    conn.execute(
                        f'CREATE INDEX IF NOT EXISTS "{entity.name}_rowkey" '
                        f'ON "{entity.name}" ({row_cols})'
                    )

    def reset(self) -> None:
        conn = self._conn()
        with self._write_lock, conn:
            for entity in self.entities.values():
                conn.execute(f'DELETE FROM "{entity.name}"')

    # -- writes --------------------------------------------------------------------------------
    def _db_row(self, entity: EntitySet, row: Mapping[str, object]) -> list[object]:
        return [to_db(f, row.get(f.name)) for f in entity.fields]

    def insert_many(self, entity: EntitySet, rows: Iterable[Mapping[str, object]]) -> int:
        """Bulk insert (replacing rows with the same key); returns the number of rows written."""
        cols = ", ".join(f'"{f.name}"' for f in entity.fields)
        marks = ", ".join("?" for _ in entity.fields)
        sql = (
            f'INSERT OR REPLACE INTO "{entity.name}" ("{_REC_VERSION}", {cols}) VALUES (1, {marks})'
        )
        count = 0
        conn = self._conn()
        batch: list[list[object]] = []
        with self._write_lock:
            for row in rows:
                batch.append(self._db_row(entity, row))
                if len(batch) >= 5000:
                    with conn:
                        conn.executemany(sql, batch)
                    count += len(batch)
                    batch.clear()
            if batch:
                with conn:
                    conn.executemany(sql, batch)
                count += len(batch)
        return count

    def upsert(self, entity: EntitySet, row: Mapping[str, object], by: Sequence[str]) -> bool:
        """Insert or update the row identified by the fields in `by`; True when created.

        Fields absent from `row` keep their stored value on update (a partial write, like PATCH).
        """
        conn = self._conn()
        where = " AND ".join(f'"{k}" = ?' for k in by)
        key_values = [to_db(entity.field_by_name[k], row.get(k)) for k in by]
        with self._write_lock, conn:
            found = conn.execute(
                f'SELECT "{_REC_ID}" FROM "{entity.name}" WHERE {where}', key_values
            ).fetchone()
            if found is None:
                cols = ", ".join(f'"{f.name}"' for f in entity.fields)
                marks = ", ".join("?" for _ in entity.fields)
                try:
                    conn.execute(
                        f'INSERT INTO "{entity.name}" ("{_REC_VERSION}", {cols}) '
                        f"VALUES (1, {marks})",
                        self._db_row(entity, row),
                    )
                except sqlite3.IntegrityError as exc:
                    raise StoreError(f"The record already exists: {exc}") from exc
                return True
            updates = [f for f in entity.fields if f.name in row]
            if updates:
                assignments = ", ".join(f'"{f.name}" = ?' for f in updates)
                conn.execute(
                    f'UPDATE "{entity.name}" SET {assignments}, '
                    f'"{_REC_VERSION}" = "{_REC_VERSION}" + 1 WHERE "{_REC_ID}" = ?',
                    [*(to_db(f, row[f.name]) for f in updates), found[0]],
                )
            return False

    def delete(self, entity: EntitySet, key: Mapping[str, object]) -> bool:
        conn = self._conn()
        where = " AND ".join(f'"{k}" = ?' for k in entity.keys)
        values = [to_db(entity.field_by_name[k], key[k]) for k in entity.keys]
        with self._write_lock, conn:
            cursor = conn.execute(f'DELETE FROM "{entity.name}" WHERE {where}', values)
        return cursor.rowcount > 0

    # -- reads ---------------------------------------------------------------------------------
    def _decode(
        self, entity: EntitySet, fields: Sequence[Field], raw: Sequence[object]
    ) -> tuple[Row, str]:
        row = {f.name: from_db(f, value) for f, value in zip(fields, raw[2:], strict=True)}
        return row, etag(int(raw[0]), int(raw[1]))  # type: ignore[call-overload]

    def get(self, entity: EntitySet, key: Mapping[str, object]) -> tuple[Row, str] | None:
        """The row with this OData key and its ETag, or None."""
        where = " AND ".join(f'"{k}" = ?' for k in entity.keys)
        values = [to_db(entity.field_by_name[k], key[k]) for k in entity.keys]
        cols = ", ".join(f'"{f.name}"' for f in entity.fields)
        raw = (
            self._conn()
            .execute(
                f'SELECT "{_REC_ID}", "{_REC_VERSION}", {cols} FROM "{entity.name}" WHERE {where}',
                values,
            )
            .fetchone()
        )
        return None if raw is None else self._decode(entity, entity.fields, raw)

    def find(self, entity: EntitySet, by: Mapping[str, object]) -> Row | None:
        """The first row whose fields equal `by` (any fields, not only the key)."""
        rows = self.query(
            entity,
            where=" AND ".join(f'"{k}" = ?' for k in by),
            params=[to_db(entity.field_by_name[k], v) for k, v in by.items()],
            top=1,
        )
        for row, _ in rows:
            return row
        return None

    def query(
        self,
        entity: EntitySet,
        *,
        where: str = "",
        params: Sequence[object] = (),
        order_by: Sequence[tuple[str, bool]] = (),
        skip: int = 0,
        top: int | None = None,
        select: Sequence[str] | None = None,
    ) -> Iterator[tuple[Row, str]]:
        """Stream matching rows with their ETags; ordered by `order_by`, then by the key."""
        fields = (
            entity.fields
            if select is None
            else tuple(entity.field_by_name[name] for name in select)
        )
        cols = ", ".join(f'"{f.name}"' for f in fields)
        seen = {name for name, _ in order_by}
        ordering = [f'"{name}" {"DESC" if desc else "ASC"}' for name, desc in order_by]
        ordering += [f'"{k}" ASC' for k in entity.keys if k not in seen]
        sql = f'SELECT "{_REC_ID}", "{_REC_VERSION}", {cols} FROM "{entity.name}"'
        if where:
            sql += f" WHERE {where}"
        sql += " ORDER BY " + ", ".join(ordering)
        sql += f" LIMIT {int(top) if top is not None else -1} OFFSET {int(skip)}"
        cursor = self._conn().execute(sql, list(params))
        try:
            while chunk := cursor.fetchmany(1000):
                for raw in chunk:
                    yield self._decode(entity, fields, raw)
        finally:
            cursor.close()

    def count(self, entity: EntitySet, *, where: str = "", params: Sequence[object] = ()) -> int:
        sql = f'SELECT COUNT(*) FROM "{entity.name}"'
        if where:
            sql += f" WHERE {where}"
        return int(self._conn().execute(sql, list(params)).fetchone()[0])

    def counts(self) -> dict[str, int]:
        return {name: self.count(entity) for name, entity in self.entities.items()}
