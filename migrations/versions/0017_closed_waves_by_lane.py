"""Partial index on waves being labelled, by lane: label routing sums a lane's closed waves

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_NAME = "ix_waves_closed_lane"
_WHERE = "status = 'closed'"  # domain.models.CLOSED_WAVE, as of this revision


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_NAME}")  # an invalid leftover
            op.create_index(_NAME, "waves", ["lane"], postgresql_where=sa.text(_WHERE),
                            postgresql_concurrently=True)
        return
    op.create_index(_NAME, "waves", ["lane"], sqlite_where=sa.text(_WHERE))


def downgrade() -> None:
    op.drop_index(_NAME, table_name="waves")
