"""Engine, sessions and the unit of work that sends follow-up tasks only after commit."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson
import psycopg
from psycopg.adapt import Dumper
from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    Date,
    DateTime,
    Engine,
    Enum,
    Integer,
    Numeric,
    String,
    Subquery,
    Table,
    Text,
    TypeDecorator,
    any_,
    bindparam,
    column,
    create_engine,
    event,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import NullType

from config.settings import Settings, get_settings

T = TypeVar("T")
_engines: dict[str, Engine] = {}
_engine_pid: int | None = None


# JSON columns (order payloads, event details) through orjson: the stdlib's decoder was the
# largest single cost of the fraud and label stages. Non-string keys are written as strings,
# as json.dumps does.
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def _json_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=_ORJSON_OPTIONS)


def json_text(value: Any) -> str:
    """A value as the JSON columns write it (SQLite stores what it is given: text, not a
    BLOB; PostgreSQL casts it when it comes in an array)."""
    return orjson.dumps(value, option=_ORJSON_OPTIONS).decode()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, pool_size=5,
                               json_serializer=json_text, json_deserializer=orjson.loads)

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
    return create_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True,
                         json_serializer=_json_bytes, json_deserializer=orjson.loads)


def database_unavailable(exc: BaseException) -> bool:
    """True for a database error a later attempt may not meet: the connection was lost, the
    server is restarting, a deadlock or serialisation failure. Not IntegrityError, DataError
    or a CHECK violation: those fail the same way every time."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


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


def chunks(ids: Sequence[T], size: int) -> Iterator[list[T]]:
    """``ids`` in consecutive lists of at most ``size`` (messages, bulk statements)."""
    for i in range(0, len(ids), size):
        yield list(ids[i : i + size])


# How a unit of work sends a task: (task name, positional args, options such as countdown).
# The composition root (``workers.app``) installs Celery's ``send_task``; the domain never
# imports Celery, so a rule can be imported and tested without a broker.
TaskSender = Callable[[str, tuple[Any, ...], dict[str, Any]], Any]
_task_sender: TaskSender | None = None


def use_task_sender(sender: TaskSender | None) -> None:
    """Install how units of work send tasks after commit (``workers.app`` does, at start)."""
    global _task_sender
    _task_sender = sender


class NoTaskSender(RuntimeError):
    def __init__(self) -> None:
        super().__init__("no task sender installed: import workers.app (the Celery app) in this "
                         "process before enqueueing work")


def send_task(task: str, *args: Any, countdown: float | None = None,
              queue: str | None = None) -> None:
    """Send a task now, for work whose transaction has already committed (a unit of work
    sends its outbox through here; the HTTP intake batches ids across transactions).
    ``queue`` overrides the task's route (a stage's fast lane)."""
    if _task_sender is None:
        raise NoTaskSender()
    _task_sender(task, args, _options(countdown, queue))


