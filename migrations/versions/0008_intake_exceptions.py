"""intake exceptions: rejected_orders becomes the exceptions desk (status, corrections, replay)

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import domain.models

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rejected_orders") as batch:
        batch.add_column(sa.Column("status", sa.String(16), server_default=sa.text("'open'"),
                                   nullable=False))
        batch.add_column(sa.Column("topic", sa.String(64), nullable=True))
        batch.add_column(sa.Column("http_status", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("corrections", sa.JSON().with_variant(
            postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True))
        batch.add_column(sa.Column("order_id", sa.BigInteger().with_variant(sa.Integer(),
                                                                            "sqlite"),
                                   nullable=True))
        batch.add_column(sa.Column("resolved_at", domain.models.UTCDateTime(timezone=True),
                                   nullable=True))
        batch.add_column(sa.Column("resolved_by", sa.String(255), nullable=True))
        batch.add_column(sa.Column("resolution", sa.Text(), nullable=True))
    op.create_index("ix_rejected_orders_status", "rejected_orders", ["status"])


def downgrade() -> None:
    op.drop_index("ix_rejected_orders_status", table_name="rejected_orders")
    with op.batch_alter_table("rejected_orders") as batch:
        for column in ("resolution", "resolved_by", "resolved_at", "order_id", "corrections",
                       "http_status", "topic", "status"):
            batch.drop_column(column)
