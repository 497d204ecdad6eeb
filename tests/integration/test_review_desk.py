"""The review desk on real PostgreSQL and Redis: CLI, HTTP and the plain functions."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select, update
from starlette.testclient import TestClient

from domain.alerts import open_alerts
from domain.clock import utcnow
from domain.db import unit_of_work
from domain.models import (
    CustomerProfile,
    OrderLine,
    OrderRow,
    Reservation,
    ReviewDecision,
    Stock,
)
from domain.review import (
    InvalidDecision,
    NotOnHold,
    OrderNotFound,
    approve_order,
    cancel_order,
    pending_reviews,
    raise_overdue_alerts,
)
from tasks.fraud import check_orders
from tasks.intake import submit_orders
from tests.integration.helpers import put_stock
from workers.cli import main as cli
from workers.review_api import create_app

HOME = {"name": "Jo Miller", "line1": "1 Main St", "city": "Austin", "region": "TX",
        "postal_code": "78701", "country": "US"}


def big_order(order_id: str, price: str = "900.00") -> dict[str, Any]:
    return {
        "order_id": order_id, "store": "acme", "paid_at": "2026-11-27T10:00:00Z",
        "customer": {"id": f"c-{order_id}", "email": "jo.miller@example.com", "order_count": 4},
        "lines": [{"sku": "TEE-M", "quantity": 1, "unit_price": price, "weight_g": 200}],
        "currency": "USD", "totals": {"subtotal": price, "total": price},
        "shipping_address": HOME, "billing_address": HOME,
        "payment": {"avs_result": "Y", "cvv_result": "M", "card_bin": "414720",
                    "card_last4": "4242"},
    }


def held(settings, *order_ids: str) -> list[int]:
    """Orders the fraud check put on hold (they are over the $500 review line)."""
    ids = submit_orders([big_order(o) for o in order_ids], settings=settings).accepted
    with unit_of_work(settings) as uow:
        check_orders(uow, ids, settings)
    return ids


def queued(broker, queue: str) -> list[list[Any]]:
    """The first argument of each task message waiting in a queue."""
    out = []
    for raw in broker.lrange(queue, 0, -1):
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        out.append(body[0][0])
    return out


def state(settings, order_id: int) -> str:
    with unit_of_work(settings) as uow:
        return uow.session.get_one(OrderRow, order_id).state


def test_held_orders_are_listed_oldest_first(db, broker, settings) -> None:
    first, second = held(settings, "A-1", "A-2")
    with unit_of_work(settings) as uow:
        uow.session.execute(update(OrderRow).where(OrderRow.id == second)
                            .values(updated_at=utcnow() - timedelta(hours=2)))
    with unit_of_work(settings) as uow:
        rows = pending_reviews(uow.session, settings)
        overdue = pending_reviews(uow.session, settings, overdue_only=True)
    assert [r["id"] for r in rows] == [second, first]
    assert rows[0]["overdue"] and not rows[1]["overdue"]
    assert [r["id"] for r in overdue] == [second]
    assert "review line" in rows[0]["hold_reason"]


def test_approve_resumes_at_reservation_and_records_who_when_why(db, broker, settings) -> None:
    (order_id,) = held(settings, "B-1")
    broker.delete("inventory")
    with unit_of_work(settings) as uow:
        decision = approve_order(uow, "B-1", by="ana", reason="called the customer")
    assert decision.to_state == "fraud_checked" and decision.decided_by == "ana"
    assert state(settings, order_id) == "fraud_checked"
    # The reservation task was sent after the commit, with the order's id.
    assert queued(broker, "inventory") == [[order_id]]
    with unit_of_work(settings) as uow:
        (d,) = uow.session.execute(select(ReviewDecision)).scalars()
        profile = uow.session.get_one(CustomerProfile, ("acme", "c-B-1"))
    assert (d.decision, d.decided_by, d.reason) == ("approve", "ana", "called the customer")
    assert d.decided_at is not None and d.hold_reason is not None
    assert "review line" in d.hold_reason
    assert profile.orders == 1  # an approved order joins the customer's history


def test_cancel_releases_the_stock_an_order_holds(db, broker, settings) -> None:
    (order_id,) = held(settings, "C-1")
    put_stock(settings, [("TEE-M", "US-EAST", "US", 10)])
    with unit_of_work(settings) as uow:  # a hold placed after reservation keeps its stock
        line_id = uow.session.execute(select(OrderLine.id).where(
            OrderLine.order_id == order_id)).scalar_one()
        uow.session.execute(insert(Reservation).values(
            order_line_id=line_id, order_id=order_id, sku="TEE-M", warehouse="US-EAST",
            quantity=1, status="active", created_at=utcnow(),
            expires_at=utcnow() + timedelta(minutes=30)))
        uow.session.execute(update(Stock).values(reserved=1))
    with unit_of_work(settings) as uow:
        decision = cancel_order(uow, str(order_id), by="ben", reason="card reported stolen")
    assert decision.to_state == "cancelled" and decision.released_units == 1
    with unit_of_work(settings) as uow:
        assert uow.session.get_one(Stock, ("TEE-M", "US-EAST")).reserved == 0
    assert state(settings, order_id) == "cancelled"


def test_a_decision_needs_an_order_on_hold_a_who_and_a_why(db, broker, settings) -> None:
    (order_id,) = held(settings, "D-1")
    with pytest.raises(InvalidDecision, match="reason"), unit_of_work(settings) as uow:
        approve_order(uow, "D-1", by="ana", reason="  ")
    with pytest.raises(InvalidDecision, match="by"), unit_of_work(settings) as uow:
        approve_order(uow, "D-1", by="", reason="fine")
    with pytest.raises(OrderNotFound), unit_of_work(settings) as uow:
        approve_order(uow, "nope", by="ana", reason="fine")
    with unit_of_work(settings) as uow:
        approve_order(uow, "D-1", by="ana", reason="fine")
    # The second reviewer finds the order decided already: no second decision.
    with pytest.raises(NotOnHold, match="fraud_checked"), unit_of_work(settings) as uow:
        cancel_order(uow, "D-1", by="ben", reason="looks odd")
    with unit_of_work(settings) as uow:
        assert len(uow.session.execute(select(ReviewDecision)).all()) == 1
    assert state(settings, order_id) == "fraud_checked"


def test_overdue_reviews_raise_one_alert_each_until_decided(db, broker, settings) -> None:
    old, fresh = held(settings, "E-1", "E-2")
    with unit_of_work(settings) as uow:
        uow.session.execute(update(OrderRow).where(OrderRow.id == old).values(
            updated_at=utcnow() - timedelta(seconds=settings.review_overdue_s + 60)))
    with unit_of_work(settings) as uow:
        assert raise_overdue_alerts(uow, settings) == [old]
    with unit_of_work(settings) as uow:
        assert raise_overdue_alerts(uow, settings) == []  # raised once
        (alert,) = open_alerts(uow.session, "review_overdue")
    assert alert.key == str(old) and "waited" in alert.message
    assert "Jo" not in alert.message and "Main St" not in alert.message  # no personal data
    with unit_of_work(settings) as uow:
        approve_order(uow, "E-1", by="ana", reason="ok")
    with unit_of_work(settings) as uow:
        assert open_alerts(uow.session, "review_overdue") == []
    assert fresh


def test_the_desk_over_http(db, broker, settings) -> None:
    (order_id,) = held(settings, "F-1")
    held(settings, "F-2")
    client = TestClient(create_app())
    listing = client.get("/review/orders").json()
    assert listing["count"] == 2 and {o["source_order_id"] for o in listing["orders"]} == {
        "F-1", "F-2"}
    detail = client.get("/review/orders/F-1").json()
    assert detail["id"] == order_id and detail["shipping_address"]["city"] == "Austin"
    assert detail["payment"]["avs_result"] == "Y" and detail["decisions"] == []
    bad = client.post("/review/orders/F-1/approve", json={"by": "ana"})
    assert bad.status_code == 422 and bad.json()["field"] == "reason"
    assert client.post("/review/orders/F-1/approve", content=b"{not json").status_code == 400
    ok = client.post("/review/orders/F-1/approve", json={"by": "ana", "reason": "known buyer"})
    assert ok.status_code == 200 and ok.json()["state"] == "fraud_checked"
    again = client.post("/review/orders/F-1/cancel", json={"by": "ben", "reason": "late"})
    assert again.status_code == 409
    cancelled = client.post("/review/orders/F-2/cancel", json={"by": "ben", "reason": "fraud"})
    assert cancelled.json()["state"] == "cancelled"
    assert client.get("/review/orders/nope").status_code == 404
    decisions = client.get("/review/decisions").json()["decisions"]
    assert [(d["source_order_id"], d["decision"], d["decided_by"]) for d in decisions] == [
        ("F-2", "cancel", "ben"), ("F-1", "approve", "ana")]
    assert client.get("/review/orders?limit=0").status_code == 422


def test_the_http_desk_requires_the_token_when_one_is_set(db, broker, settings,
                                                          monkeypatch) -> None:
    from config.settings import get_settings

    monkeypatch.setenv("ORDERFLEET_REVIEW_API_TOKEN", "s3cret-token-0123456789")
    get_settings.cache_clear()
    try:
        client = TestClient(create_app())
        assert client.get("/review/orders").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.get("/review/orders", headers=wrong).status_code == 401
        good = {"Authorization": "Bearer s3cret-token-0123456789"}
        assert client.get("/review/orders", headers=good).status_code == 200
    finally:
        monkeypatch.delenv("ORDERFLEET_REVIEW_API_TOKEN")
        get_settings.cache_clear()


def test_the_desk_from_the_command_line(db, broker, settings) -> None:
    (order_id,) = held(settings, "G-1")
    runner = CliRunner()
    listed = runner.invoke(cli, ["review", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["id"] for r in json.loads(listed.output)] == [order_id]
    shown = runner.invoke(cli, ["review", "show", "G-1"])
    assert shown.exit_code == 0 and "review line" in shown.output
    missing = runner.invoke(cli, ["review", "approve", "G-1", "--by", "ana"])
    assert missing.exit_code != 0 and "--reason" in missing.output
    done = runner.invoke(cli, ["review", "approve", "G-1", "--by", "ana", "--reason",
                               "verified by phone", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["decided_by"] == "ana"
    twice = runner.invoke(cli, ["review", "cancel", "G-1", "--reason", "x"])
    assert twice.exit_code == 1 and "not waiting for review" in twice.output
    assert state(settings, order_id) == "fraud_checked"
