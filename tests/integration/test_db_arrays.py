"""Batches sent to PostgreSQL as arrays (``domain.db``): what goes in comes back unchanged."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import BigInteger, Boolean, Numeric, String, Text, bindparam, cast, func, select
from sqlalchemy.dialects import postgresql

from domain.db import (
    any_of,
    array_literal,
    array_param,
    insert_rows,
    text_array_literal,
    unit_of_work,
    update_rows,
)
from domain.models import OrderEvent, OrderRow, Stock, UTCDateTime, order_events_table
from tasks.intake import submit_orders
from tests.integration.helpers import native_order, put_stock


@hsettings(max_examples=200, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(st.characters(exclude_characters="\x00")), max_size=8))
def test_a_text_array_literal_round_trips_any_text(pg_database, values) -> None:
    # Quotes, backslashes, braces, commas, spaces, NULL-looking words, any script.
    with pg_database.connect() as conn:
        back = conn.execute(select(func.unnest(cast(
            bindparam("p", text_array_literal(values), type_=Text),
            postgresql.ARRAY(String))))).scalars().all()
    assert back == values


_TYPED = st.one_of(
    st.tuples(st.just(String()), st.lists(st.none() | st.text(
        st.characters(exclude_characters="\x00")), max_size=8)),
    st.tuples(st.just(BigInteger()), st.lists(st.none() | st.integers(-2**63, 2**63 - 1),
                                               max_size=8)),
    st.tuples(st.just(Numeric(14, 4)), st.lists(st.none() | st.decimals(
        min_value=-10**9, max_value=10**9, places=4), max_size=8)),
    st.tuples(st.just(Boolean()), st.lists(st.none() | st.booleans(), max_size=8)),
    st.tuples(st.just(UTCDateTime()), st.lists(st.none() | st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1),
        timezones=st.just(UTC)), max_size=8)),
)


@hsettings(max_examples=300, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_TYPED)
def test_an_array_parameter_round_trips_what_each_column_type_holds(pg_database, typed
                                                                    ) -> None:
    # Sent as a literal with the array type's oid (or, for what a literal cannot say, as
    # psycopg's list): the server reads back the same values, NULLs where None went in.
    item_type, values = typed
    with pg_database.connect() as conn:
        back = conn.execute(select(func.unnest(array_param(values, item_type)))).scalars().all()
    assert back == values


def test_an_array_literal_leaves_what_it_cannot_write_to_psycopg() -> None:
    assert array_literal([1, None, "a\"b\\c", True, Decimal("1.50")]) == \
        '{1,NULL,"a\\"b\\\\c",t,1.50}'
    assert array_literal([object()]) is None


def test_array_parameters_of_types_built_afresh_share_one_cached_class() -> None:
    # Callers build item types per batch (Integer()): the cache must not grow with them.
    from sqlalchemy import Integer

    from domain import db as db_module

    array_param([1, 2], Integer())
    size = len(db_module._literal_classes)
    for _ in range(100):
        array_param([1, 2], Integer())
        array_param(["a"], String(64))
    assert len(db_module._literal_classes) <= size + 1


def test_ids_matched_against_an_array_find_their_rows(db, settings) -> None:
    accepted = submit_orders([native_order(f"ARR-{i}") for i in range(5)],
                             settings=settings).accepted
    with unit_of_work(settings) as uow:
        found = uow.session.execute(select(OrderRow.id).where(
            any_of(uow.session, OrderRow.id, [accepted[1], accepted[3], 10**12]))).scalars()
        assert sorted(found) == [accepted[1], accepted[3]]


def test_rows_inserted_and_updated_over_arrays_keep_json_times_and_numbers(db, settings) -> None:
    put_stock(settings, [("TEE-M", "US-EAST", "US", 1), ("TEE-M", "EU-DE", "DE", 1)])
    [order_id] = submit_orders([native_order("A-1")], settings=settings).accepted
    at = datetime(2026, 11, 27, 9, 30, 0, 123456, tzinfo=UTC)
    details = [{"reasons": ['say "hi"', "back\\slash", "{brace},comma", "NULL"], "score": 7},
               None, {"日本": "住所", "nested": {"list": [1, 2.5, None, True]}}]
    with unit_of_work(settings) as uow:
        insert_rows(uow.session, order_events_table, [
            {"order_id": order_id, "at": at, "stage": "test", "from_state": None,
             "to_state": f"s{i}", "detail": d} for i, d in enumerate(details)])
        insert_rows(uow.session, Stock, [
            {"sku": "A-1", "warehouse": "US-EAST", "on_hand": 5, "reserved": 0, "updated_at": at},
            {"sku": 'B"2', "warehouse": "EU-DE", "on_hand": 7, "reserved": 1, "updated_at": at}])
    with unit_of_work(settings) as uow:
        update_rows(uow.session, Stock, [{"sku": "A-1", "reserved": 3},
                                         {"sku": 'B"2', "reserved": 2}], key="sku")
    with unit_of_work(settings) as uow:
        events = uow.session.execute(select(OrderEvent).where(OrderEvent.stage == "test")
                                     .order_by(OrderEvent.id)).scalars().all()
        stock = {s.sku: (s.warehouse, s.on_hand, s.reserved, s.updated_at)
                 for s in uow.session.execute(select(Stock).where(Stock.sku != "TEE-M")).scalars()}
    assert [e.detail for e in events] == details
    assert all(e.at == at for e in events)
    assert stock == {"A-1": ("US-EAST", 5, 3, at), 'B"2': ("EU-DE", 7, 2, at)}
