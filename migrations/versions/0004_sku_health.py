"""inventory: SKU health window and freezes, holds per frozen SKU, restockable reservations

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-25 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import domain.models

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC = domain.models.UTCDateTime(timezone=True)
LIVE_OLD = "status <> 'released'"
LIVE_NEW = "status IN ('active', 'consumed')"


def upgrade() -> None:
    op.create_table(
        "sku_health",
        sa.Column("sku", sa.String(length=128), nullable=False),
        sa.Column("recent", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("attempts", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("failures", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("frozen", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("frozen_at", UTC, nullable=True),
        sa.Column("frozen_reason", sa.Text(), nullable=True),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("sku"),
    )
    op.create_table(
        "sku_holds",
        sa.Column("order_id", BigId, nullable=False),
        sa.Column("sku", sa.String(length=128), nullable=False),
        sa.Column("held_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("order_id", "sku"),
    )
    op.create_index(op.f("ix_sku_holds_sku"), "sku_holds", ["sku"], unique=False)
    # A restocked reservation (voided label, return) no longer blocks reserving the line again.
    op.drop_index("uq_reservations_live_line", table_name="reservations",
                  postgresql_where=sa.text(LIVE_OLD), sqlite_where=sa.text(LIVE_OLD))
    op.create_index("uq_reservations_live_line", "reservations", ["order_line_id"], unique=True,
                    postgresql_where=sa.text(LIVE_NEW), sqlite_where=sa.text(LIVE_NEW))


def downgrade() -> None:
    op.drop_index("uq_reservations_live_line", table_name="reservations",
                  postgresql_where=sa.text(LIVE_NEW), sqlite_where=sa.text(LIVE_NEW))
    op.create_index("uq_reservations_live_line", "reservations", ["order_line_id"], unique=True,
                    postgresql_where=sa.text(LIVE_OLD), sqlite_where=sa.text(LIVE_OLD))
    op.drop_index(op.f("ix_sku_holds_sku"), table_name="sku_holds")
    op.drop_table("sku_holds")
    op.drop_table("sku_health")
