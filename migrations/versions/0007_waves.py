"""Call a pick wave a wave: table ``batches`` -> ``waves``, ``batch_id`` -> ``wave_id``, and the
order state ``batched`` -> ``in_wave`` (history included).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# (old, new) names; SQLite (3.25+) and PostgreSQL share the RENAME syntax for tables and columns.
_TABLE = ("batches", "waves")
_COLUMNS = (("orders", "batch_id", "wave_id"), ("shipments", "batch_id", "wave_id"))
_STATE = ("batched", "in_wave")
# (old name, new name, UNIQUE, old target, new target, WHERE)
_INDEXES = (
    ("uq_batches_one_open", "uq_waves_one_open", True, "batches (warehouse, carrier, lane)",
     "waves (warehouse, carrier, lane)", "status = 'open'"),
    ("ix_orders_batch_id", "ix_orders_wave_id", False, "orders (batch_id)", "orders (wave_id)",
     None),
    ("ix_shipments_batch_id", "ix_shipments_wave_id", False, "shipments (batch_id)",
     "shipments (wave_id)", None),
)
# PostgreSQL names of the other objects that carry the old name.
_PG_OBJECTS = (("INDEX", "batches_pkey", "waves_pkey"),
               ("SEQUENCE", "batches_id_seq", "waves_id_seq"))
_PG_CONSTRAINTS = (("orders", "orders_batch_id_fkey", "orders_wave_id_fkey"),
                   ("shipments", "shipments_batch_id_fkey", "shipments_wave_id_fkey"))


def _rename(forward: bool) -> None:
    def pick(old: str, new: str) -> tuple[str, str]:
        return (old, new) if forward else (new, old)

    op.execute("ALTER TABLE {} RENAME TO {}".format(*pick(*_TABLE)))
    for table, old, new in _COLUMNS:
        op.execute("ALTER TABLE {} RENAME COLUMN {} TO {}".format(table, *pick(old, new)))
    if op.get_bind().dialect.name == "postgresql":
        for old, new, *_ in _INDEXES:
            op.execute("ALTER INDEX {} RENAME TO {}".format(*pick(old, new)))
        for kind, old, new in _PG_OBJECTS:
            op.execute("ALTER {} IF EXISTS {} RENAME TO {}".format(kind, *pick(old, new)))
        for table, old, new in _PG_CONSTRAINTS:
            op.execute("ALTER TABLE {} RENAME CONSTRAINT {} TO {}".format(table, *pick(old, new)))
    else:
        # SQLite cannot rename an index: drop it and build it again under the other name.
        for old, new, unique, old_on, new_on, where in _INDEXES:
            drop, name = pick(old, new)
            on = new_on if forward else old_on
            op.execute(f"DROP INDEX IF EXISTS {drop}")
            op.execute(f"CREATE {'UNIQUE ' if unique else ''}INDEX {name} ON {on}"
                       + (f" WHERE {where}" if where else ""))
    old_state, new_state = pick(*_STATE)
    for table, column in (("orders", "state"), ("order_events", "from_state"),
                          ("order_events", "to_state")):
        op.execute(f"UPDATE {table} SET {column} = '{new_state}' WHERE {column} = '{old_state}'")


def upgrade() -> None:
    _rename(forward=True)


def downgrade() -> None:
    _rename(forward=False)
