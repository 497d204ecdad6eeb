"""Only what a later attempt may not meet is retried; a bug or bad data fails at once."""

from __future__ import annotations

import kombu.exceptions
import pytest
import redis
from sqlalchemy.exc import DataError, IntegrityError, InterfaceError, OperationalError

from tasks.base import is_transient, retry_countdown


class _Orig(Exception):
    pass


@pytest.mark.parametrize("exc", [
    OperationalError("SELECT 1", {}, _Orig("server closed the connection unexpectedly")),
    InterfaceError("SELECT 1", {}, _Orig("connection already closed")),
    redis.ConnectionError("Connection refused"),
    redis.TimeoutError("Timeout reading from socket"),
    kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379"),
    ConnectionResetError(104, "Connection reset by peer"),
])
def test_a_blink_of_the_database_redis_or_broker_is_retried(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    IntegrityError("INSERT ...", {}, _Orig("duplicate key value violates unique constraint")),
    IntegrityError("UPDATE stock", {}, _Orig('violates check constraint "ck_stock_not_oversold"')),
    DataError("INSERT ...", {}, _Orig("value too long for type character varying(3)")),
    redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    ValueError("order id must be an integer"),
    KeyError("shipping_address"),
])
def test_a_bug_or_bad_data_is_not_retried(exc: Exception) -> None:
    assert not is_transient(exc)


def test_any_database_error_on_a_connection_found_dead_is_retried() -> None:
    exc = DataError("SELECT 1", {}, _Orig("terminating connection"), connection_invalidated=True)
    assert is_transient(exc)


def test_the_backoff_doubles_up_to_its_cap() -> None:
    assert [retry_countdown(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert retry_countdown(20, cap_s=300) == 300
