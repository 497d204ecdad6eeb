"""orders.payload stored out of line: a stage's UPDATE copies a short row, not the order JSON

Every stage moves an order with an UPDATE, and PostgreSQL writes a whole new row version (and
its WAL) each time. The JSON (1.5 KB on average) fits inline, so it was copied four times per
order though no stage changes it. Stored out of line (TOAST, uncompressed: no compression CPU
on a column read by two stages), a row version carries a pointer to it instead.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE orders ALTER COLUMN payload SET STORAGE EXTERNAL")
    # Rows longer than this move their wide columns out of line (the default is ~2 KB).
    op.execute("ALTER TABLE orders SET (toast_tuple_target = 128)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE orders RESET (toast_tuple_target)")
    op.execute("ALTER TABLE orders ALTER COLUMN payload SET STORAGE EXTENDED")
