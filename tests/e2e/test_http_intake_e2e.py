"""Shopify webhooks through `orderfleet serve` and real workers, fulfilments pushed back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from domain.db import unit_of_work
from domain.models import OrderRow, Shipment, StoreNotification
from sandbox.storefront import SandboxStorefrontServer, shopify_headers
from tests.e2e.conftest import state_counts
from tests.integration.helpers import put_stock
from tests.waiting import eventually
from workers.fleet import Fleet, free_port

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SECRET = "shpss_e2e_webhook_secret"
TOKEN = "shpat_e2e_admin_token"


@pytest.fixture
def fleet_with_api(db, broker, settings, tmp_path) -> Iterator[tuple[Fleet, Any]]:
    with SandboxStorefrontServer(tokens={"acme": TOKEN}) as storefront:
        fleet_settings = settings.model_copy(update={
            "carrier_url": f"http://127.0.0.1:{free_port()}",
            "api_port": free_port(),
            "shopify_secrets": {"acme": SECRET},
            "shopify_admin_tokens": {"acme": TOKEN},
            "shopify_admin_url": f"{storefront.url}/{{shop}}",
            "wave_max_age_s": 1.0,
            "tracking_sweep_interval_s": 2.0,
            "sweep_interval_s": 5.0,
            "stage_deadline_s": 30.0,
            "var_dir": tmp_path,
        })
        fleet = Fleet(fleet_settings, log_dir=tmp_path / "logs", workers=2,
                      carrier_time_scale=36_000.0, api=True)
        try:
            yield fleet.start(), storefront
        finally:
            fleet.stop()


def shopify_orders(n: int) -> list[dict[str, Any]]:
    """n orders in Shopify's webhook shape, alternating the EU and the US fixture."""
    eu = json.loads((FIXTURES / "shopify_order_paid.json").read_text())
    # That body's total leaves out its shipping (120 - 10 + 12.80 + 22.80 tax): intake would hold
    # it for a person. These orders are meant to flow, so their total adds up.
    eu["total_price"] = "145.60"
    us = json.loads((FIXTURES / "shopify" / "orders_paid_us.json").read_text())
    return [{**(eu if i % 2 else us), "id": 6_000_000_000 + i, "financial_status": "paid"}
            for i in range(n)]


def test_shopify_webhooks_flow_to_delivery_and_fulfilments_flow_back(fleet_with_api,
                                                                     settings) -> None:
    fleet, storefront = fleet_with_api
    api = f"http://127.0.0.1:{fleet.settings.api_port}/webhooks/shopify/acme"
    put_stock(settings, [("MUG-SAGE-350", "US-EAST", "US", 100),
                         ("NB-MONO-A5", "US-EAST", "US", 100),
                         ("TEE-ORG-M", "EU-DE", "DE", 100), ("RING-ENG-7", "EU-DE", "DE", 100)])
    orders = shopify_orders(24)
    overtaken, cancelled_early = orders[-1], orders[-2]
    answers = []
    with httpx.Client(timeout=10) as client:

        def post(topic: str, order: dict[str, Any], event_id: str) -> httpx.Response:
            body = json.dumps(order).encode()
            answer = client.post(api, content=body, headers=shopify_headers(
                SECRET, body, topic, "acme", event_id=event_id))
            answers.append(answer)
            return answer

        # The cancellation of the last order arrives before its paid webhook.
        post("orders/cancelled", {**overtaken, "cancelled_at": "2026-11-27T10:05:00-05:00"},
             "cancel-last")
        for order in orders:
            post("orders/paid", order, f"paid-{order['id']}")
        # Shopify redelivers a few; one order is cancelled right after it was paid.
        for order in orders[:5]:
            assert post("orders/paid", order, f"paid-{order['id']}").json()["status"] == \
                "duplicate"
        post("orders/cancelled", {**cancelled_early, "cancelled_at": "2026-11-27T10:06:00Z",
                                  "cancel_reason": "customer"}, "cancel-early")
    # Every delivery was answered 200, well inside Shopify's 5 s.
    assert {a.status_code for a in answers} == {200}
    assert max(a.elapsed.total_seconds() for a in answers) < 5.0

    def settled() -> bool:
        counts = state_counts(settings)
        return counts.get("delivered", 0) == len(orders) - 2 and \
            counts.get("cancelled", 0) == 2
    eventually(settled, 150, "22 orders delivered and 2 cancelled")

    with unit_of_work(settings) as uow:
        rows = {r.source_order_id: r for r in uow.session.execute(select(OrderRow)).scalars()}
        tracking = dict(uow.session.execute(
            select(OrderRow.source_order_id, Shipment.tracking_number)
            .join(Shipment, Shipment.order_id == OrderRow.id)
            .where(Shipment.status == "delivered")).all())
    assert len(rows) == len(orders)
    assert rows[str(overtaken["id"])].state == "cancelled"
    assert rows[str(cancelled_early["id"])].state == "cancelled"

    # Then the shop hears about every delivered order: one fulfilment with its tracking
    # number, and one event per status up to "delivered".
    def told() -> bool:
        with unit_of_work(settings) as uow:
            pending = uow.session.execute(select(StoreNotification.id).where(
                StoreNotification.status.in_(("pending", "sending")))).all()
        delivered_events = sum(
            1 for evs in storefront.state.events.values()
            if any(e["status"] == "delivered" for e in evs))
        return not pending and delivered_events == len(tracking)
    eventually(told, 60, "every fulfilment and delivered event to reach the shop")
    fulfilments = storefront.state.fulfillments
    assert len(fulfilments) == len(tracking)
    for source_id, number in tracking.items():
        (ful,) = fulfilments[("acme", source_id)]
        assert ful["tracking_number"] == number
        statuses = [e["status"] for e in storefront.state.events[str(ful["id"])]]
        assert len(statuses) == len(set(statuses)) and "delivered" in statuses
    assert ("acme", str(overtaken["id"])) not in fulfilments
    assert ("acme", str(cancelled_early["id"])) not in fulfilments
    with unit_of_work(settings) as uow:
        failed = uow.session.execute(select(StoreNotification).where(
            StoreNotification.status == "failed")).scalars().all()
    assert failed == []
    assert all(fleet.alive().values())
