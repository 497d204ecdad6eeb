"""Cancellation wherever the order is, on real PostgreSQL and the real sandbox carrier."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import select

from domain.cancellation import cancel_orders
from domain.db import unit_of_work
from domain.models import OrderRow, Reservation, ReturnRequest, Shipment, Stock, StoreNotification
from domain.returns import SETTLE_RETURNS, settle_returns
from tasks.cancellation import void_cancelled_labels
from tasks.fraud import check_orders
from tasks.intake import submit_orders
from tasks.inventory import reserve_orders
from tasks.labels import buy_wave_labels, prepare_shipments
from tasks.sharding import assign_orders, close_waves_older_than
from tasks.tracking import backfill_shipments, due_shipments
from tests.integration.helpers import native_order, put_stock
from tests.waiting import eventually


def run(fn, settings, *args, **kw):
    with unit_of_work(settings) as uow:
        return fn(uow, *args, **kw)


def state_of(settings, order_id: int) -> str:
    with unit_of_work(settings) as uow:
        return uow.session.get_one(OrderRow, order_id).state


def stock_of(settings) -> tuple[int, int]:
    with unit_of_work(settings) as uow:
        s = uow.session.get_one(Stock, ("TEE-M", "US-EAST"))
        return s.on_hand, s.reserved


def shipment_of(settings, order_id: int) -> Shipment:
    with unit_of_work(settings) as uow:
        return uow.session.execute(
            select(Shipment).where(Shipment.order_id == order_id)).scalar_one()


def to_batched(settings, name: str) -> tuple[int, int]:
    """A fresh order reserved (2 units) and batched into a closed wave: (order id, wave id)."""
    (order_id,) = submit_orders([native_order(name, quantity=2)], settings=settings).accepted
    run(check_orders, settings, [order_id], settings)
    run(reserve_orders, settings, [order_id], settings)
    run(assign_orders, settings, [order_id], settings)
    (wave,) = run(close_waves_older_than, settings, 0.0)
    return order_id, wave


def test_before_a_label_the_reservation_is_released(db, broker, settings) -> None:
    put_stock(settings, [("TEE-M", "US-EAST", "US", 10)])
    received, = submit_orders([native_order("C-1")], settings=settings).accepted
    order_id, _ = to_batched(settings, "C-2")
    assert stock_of(settings) == (10, 2)
    out = run(cancel_orders, settings, [received, order_id], "customer changed their mind")
    assert sorted(out.cancelled) == sorted([received, order_id]) and out.to_void == []
    assert stock_of(settings) == (10, 0)
    with unit_of_work(settings) as uow:
        assert set(uow.session.execute(select(Reservation.status)).scalars()) == {"released"}
    # Cancelling again changes nothing.
    again = run(cancel_orders, settings, [order_id], "again")
    assert again.cancelled == [] and again.unchanged == {order_id: "cancelled"}


def test_a_labelled_order_is_voided_and_restocked_never_shipped(db, broker, settings,
                                                                carrier) -> None:
    put_stock(settings, [("TEE-M", "US-EAST", "US", 10)])
    order_id, wave = to_batched(settings, "C-3")
    buy_wave_labels(wave, settings, carrier)
    assert state_of(settings, order_id) == "labelled" and stock_of(settings) == (8, 0)
    # When the order is cancelled after its label was bought
    out = run(cancel_orders, settings, [order_id], "fraud confirmed by the bank")
    assert out.cancelled == [order_id] and out.to_void == [order_id]
    assert shipment_of(settings, order_id).status == "void_pending"
    voided = void_cancelled_labels([order_id], settings, carrier, final=False)
    # Then the carrier voided the label, the units are back, and tracking leaves it alone
    assert voided.voided == [order_id]
    assert carrier.stats()["labels_voided"] == 1
    assert stock_of(settings) == (10, 0)
    assert shipment_of(settings, order_id).status == "voided"
    assert state_of(settings, order_id) == "cancelled"
    with unit_of_work(settings) as uow:
        assert due_shipments(uow, settings) == []
    # A redelivered void task does nothing more.
    assert void_cancelled_labels([order_id], settings, carrier, final=True).voided == []
    assert carrier.stats()["labels_voided"] == 1 and stock_of(settings) == (10, 0)


def test_a_label_bought_while_the_cancel_ran_is_found_by_its_key_and_voided(
        db, broker, settings, carrier) -> None:
    put_stock(settings, [("TEE-M", "US-EAST", "US", 10)])
    order_id, wave = to_batched(settings, "C-4")
    # Given the label task prepared the shipment and its purchase is in flight
    (request,) = run(prepare_shipments, settings, wave, None, settings)
    # When the order is cancelled before the purchase is recorded
    out = run(cancel_orders, settings, [order_id], "customer")
    assert out.to_void == [order_id] and stock_of(settings) == (10, 0)
    # ... and the label task's purchase completes and tries to record
    carrier.buy_label(request)
    buy_wave_labels(wave, settings, carrier)
    # Then the order stays cancelled and the void task finds the label by key and voids it
    assert state_of(settings, order_id) == "cancelled"
    result = void_cancelled_labels([order_id], settings, carrier, final=False)
    assert result.voided == [order_id]
    assert carrier.stats()["labels_voided"] == 1
    shipment = shipment_of(settings, order_id)
    assert shipment.status == "voided" and shipment.label_id is not None
    assert stock_of(settings) == (10, 0)  # nothing had left the shelf


def test_no_label_found_is_checked_again_before_it_counts_as_never_bought(
        db, broker, settings, carrier) -> None:
    put_stock(settings, [("TEE-M", "US-EAST", "US", 10)])
    order_id, wave = to_batched(settings, "C-5")
    run(prepare_shipments, settings, wave, None, settings)
    run(cancel_orders, settings, [order_id], "customer")
    first = void_cancelled_labels([order_id], settings, carrier, final=False)
    assert first.still_pending == [order_id]
    assert shipment_of(settings, order_id).status == "void_pending"
    last = void_cancelled_labels([order_id], settings, carrier, final=True)
    assert last.no_label == [order_id]
    assert shipment_of(settings, order_id).status == "cancelled"
    assert carrier.stats()["labels_voided"] == 0


def test_after_hand_over_it_becomes_a_return_restocked_and_refunded_once_when_it_arrives(
        db, broker, settings, carrier) -> None:
    from workers.cli import main

    put_stock(settings, [("TEE-M", "US-EAST", "US", 10)])
    order_id, wave = to_batched(settings, "C-6")
    buy_wave_labels(wave, settings, carrier)
    shipment_id = shipment_of(settings, order_id).id

    def handed_over() -> bool:
        backfill_shipments([shipment_id], settings, carrier)
        return state_of(settings, order_id) != "labelled"

    eventually(handed_over, 20, "the carrier to take the parcel")
    assert state_of(settings, order_id) in ("in_transit", "delivered")
    out = run(cancel_orders, settings, [order_id], "customer")
    assert out.returns == [order_id] and out.to_void == []
    assert state_of(settings, order_id) == "return_requested"
    assert stock_of(settings) == (8, 0) and carrier.stats()["labels_voided"] == 0
    broker.delete("returns")
    # The parcel is back: received twice (a second scan, a retried command).
    first = CliRunner().invoke(main, ["receive-return", "C-6"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, ["receive-return", "C-6", "--store", "acme"])
    assert again.exit_code == 1 and "received already" in again.output
    # A return was opened and received in one go: one settling message on the returns queue.
    with unit_of_work(settings) as uow:
        (ret,) = uow.session.execute(select(ReturnRequest)).scalars().all()
        assert (ret.order_id, ret.status, ret.condition) == (order_id, "received", "resellable")
    assert broker.llen("returns") == 1
    body = json.loads(broker.lindex("returns", 0))
    assert body["headers"]["task"] == SETTLE_RETURNS
    # Settling, delivered twice, restocks once and tells the store to refund once.
    assert run(settle_returns, settings, [ret.id]) == {"restocked": [order_id]}
    assert run(settle_returns, settings, [ret.id]) == {}
    assert state_of(settings, order_id) == "returned" and stock_of(settings) == (10, 0)
    assert shipment_of(settings, order_id).status == "returned"
    with unit_of_work(settings) as uow:
        events = uow.session.execute(select(StoreNotification.event).where(
            StoreNotification.order_id == order_id)).scalars().all()
    assert sorted(events).count("refund_due") == 1
    third = CliRunner().invoke(main, ["receive-return", "C-6"])
    assert third.exit_code == 1 and stock_of(settings) == (10, 0)


def test_a_void_whose_message_was_lost_is_found_by_the_sweep(db, broker, settings,
                                                             carrier) -> None:
    from tasks.cancellation import pending_voids

    put_stock(settings, [("TEE-M", "US-EAST", "US", 10)])
    order_id, wave = to_batched(settings, "C-7")
    buy_wave_labels(wave, settings, carrier)
    run(cancel_orders, settings, [order_id], "customer")
    overdue = settings.model_copy(update={"stage_deadline_s": 0.0})
    with unit_of_work(settings) as uow:
        assert pending_voids(uow, settings) == []
        assert pending_voids(uow, overdue) == [order_id]
    void_cancelled_labels([order_id], settings, carrier, final=True)
    with unit_of_work(settings) as uow:
        assert pending_voids(uow, overdue) == []
