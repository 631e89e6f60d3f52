"""Create d365_jobs and d365_record_outcomes: the D365 job store (SPEC C12).

Revision 0001, the first; written by hand, kept equal to tables.py by a test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies, not imports from tables.py: a revision must not change when the app does.
_STATES = (
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


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "d365_jobs",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("flow", sa.String(), nullable=False),
        sa.Column("legal_entity", sa.String(), nullable=False),
        sa.Column("definition_group", sa.String(), nullable=False),
        sa.Column("source_keys", _json(), nullable=False),
        sa.Column("package_blob", sa.String(), nullable=True),
        sa.Column("execution_id", sa.String(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("d365_status", sa.String(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("result", _json(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(_one_of("kind", ("import", "export")), name="ck_d365_jobs_kind"),
        sa.CheckConstraint(_one_of("state", _STATES), name="ck_d365_jobs_state"),
        sa.PrimaryKeyConstraint("id", name="pk_d365_jobs"),
        sa.UniqueConstraint("execution_id", name="uq_d365_jobs_execution_id"),
    )
    op.create_index("ix_d365_jobs_state", "d365_jobs", ["state"])
    op.create_index(
        "ix_d365_jobs_flow_legal_entity_created_at",
        "d365_jobs",
        ["flow", "legal_entity", "created_at"],
    )
    op.create_table(
        "d365_record_outcomes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("entity", sa.String(), nullable=False),
        sa.Column("business_key", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            _one_of("outcome", ("ok", "failed")), name="ck_d365_record_outcomes_outcome"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["d365_jobs.id"],
            name="fk_d365_record_outcomes_job_id_d365_jobs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_d365_record_outcomes"),
        sa.UniqueConstraint(
            "job_id",
            "entity",
            "business_key",
            name="uq_d365_record_outcomes_job_id_entity_business_key",
        ),
    )


def downgrade() -> None:
    op.drop_table("d365_record_outcomes")
    op.drop_index("ix_d365_jobs_flow_legal_entity_created_at", table_name="d365_jobs")
    op.drop_index("ix_d365_jobs_state", table_name="d365_jobs")
    op.drop_table("d365_jobs")
