"""Push-back to a real sandbox storefront HTTP server: Shopify fulfilments and signed webhooks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from domain.alerts import open_alerts
from domain.db import unit_of_work
from domain.models import OrderRow, Shipment, StoreNotification
from domain.notifications import notify_store
from tasks.fraud import check_orders
from tasks.intake import submit_orders
from tasks.inventory import reserve_orders
from tasks.labels import buy_wave_labels
from tasks.pushback import send_notifications
from tasks.sharding import assign_orders, close_waves_older_than
from tasks.tracking import backfill_shipments
from tests.integration.conftest import TOKEN
from tests.integration.helpers import native_order, put_stock
from tests.waiting import eventually

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def run(fn, settings, *args, **kw):
    with unit_of_work(settings) as uow:
        return fn(uow, *args, **kw)


def labelled(settings, carrier, payload: dict[str, Any], store: str | None = None) -> int:
    """Take one order from intake to labelled with the stage functions; return its id."""
    (order_id,) = submit_orders([payload], settings=settings, store=store).accepted
    run(check_orders, settings, [order_id], settings)
    run(reserve_orders, settings, [order_id], settings)
    run(assign_orders, settings, [order_id], settings)
    for wave in run(close_waves_older_than, settings, 0.0):
        buy_wave_labels(wave, settings, carrier)
    with unit_of_work(settings) as uow:
        assert uow.session.get_one(OrderRow, order_id).state == "labelled"
    return order_id


def shopify_paid() -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(
        (FIXTURES / "shopify" / "orders_paid_us.json").read_text())
    return payload


def notifications(settings, order_id: int) -> dict[str, StoreNotification]:
    with unit_of_work(settings) as uow:
        return {n.event: n for n in uow.session.execute(
            select(StoreNotification).where(StoreNotification.order_id == order_id)).scalars()}


def shipment(settings, order_id: int) -> Shipment:
    with unit_of_work(settings) as uow:
        return uow.session.execute(
            select(Shipment).where(Shipment.order_id == order_id)).scalar_one()


def stock_for_fixture(settings) -> None:
    put_stock(settings, [("MUG-SAGE-350", "US-EAST", "US", 10), ("NB-MONO-A5", "US-EAST", "US", 10),
                         ("TEE-M", "US-EAST", "US", 10)])


def test_a_bought_label_becomes_one_shopify_fulfilment_with_tracking(
        shop_settings, storefront, carrier) -> None:
    settings = shop_settings
    stock_for_fixture(settings)
    # Given a Shopify order whose label was just bought (the label stage queued the news)
    order_id = labelled(settings, carrier, shopify_paid(), store="acme")
    news = notifications(settings, order_id)["label_bought"]
    assert (news.channel, news.status) == ("shopify", "pending")
    # When the push-back stage sends it, twice (a redelivered message)
    first = send_notifications([news.id], settings)
    second = send_notifications([news.id], settings)
    # Then the shop has exactly one fulfilment, carrying the tracking number, company and URL
    assert first.sent == [news.id] and second.sent == []
    (ful,) = storefront.state.fulfillments[("acme", "5213468230001")]
    sh = shipment(settings, order_id)
    assert ful["tracking_number"] == sh.tracking_number
    assert ful["tracking_company"] in ("SBX Post", "SBX Air Express")
    assert sh.tracking_number in ful["tracking_url"] and ful["notify_customer"] is True
    sent = notifications(settings, order_id)["label_bought"]
    assert (sent.status, sent.remote_id) == ("sent", f"gid://shopify/Fulfillment/{ful['id']}")
    # Through the Admin GraphQL API (fulfillment orders, then fulfillmentCreate with
    # trackingInfo), with the shop's token; no legacy REST call.
    calls = [r for r in storefront.state.received if "/admin/api/" in r["path"]]
    assert calls and all(r["path"].endswith("/graphql.json") for r in calls)
    assert all(r["headers"]["x-shopify-access-token"] == TOKEN for r in calls)
    documents = [r["json"]["query"] for r in calls]
    assert any("fulfillmentOrders" in d for d in documents)
    (create,) = [r["json"] for r in calls if "fulfillmentCreate(" in r["json"]["query"]]
    assert create["variables"]["fulfillment"]["trackingInfo"]["number"] == sh.tracking_number
    assert ful["via"] == "graphql"


def test_each_tracking_status_reached_is_one_fulfilment_event(shop_settings, storefront,
                                                              carrier) -> None:
    settings = shop_settings
    stock_for_fixture(settings)
    order_id = labelled(settings, carrier, shopify_paid(), store="acme")
    sh = shipment(settings, order_id)

    def delivered() -> bool:
        backfill_shipments([sh.id], settings, carrier)
        return shipment(settings, order_id).status == "delivered"

    eventually(delivered, 30, "the backfill to deliver the parcel")
    backfill_shipments([sh.id], settings, carrier)  # a re-run adds no news
    news = notifications(settings, order_id)
    assert {"label_bought", "tracking:in_transit", "tracking:delivered"} <= set(news)
    out = send_notifications([n.id for n in news.values()], settings)
    assert sorted(out.sent) == sorted(n.id for n in news.values())
    (ful,) = storefront.state.fulfillments[("acme", "5213468230001")]
    statuses = [e["status"] for e in storefront.state.events[str(ful["id"])]]
    assert "in_transit" in statuses and statuses[-1] == "delivered"
    assert len(statuses) == len(set(statuses)) == len(news) - 1
    # The same status told again (a lost response, re-sent): no second event.
    with unit_of_work(settings) as uow:
        uow.session.execute(update(StoreNotification)
                            .where(StoreNotification.id == news["tracking:delivered"].id)
                            .values(status="pending"))
    send_notifications([news["tracking:delivered"].id], settings)
    assert [e["status"] for e in storefront.state.events[str(ful["id"])]] == statuses


def test_a_failing_store_is_retried_and_a_lost_response_creates_no_duplicate(
        shop_settings, storefront, carrier) -> None:
    settings = shop_settings
    stock_for_fixture(settings)
    order_id = labelled(settings, carrier, shopify_paid(), store="acme")
    nid = notifications(settings, order_id)["label_bought"].id
    # Shopify answers 503 twice, then 429 with Retry-After: the adapter retries within budget.
    storefront.fail_next(503, times=2, path_contains="graphql.json")
    storefront.fail_next(429, times=1, path_contains="graphql.json", retry_after=0.1)
    assert send_notifications([nid], settings).sent == [nid]
    # Given the fulfilment was created but the worker died before recording it
    with unit_of_work(settings) as uow:
        uow.session.execute(update(StoreNotification).where(StoreNotification.id == nid)
                            .values(status="pending", remote_id=None))
    # When it is sent again, the existing fulfilment is adopted, not duplicated
    assert send_notifications([nid], settings).sent == [nid]
    (ful,) = storefront.state.fulfillments[("acme", "5213468230001")]
    assert notifications(settings, order_id)["label_bought"].remote_id == \
        f"gid://shopify/Fulfillment/{ful['id']}"


def test_a_store_down_past_the_budget_keeps_the_news_pending_for_later(
        shop_settings, storefront, carrier) -> None:
    settings = shop_settings
    stock_for_fixture(settings)
    order_id = labelled(settings, carrier, shopify_paid(), store="acme")
    nid = notifications(settings, order_id)["label_bought"].id
    storefront.fail_next(503, times=1000)
    out = send_notifications([nid], settings)
    assert list(out.retry) == [nid] and out.sent == []
    pending = notifications(settings, order_id)["label_bought"]
    assert pending.status == "pending" and pending.last_error is not None
    assert "503" in pending.last_error
    storefront.state.failures.clear()
    assert send_notifications([nid], settings).sent == [nid]


def test_a_refusal_fails_the_news_and_raises_an_alert(shop_settings, storefront,
                                                      carrier) -> None:
    settings = shop_settings
    stock_for_fixture(settings)
    order_id = labelled(settings, carrier, shopify_paid(), store="acme")
    nid = notifications(settings, order_id)["label_bought"].id
    storefront.fail_next(401, times=5)
    out = send_notifications([nid], settings)
    assert list(out.failed) == [nid]
    assert notifications(settings, order_id)["label_bought"].status == "failed"
    with unit_of_work(settings) as uow:
        assert [(a.kind, a.key) for a in open_alerts(uow.session)] == [("pushback_failed",
                                                                       "acme")]


def test_a_custom_store_gets_a_signed_webhook_once(shop_settings, storefront, carrier) -> None:
    settings = shop_settings
    stock_for_fixture(settings)
    order_id = labelled(settings, carrier, native_order("WEB-7", store="custom"))
    nid = notifications(settings, order_id)["label_bought"].id
    assert send_notifications([nid], settings).sent == [nid]
    with unit_of_work(settings) as uow:
        uow.session.execute(update(StoreNotification).where(StoreNotification.id == nid)
                            .values(status="pending"))
    send_notifications([nid], settings)  # re-sent: same event id, the store de-duplicates
    (hook,) = storefront.state.webhooks["custom"]
    assert hook["event_id"] == f"{order_id}:label_bought" and hook["topic"] == "label_bought"
    body = hook["json"]
    assert (body["order_id"], body["store"], body["event"]) == ("WEB-7", "custom",
                                                                "label_bought")
    assert body["tracking"]["number"] == shipment(settings, order_id).tracking_number
    # The sandbox refused nothing: every delivery carried a valid signature.
    hooks = [r for r in storefront.state.received if r["path"] == "/hooks/custom"]
    assert len(hooks) == 2 and all("x-orderfleet-signature" in r["headers"] for r in hooks)


def test_a_store_without_push_back_configured_is_skipped_visibly(shop_settings,
                                                                 carrier) -> None:
    settings = shop_settings
    stock_for_fixture(settings)
    order_id = labelled(settings, carrier, native_order("OTHER-1", store="elsewhere"))
    news = notifications(settings, order_id)["label_bought"]
    assert (news.channel, news.status) == ("none", "skipped")
    assert run(notify_store, settings, [order_id], "label_bought") == []


def test_news_whose_message_was_lost_is_found_by_the_sweep(shop_settings, storefront,
                                                           carrier) -> None:
    from tasks.pushback import due_notifications

    settings = shop_settings
    stock_for_fixture(settings)
    order_id = labelled(settings, carrier, shopify_paid(), store="acme")
    nid = notifications(settings, order_id)["label_bought"].id
    with unit_of_work(settings) as uow:
        assert due_notifications(uow, settings) == []  # not overdue yet
    overdue = settings.model_copy(update={"stage_deadline_s": 0.0})
    with unit_of_work(settings) as uow:
        assert due_notifications(uow, overdue) == [nid]
    # A send that died mid-way (claimed, never recorded) is due once its lease ran out.
    with unit_of_work(settings) as uow:
        uow.session.execute(update(StoreNotification).where(StoreNotification.id == nid)
                            .values(status="sending"))
        assert due_notifications(uow, overdue) == []
    assert send_notifications([nid], settings).sent == []  # still leased to the dead worker


def test_an_ops_cancellation_is_told_to_a_custom_store(shop_settings, storefront) -> None:
    from domain.cancellation import cancel_orders

    settings = shop_settings
    (order_id,) = submit_orders([native_order("WEB-9", store="custom")],
                                settings=settings).accepted
    run(cancel_orders, settings, [order_id], "out of stock for good", notify=True)
    news = notifications(settings, order_id)["cancelled"]
    assert send_notifications([news.id], settings).sent == [news.id]
    (hook,) = storefront.state.webhooks["custom"]
    assert hook["topic"] == "cancelled" and hook["json"]["order_id"] == "WEB-9"
    assert "tracking" not in hook["json"]
