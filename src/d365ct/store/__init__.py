"""Persistent store of d365ct: engine factory, Alembic migrations and the D365 job store.

One URL selects SQLite (embedded default) or PostgreSQL (production); the code is the same.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event

from d365ct.store.jobs import (
    ACTIVE_STATES,
    ALL_STATES,
    OPEN_STATES,
    READ_ONLY_OPTION,
    TERMINAL_STATES,
    ExecutionIdConflictError,
    InvalidTransitionError,
    JobKind,
    JobNotFoundError,
    JobRecord,
    JobState,
    JobStore,
    JobStoreError,
    Outcome,
    RecordOutcome,
)
from d365ct.store.tables import metadata

__all__ = [
    "ACTIVE_STATES",
    "ALL_STATES",
    "OPEN_STATES",
    "TERMINAL_STATES",
    "VERSION_TABLE",
    "ExecutionIdConflictError",
    "InvalidTransitionError",
    "JobKind",
    "JobNotFoundError",
    "JobRecord",
    "JobState",
    "JobStore",
    "JobStoreError",
    "Outcome",
    "RecordOutcome",
    "make_engine",
    "metadata",
    "migrate",
    "normalise_url",
]

# Our own Alembic version table, so we never collide with another Alembic user of the database.
VERSION_TABLE: Final = "d365ct_alembic_version"
# Serialises concurrent `migrate()` calls from several workers starting at once (PostgreSQL).
_MIGRATION_LOCK_ID: Final = 0x0D365C7
_SQLITE_BUSY_TIMEOUT_MS: Final = 30_000


def normalise_url(url: str | sa.URL) -> sa.URL:
    """Parse a store URL; PostgreSQL URLs get the psycopg 3 driver (psycopg2 is not installed).

    Accepted: ``sqlite:///path``, ``postgresql://…``, ``postgres://…``, ``postgresql+psycopg://…``.
    """
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return parsed
    raise ValueError(
        f"unsupported store URL scheme {parsed.drivername!r}: use sqlite:///path or postgresql://…"
    )


def make_engine(url: str | sa.URL, **kwargs: Any) -> sa.Engine:
    """Create an engine for the store.

    SQLite gets WAL (readers do not block the writer), a busy timeout, foreign keys, and
    SQLAlchemy-controlled transactions: writes ``BEGIN IMMEDIATE`` so a read-then-write
    transaction cannot dead-lock on lock upgrade; connections flagged read-only ``BEGIN``.
    """
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        return sa.create_engine(parsed, **kwargs)
    engine = sa.create_engine(parsed, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Stop pysqlite from issuing its own (deferred, SELECT-less) BEGINs; see "begin" below.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            if parsed.database not in (None, "", ":memory:"):
                cursor.execute("PRAGMA journal_mode=WAL")
                # FULL, not WAL's usual NORMAL: a recorded execution id must survive power loss.
                cursor.execute("PRAGMA synchronous=FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY_OPTION, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _ensure_postgres_database(url: sa.URL) -> None:
    """Create the PostgreSQL database if it is missing, as DBOS does for its own."""
    assert url.database
    maintenance = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with maintenance.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
            ).scalar()
            if not exists:
                quoted = conn.dialect.identifier_preparer.quote(url.database)
                conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
    except sa.exc.OperationalError:
        # No access to the maintenance database: the target may exist anyway; connect will tell.
        pass
    finally:
        maintenance.dispose()


def migrate(url: str | sa.URL, revision: str = "head") -> None:
    """Upgrade the store schema to ``revision`` with the migrations packaged in d365ct.

    Needs no alembic.ini: the Alembic Config is built here. Safe to run from several workers
    at once (an advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite).
    """
    from alembic import command
    from alembic.config import Config

    parsed = normalise_url(url)
    if parsed.get_backend_name() == "postgresql":
        _ensure_postgres_database(parsed)
    cfg = Config()
    cfg.set_main_option("script_location", str(files("d365ct.store") / "migrations"))
    engine = make_engine(parsed, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID)))
            # env.py runs on this connection, inside this transaction.
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()
