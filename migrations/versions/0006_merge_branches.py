"""Merge the intake, fraud, inventory and carrier branches into one head.

Revision ID: 0006
Revises: 0002, 0003, 0004, 0005
"""

from __future__ import annotations

revision = "0006"
down_revision = ("0002", "0003", "0004", "0005")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # a merge point: each branch's own revision holds its changes


def downgrade() -> None:
    pass
