"""The fraud stage on real PostgreSQL and Redis: verdicts, velocity across batches, history."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from sqlalchemy import select, update

from domain.db import unit_of_work
from domain.fraud.velocity import VelocityStore
from domain.models import CustomerKey, CustomerProfile, OrderEvent, OrderRow
from tasks.fraud import check_orders
from tasks.intake import submit_orders
from tests.integration.helpers import put_stock

HOME = {"name": "Jo Miller", "line1": "1 Main St", "city": "Austin", "region": "TX",
        "postal_code": "78701", "country": "US"}


def paid(order_id: str, *, price: str = "40.00", customer: str = "c-1", count: int = 3,
         email: str = "jo.miller@example.com", ship: dict[str, Any] | None = None,
         card: str = "4242", ip: str = "8.8.8.8", avs: str = "Y", cvv: str = "M",
         attempts: int = 1, at: str = "2026-11-27T10:00:00Z") -> dict[str, Any]:
    return {
        "order_id": order_id, "store": "acme", "paid_at": at,
        "customer": {"id": customer, "email": email, "order_count": count},
        "lines": [{"sku": "TEE-M", "quantity": 1, "unit_price": price, "weight_g": 200}],
        "currency": "USD", "totals": {"subtotal": price, "total": price},
        "shipping_address": ship or HOME, "billing_address": ship or HOME,
        "payment": {"avs_result": avs, "cvv_result": cvv, "card_bin": "414720",
                    "card_last4": card, "attempts": attempts},
        "client": {"browser_ip": ip},
    }


def check(settings, ids: list[int]) -> list[int]:
    with unit_of_work(settings) as uow:
        return check_orders(uow, ids, settings)


def orders(settings) -> dict[str, OrderRow]:
    with unit_of_work(settings) as uow:
        return {o.source_order_id: o for o in uow.session.execute(select(OrderRow)).scalars()}


def test_each_verdict_is_stored_with_its_score_reasons_and_event(db, broker, settings) -> None:
    ids = submit_orders([
        paid("ok"),
        paid("big", price="900.00"),
        paid("bad", customer="c-2", count=1, email="x@mailinator.com", avs="N", cvv="N",
             attempts=4, card="1111"),
    ], settings=settings).accepted
    approved = check(settings, ids)
    rows = orders(settings)
    assert approved == [rows["ok"].id]
    assert (rows["ok"].state, rows["big"].state, rows["bad"].state) == (
        "fraud_checked", "on_hold", "rejected")
    assert rows["big"].hold_reason is not None
    assert "over the 500 USD review line" in rows["big"].hold_reason
    bad = rows["bad"]
    assert bad.fraud_reasons is not None
    assert bad.fraud_score == 100 and "CVV no match (+35)" in bad.fraud_reasons
    with unit_of_work(settings) as uow:
        event = uow.session.execute(select(OrderEvent).where(
            OrderEvent.order_id == bad.id, OrderEvent.stage == "fraud")).scalar_one()
    assert event.detail is not None
    assert event.to_state == "rejected" and event.detail["score"] == 100
    assert event.detail["reasons"] == bad.fraud_reasons
    # A second run (a redelivered message) finds nothing left to check.
    assert check(settings, ids) == []


def test_a_card_testing_burst_is_caught_across_micro_batches(db, broker, settings) -> None:
    # Given small orders from one IP, each with another card, checked by two batches
    burst = [paid(f"t{i}", price="9.00", customer=f"guest-{i}", count=1, card=f"{1000 + i}",
                  email=f"buyer{i}@example.com", ip="81.2.69.160")
             for i in range(8)]
    ids = submit_orders(burst, settings=settings).accepted
    first = check(settings, ids[:2])
    second = check(settings, ids[2:])
    # Then the first two pass (nothing to see yet) and the rest is stopped by velocity
    assert len(first) == 2 and second == []
    rows = orders(settings)
    late = rows["t7"]
    assert late.state in ("on_hold", "rejected")
    assert late.fraud_reasons is not None
    assert any("different cards from one IP" in r for r in late.fraud_reasons)


def test_approved_orders_build_the_history_later_orders_are_compared_with(db, broker,
                                                                          settings) -> None:
    first = submit_orders([paid("h1", count=1)], settings=settings).accepted
    assert check(settings, first) == first
    with unit_of_work(settings) as uow:
        profile = uow.session.get_one(CustomerProfile, ("acme", "c-1"))
        kinds = sorted(uow.session.execute(select(CustomerKey.kind).where(
            CustomerKey.customer_id == "c-1")).scalars())
    assert profile.orders == 1 and str(profile.total_usd) == "40.00"
    assert kinds == ["address", "card", "ip_country"]
    # The same customer again, home: credit; to a new address from abroad for far more: not.
    away = {**HOME, "line1": "9 Elm St", "city": "Dallas", "postal_code": "75201"}
    ids = submit_orders([paid("h2", at="2026-11-28T10:00:00Z"),
                         paid("h3", price="450.00", ship=away, ip="5.255.255.5",
                              at="2026-11-29T10:00:00Z")], settings=settings).accepted
    check(settings, ids)
    rows = orders(settings)
    assert rows["h2"].fraud_reasons is not None and rows["h3"].fraud_reasons is not None
    assert "shipping address used on earlier orders (1) (-10)" in rows["h2"].fraud_reasons
    assert rows["h2"].state == "fraud_checked"
    assert any(r.startswith("shipping address never used") for r in rows["h3"].fraud_reasons)
    assert any(r.startswith("ordering from RU for the first time")
               for r in rows["h3"].fraud_reasons)
    assert rows["h3"].state == "on_hold"
    # The approved one was added to the history (an upsert over what was there), the held one not
    with unit_of_work(settings) as uow:
        again = uow.session.get_one(CustomerProfile, ("acme", "c-1"))
        assert (again.orders, str(again.total_usd), str(again.max_usd)) == (2, "80.00", "40.00")
        assert again.first_order_at == profile.first_order_at
        assert again.last_order_at.isoformat().startswith("2026-11-28T10:00:00")


def test_rejected_orders_never_enter_a_history(db, broker, settings) -> None:
    ids = submit_orders([paid("r1", customer="c-9", count=1, email="x@mailinator.com",
                              avs="N", cvv="N", attempts=5)], settings=settings).accepted
    check(settings, ids)
    with unit_of_work(settings) as uow:
        assert uow.session.get(CustomerProfile, ("acme", "c-9")) is None


def test_a_po_box_abroad_waits_for_a_person(db, broker, settings) -> None:
    # Given warehouses in the US only: a parcel to Canada goes by air express
    put_stock(settings, [("TEE-M", "US-EAST", "US", 10)])
    box = {"name": "Jo Miller", "line1": "PO Box 4410", "city": "Toronto", "region": "ON",
           "postal_code": "M5V 2T6", "country": "CA"}
    home_box = {**HOME, "line1": "PO Box 77"}
    ids = submit_orders([paid("ca", ship=box), paid("us", ship=home_box)],
                        settings=settings).accepted
    check(settings, ids)
    rows = orders(settings)
    assert rows["ca"].state == "on_hold"
    assert rows["ca"].hold_reason is not None
    assert "PO box: carrier sbx-air does not deliver to PO boxes" in rows["ca"].hold_reason
    assert rows["us"].state == "fraud_checked"  # the post delivers PO boxes at home


def test_a_stored_order_that_no_longer_validates_is_held_naming_the_field(db, broker,
                                                                          settings) -> None:
    ids = submit_orders([paid("drift")], settings=settings).accepted
    with unit_of_work(settings) as uow:
        row = uow.session.get_one(OrderRow, ids[0])
        broken = dict(row.payload)
        broken["lines"] = [{"sku": "TEE-M", "quantity": 0, "unit_price": "40.00"}]
        uow.session.execute(update(OrderRow).where(OrderRow.id == ids[0])
                            .values(payload=broken))
    assert check(settings, ids) == []
    row = orders(settings)["drift"]
    assert row.state == "on_hold" and row.hold_reason is not None
    assert "lines.0.quantity" in row.hold_reason


def test_when_redis_is_down_nothing_is_decided_and_the_task_can_retry(db, broker,
                                                                      settings) -> None:
    ids = submit_orders([paid("down")], settings=settings).accepted
    dead = VelocityStore(redis.Redis(port=1, socket_connect_timeout=0.5), "test:down")
    with pytest.raises(redis.ConnectionError), unit_of_work(settings) as uow:
        check_orders(uow, ids, settings, dead)
    assert orders(settings)["down"].state == "received"
