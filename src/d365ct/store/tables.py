"""SQLAlchemy Core tables of the d365ct store, beside (never inside) DBOS's own tables.

The Alembic revisions under ``migrations/versions`` create these; a test keeps the two in step.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

# Deterministic constraint names, so later migrations (and SQLite batch mode) can address them.
NAMING_CONVENTION: Final[dict[str, str]] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

JOB_KINDS: Final = ("import", "export")
JOB_STATES: Final = (
    "pending",
    "uploading",
    "triggered",
    "executing",
    "succeeded",
    "partially_succeeded",
    "failed",
    "canceled",
    "stuck",
)
OUTCOMES: Final = ("ok", "failed")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that is timezone-aware UTC in Python on every backend.

    SQLite has no time zone type (SQLAlchemy stores naive text) and PostgreSQL returns values in
    the session's time zone; both are normalised to UTC here so callers can compare freely.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store times must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def json_type() -> sa.types.TypeEngine[Any]:
    """JSON everywhere, JSONB on PostgreSQL; Python None is SQL NULL, not JSON 'null'."""
    return sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


d365_jobs = sa.Table(
    "d365_jobs",
    metadata,
    # The DBOS workflow id: one job per workflow, derived from its source events.
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("flow", sa.String(), nullable=False),
    sa.Column("legal_entity", sa.String(), nullable=False),
    sa.Column("definition_group", sa.String(), nullable=False),
    sa.Column("source_keys", json_type(), nullable=False),
    sa.Column("package_blob", sa.String(), nullable=True),
    # UNIQUE lets any number of NULLs through on SQLite and PostgreSQL alike.
    sa.Column("execution_id", sa.String(), nullable=True, unique=True),
    sa.Column("state", sa.String(), nullable=False),
    sa.Column("d365_status", sa.String(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("result", json_type(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.CheckConstraint(_one_of("kind", JOB_KINDS), name="kind"),
    sa.CheckConstraint(_one_of("state", JOB_STATES), name="state"),
    sa.Index(None, "state"),
    sa.Index(None, "flow", "legal_entity", "created_at"),
)

d365_record_outcomes = sa.Table(
    "d365_record_outcomes",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),  # INTEGER PK = rowid on SQLite
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column(
        "job_id",
        sa.String(),
        sa.ForeignKey("d365_jobs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("entity", sa.String(), nullable=False),
    sa.Column("business_key", sa.String(), nullable=False),
    sa.Column("outcome", sa.String(), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.UniqueConstraint("job_id", "entity", "business_key"),
    sa.CheckConstraint(_one_of("outcome", OUTCOMES), name="outcome"),
)

ERROR_STATUSES: Final = ("open", "replayed", "resolved")

# What the last successful sync wrote per record: delta detection by content hash, plus the
# commercetools id and version it produced (so an unchanged record costs zero calls).
sync_state = sa.Table(
    "sync_state",
    metadata,
    sa.Column("flow", sa.String(), primary_key=True),
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("content_hash", sa.String(), nullable=False),
    sa.Column("ct_id", sa.String(), nullable=True),
    sa.Column("ct_version", sa.Integer(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

# Every record that failed, with what is needed to understand and replay it (SPEC §7).
error_queue = sa.Table(
    "error_queue",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("flow", sa.String(), nullable=False),
    sa.Column("business_key", sa.String(), nullable=False),
    sa.Column("step", sa.String(), nullable=False),
    sa.Column("error", sa.Text(), nullable=False),
    sa.Column("payload", json_type(), nullable=True),
    sa.Column("correlation", json_type(), nullable=True),  # message → workflow → execution → ct
    sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("1")),
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("note", sa.Text(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint(_one_of("status", ERROR_STATUSES), name="status"),
    sa.Index(None, "status", "flow"),
    sa.Index(None, "flow", "business_key"),
)

reconciliation_reports = sa.Table(
    "reconciliation_reports",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("flow", sa.String(), nullable=False),
    sa.Column("legal_entity", sa.String(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("counts", json_type(), nullable=True),
    sa.Index(None, "flow", "started_at"),
)

reconciliation_lines = sa.Table(
    "reconciliation_lines",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column(
        "report_id",
        sa.String(),
        sa.ForeignKey("reconciliation_reports.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("sku", sa.String(), nullable=False),
    sa.Column("warehouse", sa.String(), nullable=True),
    sa.Column("supply_channel", sa.String(), nullable=True),
    sa.Column("d365_quantity", sa.Numeric(), nullable=True),
    sa.Column("ct_before", sa.Numeric(), nullable=True),
    sa.Column("ct_after", sa.Numeric(), nullable=True),
    sa.Column("action", sa.String(), nullable=False),  # created | corrected | failed | …
    sa.Column("detail", sa.Text(), nullable=True),
    sa.Index(None, "report_id"),
)

INTAKE_KINDS: Final = ("message", "change")
INTAKE_STATUSES: Final = ("pending", "processed", "stale", "ignored")

# The durable inbox of commercetools deliveries: the primary key is the dedup (SPEC C7).
intake_messages = sa.Table(
    "intake_messages",
    metadata,
    sa.Column("message_id", sa.String(), primary_key=True),
    sa.Column("kind", sa.String(), nullable=False),  # message | change
    sa.Column("type", sa.String(), nullable=False),
    sa.Column("resource_type", sa.String(), nullable=False),
    sa.Column("resource_id", sa.String(), nullable=False),
    # sequenceNumber (messages) or resource version (changes): the order within a resource
    sa.Column("position", sa.BigInteger(), nullable=False),
    sa.Column("sequence_number", sa.BigInteger(), nullable=True),
    sa.Column("resource_version", sa.BigInteger(), nullable=True),
    sa.Column("payload_included", sa.Boolean(), nullable=False),
    sa.Column("source", sa.String(), nullable=False),  # http | sqs | servicebus | …
    sa.Column("raw", json_type(), nullable=False),  # the event as delivered
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("outcome", sa.Text(), nullable=True),
    sa.Column("deliveries", sa.Integer(), nullable=False, server_default=sa.text("1")),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("claimed_by", sa.String(), nullable=True),
    sa.Column("lease_until", UTCDateTime(), nullable=True),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Column("processed_at", UTCDateTime(), nullable=True),
    sa.CheckConstraint(_one_of("kind", INTAKE_KINDS), name="kind"),
    sa.CheckConstraint(_one_of("status", INTAKE_STATUSES), name="status"),
    sa.Index(None, "status", "type", "received_at"),
    sa.Index(None, "resource_type", "resource_id", "kind", "position"),
)

# Per resource stream, the highest position processed: older deliveries are stale.
intake_streams = sa.Table(
    "intake_streams",
    metadata,
    sa.Column("resource_type", sa.String(), primary_key=True),
    sa.Column("resource_id", sa.String(), primary_key=True),
    sa.Column("kind", sa.String(), primary_key=True),
    sa.Column("applied_position", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)
