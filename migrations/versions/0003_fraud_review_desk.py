"""fraud triple check and review desk: review decisions, customer profiles and keys

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-25 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import domain.models

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC = domain.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "review_decisions",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("order_id", BigId, nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("decided_at", UTC, nullable=False),
        sa.Column("hold_reason", sa.Text(), nullable=True),
        sa.Column("fraud_score", sa.Integer(), nullable=True),
        sa.Column("waited_s", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_review_decisions_order_id", "review_decisions", ["order_id"],
                    unique=False)
    op.create_index("ix_review_decisions_decided_at", "review_decisions", ["decided_at"],
                    unique=False)

    op.create_table(
        "fraud_customer_profiles",
        sa.Column("store", sa.String(length=255), nullable=False),
        sa.Column("customer_id", sa.String(length=255), nullable=False),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("total_usd", sa.Numeric(precision=14, scale=2), nullable=False),
        sa.Column("max_usd", sa.Numeric(precision=14, scale=2), nullable=False),
        sa.Column("first_order_at", UTC, nullable=False),
        sa.Column("last_order_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("store", "customer_id"),
    )

    op.create_table(
        "fraud_customer_keys",
        sa.Column("store", sa.String(length=255), nullable=False),
        sa.Column("customer_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("first_used_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("store", "customer_id", "kind", "key"),
    )


def downgrade() -> None:
    op.drop_table("fraud_customer_keys")
    op.drop_table("fraud_customer_profiles")
    op.drop_index("ix_review_decisions_decided_at", table_name="review_decisions")
    op.drop_index("ix_review_decisions_order_id", table_name="review_decisions")
    op.drop_table("review_decisions")
