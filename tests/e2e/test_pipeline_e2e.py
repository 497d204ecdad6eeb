"""The whole pipeline on real worker processes, real Redis, real PostgreSQL, real HTTP."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import func, select

from domain.carriers import CarrierClient
from domain.db import unit_of_work
from domain.models import OrderLine, OrderRow, RejectedOrder, Reservation, Shipment, Stock
from domain.stock import StockLevel, set_stock_levels
from sandbox.synthetic import generate_labelled_orders, generate_stock
from tasks.intake import submit_orders
from tests.e2e.conftest import state_counts
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

# Where each kind of synthetic order must end.
EXPECTED = {"normal": "delivered", "high_value": "on_hold", "risky": "rejected"}
SETTLED = {"delivered", "on_hold", "rejected", "backordered", "label_failed"}


def test_300_orders_reach_their_terminal_state_with_one_label_each(start_fleet, settings) -> None:
    # Given a fleet of two worker processes and plenty of stock
    fleet = start_fleet()
    with unit_of_work(settings) as uow:
        set_stock_levels(uow, [StockLevel.model_validate(r)
                               for r in generate_stock(seed=3, units_per_sku=300)])
    labelled = generate_labelled_orders(300, seed=3, invalid_rate=0.03, high_value_rate=0.05,
                                        risky_rate=0.05)
    kinds = Counter(kind for kind, _ in labelled)
    # When the storefront submits them (twice: a retried delivery must change nothing)
    payloads = [p for _, p in labelled]
    result = submit_orders(payloads, settings=settings)
    again = submit_orders(payloads[:50], settings=settings)
    assert again.accepted == []
    # An invalid payload is refused, or (totals that do not add up, a Shopify line without a
    # SKU whose variant stands in) becomes an order held at intake for a person.
    assert len(result.accepted) + len(result.rejected) == 300
    assert len(result.rejected) + len(result.held) == kinds["invalid"]

    def settled() -> bool:
        counts = state_counts(settings)
        return sum(n for s, n in counts.items() if s in SETTLED) == len(result.accepted)

    eventually(settled, 240, "every order to settle")

    # Then every valid order is where its kind says
    with unit_of_work(settings) as uow:
        s = uow.session
        by_source_id = {r.source_order_id: r.state for r in s.execute(select(OrderRow)).scalars()}
        held_at_intake = 0
        for kind, payload in labelled:
            source_id = str(payload.get("order_id", payload.get("id")))
            if kind == "invalid":
                if source_id in by_source_id:
                    assert by_source_id[source_id] == "on_hold", source_id
                    held_at_intake += 1
                continue
            assert by_source_id[source_id] == EXPECTED[kind], (kind, source_id)
        assert held_at_intake == len(result.held)
        # ... invalid ones are kept with their reasons (each delivery of one, resubmits too)
        rejected = s.execute(select(RejectedOrder.source_order_id, RejectedOrder.reason)).all()
        assert len({r.source_order_id for r in rejected}) == kinds["invalid"] - held_at_intake
        assert all(r.reason for r in rejected)
        # ... exactly one label per shipped order, and the carrier charged exactly that many
        shipped = s.execute(select(func.count()).select_from(OrderRow)
                            .where(OrderRow.state == "delivered")).scalar()
        labels = s.execute(select(func.count(Shipment.label_id.distinct()))).scalar()
        per_order = s.execute(select(Shipment.order_id, func.count()).group_by(Shipment.order_id)
                              .having(func.count() > 1)).all()
        assert shipped == kinds["normal"] == labels and per_order == []
        # ... stock never below zero, nothing left reserved, shipped units left the shelves
        lowest = s.execute(select(func.min(Stock.on_hand - Stock.reserved))).scalar()
        assert lowest is not None and lowest >= 0
        assert s.execute(select(func.sum(Stock.reserved))).scalar() == 0
        consumed = s.execute(select(func.sum(Reservation.quantity))
                             .where(Reservation.status == "consumed")).scalar()
        ordered = s.execute(select(func.sum(OrderLine.quantity))
                            .join(OrderRow, OrderRow.id == OrderLine.order_id)
                            .where(OrderRow.state == "delivered")).scalar()
        assert consumed == ordered
    with CarrierClient(fleet.settings.carrier_url) as carrier:
        assert carrier.stats()["labels_purchased"] == labels
    assert all(fleet.alive().values())


def test_a_lost_message_is_re_driven_by_the_beat_sweep(start_fleet, settings, broker) -> None:
    # Given orders whose fraud-check message was lost (persisted, never enqueued)
    from tasks.intake import persist_orders

    fleet = start_fleet(stage_deadline_s=2.0, sweep_interval_s=1.0)
    with unit_of_work(settings) as uow:
        set_stock_levels(uow, [StockLevel.model_validate(r)
                               for r in generate_stock(seed=4, units_per_sku=50)])
        ids = persist_orders(uow, [p for k, p in generate_labelled_orders(20, seed=4)
                                   if k == "normal"], fleet.settings).accepted
    # When the beat sweep runs, then the orders progress anyway
    eventually(lambda: state_counts(settings).get("delivered", 0) == len(ids), 90,
               "re-driven orders to be delivered")
