"""The review desk with real worker processes: an approved order ships, a cancelled one stops."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from domain.db import unit_of_work
from domain.models import OrderRow
from domain.stock import StockLevel, set_stock_levels
from sandbox.synthetic import generate_labelled_orders, generate_stock
from tasks.intake import submit_orders
from tests.waiting import eventually
from workers.review_api import create_app

pytestmark = pytest.mark.e2e


def states(settings, ids: list[int]) -> list[str]:
    with unit_of_work(settings) as uow:
        return [uow.session.get_one(OrderRow, i).state for i in ids]


def test_approved_orders_resume_at_reservation_and_ship(start_fleet, settings) -> None:
    # Given a fleet and two orders over the review line
    start_fleet()
    with unit_of_work(settings) as uow:
        set_stock_levels(uow, [StockLevel.model_validate(r)
                               for r in generate_stock(seed=8, units_per_sku=20)])
    big = [p for kind, p in generate_labelled_orders(60, seed=8, high_value_rate=0.3,
                                                     invalid_rate=0, risky_rate=0)
           if kind == "high_value"][:2]
    ids = submit_orders(big, settings=settings).accepted
    eventually(lambda: states(settings, ids) == ["on_hold", "on_hold"], 60,
               "the fraud check to hold both")
    # When a reviewer approves one and cancels the other over HTTP
    desk = TestClient(create_app())
    approve = desk.post(f"/review/orders/{ids[0]}/approve",
                        json={"by": "ana", "reason": "customer confirmed by phone"})
    cancel = desk.post(f"/review/orders/{ids[1]}/cancel",
                       json={"by": "ana", "reason": "cardholder disputes it"})
    assert approve.status_code == 200 and cancel.status_code == 200
    # Then the approved one goes through reservation, a wave and a label to delivery
    eventually(lambda: states(settings, ids)[0] == "delivered", 120, "the approved order to ship")
    assert states(settings, ids)[1] == "cancelled"
