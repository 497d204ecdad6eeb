"""Engine, sessions and the unit of work that sends follow-up tasks only after commit."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings, get_settings

_engines: dict[str, Engine] = {}
_engine_pid: int | None = None


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, pool_size=5)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _rec: Any) -> None:
            # Let SQLAlchemy emit BEGIN itself (below) instead of pysqlite's deferred BEGIN.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            # SQLite has no row locks: take the write lock at BEGIN so two workers' read-then-
            # write transactions serialise instead of failing with "database is locked".
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)


def get_engine(settings: Settings | None = None) -> Engine:
    """One engine per process and URL; a forked child (Celery prefork) builds its own."""
    global _engine_pid
    url = (settings or get_settings()).database_url
    if _engine_pid != os.getpid():
        _engines.clear()
        _engine_pid = os.getpid()
    if url not in _engines:
        _engines[url] = make_engine(url)
    return _engines[url]


def dispose_engines() -> None:
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


class UnitOfWork:
    """A transaction plus callbacks that run only once it has committed.

    Stages enqueue the next stage through ``after_commit`` so that no task is ever sent for
    a state change that rolled back (pypi/warehouse does the same).
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._after: list[Callable[[], Any]] = []

    def after_commit(self, fn: Callable[[], Any]) -> None:
        self._after.append(fn)

    def run_after_commit(self) -> None:
        callbacks, self._after = self._after, []
        for fn in callbacks:
            fn()


@contextmanager
def unit_of_work(settings: Settings | None = None) -> Iterator[UnitOfWork]:
    engine = get_engine(settings)
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session:
        uow = UnitOfWork(session)
        with session.begin():
            yield uow
        uow.run_after_commit()


def insert_ignoring_conflicts(session: Session, table: Any, rows: list[dict[str, Any]],
                              conflict_cols: list[str], returning: Any = None) -> list[Any]:
    """INSERT ... ON CONFLICT DO NOTHING on PostgreSQL or SQLite; returns RETURNING rows.

    Rows go as one executemany (SQLAlchemy's "insertmanyvalues" batching): one cached
    statement, where a multi-row VALUES would be compiled anew for every batch size.
    """
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    target = getattr(table, "__table__", table)
    ins = postgresql.insert(target) if dialect == "postgresql" else sqlite.insert(target)
    stmt = ins.on_conflict_do_nothing(index_elements=conflict_cols)
    conn = session.connection()
    if returning is not None:
        return list(conn.execute(stmt.returning(*returning), rows).all())
    conn.execute(stmt, rows)
    return []
