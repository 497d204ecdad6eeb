"""carriers: label attempts and deferral per wave, rate shopping and manual-check flags per
shipment, rejected tracking pushes

Revision ID: 0005
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import domain.models

revision = "0005"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("label_attempts", sa.Integer(), server_default=sa.text("0"),
                                   nullable=False))
        batch.add_column(sa.Column("next_label_attempt_at",
                                   domain.models.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("label_error", sa.Text(), nullable=True))
    with op.batch_alter_table("shipments") as batch:
        batch.add_column(sa.Column("label_attempts", sa.Integer(), server_default=sa.text("0"),
                                   nullable=False))
        batch.add_column(sa.Column("promise_days", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("est_delivery_days", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("flagged_at", domain.models.UTCDateTime(timezone=True),
                                   nullable=True))
        batch.add_column(sa.Column("flag_reason", sa.Text(), nullable=True))
    op.create_table(
        "rejected_tracking_pushes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                  nullable=False),
        sa.Column("received_at", domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("errors", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()),
                                                   "postgresql"), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rejected_tracking_pushes_received_at", "rejected_tracking_pushes",
                    ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_rejected_tracking_pushes_received_at",
                  table_name="rejected_tracking_pushes")
    op.drop_table("rejected_tracking_pushes")
    with op.batch_alter_table("shipments") as batch:
        for column in ("flag_reason", "flagged_at", "est_delivery_days", "promise_days",
                       "label_attempts"):
            batch.drop_column(column)
    with op.batch_alter_table("batches") as batch:
        for column in ("label_error", "next_label_attempt_at", "label_attempts"):
            batch.drop_column(column)
