"""The returns lane's steps on real PostgreSQL and the sandbox carrier: each safe twice."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from domain.db import unit_of_work
from domain.models import OrderRow, ReturnRequest, Stock, StoreNotification
from domain.returns import (
    SETTLE_RETURNS,
    ReturnRefused,
    issue_return_labels,
    receive_order_return,
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


def refund_notices(settings, order_id: int) -> int:
    with unit_of_work(settings) as uow:
        return len(uow.session.execute(select(StoreNotification.id).where(
            StoreNotification.order_id == order_id,
            StoreNotification.event == "refund_due")).all())


def test_receiving_by_order_goes_through_the_return_once_whichever_command(
        db, broker, settings, carrier) -> None:
    from workers.cli import main

    put_stock(settings, [("TEE-M", "US-EAST", "US", 5)])
    oid = delivered_order(settings, carrier, "RET-3")
    with unit_of_work(settings) as uow:
        rid = request_return(uow, oid, "too big")
    assert issue_return_labels([rid], settings, carrier).issued == [rid]
    broker.delete("returns")
    # The old by-order command and the returns lane's command, each twice.
    out = [CliRunner().invoke(main, ["receive-return", "RET-3"]),
           CliRunner().invoke(main, ["receive-return", "RET-3"]),
           CliRunner().invoke(main, ["returns", "receive", str(rid), "--condition",
                                     "resellable"])]
    assert [o.exit_code for o in out] == [0, 1, 0], [o.output for o in out]
    assert "received already" in out[1].output and "received already" in out[2].output
    with unit_of_work(settings) as uow:  # the same return row, no second one
        assert uow.session.execute(select(ReturnRequest.id)).scalars().all() == [rid]
    assert broker.llen("returns") == 1
    assert json.loads(broker.lindex("returns", 0))["headers"]["task"] == SETTLE_RETURNS
    assert run(settle_returns, settings, [rid]) == {"restocked": [oid]}
    assert run(settle_returns, settings, [rid]) == {}
    with unit_of_work(settings) as uow:
        assert uow.session.get_one(Stock, ("TEE-M", "US-EAST")).on_hand == 5  # 4, +1 once
    assert refund_notices(settings, oid) == 1


def test_a_parcel_sent_back_unasked_is_received_through_a_return_opened_on_arrival(
        db, broker, settings, carrier) -> None:
    put_stock(settings, [("TEE-M", "US-EAST", "US", 5)])
    oid = delivered_order(settings, carrier, "RET-4")
    with unit_of_work(settings) as uow:
        assert receive_order_return(uow, oid, "damaged") is True
    with unit_of_work(settings) as uow:
        assert receive_order_return(uow, oid, "damaged") is False
        (ret,) = uow.session.execute(select(ReturnRequest)).scalars().all()
        assert (ret.status, ret.label_id) == ("received", None)  # no return label bought
        assert uow.session.get_one(OrderRow, oid).state == "return_requested"
    assert run(settle_returns, settings, [ret.id]) == {"written_off": [oid]}
    with unit_of_work(settings) as uow:
        assert uow.session.get_one(Stock, ("TEE-M", "US-EAST")).on_hand == 4  # not restocked
        assert uow.session.get_one(OrderRow, oid).state == "returned"
    assert refund_notices(settings, oid) == 1
    with unit_of_work(settings) as uow:  # received: nothing more, by either path
        assert receive_order_return(uow, oid, "resellable") is False
        assert receive_return(uow, ret.id, "resellable") is False
    # An order that never left the warehouse has no parcel to receive.
    (fresh,) = submit_orders([native_order("RET-5")], settings=settings).accepted
    with unit_of_work(settings) as uow, pytest.raises(ReturnRefused, match="never left"):
        receive_order_return(uow, fresh, "resellable")
