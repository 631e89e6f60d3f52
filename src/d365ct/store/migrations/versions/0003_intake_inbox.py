"""Create the intake inbox: intake_messages (dedup by message id) and intake_streams.

Revision 0003; written by hand, kept equal to tables.py by a test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "intake_messages",
        sa.Column("message_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("resource_type", sa.String(), nullable=False),
        sa.Column("resource_id", sa.String(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("sequence_number", sa.BigInteger(), nullable=True),
        sa.Column("resource_version", sa.BigInteger(), nullable=True),
        sa.Column("payload_included", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("raw", _json(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("deliveries", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("claimed_by", sa.String(), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('message', 'change')", name="ck_intake_messages_kind"),
        sa.CheckConstraint(
            "status IN ('pending', 'processed', 'stale', 'ignored')",
            name="ck_intake_messages_status",
        ),
        sa.PrimaryKeyConstraint("message_id", name="pk_intake_messages"),
    )
    op.create_index(
        "ix_intake_messages_status_type_received_at",
        "intake_messages",
        ["status", "type", "received_at"],
    )
    op.create_index(
        "ix_intake_messages_resource_type_resource_id_kind_position",
        "intake_messages",
        ["resource_type", "resource_id", "kind", "position"],
    )
    op.create_table(
        "intake_streams",
        sa.Column("resource_type", sa.String(), nullable=False),
        sa.Column("resource_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("applied_position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "resource_id", "kind", name="pk_intake_streams"),
    )


def downgrade() -> None:
    op.drop_table("intake_streams")
    op.drop_index(
        "ix_intake_messages_resource_type_resource_id_kind_position", table_name="intake_messages"
    )
    op.drop_index("ix_intake_messages_status_type_received_at", table_name="intake_messages")
    op.drop_table("intake_messages")
