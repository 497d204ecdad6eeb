"""Partial indexes on order_events for arrivals and labels: the surge tick's and the wave
planner's window counts read one live entry per counted event

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# The same predicates as domain.models.ARRIVAL_EVENT and LABEL_EVENT (a migration keeps its
# own copy: the model may change after it).
_INDEXES = {
    "ix_order_events_arrivals": "stage = 'intake' AND from_state IS NULL",
    "ix_order_events_labelled": "to_state = 'labelled'",
}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # CONCURRENTLY: a running store keeps writing events while a long log is indexed.
        with op.get_context().autocommit_block():
            for name, where in _INDEXES.items():
                op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")  # an invalid leftover
                op.create_index(name, "order_events", ["at"], postgresql_where=sa.text(where),
                                postgresql_concurrently=True)
        return
    for name, where in _INDEXES.items():
        op.create_index(name, "order_events", ["at"], sqlite_where=sa.text(where))


def downgrade() -> None:
    for name in _INDEXES:
        op.drop_index(name, table_name="order_events")
