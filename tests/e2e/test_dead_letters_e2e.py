"""Real worker processes put what they cannot complete or read in the dead-letter store."""

from __future__ import annotations

import pytest
from kombu import Connection, Exchange, Producer

from domain.db import unit_of_work
from domain.deadletters import list_letters
from tests.waiting import eventually

pytestmark = pytest.mark.e2e


def _letters(settings) -> list[dict]:
    with unit_of_work(settings) as uow:
        return list_letters(uow.session)


def _publish(settings, body: bytes, content_type: str, headers: dict) -> None:
    with Connection(settings.broker_url) as conn:
        Producer(conn.default_channel).publish(
            body, exchange=Exchange("orderfleet", type="direct"), routing_key="fraud",
            content_type=content_type, content_encoding="utf-8", headers=headers,
            serializer=None)


def test_a_task_that_fails_for_good_and_unreadable_messages_become_dead_letters(
        start_fleet, settings) -> None:
    from workers.app import app

    fleet = start_fleet(workers=1, beat=False)
    # given a task whose argument no retry can fix (not an order id)
    app.send_task("orderfleet.fraud.check", args=[["not-an-id"]])
    # and messages no worker can read: a task name nothing registers, a body that is not
    # JSON, content we refuse (pickle), no task header at all
    _publish(settings, b"[[1], {}, {}]", "application/json",
             {"task": "orderfleet.fraud.no_such_task", "id": "unknown-1", "lang": "py"})
    _publish(settings, b"\x80\x04not json", "application/json",
             {"task": "orderfleet.fraud.check", "id": "garbage-1", "lang": "py"})
    _publish(settings, b"\x80\x04\x95", "application/x-python-serialize",
             {"task": "orderfleet.fraud.check", "id": "pickle-1", "lang": "py"})
    _publish(settings, b"{}", "application/json", {})

    def five() -> list[dict]:
        letters = _letters(settings)
        assert len(letters) >= 5, letters
        return letters

    letters = eventually(five, 60, "five dead letters")

    by_reason: dict[str, list[dict]] = {}
    for letter in letters:
        by_reason.setdefault(letter["reason"], []).append(letter)
    [failed] = by_reason["failed"]
    assert failed["task"] == "orderfleet.fraud.check" and failed["args"] == [["not-an-id"]]
    assert failed["error_type"] == "ValueError"
    assert [x["task_id"] for x in by_reason["unknown_task"]] == ["unknown-1"]
    unreadable = {x["task_id"] for r in ("undecodable", "invalid") for x in by_reason.get(r, [])}
    assert {"garbage-1", "pickle-1", None} <= unreadable
    assert all(fleet.alive().values())  # nothing of this stopped a worker
