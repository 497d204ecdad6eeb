"""Alembic migrations (script location for ``domain.migrate``)."""
