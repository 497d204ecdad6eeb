"""The migrations build exactly the schema the models declare; alerts are raised once."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from domain.alerts import open_alerts, raise_alert, resolve_alert
from domain.db import unit_of_work
from domain.models import Base


def test_migrations_match_the_models(pg_database) -> None:
    with pg_database.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff


def test_an_alert_is_raised_once_while_open(db, settings) -> None:
    with unit_of_work(settings) as uow:
        assert raise_alert(uow.session, "sku_frozen", "HOT", "HOT froze")
        assert not raise_alert(uow.session, "sku_frozen", "HOT", "HOT froze again")
    with unit_of_work(settings) as uow:
        assert [a.key for a in open_alerts(uow.session)] == ["HOT"]
        assert resolve_alert(uow.session, "sku_frozen", "HOT")
        assert raise_alert(uow.session, "sku_frozen", "HOT", "HOT froze a second time")
