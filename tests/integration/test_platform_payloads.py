"""Order bodies published by others (tests/fixtures/platforms/SOURCES.md) at the real door:
each is answered 200 and becomes an order, or a kept exception, with the reasons a person needs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from domain.db import unit_of_work
from domain.models import OrderRow, RejectedOrder
from sandbox.storefront import woocommerce_headers
from sandbox.threaded_server import ThreadedServer
from tests.integration.test_http_intake import (
    WOO_SECRET,
    api_settings,
    orders,
    post_shopify,
    rejected,
    wait_fraud_ids,
)
from workers.api import create_app


@pytest.fixture
def api(db, broker, settings) -> Iterator[tuple[str, Any]]:
    s = api_settings(settings)
    with ThreadedServer(create_app(s), lifespan="on") as server:
        yield server.url, s


PLATFORMS = Path(__file__).resolve().parent.parent / "fixtures" / "platforms"

# file -> (HTTP status, delivery status, order state, words every hold reason list must hold)
EXPECTED: dict[str, tuple[int, str, str, list[str]]] = {
    "shopify_python_api_order.json": (200, "on_hold", "on_hold", [
        "totals.total 409.94 is not lines 597.00", "payment status is 'authorized'"]),
    "shopify_api_ruby_order.json": (200, "on_hold", "on_hold", [
        "totals.total 409.94", "'authorized'"]),
    "shopify_fulfillment_integration_order.json": (200, "on_hold", "on_hold", [
        "totals.total 409.94", "'authorized'"]),
    "tax_receipts_order.json": (200, "on_hold", "on_hold", ["totals.total 409.94"]),
    "tax_receipts_order_no_zip.json": (200, "on_hold", "on_hold", ["totals.total 409.94"]),
    "tax_receipts_order_before_refund.json": (200, "on_hold", "on_hold", ["test order"]),
    "tax_receipts_order_partial_refund.json": (200, "on_hold", "on_hold", ["test order"]),
    "tax_receipts_order_with_discount.json": (200, "on_hold", "on_hold", [
        "shopify-variant-32007568654424 stands in", "totals.total 79.28"]),
    "tax_receipts_order_with_tip.json": (200, "on_hold", "on_hold", [
        "shopify-variant-41383274741953 stands in", "test order"]),
    "woocommerce_docs_retrieve_order.json": (200, "on_hold", "on_hold", [
        "woo-product-93 stands in"]),
    "woocommerce_docs_list_orders_second.json": (200, "on_hold", "on_hold", [
        "woo-product-87", "woo-product-34"]),
}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PLATFORMS / name).read_text())
    order: dict[str, Any] = data.get("order", data)
    return order


def post_woo(url: str, payload: Any, topic: str = "order.created") -> httpx.Response:
    body = json.dumps(payload).encode()
    return httpx.post(f"{url}/webhooks/woocommerce/lyon-shop", content=body,
                      headers=woocommerce_headers(WOO_SECRET, body, topic), timeout=10)


def deliver(url: str, name: str, payload: Any) -> httpx.Response:
    return post_woo(url, payload) if name.startswith("woocommerce") else \
        post_shopify(url, "orders/paid", payload)


def test_every_published_body_has_its_source_and_expected_outcome() -> None:
    listed = (PLATFORMS / "SOURCES.md").read_text()
    files = sorted(p.name for p in PLATFORMS.glob("*.json"))
    assert len(files) >= 10
    assert sorted(EXPECTED) == files
    for name in files:
        assert f"| {name} |" in listed, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_published_order_body_is_accepted_and_held_with_its_reasons(api, settings,
                                                                      name: str) -> None:
    url, _ = api
    code, status, state, words = EXPECTED[name]
    # When the platform delivers the body as published
    answer = deliver(url, name, load(name))
    # Then it is answered as the platform needs and the order waits with its reasons
    assert answer.status_code == code, answer.text
    assert answer.json()["status"] == status, answer.json()
    (row,) = orders(settings)
    assert row.state == state
    for word in words:
        assert word in (row.hold_reason or ""), (word, row.hold_reason)
    assert rejected(settings) == []


def test_shopify_semantics_on_a_published_body(api, settings) -> None:
    url, _ = api
    body = load("tax_receipts_order_with_tip.json")
    body["created_at"] = "2022-04-01T09:00:00-04:00"  # a checkout created days before payment
    answer = post_shopify(url, "orders/paid", body)
    assert answer.status_code == 200
    (row,) = orders(settings)
    # paid_at is processed_at, not created_at
    assert row.paid_at == datetime.fromisoformat(body["processed_at"])
    # the tip needs no shipping: kept aside, never shipped
    assert [s["title"] for s in row.payload["skipped_lines"]] == ["Tip"]
    assert [ln["sku"] for ln in row.payload["lines"]] == ["shopify-variant-41383274741953"]
    assert row.currency == body["currency"] and str(row.total) == body["total_price"]


def test_a_guest_checkout_is_a_normal_order(api, broker, settings) -> None:
    url, _ = api
    # Given a consistent paid order without a customer (a guest checkout)
    body = json.loads((PLATFORMS.parent / "shopify" / "orders_paid_us.json").read_text())
    body.pop("customer", None)
    answer = post_shopify(url, "orders/paid", body)
    # Then it is created and goes to the fraud check; its email identifies the buyer
    assert answer.status_code == 200 and answer.json()["status"] == "created", answer.json()
    (row,) = orders(settings)
    assert row.customer_id == body["email"] and row.state == "received"
    assert wait_fraud_ids(broker, 1) == [row.id]


def test_numbers_as_strings_strings_as_numbers_and_shop_money_sets(api, settings) -> None:
    url, _ = api
    body = json.loads((PLATFORMS.parent / "shopify" / "orders_paid_us.json").read_text())
    total = body["total_price"]
    body["total_price"] = float(total)  # a number where Shopify documents a string
    body["line_items"][0]["quantity"] = str(body["line_items"][0]["quantity"])
    body["customer"]["orders_count"] = "1"
    # only the *_set form of the tax: its shop money is read
    body["total_tax_set"] = {"shop_money": {"amount": body.pop("total_tax"),
                                            "currency_code": body["currency"]},
                             "presentment_money": {"amount": "999.99", "currency_code": "JPY"}}
    answer = post_shopify(url, "orders/paid", body)
    assert answer.json()["status"] == "created", answer.json()
    (row,) = orders(settings)
    assert str(row.total) == total


def test_a_paid_draft_order_without_an_address_is_held_then_replayed(api, broker,
                                                                     settings) -> None:
    url, _ = api
    body = json.loads((PLATFORMS.parent / "shopify" / "orders_paid_us.json").read_text())
    address = copy.deepcopy(body["shipping_address"])
    body["shipping_address"] = None
    # When a paid order without a shipping address arrives
    answer = post_shopify(url, "orders/paid", body)
    # Then it is answered 200 (Shopify must not retry it) and kept for a person
    assert answer.status_code == 200 and answer.json()["status"] == "held"
    assert [e["field"] for e in answer.json()["errors"]] == ["shipping_address"]
    assert orders(settings) == []
    (kept,) = rejected(settings)
    assert kept.status == "open" and kept.source_order_id == str(body["id"])
    # When the desk replays it with the address
    fixed = {"line1": address["address1"], "city": address["city"],
             "region": address["province_code"], "postal_code": address["zip"],
             "country": address["country_code"]}
    replay = httpx.post(f"{url}/review/exceptions/{kept.id}/replay",
                        json={"by": "ops@acme", "corrections": {"shipping_address": fixed}})
    assert replay.status_code == 200, replay.text
    # Then the order exists and goes to the fraud check
    (row,) = orders(settings)
    assert replay.json() == {"id": kept.id, "status": "replayed", "order_id": row.id,
                             "on_hold": False}
    assert row.payload["shipping_address"]["city"] == address["city"]
    assert wait_fraud_ids(broker, 1) == [row.id]
    with unit_of_work(settings) as uow:
        again = uow.session.execute(select(RejectedOrder)).scalar_one()
        assert (again.status, again.order_id, again.resolved_by) == ("replayed", row.id,
                                                                     "ops@acme")


def test_an_order_with_nothing_to_ship_is_acknowledged_not_kept(api, settings) -> None:
    url, _ = api
    body = json.loads((PLATFORMS.parent / "shopify" / "orders_paid_us.json").read_text())
    for line in body["line_items"]:
        line["requires_shipping"] = False
    answer = post_shopify(url, "orders/paid", body)
    assert answer.status_code == 200 and answer.json()["status"] == "nothing_to_ship"
    assert orders(settings) == [] and rejected(settings) == []


def test_lines_of_another_fulfilment_service_are_not_shipped(api, settings) -> None:
    url, _ = api
    body = json.loads((PLATFORMS.parent / "shopify" / "orders_paid_us.json").read_text())
    body["line_items"][0]["fulfillment_service"] = "amazon-fba"
    answer = post_shopify(url, "orders/paid", body)
    assert answer.status_code == 200
    (row,) = orders(settings)
    assert len(row.payload["lines"]) == len(body["line_items"]) - 1
    assert "another fulfilment service (amazon-fba)" in row.payload["skipped_lines"][0]["reason"]


def test_an_unpaid_status_on_orders_paid_holds_the_order(api, settings) -> None:
    url, _ = api
    body = json.loads((PLATFORMS.parent / "shopify" / "orders_paid_us.json").read_text())
    body["financial_status"] = "pending"
    answer = post_shopify(url, "orders/paid", body)
    assert answer.json()["status"] == "on_hold"
    (row,) = orders(settings)
    assert row.state == "on_hold" and "payment status is 'pending'" in (row.hold_reason or "")


def test_approving_an_intake_hold_sends_the_order_to_the_fraud_check(api, broker,
                                                                     settings) -> None:
    url, _ = api
    answer = post_shopify(url, "orders/paid", load("tax_receipts_order.json"))
    order_id = answer.json()["order_id"]
    approve = httpx.post(f"{url}/review/orders/{order_id}/approve",
                         json={"by": "ops@acme", "reason": "Shopify sample totals, checked"})
    assert approve.status_code == 200 and approve.json()["state"] == "received"
    assert wait_fraud_ids(broker, 1) == [order_id]
    with unit_of_work(settings) as uow:
        assert uow.session.get_one(OrderRow, order_id).state == "received"


def test_the_desk_corrects_an_address_then_approves(api, broker, settings) -> None:
    url, _ = api
    body = json.loads((PLATFORMS.parent / "shopify" / "orders_paid_us.json").read_text())
    body["test"] = True  # held at intake
    order_id = post_shopify(url, "orders/paid", body).json()["order_id"]
    bad = httpx.post(f"{url}/review/orders/{order_id}/address",
                     json={"by": "ops@acme", "address": {"line1": "", "country": "US"}})
    assert bad.status_code == 422 and bad.json()["field"].startswith("address.")
    fixed = httpx.post(f"{url}/review/orders/{order_id}/address", json={
        "by": "ops@acme", "address": {"line1": "500 Congress Ave", "city": "Austin",
                                      "region": "TX", "postal_code": "78701", "country": "US"}})
    assert fixed.status_code == 200, fixed.text
    approve = httpx.post(f"{url}/review/orders/{order_id}/approve",
                         json={"by": "ops@acme", "reason": "test order wanted end to end"})
    assert approve.json()["state"] == "received"
    assert wait_fraud_ids(broker, 1) == [order_id]
    with unit_of_work(settings) as uow:
        row = uow.session.get_one(OrderRow, order_id)
        assert row.payload["shipping_address"]["line1"] == "500 Congress Ave"
    # Once reserved (or further) the address is no longer the desk's to change
    with unit_of_work(settings) as uow:
        uow.session.get_one(OrderRow, order_id).state = "reserved"
    late = httpx.post(f"{url}/review/orders/{order_id}/address", json={
        "by": "ops@acme", "address": {"line1": "1 Other St", "city": "Austin", "country": "US"}})
    assert late.status_code == 409
