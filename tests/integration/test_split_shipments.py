"""Split shipments on real PostgreSQL, Redis, the sandbox carrier and the sandbox storefront:
an order no single warehouse can serve becomes one part per warehouse, and only then."""

from __future__ import annotations

import base64
import json
from typing import Any

from click.testing import CliRunner
from sqlalchemy import select

from config.celery import NONCORE_QUEUES
from domain.cancellation import cancel_orders
from domain.db import unit_of_work
from domain.models import (
    Coupon,
    OrderEvent,
    OrderLine,
    OrderRow,
    Reservation,
    Shipment,
    Stock,
    StoreNotification,
    Wave,
)
from domain.models import ReservationStatus as R
from domain.noncore import run_jobs
from domain.pipeline import redrive_noncore, store_orders
from tasks.fraud import check_orders
from tasks.intake import submit_orders
from tasks.inventory import reserve_orders, wake_backordered
from tasks.labels import buy_wave_labels
from tasks.pushback import send_notifications
from tasks.sharding import assign_orders, close_waves_older_than
from tests.integration.helpers import native_order, put_stock

LINES = [{"sku": "TEE-M", "quantity": 2, "unit_price": "10.00", "weight_g": 200},
         {"sku": "MUG", "quantity": 1, "unit_price": "15.00", "weight_g": 400}]
TOTALS = {"subtotal": "35.00", "shipping": "5.00", "total": "40.00"}


def run(fn: Any, settings: Any, *args: Any, **kw: Any) -> Any:
    with unit_of_work(settings) as uow:
        return fn(uow, *args, **kw)


def two_warehouse_stock(settings: Any) -> None:
    """TEE-M only in US-EAST, MUG only in EU-DE: no one warehouse has both."""
    put_stock(settings, [("TEE-M", "US-EAST", "US", 10), ("MUG", "EU-DE", "DE", 10)])


def checked(settings: Any, payload: dict[str, Any], store: str | None = None) -> int:
    (oid,) = submit_orders([payload], settings=settings, store=store).accepted
    run(check_orders, settings, [oid], settings)
    return int(oid)


def split_order(settings: Any, order_id: str = "SPLIT-1", **over: Any) -> int:
    return checked(settings, native_order(order_id, lines=LINES, totals=TOTALS, **over))


def rows(settings: Any, ids: list[int]) -> dict[int, OrderRow]:
    with unit_of_work(settings) as uow:
        out = {o.id: o for o in uow.session.execute(
            select(OrderRow).where(OrderRow.id.in_(ids))).scalars()}
        uow.session.expunge_all()
        return out


def parts_of(settings: Any, parent: int) -> list[OrderRow]:
    with unit_of_work(settings) as uow:
        out = list(uow.session.execute(select(OrderRow).where(OrderRow.parent_id == parent)
                                       .order_by(OrderRow.part_no)).scalars())
        uow.session.expunge_all()
        return out


def reserved_units(settings: Any, sku: str, wh: str) -> int:
    with unit_of_work(settings) as uow:
        return uow.session.get_one(Stock, (sku, wh)).reserved


