"""Intake on real PostgreSQL and Redis: idempotent, rejects kept, next stage after commit."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from domain.db import unit_of_work
from domain.models import OrderEvent, OrderLine, OrderRow, RejectedOrder
from tasks.intake import submit_orders
from tests.integration.helpers import native_order


def count(settings, model) -> int:
    with unit_of_work(settings) as uow:
        return uow.session.execute(select(func.count()).select_from(model)).scalar_one()


def fraud_queue(broker) -> list[dict]:
    return [json.loads(m) for m in broker.lrange("fraud", 0, -1)]


def test_same_order_twice_is_one_order_and_one_pipeline_run(db, broker, settings) -> None:
    # Given an order submitted once
    first = submit_orders([native_order("A-1")], settings=settings)
    # When the storefront submits it again (a retried webhook)
    second = submit_orders([native_order("A-1")], settings=settings)
    # Then there is one order, one received event and one fraud message
    assert len(first.accepted) == 1 and second.accepted == [] and second.duplicates == ["A-1"]
    assert count(settings, OrderRow) == 1
    assert count(settings, OrderEvent) == 1
    messages = fraud_queue(broker)
    assert len(messages) == 1
    assert messages[0]["headers"]["task"] == "orderfleet.fraud.check"


def test_batch_submission_persists_lines_and_sends_ids_in_micro_batches(db, broker,
                                                                       settings) -> None:
    settings = settings.model_copy(update={"batch_size": 100})
    payloads = [native_order(f"B-{i}") for i in range(250)]
    result = submit_orders(payloads, settings=settings)
    assert len(result.accepted) == 250
    assert count(settings, OrderLine) == 250
    messages = fraud_queue(broker)
    # 250 orders travel in 3 messages of at most batch_size ids, not 250 messages.
    assert len(messages) == 3
    body_ids = [json.loads(__import__("base64").b64decode(m["body"]))[0][0] for m in messages]
    assert sorted(i for ids in body_ids for i in ids) == sorted(result.accepted)


def test_invalid_payload_is_kept_with_its_reason_and_never_enqueued(db, broker, settings) -> None:
    bad = native_order("C-1")
    bad["lines"][0]["quantity"] = 0
    unknown_currency = native_order("C-2", currency="XXX")
    result = submit_orders([bad, unknown_currency, native_order("C-3")], settings=settings)
    assert len(result.accepted) == 1
    assert {r.source_order_id for r in result.rejected} == {"C-1", "C-2"}
    with unit_of_work(settings) as uow:
        rows = {r.source_order_id: r for r in uow.session.execute(select(RejectedOrder)).scalars()}
    assert rows["C-1"].errors[0]["field"] == "lines.0.quantity"
    assert json.loads(rows["C-1"].raw)["order_id"] == "C-1"  # the raw payload, whole
    assert rows["C-2"].errors == [{"field": "currency",
                                   "message": "no exchange rate configured for XXX"}]
    assert len(fraud_queue(broker)) == 1


def test_nothing_is_sent_when_the_transaction_rolls_back(db, broker, settings) -> None:
    from domain.db import unit_of_work as uow_factory
    from tasks.intake import persist_orders, start_pipeline

    try:
        with uow_factory(settings) as uow:
            result = persist_orders(uow, [native_order("D-1")], settings)
            start_pipeline(uow, result.accepted)  # would send to the fraud queue on commit
            raise RuntimeError("database write failed after insert")
    except RuntimeError:
        pass
    assert result.accepted and count(settings, OrderRow) == 0
    assert broker.llen("fraud") == 0