def _options(countdown: float | None, queue: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if countdown is not None:
        options["countdown"] = countdown
    if queue is not None:
        options["queue"] = queue
    return options


class UnitOfWork:
    """A transaction plus the tasks to send once it has committed.

    ``enqueue`` is the one way work is handed to another stage: nothing is sent for a state
    change that rolled back (pypi/warehouse does the same), and a message lost after the commit
    is covered by the re-drive sweep, because the order's state is in the database.
    """

    def __init__(self, session: Session, settings: Settings) -> None:
        self.session = session
        self.settings = settings
        self._outbox: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def enqueue(self, task: str, *args: Any, countdown: float | None = None,
                queue: str | None = None) -> None:
        """Send ``task(*args)`` after the commit (JSON arguments: ids, never objects)."""
        if _task_sender is None:
            raise NoTaskSender()  # inside the transaction: it rolls back, nothing is half-done
        self._outbox.append((task, args, _options(countdown, queue)))

    def enqueue_chunks(self, task: str, ids: Sequence[int], *args: Any,
                       queue: str | None = None, countdown: float | None = None,
                       size: int | None = None) -> None:
        """Send ``task`` once per ``size`` (default ``batch_size``) ids (the ids first, then
        ``args``)."""
        for part in chunks(ids, size or self.settings.batch_size):
            self.enqueue(task, part, *args, queue=queue, countdown=countdown)

    @property
    def outbox(self) -> list[tuple[str, tuple[Any, ...]]]:
        """What will be sent after the commit (task name, arguments)."""
        return [(task, args) for task, args, _ in self._outbox]

    def send_outbox(self) -> None:
        messages, self._outbox = self._outbox, []
        for task, args, options in messages:
            send_task(task, *args, **options)


@contextmanager
def unit_of_work(settings: Settings | None = None) -> Iterator[UnitOfWork]:
    settings = settings or get_settings()
    engine = get_engine(settings)
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session:
        uow = UnitOfWork(session, settings)
        with session.begin():
            yield uow
        uow.send_outbox()


# Column types whose values psycopg sends as they are: an array of them can be written as a
# PostgreSQL array literal. Not Enum (a String that stores member names); a TypeDecorator's
# values go through its own bind processing first, then by its underlying type.
_LITERAL_TYPES = (Integer, String, Numeric, Boolean, DateTime, Date)
_PG_DIALECT = postgresql.dialect()
# PostgreSQL's type (psycopg's name) of each SQL type name SQLAlchemy compiles an item type to.
_PG_TYPES = {"BIGINT": "int8", "INTEGER": "int4", "SMALLINT": "int2", "VARCHAR": "varchar",
             "TEXT": "text", "NUMERIC": "numeric", "BOOLEAN": "bool", "DATE": "date",
             "TIMESTAMP WITH TIME ZONE": "timestamptz", "TIMESTAMP WITHOUT TIME ZONE": "timestamp",
             "FLOAT": "float8", "DOUBLE PRECISION": "float8", "REAL": "float4"}


class _ArrayLiteralDumper(Dumper):
    """Sends an array literal as it is, typed with its class's array oid: the server reads it
    as a parameter of that array type, as it reads the list psycopg would have written."""

    def dump(self, obj: Any) -> bytes:
        return str(obj).encode()


def _array_literal_class(pg_type: str) -> type[str]:
    cls = type(f"ArrayLiteral_{pg_type}", (str,), {})
    info = psycopg.postgres.types.get(pg_type)
    assert info is not None, pg_type
    dumper = type(f"ArrayLiteralDumper_{pg_type}", (_ArrayLiteralDumper,),
                  {"oid": info.array_oid})
    # On the global map at import, before any connection copies it.
    psycopg.adapters.register_dumper(cls, dumper)
    return cls


_ARRAY_LITERALS = {sql: _array_literal_class(pg) for sql, pg in _PG_TYPES.items()}
_literal_classes: dict[tuple[type, bool | None], type[str] | None] = {}


def _literal_class(item_type: Any) -> type[str] | None:
    """The array-literal class for values of ``item_type`` (already past a TypeDecorator), or
    None where the values need the type's own bind processing."""
    # By class (and time zone), not by instance: callers build types afresh (Integer()), and a
    # cache keyed by each instance would grow with every batch.
    key = (type(item_type), getattr(item_type, "timezone", None))
    try:
        return _literal_classes[key]
    except KeyError:
        pass
    cls = None
    if isinstance(item_type, _LITERAL_TYPES) and not isinstance(item_type, Enum):
        sql = _PG_DIALECT.type_compiler_instance.process(item_type).split("(")[0].strip()
        cls = _ARRAY_LITERALS.get(sql)
    _literal_classes[key] = cls
    return cls


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def array_literal(values: Iterable[Any]) -> str | None:
    """A PostgreSQL array literal of ``values`` (None is NULL, text is quoted with its
    backslashes and double quotes escaped), or None when a value is of another kind.

    psycopg's list dumper writes each element in Python and searches it for characters to
    quote: the stages' id and column arrays spent 10-25% of their CPU there. ``str()``,
    ``join`` and ``replace`` run in C, and the server parses the literal as the array
    parameter it is sent as (:func:`array_param`, :func:`array_value`).
    """
    out: list[str] = []
    for v in values:
        if v is None:
            out.append("NULL")
        elif isinstance(v, str):
            out.append(_quoted(v))
        elif isinstance(v, bool):
            out.append("t" if v else "f")
        elif isinstance(v, int | Decimal):
            out.append(str(v))
        elif isinstance(v, float):
            out.append(repr(v))
        elif isinstance(v, datetime | date):
            out.append(_quoted(v.isoformat()))
        else:
            return None
    return "{" + ",".join(out) + "}"


def array_value(values: Sequence[Any], sql_type: str) -> Any:
    """A value for a ``CAST(:param AS type[])`` of a text statement (``sql_type``: the item
    type as SQL names it, "BIGINT", "VARCHAR" ...): the typed literal where
    :func:`array_literal` can write one, else the list (psycopg's dumper)."""
    literal = array_literal(values)
    return list(values) if literal is None else _ARRAY_LITERALS[sql_type](literal)


def array_param(values: Sequence[Any], item_type: Any, name: str | None = None
                ) -> ColumnElement[Any]:
    """``values`` as one PostgreSQL array parameter of ``item_type`` (a column's type): an
    array literal sent with the array type's oid where :func:`array_literal` can write it,
    else the list through psycopg's dumper."""
    plain, base = list(values), item_type
    if isinstance(item_type, TypeDecorator):
        plain = [item_type.process_bind_param(v, _PG_DIALECT) for v in plain]
        base = item_type.impl_instance
    cls = _literal_class(base)
    literal = array_literal(plain) if cls is not None else None
    if cls is None or literal is None:
        return bindparam(name, list(values), type_=postgresql.ARRAY(item_type))
    # Untyped for SQLAlchemy: no cast rendered and no bind processing (which would iterate
    # the string); the oid travels with the value.
    return bindparam(name, cls(literal), type_=NullType())


def any_of(session: Session, column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """``column IN values``, written ``column = ANY(:array)`` on PostgreSQL.

    An IN list has one placeholder per value, so every batch size is a new statement text:
    psycopg parses it again (``_split_query``) and never reuses a prepared statement. One
    array parameter keeps one text for every size.
    """
    values = list(values)
    if session.get_bind().dialect.name == "postgresql":
        return cast(ColumnElement[bool], column == any_(array_param(values, column.type)))
    return cast(ColumnElement[bool], column.in_(values))


def any_row_of(session: Session, columns: Sequence[Any], rows: Iterable[Sequence[Any]]
               ) -> ColumnElement[bool]:
    """``(a, b, ...) IN rows``; on PostgreSQL against the rows as arrays, unnested: a tuple IN
    list is a new statement text for every number of rows (parsed and planned anew), the
    arrays keep one."""
    rows = list(rows)
    if session.get_bind().dialect.name == "postgresql":
        arrays = [array_param([r[i] for r in rows], c.type) for i, c in enumerate(columns)]
        v = func.unnest(*arrays).table_valued(
            *(column(f"k{i}") for i in range(len(columns)))).render_derived()
        return tuple_(*columns).in_(select(*v.c))
    return tuple_(*columns).in_(rows)


def text_array_literal(values: Sequence[str]) -> str:
    """A PostgreSQL text[] literal of ``values``: each element quoted, its backslashes and
    double quotes escaped (str.replace, in C)."""
    return "{" + ",".join(_quoted(v) for v in values) + "}"


def unnest_rows(table: Any, rows: Sequence[dict[str, Any]],
                extra: dict[str, Any] | None = None) -> Subquery:
    """PostgreSQL: ``rows`` (dicts with the same keys: columns of ``table``, a mapped class or a
    Core table, or names typed in ``extra``) as one subquery over ``unnest`` of an array per
    column. An INSERT ... SELECT or UPDATE ... FROM over it is one statement with one text for
    any number of rows, where an executemany runs a statement per row (each parsed, planned
    and executed by the server on its own)."""
    table = getattr(table, "__table__", table)
    names = list(rows[0])
    types = {n: (extra or {}).get(n) or table.c[n].type for n in names}
    arrays: list[ColumnElement[Any]] = []
    for n in names:
        if isinstance(types[n], JSON):
            # Sent as text and cast back, as the column's own bind would write it; the array
            # literal written here, as psycopg's list dumper escapes each quote of the JSON
            # in Python (an order payload has hundreds: it was most of intake's time).
            literal = text_array_literal([json_text(r[n]) for r in rows])
            arrays.append(sql_cast(bindparam(f"u_{n}", literal, type_=Text),
                                   postgresql.ARRAY(Text)))
        else:
            arrays.append(array_param([r[n] for r in rows], types[n], f"u_{n}"))
    v = func.unnest(*arrays).table_valued(*(column(f"u_{n}") for n in names)).render_derived()
    return select(*(
        (sql_cast(v.c[f"u_{n}"], postgresql.JSONB) if isinstance(types[n], JSON)
         else v.c[f"u_{n}"]).label(n) for n in names)).subquery()


def dialect_insert(session: Session, table: Table | type[DeclarativeBase]
                   ) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``table`` (a mapped class or a Core table) with the ON CONFLICT clauses
    of the session's database: PostgreSQL, or SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_from_arrays(table: Any, rows: Sequence[dict[str, Any]]) -> postgresql.Insert:
    """PostgreSQL: ``INSERT INTO table (keys) SELECT`` over :func:`unnest_rows` (add the ON
    CONFLICT clause the caller needs)."""
    table = getattr(table, "__table__", table)
    return postgresql.insert(table).from_select(list(rows[0]), select(unnest_rows(table, rows)))


def insert_rows(session: Session, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Insert many rows (dicts with the same keys) into ``table`` (a mapped class or a Core
    table): on PostgreSQL one INSERT ... SELECT over :func:`unnest_rows`, elsewhere a Core
    executemany (cheaper per row than the ORM's)."""
    if not rows:
        return
    table = getattr(table, "__table__", table)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(insert_from_arrays(table, rows))
    else:
        session.connection().execute(table.insert(), list(rows))


def update_rows(session: Session, table: Any, rows: Sequence[dict[str, Any]],
                key: str = "id") -> None:
    """Write each row's values into the row of ``table`` (a mapped class or a Core table) whose
    ``key`` it names (dicts with the same keys): on PostgreSQL one UPDATE ... FROM
    :func:`unnest_rows`, elsewhere a Core executemany of one UPDATE per row."""
    if not rows:
        return
    table = getattr(table, "__table__", table)
    names = [n for n in rows[0] if n != key]
    if session.get_bind().dialect.name == "postgresql":
        v = unnest_rows(table, rows)
        session.execute(update(table).where(table.c[key] == v.c[key])
                        .values({n: v.c[n] for n in names}))
        return
    session.connection().execute(
        update(table).where(table.c[key] == bindparam(f"b_{key}"))
        .values({n: bindparam(f"b_{n}") for n in names}),
        [{f"b_{k}": value for k, value in r.items()} for r in rows])


def insert_ignoring_conflicts(session: Session, table: Any, rows: list[dict[str, Any]],
                              conflict_cols: list[str], returning: Any = None) -> list[Any]:
    """INSERT ... ON CONFLICT DO NOTHING on PostgreSQL or SQLite; returns RETURNING rows.

    PostgreSQL: one INSERT ... SELECT over :func:`unnest_rows`, one statement text for every
    batch size. SQLite: one executemany (SQLAlchemy's "insertmanyvalues" batching).
    """
    if not rows:
        return []
    target = getattr(table, "__table__", table)
    if session.get_bind().dialect.name == "postgresql":
        stmt = insert_from_arrays(target, rows).on_conflict_do_nothing(
            index_elements=conflict_cols)
        if returning is not None:
            return list(session.execute(stmt.returning(*returning)).all())
        session.execute(stmt)
        return []
    many = dialect_insert(session, target).on_conflict_do_nothing(index_elements=conflict_cols)
    conn = session.connection()
    if returning is not None:
        return list(conn.execute(many.returning(*returning), rows).all())
    conn.execute(many, rows)
    return []
