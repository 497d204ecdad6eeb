"""non-core e-mails claimed before they are handed to SMTP: who claimed a job, and an index on
the jobs whose outcome is still open (claimed, sending, uncertain)

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from domain.models import NONCORE_OPEN_SQL

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("noncore_jobs", sa.Column("claimed_by", sa.String(64)))
    where = sa.text(NONCORE_OPEN_SQL)
    op.create_index("ix_noncore_jobs_open", "noncore_jobs", ["kind", "outcome"],
                    postgresql_where=where, sqlite_where=where)


def downgrade() -> None:
    op.drop_index("ix_noncore_jobs_open", table_name="noncore_jobs")
    op.drop_column("noncore_jobs", "claimed_by")
