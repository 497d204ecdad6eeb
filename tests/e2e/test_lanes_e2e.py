"""Lanes with real worker processes: the returns flow end to end, and a flooded lane that
does not hold up standard orders."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from domain.cancellation import cancel_orders
from domain.db import unit_of_work
from domain.models import OrderRow, ReturnRequest, Shipment, Stock, StoreNotification, Wave
from domain.returns import receive_order_return, receive_return, request_return
from sandbox.storefront import SandboxStorefrontServer
from tasks.fraud import check_orders
from tasks.intake import submit_orders
from tasks.inventory import reserve_orders
from tasks.sharding import assign_orders
from tests.e2e.conftest import state_counts
from tests.integration.helpers import native_order, put_stock
from tests.waiting import eventually

pytestmark = pytest.mark.e2e
SECRET = "returns-store-secret"


def test_a_return_goes_from_request_to_refund_notice_with_real_workers(start_fleet,
                                                                       settings) -> None:
    with SandboxStorefrontServer(secrets={"shop": SECRET}) as shop:
        # Given a fleet, a store that takes signed webhooks, and three delivered orders
        fleet = start_fleet(store_secrets={"shop": SECRET},
                            store_webhook_urls={"shop": f"{shop.url}/hooks/shop"})
        fs = fleet.settings
        put_stock(fs, [("TEE-M", "US-EAST", "US", 10)])
        *ids, cancelled = submit_orders([native_order("RT-1", store="shop"),
                                         native_order("RT-2", store="shop"),
                                         native_order("RT-3", store="shop")],
                                        settings=fs).accepted
        eventually(lambda: state_counts(fs).get("delivered", 0) == 3, 240,
                   "the orders to be delivered")

        # When the customers ask to return two, and the third is cancelled after handover
        with unit_of_work(fs) as uow:
            returns = [request_return(uow, oid, "does not fit") for oid in ids]
        with unit_of_work(fs) as uow:
            assert cancel_orders(uow, [cancelled], "customer").returns == [cancelled]
        with unit_of_work(fs) as uow:  # asking again opens nothing new
            assert request_return(uow, ids[0], "again") == returns[0]

        def labels_issued() -> bool:
            with unit_of_work(fs) as uow:
                rows = uow.session.execute(select(ReturnRequest)).scalars().all()
                return all(r.status == "label_issued" and r.tracking_number for r in rows)

        # Then a worker on the returns queue buys a return label for each
        eventually(labels_issued, 120, "return labels bought by the returns lane")

        # When the parcels are back: one resellable, one damaged
        with unit_of_work(fs) as uow:
            assert receive_return(uow, returns[0], "resellable")
            assert receive_return(uow, returns[1], "damaged")
        # ... and the cancelled one, received by order twice (it had no return: one is opened)
        with unit_of_work(fs) as uow:
            assert receive_order_return(uow, cancelled, "resellable")
        with unit_of_work(fs) as uow:
            assert not receive_order_return(uow, cancelled, "resellable")

        def settled() -> dict[int, str]:
            with unit_of_work(fs) as uow:
                rows = dict(uow.session.execute(
                    select(ReturnRequest.id, ReturnRequest.status)).all())
            done = len(rows) == 3 and set(rows.values()) <= {"restocked", "written_off"}
            return rows if done else {}

        outcome = eventually(settled, 120, "returns settled")
        assert [outcome[r] for r in returns] == ["restocked", "written_off"]
        assert sorted(outcome.values()) == ["restocked", "restocked", "written_off"]
        # Then the resellable units are back on the shelf once each, the damaged one is not
        with unit_of_work(fs) as uow:
            s = uow.session
            assert s.get_one(Stock, ("TEE-M", "US-EAST")).on_hand == 9  # 10 - 3 + 2
            assert set(s.execute(select(OrderRow.state)).scalars()) == {"returned"}
            assert set(s.execute(select(Shipment.status)).scalars()) == {"returned"}

        # And the store is told to refund, once per order, by a signed webhook
        def refund_notices() -> list[dict]:
            hooks = [w for w in shop.state.webhooks.get("shop", [])
                     if w["topic"] == "refund_due"]
            return hooks if len(hooks) == 3 else []

        hooks = eventually(refund_notices, 60, "three refund notices at the store")
        assert sorted(h["json"]["order_id"] for h in hooks) == ["RT-1", "RT-2", "RT-3"]
        with unit_of_work(fs) as uow:  # one refund notice per order, the cancelled one too
            assert sorted(uow.session.execute(select(StoreNotification.order_id).where(
                StoreNotification.event == "refund_due")).scalars()) == sorted(
                    [*ids, cancelled])
        assert all("tracking" not in h["json"] for h in hooks)


def test_a_flood_of_custom_made_orders_does_not_hold_up_standard_ones(start_fleet,
                                                                      settings) -> None:
    # Given 300 custom-made orders whose waves wait for labels on their own queue
    flood = 300
    # (one order per wave, one wave per label message: waves closed together would otherwise
    # share messages, and 300 small waves drain in two)
    one = settings.model_copy(update={"wave_size": 1, "label_batch_orders": 1})
    put_stock(settings, [("RING", "US-EAST", "US", flood), ("TEE-M", "US-EAST", "US", 50)])
    engraved = [{"sku": "RING", "quantity": 1, "unit_price": "20.00", "weight_g": 50,
                 "properties": {"Engraving": "forever"}}]
    custom = submit_orders([native_order(f"RING-{i}", lines=engraved) for i in range(flood)],
                           settings=settings).accepted
    with unit_of_work(one) as uow:
        check_orders(uow, custom, one)
    with unit_of_work(one) as uow:
        reserve_orders(uow, custom, one)
    with unit_of_work(one) as uow:  # 300 closed waves, 300 label messages on labels_custom
        closed = assign_orders(uow, custom, one)
        from domain.pipeline import label_waves
        label_waves(uow, closed)
    assert len(closed) == flood

    # When the fleet starts and standard orders arrive behind the flood
    fleet = start_fleet(workers=1, concurrency=2)
    standard = submit_orders([native_order(f"STD-{i}") for i in range(10)],
                             settings=fleet.settings).accepted

    def standard_labelled() -> int:
        with unit_of_work(settings) as uow:
            done = uow.session.execute(select(func.count()).select_from(OrderRow).where(
                OrderRow.id.in_(standard),
                OrderRow.state.in_(["labelled", "in_transit", "delivered"]))).scalar_one()
            return done == len(standard) and uow.session.execute(
                select(func.count()).select_from(Wave).where(
                    Wave.lane == "custom", Wave.status == "labelled")).scalar_one() + 1

    # Then every standard order is labelled while custom-made waves are still waiting
    custom_done = eventually(standard_labelled, 240, "standard orders labelled") - 1
    assert custom_done < flood, "the custom-made flood drained before standard orders"
    # ... and the flood is not lost: it drains too
    eventually(lambda: state_counts(settings).get("in_wave", 0) == 0, 400,
               "the custom-made waves to be labelled")
