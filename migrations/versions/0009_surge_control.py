"""surge control: fast-lane flag per order, non-core job ledger, coupon ledger

Revision ID: 0009
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import domain.models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("fast_lane", sa.Boolean(), server_default=sa.text("false"),
                                   nullable=False))
    op.create_table(
        "noncore_jobs",
        sa.Column("order_id", _ID, sa.ForeignKey("orders.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("done_at", domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("replayed", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("order_id", "kind"),
    )
    op.create_index("ix_noncore_jobs_done_at", "noncore_jobs", ["done_at"])
    op.create_table(
        "coupons",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("order_id", _ID, sa.ForeignKey("orders.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("amount", sa.Numeric(10, 2), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("issued_at", domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("order_id", "reason", name="uq_coupons_order_reason"),
        sa.UniqueConstraint("code", name="uq_coupons_code"),
    )


def downgrade() -> None:
    op.drop_table("coupons")
    op.drop_index("ix_noncore_jobs_done_at", table_name="noncore_jobs")
    op.drop_table("noncore_jobs")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("fast_lane")
