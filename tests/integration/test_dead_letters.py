"""The dead-letter store on real PostgreSQL and Redis: kept with the error, shown on the order,
an alert while any is open, retried as the same message, dropped as history."""

from __future__ import annotations

import base64
import json

import pytest
from click.testing import CliRunner

from domain.alerts import open_alerts
from domain.db import unit_of_work
from domain.deadletters import Letter, NotRetryable, drop, list_letters, record, retry
from domain.status import order_status
from tasks.intake import submit_orders
from tests.integration.helpers import native_order


def _failed(ids: list[int]) -> Letter:
    return Letter(reason="failed", task="orderfleet.inventory.reserve", task_id="t-1",
                  queue="inventory", args=[ids], error_type="IntegrityError",
                  error="IntegrityError: duplicate key")


def test_a_failed_task_is_kept_with_its_error_and_shown_on_its_orders(db, broker,
                                                                       settings) -> None:
    ids = submit_orders([native_order("DL-1"), native_order("DL-2")],
                        settings=settings).accepted
    with unit_of_work(settings) as uow:
        letter_id = record(uow.session, _failed(ids))

    with unit_of_work(settings) as uow:
        rows = list_letters(uow.session)
        info = order_status(uow.session, "DL-1")
        alerts = open_alerts(uow.session, "dead_letters")
    assert [(r["id"], r["order_ids"], r["status"]) for r in rows] == [
        (letter_id, sorted(ids), "open")]
    assert info is not None
    assert info["dead_letters"][0]["error"] == "IntegrityError: IntegrityError: duplicate key"
    assert len(alerts) == 1 and alerts[0].severity == "critical"


def test_retry_sends_the_same_message_after_the_commit_and_clears_the_alert(db, broker,
                                                                            settings) -> None:
    ids = submit_orders([native_order("DL-3")], settings=settings).accepted
    broker.delete("inventory")
    with unit_of_work(settings) as uow:
        letter_id = record(uow.session, _failed(ids))

    with unit_of_work(settings) as uow:
        assert retry(uow, [letter_id], "ops") == [letter_id]

    [raw] = broker.lrange("inventory", 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == "orderfleet.inventory.reserve"
    assert json.loads(base64.b64decode(message["body"]))[0] == [ids]
    with unit_of_work(settings) as uow:
        assert list_letters(uow.session) == []
        assert open_alerts(uow.session, "dead_letters") == []


def test_an_undecodable_message_cannot_be_retried_only_dropped(db, broker, settings) -> None:
    with unit_of_work(settings) as uow:
        letter_id = record(uow.session, Letter(reason="undecodable", error_type="DecodeError",
                                               error="not JSON", raw="\x80garbage"))
    with pytest.raises(NotRetryable), unit_of_work(settings) as uow:
        retry(uow, [letter_id], "ops")

    with unit_of_work(settings) as uow:
        assert drop(uow.session, [letter_id], "ops") == [letter_id]
    with unit_of_work(settings) as uow:
        [row] = list_letters(uow.session, status=None)
        assert (row["status"], row["closed_by"], row["raw_bytes"]) == ("dropped", "ops", 8)
        assert open_alerts(uow.session, "dead_letters") == []


def test_the_dlq_commands_list_retry_and_drop(db, broker, settings) -> None:
    from workers.cli import main

    ids = submit_orders([native_order("DL-4")], settings=settings).accepted
    with unit_of_work(settings) as uow:
        first = record(uow.session, _failed(ids))
        second = record(uow.session, _failed(ids))
    runner = CliRunner()

    listed = runner.invoke(main, ["dlq", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["id"] for r in json.loads(listed.output)] == [first, second]
    assert runner.invoke(main, ["dlq", "retry", str(first)]).exit_code == 0
    assert runner.invoke(main, ["dlq", "drop", str(second)]).exit_code == 0
    assert runner.invoke(main, ["dlq", "drop", str(second)]).exit_code == 1  # already closed
    assert json.loads(runner.invoke(main, ["dlq", "list", "--json"]).output) == []


def test_only_tasks_that_take_order_ids_link_orders(db, broker, settings) -> None:
    ids = submit_orders([native_order("DL-5")], settings=settings).accepted
    pushback = Letter(reason="failed", task="orderfleet.pushback.send", args=[ids],
                      error_type="ValueError", error="notification ids, not order ids")
    with unit_of_work(settings) as uow:
        record(uow.session, pushback)
        record(uow.session, _failed(ids))
    with unit_of_work(settings) as uow:
        assert [r["order_ids"] for r in list_letters(uow.session)] == [[], ids]
