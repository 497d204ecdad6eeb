"""Dead letters: messages no worker could complete, kept with their error and their orders.

Revision ID: 0011
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from domain.models import Json, UTCDateTime

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("task", sa.String(255)),
        sa.Column("task_id", sa.String(64)),
        sa.Column("queue", sa.String(64)),
        sa.Column("args", Json),
        sa.Column("raw", sa.Text),
        sa.Column("error_type", sa.String(255), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("retries", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("closed_at", UTCDateTime),
        sa.Column("closed_by", sa.String(255)),
    )
    op.create_index("ix_dead_letters_status_created", "dead_letters", ["status", "created_at"])
    op.create_table(
        "dead_letter_orders",
        sa.Column("dead_letter_id", BigId,
                  sa.ForeignKey("dead_letters.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("order_id", BigId, sa.ForeignKey("orders.id", ondelete="CASCADE"),
                  primary_key=True),
    )
    op.create_index("ix_dead_letter_orders_order_id", "dead_letter_orders", ["order_id"])


def downgrade() -> None:
    op.drop_table("dead_letter_orders")
    op.drop_table("dead_letters")
