"""waves per carrier service and destination zone with a derived size; bins for pick lists;
the returns lane; routing arms and learned routing models

Revision ID: 0012
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import domain.models

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_TS = domain.models.UTCDateTime(timezone=True)


def _one_open_index(columns: list[str]) -> None:
    op.create_index("uq_waves_one_open", "waves", columns, unique=True,
                    postgresql_where=sa.text("status = 'open'"),
                    sqlite_where=sa.text("status = 'open'"))


def upgrade() -> None:
    op.drop_index("uq_waves_one_open", table_name="waves")
    with op.batch_alter_table("waves") as batch:
        batch.add_column(sa.Column("service", sa.String(64), server_default=sa.text("''"),
                                   nullable=False))
        batch.add_column(sa.Column("zone", sa.String(16), server_default=sa.text("''"),
                                   nullable=False))
        batch.add_column(sa.Column("target_size", sa.Integer(), nullable=True))
    _one_open_index(["warehouse", "carrier", "service", "zone", "lane"])
    with op.batch_alter_table("stock") as batch:
        batch.add_column(sa.Column("bin", sa.String(32), nullable=True))
    with op.batch_alter_table("shipments") as batch:
        batch.add_column(sa.Column("routing_arm", sa.String(16), nullable=True))
        batch.add_column(sa.Column("zone", sa.String(16), nullable=True))
    op.create_index("ix_orders_received_at", "orders", ["received_at"])
    op.create_table(
        "returns",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("order_id", _ID, sa.ForeignKey("orders.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("carrier", sa.String(64), nullable=True),
        sa.Column("label_id", sa.String(128), nullable=True),
        sa.Column("tracking_number", sa.String(128), nullable=True),
        sa.Column("label_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("received_at", _TS, nullable=True),
        sa.Column("condition", sa.String(16), nullable=True),
        sa.Column("refund_usd", sa.Numeric(14, 2), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("order_id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_index("ix_returns_status", "returns", ["status"])
    op.create_table(
        "routing_models",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("trained_at", _TS, nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("model", sa.LargeBinary(), nullable=False),
        sa.Column("metrics", _JSON, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_routing_models_trained_at", "routing_models", ["trained_at"])


def downgrade() -> None:
    op.drop_index("ix_routing_models_trained_at", table_name="routing_models")
    op.drop_table("routing_models")
    op.drop_index("ix_returns_status", table_name="returns")
    op.drop_table("returns")
    op.drop_index("ix_orders_received_at", table_name="orders")
    with op.batch_alter_table("shipments") as batch:
        batch.drop_column("zone")
        batch.drop_column("routing_arm")
    with op.batch_alter_table("stock") as batch:
        batch.drop_column("bin")
    op.drop_index("uq_waves_one_open", table_name="waves")
    with op.batch_alter_table("waves") as batch:
        for column in ("target_size", "zone", "service"):
            batch.drop_column(column)
    _one_open_index(["warehouse", "carrier", "lane"])