def test_an_order_two_warehouses_share_becomes_two_parts_each_shipped_from_its_own(
        db, broker, settings, carrier) -> None:
    two_warehouse_stock(settings)
    parent = split_order(settings)
    # When the reservation stage takes it
    out = run(reserve_orders, settings, [parent], settings)
    # Then the parent is split into one part per warehouse, each reserved there
    p1, p2 = parts_of(settings, parent)
    assert out.split == {parent: [p1.id, p2.id]}
    assert sorted(out.reserved) == [p1.id, p2.id] and out.backordered == []
    assert rows(settings, [parent])[parent].state == "split"
    assert [(p.source_order_id, p.part_no, p.state, p.warehouse) for p in (p1, p2)] == [
        ("SPLIT-1~1", 1, "reserved", "EU-DE"), ("SPLIT-1~2", 2, "reserved", "US-EAST")]
    # ... carrying the parent's store, customer, lane and fraud verdict, its own lines and
    # totals (the shipping charge on part 1), and the store's order id in the payload
    for p in (p1, p2):
        assert (p.store, p.customer_id, p.ship_country, p.lane, p.fraud_score) == (
            "acme", "c-SPLIT-1", "US", "standard", rows(settings, [parent])[parent].fraud_score)
        assert p.payload["order_id"] == "SPLIT-1"
    assert [ln["sku"] for ln in p1.payload["lines"]] == ["MUG"]
    assert [ln["sku"] for ln in p2.payload["lines"]] == ["TEE-M"]
    assert (str(p1.total), str(p2.total)) == ("20.00", "20.00")  # 15 + 5 shipping; 2 x 10
    with unit_of_work(settings) as uow:
        s = uow.session
        assert s.execute(select(Reservation.order_id, Reservation.sku, Reservation.warehouse,
                                Reservation.quantity).order_by(Reservation.order_id)).all() == [
            (p1.id, "MUG", "EU-DE", 1), (p2.id, "TEE-M", "US-EAST", 2)]
        split_detail = s.execute(select(OrderEvent.detail).where(
            OrderEvent.order_id == parent, OrderEvent.to_state == "split")).scalar_one()
        first = s.execute(select(OrderEvent.detail).where(
            OrderEvent.order_id == p1.id, OrderEvent.from_state.is_(None))).scalar_one()
    assert split_detail == {"parts": [p1.id, p2.id], "plan": (
        "split: no single warehouse has every line (MUG from EU-DE; TEE-M from US-EAST)")}
    assert first["split_from"] == parent and "passed on the parent" in first["fraud_check"]
    # When the parts are waved and labelled
    run(assign_orders, settings, [p1.id, p2.id], settings)
    for wave_id in run(close_waves_older_than, settings, 0.0):
        buy_wave_labels(wave_id, settings, carrier)
    # Then each is in a wave of its own warehouse, with one shipment each
    with unit_of_work(settings) as uow:
        s = uow.session
        waved = dict(s.execute(select(OrderRow.id, Wave.warehouse)
                               .join(Wave, Wave.id == OrderRow.wave_id)).all())
        shipments = s.execute(select(Shipment.order_id, Shipment.status)
                              .order_by(Shipment.order_id)).all()
    assert waved == {p1.id: "EU-DE", p2.id: "US-EAST"}  # the parent is never waved
    assert shipments == [(p1.id, "labelled"), (p2.id, "labelled")]
    assert {o.state for o in rows(settings, [p1.id, p2.id]).values()} == {"labelled"}
    assert rows(settings, [parent])[parent].state == "split"
    # And the customer's post-purchase e-mail, coupon and marketing sync follow the store's
    # order once, not once per parcel
    with unit_of_work(settings) as uow:
        queue = NONCORE_QUEUES["post_purchase_email"]
        sent = [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0]
                for m in broker.lrange(queue, 0, -1)]
        # One message per wave (two parcels), each naming the parent: the job is once per
        # (order, kind), so the second does nothing
        assert sent == [[parent], [parent]]
    for ids in sent:
        run_jobs(settings, "coupon", ids)
    with unit_of_work(settings) as uow:
        assert uow.session.execute(select(Coupon.order_id)).scalars().all() == [parent]
        assert store_orders(uow.session, [p1.id, p2.id]) == [parent]
        # The re-drive sweep sees the parent's jobs not done yet: one each (coupon done)
        assert redrive_noncore(uow, 3600) == {"post_purchase_email": 1, "marketing_sync": 1}
        assert uow.outbox[0] == ("orderfleet.noncore.post_purchase_email", ([parent],))
    # And `orderfleet status` shows the parent with its parts and their states
    from workers.cli import main
    shown = CliRunner().invoke(main, ["status", str(parent), "--json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.output)
    assert info["state"] == "split"
    assert [(p["source_order_id"], p["state"], p["warehouse"]) for p in info["parts"]] == [
        ("SPLIT-1~1", "labelled", "EU-DE"), ("SPLIT-1~2", "labelled", "US-EAST")]
    assert all(p["tracking_number"] for p in info["parts"])
    text = CliRunner().invoke(main, ["status", str(parent)])
    assert "part 1: order SPLIT-1~1" in text.output and "part 2: order SPLIT-1~2" in text.output
    part = CliRunner().invoke(main, ["status", "SPLIT-1~2"])
    assert f"part 2 of split order id {parent}" in part.output and "labelled" in part.output


def test_running_the_reservation_stage_twice_creates_the_parts_once(db, broker,
                                                                     settings) -> None:
    two_warehouse_stock(settings)
    parent = split_order(settings)
    first = run(reserve_orders, settings, [parent], settings)
    again = run(reserve_orders, settings, [parent], settings)  # a redelivered message
    assert len(first.split[parent]) == 2
    assert again.split == {} and again.reserved == [] and again.backordered == []
    assert len(parts_of(settings, parent)) == 2
    with unit_of_work(settings) as uow:
        assert uow.session.execute(select(OrderLine.order_id).where(
            OrderLine.order_id.in_(first.split[parent]))).scalars().all().__len__() == 2
        assert len(uow.session.execute(select(Reservation.id)).all()) == 2
    assert reserved_units(settings, "TEE-M", "US-EAST") == 2
    assert reserved_units(settings, "MUG", "EU-DE") == 1


def test_an_order_one_warehouse_can_serve_is_never_split(db, broker, settings) -> None:
    # US-EAST has both SKUs (and EU-DE a MUG too): one warehouse, no parts
    two_warehouse_stock(settings)
    put_stock(settings, [("MUG", "US-EAST", "US", 3)])
    parent = split_order(settings)
    out = run(reserve_orders, settings, [parent], settings)
    assert out.reserved == [parent] and out.split == {}
    assert parts_of(settings, parent) == []
    order = rows(settings, [parent])[parent]
    assert (order.state, order.warehouse) == ("reserved", "US-EAST")


def test_a_sku_no_warehouse_has_enough_of_is_backordered_not_split(db, broker,
                                                                   settings) -> None:
    put_stock(settings, [("TEE-M", "US-EAST", "US", 1), ("MUG", "EU-DE", "DE", 10)])
    parent = split_order(settings)  # wants 2 TEE-M: no split can ship it
    out = run(reserve_orders, settings, [parent], settings)
    assert out.backordered == [parent] and out.split == {}
    assert parts_of(settings, parent) == []


def test_with_splitting_off_the_order_is_backordered_naming_the_plan(db, broker,
                                                                     settings) -> None:
    off = settings.model_copy(update={"split_shipments": False})
    two_warehouse_stock(settings)
    parent = split_order(settings)
    out = run(reserve_orders, off, [parent], off)
    assert out.backordered == [parent] and out.split == {}
    assert parts_of(settings, parent) == []
    with unit_of_work(settings) as uow:
        detail = uow.session.execute(select(OrderEvent.detail).where(
            OrderEvent.order_id == parent, OrderEvent.to_state == "backordered")).scalar_one()
    assert detail["plan"].startswith("split: no single warehouse has every line")
    # Turned on, the backorder sweep wakes it: a split can ship it now
    assert wake_backordered(off) == 0
    assert wake_backordered(settings) == 1
    run(reserve_orders, settings, [parent], settings)
    assert rows(settings, [parent])[parent].state == "split"
    assert {p.state for p in parts_of(settings, parent)} == {"reserved"}


def test_cancelling_the_parent_cancels_the_parts_and_releases_their_stock(
        db, broker, settings) -> None:
    two_warehouse_stock(settings)
    parent = split_order(settings)
    parts = run(reserve_orders, settings, [parent], settings).split[parent]
    assert reserved_units(settings, "TEE-M", "US-EAST") == 2
    out = run(cancel_orders, settings, [parent], "cancelled in the store", notify=True)
    assert out.split == [parent] and sorted(out.cancelled) == parts and out.unchanged == {}
    assert {o.state for o in rows(settings, parts).values()} == {"cancelled"}
    assert rows(settings, [parent])[parent].state == "split"
    assert reserved_units(settings, "TEE-M", "US-EAST") == 0
    assert reserved_units(settings, "MUG", "EU-DE") == 0
    with unit_of_work(settings) as uow:
        assert set(uow.session.execute(select(Reservation.status)).scalars()) == {R.RELEASED}
        logged = uow.session.execute(select(OrderEvent.detail).where(
            OrderEvent.order_id == parent, OrderEvent.stage == "cancellation")).scalar_one()
    assert logged == {"reason": "cancelled in the store", "parts": parts}
    with unit_of_work(settings) as uow:  # the store hears of its order once, not per part
        told = uow.session.execute(select(StoreNotification.order_id, StoreNotification.event)
                                   ).all()
    assert [tuple(t) for t in told] == [(parent, "cancelled")]
    # Cancelling again changes nothing
    again = run(cancel_orders, settings, [parent], "again")
    assert again.cancelled == [] and set(again.unchanged) == set(parts)


def test_a_store_cancellation_of_a_split_order_cancels_its_parts(db, broker, settings) -> None:
    two_warehouse_stock(settings)
    parent = split_order(settings, "5213468230099", source="shopify")
    parts = run(reserve_orders, settings, [parent], settings).split[parent]
    from tasks.intake import Delivery, accept_delivery
    body = {"id": 5213468230099, "cancelled_at": "2026-11-27T11:00:00Z",
            "cancel_reason": "customer"}
    delivery = Delivery(source="shopify", store="acme", event_id="cancel-split-1",
                        topic="orders/cancelled", body=json.dumps(body).encode(), payload=body)
    result = run(accept_delivery, settings, delivery, settings)
    assert result.status == "cancelled" and result.order_id == parent
    assert {o.state for o in rows(settings, parts).values()} == {"cancelled"}


# --- push-back -------------------------------------------------------------------------------
def test_an_address_change_after_a_split_is_too_late_not_final(db, broker, settings) -> None:
    two_warehouse_stock(settings)
    parent = split_order(settings, "5213468230100", source="shopify")
    run(reserve_orders, settings, [parent], settings)
    from tasks.intake import Delivery, accept_delivery
    body = {"id": 5213468230100, "updated_at": "2026-11-27T11:00:00Z",
            "financial_status": "paid", "shipping_address": {"address1": "1 New Road"}}
    delivery = Delivery(source="shopify", store="acme", event_id="update-split-1",
                        topic="orders/updated", body=json.dumps(body).encode(), payload=body)
    result = run(accept_delivery, settings, delivery, settings)
    # The parts hold the stock: a person must change the address, as for a reserved order.
    assert (result.status, result.order_id) == ("too_late", parent)


def labelled_parts(settings: Any, carrier: Any, parent: int) -> list[int]:
    parts = run(reserve_orders, settings, [parent], settings).split[parent]
    run(assign_orders, settings, parts, settings)
    for wave_id in run(close_waves_older_than, settings, 0.0):
        buy_wave_labels(wave_id, settings, carrier)
    assert {o.state for o in rows(settings, parts).values()} == {"labelled"}
    return list(parts)


def label_news(settings: Any, order_id: int) -> int:
    from domain.models import StoreNotification
    with unit_of_work(settings) as uow:
        return int(uow.session.execute(select(StoreNotification.id).where(
            StoreNotification.order_id == order_id,
            StoreNotification.event == "label_bought")).scalar_one())


def tracking_of(settings: Any, order_id: int) -> str:
    with unit_of_work(settings) as uow:
        return str(uow.session.execute(select(Shipment.tracking_number).where(
            Shipment.order_id == order_id)).scalar_one())


def test_a_parts_label_is_a_shopify_fulfilment_of_the_parents_order_with_its_lines(
        shop_settings, storefront, carrier) -> None:
    settings = shop_settings
    two_warehouse_stock(settings)
    parent = checked(settings, native_order("5213468230077", lines=LINES, totals=TOTALS,
                                            source="shopify"), store="acme")
    # The shop's order has both lines, in one fulfilment order (one location)
    storefront.state.add_order("acme", "5213468230077", [("TEE-M", 2), ("MUG", 1)])
    p1, p2 = labelled_parts(settings, carrier, parent)
    # When part 1's label news is sent (twice: a redelivered message)
    first = send_notifications([label_news(settings, p1)], settings)
    assert first.sent and send_notifications([label_news(settings, p1)], settings).sent == []
    # Then the parent's platform order has one fulfilment: part 1's MUG, its tracking number
    (ful,) = storefront.state.fulfillments[("acme", "5213468230077")]
    assert ful["line_items"] == [{"sku": "MUG", "quantity": 1}]
    assert ful["tracking_numbers"] == [tracking_of(settings, p1)]
    assert ("acme", "5213468230077~1") not in storefront.state.fulfillments
    fo = storefront.state.fulfillment_orders[("acme", "5213468230077")]
    assert fo["status"] == "in_progress"  # the tees are still to come
    # When part 2's news is sent, the order is fulfilled whole: two parcels, two fulfilments
    assert send_notifications([label_news(settings, p2)], settings).sent
    f1, f2 = storefront.state.fulfillments[("acme", "5213468230077")]
    assert f2["line_items"] == [{"sku": "TEE-M", "quantity": 2}]
    assert f2["tracking_numbers"] == [tracking_of(settings, p2)]
    assert fo["status"] == "closed"


def test_a_parts_label_is_a_webhook_naming_the_parents_order_and_its_lines(
        shop_settings, storefront, carrier) -> None:
    settings = shop_settings
    two_warehouse_stock(settings)
    parent = checked(settings, native_order("C-77", lines=LINES, totals=TOTALS,
                                            store="custom"))
    p1, p2 = labelled_parts(settings, carrier, parent)
    out = send_notifications([label_news(settings, p1), label_news(settings, p2)], settings)
    assert len(out.sent) == 2
    hooks = storefront.state.webhooks["custom"]
    assert [(h["json"]["order_id"], h["json"]["orderfleet_order_id"], h["json"]["part"],
             h["json"]["line_items"], h["json"]["tracking"]["number"]) for h in hooks] == [
        ("C-77", p1, 1, [{"sku": "MUG", "quantity": 1}], tracking_of(settings, p1)),
        ("C-77", p2, 2, [{"sku": "TEE-M", "quantity": 2}], tracking_of(settings, p2))]


def test_past_its_promise_a_split_order_counts_late_through_its_parts_only(
        db, broker, settings) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from domain.clock import utcnow
    from domain.observability import sla_attainment, snapshot

    two_warehouse_stock(settings)
    parent = split_order(settings)
    parts = run(reserve_orders, settings, [parent], settings).split[parent]
    now = utcnow()
    promise = timedelta(hours=settings.sla_dispatch_hours["standard"])
    with unit_of_work(settings) as uow:  # paid long enough ago that the promise ran out
        uow.session.execute(update(OrderRow).values(paid_at=now - promise - timedelta(hours=1)))
    with unit_of_work(settings) as uow:
        sla = sla_attainment(uow.session, settings, now - timedelta(hours=2), now)
        snap = snapshot(uow.session, settings, now)
    # The two unlabelled parts are late; the parent, which never ships itself, is not
    assert (sla.on_time, sla.late) == (0, len(parts)) == (0, 2)
    assert snap.orders_by_state["split"] == 1 and "split" not in snap.lag_by_state


def test_a_cancel_that_waited_for_the_split_cancels_the_parts_it_made(db, broker,
                                                                     settings) -> None:
    import threading

    from sqlalchemy import text

    from tests.waiting import eventually

    two_warehouse_stock(settings)
    parent = split_order(settings)
    result: dict[str, Any] = {}

    def cancel() -> None:
        result["out"] = run(cancel_orders, settings, [parent], "cancelled in the store")

    def cancel_waits_for_a_lock() -> bool:
        with unit_of_work(settings) as uow:
            return bool(uow.session.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).scalar_one())

    # Given the reservation stage splitting the order, its transaction still open
    with unit_of_work(settings) as uow:
        parts = reserve_orders(uow, [parent], settings).split[parent]
        # When the store's cancellation arrives meanwhile, it waits for the order's lock
        waiter = threading.Thread(target=cancel)
        waiter.start()
        eventually(cancel_waits_for_a_lock, 20, "the cancel to wait for the order's lock")
    waiter.join(20)
    # Then, the split committed first, the cancel finds the parts and cancels them too
    out = result["out"]
    assert out.split == [parent] and sorted(out.cancelled) == parts
    assert {o.state for o in rows(settings, parts).values()} == {"cancelled"}
    assert reserved_units(settings, "TEE-M", "US-EAST") == 0
    assert reserved_units(settings, "MUG", "EU-DE") == 0
