"""Each stage's plain function on real PostgreSQL (and the real sandbox carrier)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from domain.db import unit_of_work
from domain.lifecycle import IllegalTransition, State, transition
from domain.models import OrderEvent, OrderRow, Reservation, Shipment, Stock, TrackingEvent, Wave
from tasks.fraud import check_orders
from tasks.intake import submit_orders
from tasks.inventory import expire_stale_reservations, reserve_orders
from tasks.labels import buy_wave_labels
from tasks.sharding import assign_orders, close_waves_older_than
from tasks.tracking import backfill_shipments
from tests.integration.helpers import native_order, put_stock
from tests.waiting import eventually


def states(settings) -> dict[str, int]:
    with unit_of_work(settings) as uow:
        return dict(uow.session.execute(
            select(OrderRow.state, func.count()).group_by(OrderRow.state)).all())


def stock_of(settings, sku: str, wh: str) -> tuple[int, int]:
    with unit_of_work(settings) as uow:
        s = uow.session.get_one(Stock, (sku, wh))
        return s.on_hand, s.reserved


def run(fn, settings, *args):
    with unit_of_work(settings) as uow:
        return fn(uow, *args)


def test_an_order_goes_from_paid_to_delivered_through_every_stage(db, broker, settings,
                                                                  carrier) -> None:
    put_stock(settings, [("TEE-M", "US-EAST", "US", 10)])
    ids = submit_orders([native_order("P-1", quantity=2), native_order("P-2", country="DE")],
                        settings=settings).accepted
    approved = run(check_orders, settings, ids, settings)
    assert sorted(approved) == sorted(ids)
    outcome = run(reserve_orders, settings, ids, settings)
    assert sorted(outcome.reserved) == sorted(ids)
    assert stock_of(settings, "TEE-M", "US-EAST") == (10, 3)
    assert run(assign_orders, settings, ids, settings) == []  # waves not full yet
    waves = run(close_waves_older_than, settings, 0.0)
    assert len(waves) == 2  # domestic post and international air
    for wave in waves:
        buy_wave_labels(wave, settings, carrier)
    assert states(settings) == {"labelled": 2}
    assert stock_of(settings, "TEE-M", "US-EAST") == (7, 0)  # stock left with the parcels
    assert carrier.stats()["labels_purchased"] == 2
    with unit_of_work(settings) as uow:
        shipment_ids = list(uow.session.execute(select(Shipment.id)).scalars())

    def delivered() -> bool:
        backfill_shipments(shipment_ids, settings, carrier)
        return states(settings) == {"delivered": 2}

    eventually(delivered, 20, "the backfill to deliver both orders")
    assert states(settings) == {"delivered": 2}
    with unit_of_work(settings) as uow:
        events = uow.session.execute(select(func.count()).select_from(TrackingEvent)).scalar_one()
        path = list(uow.session.execute(select(OrderEvent.to_state).where(
            OrderEvent.order_id == ids[0]).order_by(OrderEvent.id)).scalars())
    assert events >= 10
    assert path == ["received", "fraud_checked", "reserved", "in_wave", "labelled",
                    "in_transit", "delivered"]
    # A re-run of the tracking backfill adds nothing.
    assert backfill_shipments(shipment_ids, settings, carrier) == 0


def test_every_stage_is_safe_to_run_twice(db, broker, settings, carrier) -> None:
    put_stock(settings, [("TEE-M", "US-EAST", "US", 10)])
    ids = submit_orders([native_order(f"R-{i}") for i in range(3)], settings=settings).accepted
    assert len(run(check_orders, settings, ids, settings)) == 3
    assert run(check_orders, settings, ids, settings) == []
    run(reserve_orders, settings, ids, settings)
    assert run(reserve_orders, settings, ids, settings).reserved == []
    assert stock_of(settings, "TEE-M", "US-EAST") == (10, 3)
    run(assign_orders, settings, ids, settings)
    run(assign_orders, settings, ids, settings)
    (wave,) = run(close_waves_older_than, settings, 0.0)
    buy_wave_labels(wave, settings, carrier)
    buy_wave_labels(wave, settings, carrier)  # redelivered message
    assert carrier.stats()["labels_purchased"] == 3
    assert stock_of(settings, "TEE-M", "US-EAST") == (7, 0)
    with unit_of_work(settings) as uow:
        assert uow.session.execute(select(func.count()).select_from(OrderEvent)).scalar() == 15


def test_a_label_charged_but_lost_is_recovered_not_bought_again(db, broker, settings,
                                                                carrier) -> None:
    from domain.carriers import LabelRequest
    from tasks.labels import idempotency_key, prepare_shipments

    put_stock(settings, [("TEE-M", "US-EAST", "US", 10)])
    ids = submit_orders([native_order("L-1")], settings=settings).accepted
    run(check_orders, settings, ids, settings)
    run(reserve_orders, settings, ids, settings)
    run(assign_orders, settings, ids, settings)
    (wave,) = run(close_waves_older_than, settings, 0.0)
    # Given the carrier charged for the label but the worker died before recording it
    (request,) = run(prepare_shipments, settings, wave)
    assert isinstance(request, LabelRequest) and request.idempotency_key == idempotency_key(ids[0])
    first = carrier.buy_label(request)
    # When the task runs again
    buy_wave_labels(wave, settings, carrier)
    # Then it records the same label and the carrier charged once
    with unit_of_work(settings) as uow:
        shipment = uow.session.execute(select(Shipment)).scalar_one()
    assert shipment.tracking_number == first.tracking_number
    assert carrier.stats()["labels_purchased"] == 1


def test_concurrent_reservations_never_oversell(db, broker, settings) -> None:
    # Given 40 units of a hot SKU and 200 orders of 1-2 units in 20 concurrent micro-batches
    put_stock(settings, [("HOT", "US-EAST", "US", 40), ("HOT", "EU-DE", "DE", 0)])
    payloads = [native_order(f"H-{i}", sku="HOT", quantity=1 + i % 2) for i in range(200)]
    ids = submit_orders(payloads, settings=settings).accepted
    run(check_orders, settings, ids, settings)
    parts = [ids[i::20] for i in range(20)]
    # A sell-out this deep would freeze HOT (tests/integration/test_sku_health.py); not here.
    no_freeze = settings.model_copy(update={"sku_auto_freeze": False})
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda p: run(reserve_orders, settings, p, no_freeze), parts))
    reserved = [i for o in outcomes for i in o.reserved]
    with unit_of_work(settings) as uow:
        units = uow.session.execute(
            select(func.coalesce(func.sum(Reservation.quantity), 0))
            .where(Reservation.status == "active")).scalar_one()
    on_hand, held = stock_of(settings, "HOT", "US-EAST")
    assert held == units and on_hand == 40 and 39 <= units <= 40
    assert states(settings) == {"reserved": len(reserved), "backordered": 200 - len(reserved)}


def test_wave_closes_at_size(db, broker, settings) -> None:
    small = settings.model_copy(update={"wave_size": 5})
    put_stock(settings, [("TEE-M", "US-EAST", "US", 100)])
    ids = submit_orders([native_order(f"W-{i}") for i in range(12)], settings=settings).accepted
    run(check_orders, settings, ids, small)
    run(reserve_orders, settings, ids, small)
    closed = run(assign_orders, settings, ids, small)
    with unit_of_work(settings) as uow:
        waves = uow.session.execute(select(Wave).order_by(Wave.id)).scalars().all()
    assert [(w.size, w.status) for w in waves] == [(5, "closed"), (5, "closed"), (2, "open")]
    assert closed == [waves[0].id, waves[1].id]


def test_expired_reservation_gives_stock_back(db, broker, settings) -> None:
    put_stock(settings, [("TEE-M", "US-EAST", "US", 5)])
    ids = submit_orders([native_order("E-1", quantity=2)], settings=settings).accepted
    run(check_orders, settings, ids, settings)
    run(reserve_orders, settings, ids, settings.model_copy(update={"reservation_ttl_s": -1}))
    assert stock_of(settings, "TEE-M", "US-EAST") == (5, 2)
    assert run(expire_stale_reservations, settings, settings) == ids
    assert stock_of(settings, "TEE-M", "US-EAST") == (5, 0)
    assert states(settings) == {"fraud_checked": 1}


def test_illegal_transition_is_refused_and_not_applied(db, broker, settings) -> None:
    ids = submit_orders([native_order("X-1")], settings=settings).accepted
    with pytest.raises(IllegalTransition), unit_of_work(settings) as uow:
        transition(uow.session, ids[0], State.DELIVERED, stage="ops")
    assert states(settings) == {"received": 1}
