"""storefront intake: webhook inbox, store notifications, order source_updated_at

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import domain.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
UTC = domain.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("source_updated_at", UTC, nullable=True))

    op.create_table(
        "webhook_inbox",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("store", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("topic", sa.String(length=64), nullable=False),
        sa.Column("received_at", UTC, nullable=False),
        sa.Column("triggered_at", UTC, nullable=True),
        sa.Column("source_order_id", sa.String(length=255), nullable=True),
        sa.Column("order_id", BigId, nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("detail", Json, nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source", "store", "event_id", name="uq_webhook_inbox_event"),
    )
    op.create_index("ix_webhook_inbox_received_at", "webhook_inbox", ["received_at"],
                    unique=False)
    op.create_index("ix_webhook_inbox_source_order", "webhook_inbox",
                    ["source", "store", "source_order_id"], unique=False)

    op.create_table(
        "store_notifications",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("order_id", BigId, nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("claimed_at", UTC, nullable=True),
        sa.Column("sent_at", UTC, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("remote_id", sa.String(length=128), nullable=True),
        sa.Column("payload", Json, nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("order_id", "event", name="uq_store_notifications_event"),
    )
    op.create_index("ix_store_notifications_status_created", "store_notifications",
                    ["status", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_store_notifications_status_created", table_name="store_notifications")
    op.drop_table("store_notifications")
    op.drop_index("ix_webhook_inbox_source_order", table_name="webhook_inbox")
    op.drop_index("ix_webhook_inbox_received_at", table_name="webhook_inbox")
    op.drop_table("webhook_inbox")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("source_updated_at")
