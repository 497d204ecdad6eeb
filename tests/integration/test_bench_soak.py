"""``orderfleet bench soak`` on a server with autovacuum off: it vacuums its own tables."""

from __future__ import annotations

from sqlalchemy import text

from benchmarks.pipeline import HOT_TABLES, Vacuumer


def _vacuum_counts(db) -> dict[str, int]:
    with db.connect() as conn:
        return {name: int(n) for name, n in conn.execute(text(
            "SELECT relname, vacuum_count FROM pg_stat_user_tables "
            "WHERE relname = ANY(:names)"), {"names": list(HOT_TABLES)})}


def test_the_vacuumer_vacuums_every_hot_table_and_runs_only_where_autovacuum_is_off(
        db, settings) -> None:
    # Given the test database (its own; the soak's would be the bench database)
    before = _vacuum_counts(db)
    assert set(before) == set(HOT_TABLES)
    vacuum = Vacuumer(settings, interval_s=3600.0)
    with vacuum:
        # Then its thread runs only for a server that does not vacuum on its own
        assert vacuum.autovacuum in {"on", "off"}
        assert vacuum._thread.is_alive() == (vacuum.autovacuum == "off")
        # When it vacuums
        vacuum.vacuum()
    # Then every hot table was vacuumed once more, and the run is on record
    after = _vacuum_counts(db)
    assert all(after[name] == before[name] + 1 for name in HOT_TABLES), (before, after)
    assert len(vacuum.runs) == 1 and vacuum.runs[0]["s"] >= 0
