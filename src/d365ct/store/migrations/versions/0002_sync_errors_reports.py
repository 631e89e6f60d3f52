"""Create sync_state, error_queue and the reconciliation report tables.

Revision 0002; written by hand, kept equal to tables.py by a test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def _id() -> sa.Column[Any]:
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        autoincrement=True,
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "sync_state",
        sa.Column("flow", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("content_hash", sa.String(), nullable=False),
        sa.Column("ct_id", sa.String(), nullable=True),
        sa.Column("ct_version", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("flow", "key", name="pk_sync_state"),
    )
    op.create_table(
        "error_queue",
        _id(),
        sa.Column("flow", sa.String(), nullable=False),
        sa.Column("business_key", sa.String(), nullable=False),
        sa.Column("step", sa.String(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("payload", _json(), nullable=True),
        sa.Column("correlation", _json(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('open', 'replayed', 'resolved')", name="ck_error_queue_status"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_error_queue"),
    )
    op.create_index("ix_error_queue_status_flow", "error_queue", ["status", "flow"])
    op.create_index("ix_error_queue_flow_business_key", "error_queue", ["flow", "business_key"])
    op.create_table(
        "reconciliation_reports",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("flow", sa.String(), nullable=False),
        sa.Column("legal_entity", sa.String(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("counts", _json(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_reconciliation_reports"),
    )
    op.create_index(
        "ix_reconciliation_reports_flow_started_at",
        "reconciliation_reports",
        ["flow", "started_at"],
    )
    op.create_table(
        "reconciliation_lines",
        _id(),
        sa.Column("report_id", sa.String(), nullable=False),
        sa.Column("sku", sa.String(), nullable=False),
        sa.Column("warehouse", sa.String(), nullable=True),
        sa.Column("supply_channel", sa.String(), nullable=True),
        sa.Column("d365_quantity", sa.Numeric(), nullable=True),
        sa.Column("ct_before", sa.Numeric(), nullable=True),
        sa.Column("ct_after", sa.Numeric(), nullable=True),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["report_id"],
            ["reconciliation_reports.id"],
            name="fk_reconciliation_lines_report_id_reconciliation_reports",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_reconciliation_lines"),
    )
    op.create_index("ix_reconciliation_lines_report_id", "reconciliation_lines", ["report_id"])


def downgrade() -> None:
    op.drop_table("reconciliation_lines")
    op.drop_table("reconciliation_reports")
    op.drop_table("error_queue")
    op.drop_table("sync_state")
