"""Broker epochs: the Redis epoch key each broker last held, as this database saw it, so that
a fleet's first check on a new broker is not taken for a broker that lost its data

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from domain.models import UTCDateTime

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "broker_epochs",
        sa.Column("broker", sa.String(255), primary_key=True),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("seen_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("broker_epochs")
