"""A split shipment with real worker processes: an order no single warehouse can serve goes
from intake to two delivered parcels, each told to the store as part of the store's order."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from domain.db import unit_of_work
from domain.models import OrderRow, Shipment, Wave
from sandbox.storefront import SandboxStorefrontServer
from tasks.intake import submit_orders
from tests.integration.helpers import native_order, put_stock
from tests.waiting import eventually

pytestmark = pytest.mark.e2e
SECRET = "split-store-secret"
LINES = [{"sku": "TEE-M", "quantity": 2, "unit_price": "10.00", "weight_g": 200},
         {"sku": "MUG", "quantity": 1, "unit_price": "15.00", "weight_g": 400}]


def test_an_order_two_warehouses_share_ships_as_two_parcels_with_real_workers(
        start_fleet, settings) -> None:
    with SandboxStorefrontServer(secrets={"shop": SECRET}) as shop:
        # Given a fleet, a store that takes signed webhooks, TEE-M only in US-EAST and MUG
        # only in EU-DE
        fleet = start_fleet(store_secrets={"shop": SECRET},
                            store_webhook_urls={"shop": f"{shop.url}/hooks/shop"})
        fs = fleet.settings
        put_stock(fs, [("TEE-M", "US-EAST", "US", 10), ("MUG", "EU-DE", "DE", 10)])
        # When an order of both is paid
        (parent,) = submit_orders([native_order(
            "SP-1", store="shop", lines=LINES,
            totals={"subtotal": "35.00", "shipping": "5.00", "total": "40.00"})],
            settings=fs).accepted

        def parts_delivered() -> list[tuple[int, str, str | None, int | None]]:
            with unit_of_work(fs) as uow:
                rows = uow.session.execute(
                    select(OrderRow.id, OrderRow.state, OrderRow.warehouse, OrderRow.wave_id)
                    .where(OrderRow.parent_id == parent).order_by(OrderRow.part_no)).all()
            done = len(rows) == 2 and all(r.state == "delivered" for r in rows)
            return [(r.id, r.state, r.warehouse, r.wave_id) for r in rows] if done else []

        # Then it is split, and each part is reserved, waved, labelled and delivered from
        # its own warehouse by the workers
        parts = eventually(parts_delivered, 240, "both parts delivered")
        assert [wh for _, _, wh, _ in parts] == ["EU-DE", "US-EAST"]
        wave_ids = [w for *_, w in parts if w is not None]
        with unit_of_work(fs) as uow:
            s = uow.session
            assert s.get_one(OrderRow, parent).state == "split"
            assert s.get_one(OrderRow, parent).wave_id is None
            waves = dict(s.execute(select(Wave.id, Wave.warehouse)
                                   .where(Wave.id.in_(wave_ids))).all())
            tracking = dict(s.execute(select(Shipment.order_id, Shipment.tracking_number)
                                      .where(Shipment.order_id.in_([p[0] for p in parts])))
                            .all())
            assert s.execute(select(Shipment.id).where(Shipment.order_id == parent)).first() \
                is None
        assert [waves[w] for w in wave_ids] == ["EU-DE", "US-EAST"]
        assert len(tracking) == 2 and all(tracking.values())

        # And the store heard of each parcel once, as part of its order SP-1, with its lines
        def labels_told() -> list[dict[str, Any]]:
            with shop.state.lock:
                told = [w["json"] for w in shop.state.webhooks.get("shop", [])
                        if w["json"]["event"] == "label_bought"]
            return sorted(told, key=lambda j: int(str(j["part"]))) if len(told) == 2 else []

        told = eventually(labels_told, 120, "both labels pushed back to the store")
        assert [(j["order_id"], j["part"], j["line_items"]) for j in told] == [
            ("SP-1", 1, [{"sku": "MUG", "quantity": 1}]),
            ("SP-1", 2, [{"sku": "TEE-M", "quantity": 2}])]
        assert [j["tracking"]["number"] for j in told] == [tracking[p[0]] for p in parts]
