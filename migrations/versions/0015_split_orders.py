"""orders.parent_id and orders.part_no: an order no single warehouse can serve is split into
one part (a child order) per warehouse

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("parent_id", _ID, nullable=True))
        batch.add_column(sa.Column("part_no", sa.Integer(), nullable=True))
        batch.create_foreign_key("orders_parent_id_fkey", "orders", ["parent_id"], ["id"])
        batch.create_index("ix_orders_parent_id", ["parent_id"])


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_index("ix_orders_parent_id")
        batch.drop_constraint("orders_parent_id_fkey", type_="foreignkey")
        batch.drop_column("part_no")
        batch.drop_column("parent_id")
