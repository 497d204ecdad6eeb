"""The returns lane's steps on real PostgreSQL and the sandbox carrier: each safe twice."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from domain.db import unit_of_work
from domain.models import OrderRow, ReturnRequest, Stock, StoreNotification
from domain.returns import (
    ReturnRefused,
    issue_return_labels,
    receive_return,
    request_return,
    settle_returns,
)
from tasks.fraud import check_orders
from tasks.intake import submit_orders
from tasks.inventory import reserve_orders
from tasks.labels import buy_wave_labels
from tasks.sharding import assign_orders, close_waves_older_than
from tests.integration.helpers import native_order, put_stock


def run(fn, settings, *args):
    with unit_of_work(settings) as uow:
        return fn(uow, *args)


def delivered_order(settings, carrier, ref: str) -> int:
    (oid,) = submit_orders([native_order(ref)], settings=settings).accepted
    run(check_orders, settings, [oid], settings)
    run(reserve_orders, settings, [oid], settings)
    run(assign_orders, settings, [oid], settings)
    for wave in run(close_waves_older_than, settings, 0.0):
        buy_wave_labels(wave, settings, carrier)
    with unit_of_work(settings) as uow:  # the carrier delivered it
        uow.session.execute(update(OrderRow).where(OrderRow.id == oid)
                            .values(state="delivered"))
    return oid


def test_every_step_of_a_return_is_safe_to_run_twice(db, broker, settings, carrier) -> None:
    put_stock(settings, [("TEE-M", "US-EAST", "US", 5)])
    oid = delivered_order(settings, carrier, "RET-1")
    with unit_of_work(settings) as uow:
        rid = request_return(uow, oid, "too small")
    with unit_of_work(settings) as uow:
        assert request_return(uow, oid, "again") == rid  # one return per order
    first = issue_return_labels([rid], settings, carrier)
    again = issue_return_labels([rid], settings, carrier)  # a redelivered message
    assert (first.issued, again.issued) == ([rid], [])
    assert carrier.stats()["labels_purchased"] == 2  # the parcel's and the return's, once
    with unit_of_work(settings) as uow:
        assert receive_return(uow, rid, "resellable") is True
    with unit_of_work(settings) as uow:
        assert receive_return(uow, rid, "resellable") is False
    assert run(settle_returns, settings, [rid]) == {"restocked": [oid]}
    assert run(settle_returns, settings, [rid]) == {}
    with unit_of_work(settings) as uow:
        s = uow.session
        assert s.get_one(Stock, ("TEE-M", "US-EAST")).on_hand == 5  # 4 after the sale, +1
        assert s.get_one(OrderRow, oid).state == "returned"
        r = s.get_one(ReturnRequest, rid)
        assert (r.status, r.condition, str(r.refund_usd)) == ("restocked", "resellable",
                                                             "20.00")
        events = s.execute(select(StoreNotification.event).where(
            StoreNotification.order_id == oid)).scalars().all()
        assert events.count("refund_due") == 1


def test_only_a_delivered_order_can_be_returned(db, broker, settings) -> None:
    put_stock(settings, [("TEE-M", "US-EAST", "US", 5)])
    (oid,) = submit_orders([native_order("RET-2")], settings=settings).accepted
    with unit_of_work(settings) as uow, pytest.raises(ReturnRefused, match="received"):
        request_return(uow, oid, "changed my mind")
    with unit_of_work(settings) as uow, pytest.raises(ReturnRefused):
        receive_return(uow, 999, "damaged")
