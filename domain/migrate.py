"""Schema migrations (Alembic), run by ``orderfleet db upgrade`` and at fleet start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from config.settings import Settings, get_settings

SCRIPT_LOCATION = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(settings: Settings | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.set_main_option("sqlalchemy.url",
                        (settings or get_settings()).database_url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


def pending_revisions(settings: Settings | None = None) -> list[str]:
    """Migrations not yet applied to the configured database (empty: the schema is current)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from domain.db import get_engine

    script = ScriptDirectory.from_config(alembic_config(settings))
    with get_engine(settings).connect() as conn:
        applied = set(MigrationContext.configure(conn).get_current_heads())
    heads = set(script.get_heads())
    if heads <= applied:
        return []
    # Every revision between what the database has and the heads.
    return [rev.revision for rev in script.iterate_revisions(tuple(heads), tuple(applied) or
                                                             "base")]
