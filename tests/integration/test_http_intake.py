"""The HTTP front door on a real uvicorn server, real PostgreSQL and a real Redis broker."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from domain.db import unit_of_work
from domain.models import OrderEvent, OrderRow, RejectedOrder, Reservation, WebhookDelivery
from domain.platforms import sign_body
from sandbox.storefront import shopify_headers, woocommerce_headers
from sandbox.threaded_server import ThreadedServer
from tests.integration.helpers import native_order, put_stock
from tests.waiting import eventually
from workers.api import create_app

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SHOP_SECRET = "shpss_acme_webhook_secret"
WOO_SECRET = "woo_lyon_webhook_secret"
STORE_TOKEN = "custom-store-api-token"


def api_settings(settings, **over: Any) -> Any:
    return settings.model_copy(update={
        "shopify_secrets": {"acme": SHOP_SECRET, "beta": "shpss_beta_secret_x"},
        "woocommerce_secrets": {"lyon-shop": WOO_SECRET},
        "store_secrets": {"custom": STORE_TOKEN},
        "api_flush_interval_s": 0.02,
        "api_max_body_bytes": 100_000,
        **over,
    })


@pytest.fixture
def api(db, broker, settings) -> Iterator[tuple[str, Any]]:
    s = api_settings(settings)
    with ThreadedServer(create_app(s), lifespan="on") as server:
        yield server.url, s


def shopify_order(order_id: int = 5213468230001, **over: Any) -> dict[str, Any]:
    order: dict[str, Any] = json.loads((FIXTURES / "shopify" / "orders_paid_us.json").read_text())
    order.update(id=order_id, **over)
    return order


def post_shopify(url: str, topic: str, payload: Any, *, shop: str = "acme",
                 secret: str = SHOP_SECRET, event_id: str | None = None,
                 triggered_at: datetime | None = None) -> httpx.Response:
    body = json.dumps(payload).encode()
    headers = shopify_headers(secret, body, topic, shop, event_id=event_id,
                              triggered_at=triggered_at)
    return httpx.post(f"{url}/webhooks/shopify/{shop}", content=body, headers=headers, timeout=10)


def fraud_ids(broker) -> list[int]:
    out = []
    for raw in broker.lrange("fraud", 0, -1):
        msg = json.loads(raw)
        out.extend(json.loads(base64.b64decode(msg["body"]))[0][0])
    return out


def wait_fraud_ids(broker, n: int) -> list[int]:
    eventually(lambda: len(fraud_ids(broker)) >= n, 10, f"{n} order ids on the fraud queue")
    return fraud_ids(broker)


def orders(settings) -> list[OrderRow]:
    with unit_of_work(settings) as uow:
        return list(uow.session.execute(select(OrderRow).order_by(OrderRow.id)).scalars())


def count(settings, model) -> int:
    with unit_of_work(settings) as uow:
        return uow.session.execute(select(func.count()).select_from(model)).scalar_one()


def rejected(settings) -> list[RejectedOrder]:
    with unit_of_work(settings) as uow:
        return list(uow.session.execute(select(RejectedOrder).order_by(RejectedOrder.id))
                    .scalars())


def test_signed_orders_paid_is_persisted_before_the_answer_and_batched_to_fraud(
        db, broker, settings) -> None:
    # Given a service that sends ids to the fraud stage three at a time (or every 30 s)
    s = api_settings(settings, batch_size=3, api_flush_interval_s=30.0)
    with ThreadedServer(create_app(s), lifespan="on") as server:
        # When Shopify delivers three paid orders
        answers = [post_shopify(server.url, "orders/paid", shopify_order(5213468230001 + i))
                   for i in range(3)]
        ids = wait_fraud_ids(broker, 3)
    # Then each is answered 200 with the order already in the database
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert {a.json()["status"] for a in answers} == {"created"}
    rows = orders(settings)
    assert [r.id for r in rows] == [a.json()["order_id"] for a in answers]
    first = rows[0]
    assert (first.source, first.store, first.source_order_id) == ("shopify", "acme",
                                                                   "5213468230001")
    assert first.payload["lines"][1]["properties"]["Monogram"] == "SR"
    assert first.source_updated_at is not None
    # ... and the fraud stage receives all three ids in one message, not three
    assert sorted(ids) == sorted(r.id for r in rows)
    assert broker.llen("fraud") == 1


def test_a_bad_or_missing_signature_is_401_and_nothing_is_written(api, settings) -> None:
    url, _ = api
    forged = post_shopify(url, "orders/paid", shopify_order(), secret="not-the-shop-secret")
    body = json.dumps(shopify_order(7)).encode()
    unsigned = httpx.post(f"{url}/webhooks/shopify/acme", content=body, headers={
        "Content-Type": "application/json", "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Event-Id": "e-1"})
    # Another shop's valid signature is not this shop's.
    cross = post_shopify(url, "orders/paid", shopify_order(8), shop="acme",
                         secret="shpss_beta_secret_x")
    assert [r.status_code for r in (forged, unsigned, cross)] == [401, 401, 401]
    assert forged.json()["errors"] == [{"field": "header X-Shopify-Hmac-Sha256",
                                        "message": "missing or does not match"}]
    # Anyone can send these: they are counted, never stored.
    assert orders(settings) == []
    assert rejected(settings) == []
    assert count(settings, WebhookDelivery) == 0


def test_a_redelivery_answers_200_and_does_nothing(api, broker, settings) -> None:
    url, _ = api
    first = post_shopify(url, "orders/paid", shopify_order(), event_id="evt-1")
    again = post_shopify(url, "orders/paid", shopify_order(), event_id="evt-1")
    # The webhook id is the fallback when Shopify sends no event id.
    body = json.dumps(shopify_order()).encode()
    headers = shopify_headers(SHOP_SECRET, body, "orders/paid", "acme")
    del headers["X-Shopify-Event-Id"]
    headers["X-Shopify-Webhook-Id"] = "wh-1"
    by_webhook_id = httpx.post(f"{url}/webhooks/shopify/acme", content=body, headers=headers)
    assert by_webhook_id.status_code == 200
    twice = httpx.post(f"{url}/webhooks/shopify/acme", content=body, headers=headers)
    assert first.json()["status"] == "created"
    assert again.status_code == 200 and again.json() == {
        "status": "duplicate", "order_id": first.json()["order_id"]}
    assert by_webhook_id.json()["status"] == "duplicate_order"  # new event, same order
    assert twice.json()["status"] == "duplicate"
    assert len(orders(settings)) == 1 and count(settings, WebhookDelivery) == 2
    assert count(settings, OrderEvent) == 1
    assert wait_fraud_ids(broker, 1) == [first.json()["order_id"]]


def test_a_stale_update_never_rolls_an_order_back(api, settings) -> None:
    url, _ = api
    t0 = datetime(2026, 11, 27, 15, 2, tzinfo=UTC)
    order_id = post_shopify(url, "orders/paid", shopify_order(), triggered_at=t0).json()[
        "order_id"]
    moved = shopify_order()
    moved["shipping_address"] = {**moved["shipping_address"], "address1": "1 New Street",
                                 "city": "Dallas", "zip": "75201"}
    old = shopify_order()
    old["shipping_address"] = {**old["shipping_address"], "address1": "9 Old Road"}
    # When the newer update arrives first and an older one is delivered late
    newer = post_shopify(url, "orders/updated", moved, triggered_at=t0 + timedelta(minutes=10))
    stale = post_shopify(url, "orders/updated", old, triggered_at=t0 + timedelta(minutes=5))
    # Then the newer address stays
    assert newer.json()["status"] == "updated" and stale.json()["status"] == "stale"
    (row,) = orders(settings)
    assert row.payload["shipping_address"]["line1"] == "1 New Street"
    assert row.source_updated_at == t0 + timedelta(minutes=10)
    # ... and a cancellation stays a cancellation whatever arrives after it
    cancelled = post_shopify(url, "orders/cancelled",
                             shopify_order(cancelled_at="2026-11-27T10:20:00-05:00",
                                           cancel_reason="customer"),
                             triggered_at=t0 + timedelta(minutes=20))
    late = post_shopify(url, "orders/updated", moved, triggered_at=t0 + timedelta(minutes=15))
    assert cancelled.json() == {"status": "cancelled", "order_id": order_id}
    assert late.json()["status"] == "stale"
    assert orders(settings)[0].state == "cancelled"


def test_orders_cancelled_releases_the_reservation(api, settings) -> None:
    from tasks.fraud import check_orders
    from tasks.inventory import reserve_orders

    url, _ = api
    put_stock(settings, [("MUG-SAGE-350", "US-EAST", "US", 10),
                         ("NB-MONO-A5", "US-EAST", "US", 10)])
    order_id = post_shopify(url, "orders/paid", shopify_order()).json()["order_id"]
    with unit_of_work(settings) as uow:
        check_orders(uow, [order_id], settings)
    with unit_of_work(settings) as uow:
        assert reserve_orders(uow, [order_id], settings).reserved == [order_id]
    answer = post_shopify(url, "orders/cancelled", shopify_order(
        cancelled_at="2026-11-27T11:00:00-05:00", cancel_reason="customer"))
    assert answer.json()["status"] == "cancelled"
    with unit_of_work(settings) as uow:
        statuses = set(uow.session.execute(select(Reservation.status)).scalars())
        last = uow.session.execute(select(OrderEvent).where(OrderEvent.order_id == order_id)
                                   .order_by(OrderEvent.id.desc()).limit(1)).scalar_one()
    assert statuses == {"released"}
    assert (last.from_state, last.to_state, last.detail) == (
        "reserved", "cancelled", {"reason": "cancelled in shopify: customer"})


def test_a_cancellation_that_overtakes_the_paid_webhook_wins(api, broker, settings) -> None:
    url, _ = api
    early = post_shopify(url, "orders/cancelled",
                         shopify_order(cancelled_at="2026-11-27T10:03:00-05:00"))
    assert early.json() == {"status": "awaiting_order"}
    paid = post_shopify(url, "orders/paid", shopify_order())
    assert paid.json()["status"] == "cancelled"
    assert [r.state for r in orders(settings)] == ["cancelled"]
    # Nothing of it may be on its way to the fraud stage: ids are sent in the order they came,
    # so a later order reaching the stage alone proves it.
    later = post_shopify(url, "orders/paid", shopify_order(order_id=5213468230002))
    assert wait_fraud_ids(broker, 1) == [later.json()["order_id"]]


def test_limits_and_bad_input_are_refused_with_the_failing_field(api, settings) -> None:
    url, s = api
    huge = shopify_order(note="x" * (s.api_max_body_bytes + 10))
    too_big = post_shopify(url, "orders/paid", huge)
    assert too_big.status_code == 413
    body = json.dumps(shopify_order()).encode()
    headers = shopify_headers(SHOP_SECRET, body, "orders/paid", "acme")
    wrong_type = httpx.post(f"{url}/webhooks/shopify/acme", content=body,
                            headers={**headers, "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    garbage = b"{not json"
    not_json = httpx.post(f"{url}/webhooks/shopify/acme", content=garbage, headers=shopify_headers(
        SHOP_SECRET, garbage, "orders/paid", "acme"))
    assert not_json.status_code == 422 and not_json.json()["errors"][0]["field"] == "(body)"
    no_id = {k: v for k, v in headers.items() if k not in ("X-Shopify-Event-Id",
                                                           "X-Shopify-Webhook-Id")}
    missing = httpx.post(f"{url}/webhooks/shopify/acme", content=body, headers=no_id)
    assert missing.status_code == 422
    assert missing.json()["errors"] == [{"field": "header x-shopify-event-id",
                                         "message": "required"}]
    bad = shopify_order()
    bad["line_items"][0].update(sku="", variant_id=None)  # nothing to stand in for the SKU
    invalid = post_shopify(url, "orders/paid", bad)
    # A signed order that does not validate is held at the door: 200, so Shopify stops retrying.
    assert invalid.status_code == 200 and invalid.json()["status"] == "held"
    assert [e["field"] for e in invalid.json()["errors"]] == ["lines.0.sku"]
    unknown_shop = post_shopify(url, "orders/paid", shopify_order(), shop="nobody")
    # An unknown shop is answered like a bad signature: shops cannot be enumerated.
    assert unknown_shop.status_code == 401
    assert unknown_shop.json()["errors"] == [{"field": "header X-Shopify-Hmac-Sha256",
                                              "message": "missing or does not match"}]
    # Nothing became an order; every signed refused body was kept; the 413 and the unknown
    # shop (unauthenticated) wrote nothing.
    assert orders(settings) == []
    kept = rejected(settings)
    assert len(kept) == 4
    assert kept[1].raw == "{not json"
    assert kept[3].errors == [{"field": "lines.0.sku",
                               "message": "String should have at least 1 character"}]
    assert json.loads(kept[3].raw)["id"] == bad["id"] and kept[3].source_order_id == str(bad["id"])
    assert (kept[3].status, kept[3].http_status, kept[3].topic) == ("open", 200, "orders/paid")
    assert invalid.json()["exception_id"] == kept[3].id
    # The held delivery keeps its inbox row: a redelivery of the same event is a duplicate.
    assert count(settings, WebhookDelivery) == 1


def test_unknown_topics_are_acknowledged_and_ignored(api, settings) -> None:
    url, _ = api
    answer = post_shopify(url, "orders/fulfilled", shopify_order())
    assert answer.status_code == 200 and answer.json() == {"status": "ignored"}
    assert orders(settings) == []


def test_native_orders_need_a_store_token_and_an_idempotency_key(api, broker, settings) -> None:
    url, _ = api
    order = native_order("WEB-1", store="custom")
    body = json.dumps(order).encode()
    auth = {"Authorization": f"Bearer {STORE_TOKEN}", "Content-Type": "application/json"}
    anonymous = httpx.post(f"{url}/orders", content=body,
                           headers={"Content-Type": "application/json"})
    assert anonymous.status_code == 401
    no_key = httpx.post(f"{url}/orders", content=body, headers=auth)
    assert no_key.status_code == 422
    assert no_key.json()["errors"][0]["field"] == "header idempotency-key"
    created = httpx.post(f"{url}/orders", content=body, headers={**auth, "Idempotency-Key": "k1"})
    replay = httpx.post(f"{url}/orders", content=body, headers={**auth, "Idempotency-Key": "k1"})
    other = json.dumps(native_order("WEB-2", store="custom")).encode()
    conflict = httpx.post(f"{url}/orders", content=other,
                          headers={**auth, "Idempotency-Key": "k1"})
    foreign = json.dumps(native_order("WEB-3", store="acme")).encode()
    not_yours = httpx.post(f"{url}/orders", content=foreign,
                           headers={**auth, "Idempotency-Key": "k3"})
    assert created.status_code == 201 and created.json()["status"] == "created"
    assert replay.status_code == 200 and replay.json() == {
        "status": "duplicate", "order_id": created.json()["order_id"]}
    assert conflict.status_code == 409
    assert not_yours.status_code == 202 and not_yours.json()["status"] == "held"
    assert not_yours.json()["errors"][0]["field"] == "store"
    (row,) = orders(settings)
    assert (row.source, row.store, row.source_order_id) == ("native", "custom", "WEB-1")
    assert wait_fraud_ids(broker, 1) == [row.id]


def test_woocommerce_webhooks_and_ids_never_collide_across_platforms(api, settings) -> None:
    url, _ = api
    raw = json.loads((FIXTURES / "woocommerce" / "order_processing.json").read_text())

    def post_woo(payload: Any, topic: str = "order.updated",
                 secret: str = WOO_SECRET) -> httpx.Response:
        body = json.dumps(payload).encode()
        return httpx.post(f"{url}/webhooks/woocommerce/lyon-shop", content=body,
                          headers=woocommerce_headers(secret, body, topic))

    ping = httpx.post(f"{url}/webhooks/woocommerce/lyon-shop", content=b"webhook_id=7",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert ping.status_code == 200
    assert post_woo(raw, secret="wrong-secret!").status_code == 401
    pending = post_woo({**raw, "status": "pending", "date_paid_gmt": None}, "order.created")
    assert pending.json() == {"status": "ignored"}  # not paid yet
    created = post_woo(raw)
    assert created.json()["status"] == "created"
    # A Shopify order with the same number in a store of the same name is another order.
    body = json.dumps(shopify_order(7312)).encode()
    httpx.post(f"{url}/webhooks/shopify/acme", content=body,
               headers=shopify_headers(SHOP_SECRET, body, "orders/paid", "acme"))
    cancelled = post_woo({**raw, "status": "cancelled",
                          "date_modified_gmt": "2026-11-27T16:00:00"})
    assert cancelled.json()["status"] == "cancelled"
    keys = {(r.source, r.store, r.source_order_id): r.state for r in orders(settings)}
    assert keys == {("woocommerce", "lyon-shop", "7312"): "cancelled",
                    ("shopify", "acme", "7312"): "received"}


def test_signatures_are_over_the_exact_bytes_received(api, settings) -> None:
    # Re-serialising the JSON (spacing, key order) would break Shopify's signature: we must not.
    url, _ = api
    body = json.dumps(shopify_order(), indent=3, sort_keys=True).encode()
    headers = shopify_headers(SHOP_SECRET, body, "orders/paid", "acme")
    assert headers["X-Shopify-Hmac-Sha256"] == sign_body(SHOP_SECRET, body)
    answer = httpx.post(f"{url}/webhooks/shopify/acme", content=body, headers=headers)
    assert answer.status_code == 200 and answer.json()["status"] == "created"


def test_a_group_commit_gives_each_delivery_its_own_outcome(db, broker, settings) -> None:
    from tasks.intake import Delivery, accept_deliveries

    def delivery(topic: str, order: dict[str, Any], event_id: str) -> Delivery:
        body = json.dumps(order).encode()
        return Delivery("shopify", "acme", event_id, topic, body, json.loads(body))

    bad = shopify_order(4)
    bad["currency"] = "XXX"
    earlier = delivery("orders/paid", shopify_order(6), "e-earlier")
    with unit_of_work(settings) as uow:
        (first,) = accept_deliveries(uow, [earlier], settings)
    # Given webhooks that arrive together and are written in one transaction
    group = [
        delivery("orders/paid", shopify_order(1), "e1"),
        delivery("orders/paid", shopify_order(2), "e2"),
        delivery("orders/paid", shopify_order(1), "e1"),  # redelivered within the group
        delivery("orders/paid", shopify_order(1), "e3"),  # same order, another event
        delivery("orders/paid", bad, "e4"),
        delivery("orders/cancelled", shopify_order(5, cancelled_at="2026-11-27T10:00:00Z"),
                 "e5"),
        delivery("orders/paid", shopify_order(5), "e6"),  # its cancellation came first
        delivery("orders/paid", shopify_order(7, cancelled_at="2026-11-27T10:00:00Z"), "e7"),
        earlier,  # redelivered from an earlier transaction
    ]
    with unit_of_work(settings) as uow:
        results = accept_deliveries(uow, group, settings)
    # Then each gets the outcome it would have had alone
    assert [r.status for r in results] == [
        "created", "created", "duplicate", "duplicate_order", "held", "awaiting_order",
        "cancelled", "cancelled", "duplicate"]
    assert results[2].order_id == results[3].order_id == results[0].order_id
    assert results[8].order_id == first.order_id
    assert results[4].errors == [{"field": "currency",
                                  "message": "no exchange rate configured for XXX"}]
    states = {r.source_order_id: r.state for r in orders(settings)}
    assert states == {"1": "received", "2": "received", "5": "cancelled", "6": "received",
                      "7": "cancelled"}
    with unit_of_work(settings) as uow:
        inbox = dict(uow.session.execute(select(WebhookDelivery.event_id,
                                                WebhookDelivery.outcome)).all())
    assert inbox == {"e-earlier": "created", "e1": "created", "e2": "created",
                     "e3": "duplicate_order", "e4": "held", "e5": "awaiting_order",
                     "e6": "cancelled",
                     "e7": "cancelled"}
    # Only the new, live orders go to the fraud stage.
    assert first.order_id is not None
    assert results[0].order_id is not None and results[1].order_id is not None
    assert sorted(wait_fraud_ids(broker, 3)) == sorted(
        [first.order_id, results[0].order_id, results[1].order_id])


def test_the_review_desk_is_mounted_under_review(api) -> None:
    url, _ = api
    answer = httpx.get(f"{url}/review/orders")
    assert answer.status_code != 404 and answer.headers["content-type"].startswith(
        "application/json")
