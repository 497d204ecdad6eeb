"""Bad input never hurts the door, and what is held there reaches a person: the exceptions
desk from the command line and over HTTP, its counts in the report, and its alerts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY
from sqlalchemy import update

from domain.alerts import open_alerts
from domain.clock import utcnow
from domain.db import unit_of_work
from domain.intake_exceptions import BACKLOG_ALERT, HELD_ALERT, raise_backlog_alerts
from domain.models import RejectedOrder, WebhookDelivery
from domain.report import build_report
from sandbox.storefront import shopify_headers
from sandbox.threaded_server import ThreadedServer
from tests.integration.test_http_intake import (
    SHOP_SECRET,
    api_settings,
    count,
    orders,
    post_shopify,
    rejected,
    shopify_order,
)
from workers.api import create_app
from workers.cli import main as cli


@pytest.fixture
def api(db, broker, settings) -> Iterator[tuple[str, Any]]:
    s = api_settings(settings)
    with ThreadedServer(create_app(s), lifespan="on") as server:
        yield server.url, s


def post_raw(url: str, body: bytes, *, signed: bool = True,
             content_type: str = "application/json") -> httpx.Response:
    headers = shopify_headers(SHOP_SECRET if signed else "wrong-secret", body, "orders/paid",
                              "acme")
    headers["Content-Type"] = content_type
    return httpx.post(f"{url}/webhooks/shopify/acme", content=body, headers=headers, timeout=30)


def refused(source: str, status: str) -> float:
    return REGISTRY.get_sample_value("orderfleet_intake_refused_total",
                                     {"source": source, "status": status}) or 0.0


def test_bodies_that_broke_the_door_get_a_reason_and_never_a_5xx(api, settings) -> None:
    url, _ = api
    deep = b"[" * 20_000 + b"]" * 20_000
    string_address = shopify_order(11, shipping_address="1 Main St, Austin")
    string_lines = shopify_order(12, line_items="2 x TEE-M")
    nul_and_surrogate = json.dumps(shopify_order(13, note="a\u0000b")).encode().replace(
        b'"note": "a\\u0000b"', b'"note": "\\ud800 \\u0000"')
    answers = {
        "deep": post_raw(url, deep),
        "string address": post_raw(url, json.dumps(string_address).encode()),
        "string lines": post_raw(url, json.dumps(string_lines).encode()),
        "invalid utf-8": post_raw(url, b'{"id": 14, "note": "\xff\xfe"}'),
        "NaN": post_raw(url, b'{"id": 15, "total_price": NaN}'),
        "huge integer": post_raw(url, b'{"id": ' + b"9" * 5000 + b"}"),
        "nul and surrogate": post_raw(url, nul_and_surrogate),
        "array": post_raw(url, b"[1, 2, 3]"),
        "nested object": post_raw(url, json.dumps(shopify_order(
            16, customer={"a": {"b": {"c": {"d": [[[[{}]]]]}}}})).encode()),
        "huge numbers": post_raw(url, json.dumps(shopify_order(
            17, total_price="1e999", line_items=[{"sku": "X", "quantity": 10 ** 30,
                                                   "price": "-5"}])).encode()),
    }
    codes = {k: v.status_code for k, v in answers.items()}
    assert all(code < 500 for code in codes.values()), codes
    assert codes["deep"] == 422 and "nested deeper" in answers["deep"].json()["error"]
    # An order body with the wrong types is held, naming the field, and answered 200
    assert answers["string address"].json()["status"] == "held"
    assert [e["field"] for e in answers["string address"].json()["errors"]] == [
        "shipping_address"]
    assert answers["string lines"].json()["status"] == "held"
    assert codes["invalid utf-8"] == 422 and codes["NaN"] == 422 and codes["array"] == 422
    assert codes["huge integer"] == 422
    assert answers["nul and surrogate"].json()["status"] == "created"
    assert answers["huge numbers"].json()["status"] == "held"
    # Every signed body is kept for a person
    assert len(rejected(settings)) == len(answers) - 2  # two became orders
    assert len(orders(settings)) == 2


def test_unauthenticated_requests_write_nothing_and_are_counted(api, settings) -> None:
    url, s = api
    before = refused("shopify", "401"), refused("shopify", "413")
    for i in range(20):
        post_raw(url, json.dumps(shopify_order(100 + i)).encode(), signed=False)
    post_raw(url, b"[" * 100_000, signed=False)
    too_big = post_raw(url, b"x" * (s.api_max_body_bytes + 1), signed=False)
    assert too_big.status_code == 413
    assert refused("shopify", "401") - before[0] == 21
    assert refused("shopify", "413") - before[1] == 1
    assert rejected(settings) == [] and orders(settings) == []
    assert count(settings, WebhookDelivery) == 0


def test_the_same_order_id_with_different_content(api, settings) -> None:
    url, _ = api
    first = post_shopify(url, "orders/paid", shopify_order(21), event_id="ev-21")
    # the same event id again with another body: Shopify's retry; nothing changes
    again = post_shopify(url, "orders/paid", shopify_order(21, note="changed"), event_id="ev-21")
    # another event for the same order: one order
    other = post_shopify(url, "orders/paid", shopify_order(21, note="other"), event_id="ev-22")
    assert [a.json()["status"] for a in (first, again, other)] == [
        "created", "duplicate", "duplicate_order"]
    assert len(orders(settings)) == 1


def test_a_later_good_delivery_supersedes_the_held_one(api, settings) -> None:
    url, _ = api
    bad = shopify_order(31)
    bad["line_items"][0]["quantity"] = 0
    held = post_shopify(url, "orders/paid", bad)
    assert held.json()["status"] == "held"
    fixed = post_shopify(url, "orders/updated", shopify_order(31))
    assert fixed.json()["status"] == "created"
    (kept,) = rejected(settings)
    assert (kept.status, kept.order_id) == ("superseded", fixed.json()["order_id"])


def test_the_exceptions_desk_from_the_command_line(api, settings) -> None:
    url, _ = api
    bad = shopify_order(41)
    bad["currency"] = "XXX"
    held = post_shopify(url, "orders/paid", bad).json()
    other = post_shopify(url, "orders/paid", shopify_order(42, shipping_address=None)).json()
    runner = CliRunner()
    listed = runner.invoke(cli, ["exceptions", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["id"] for r in json.loads(listed.output)] == [held["exception_id"],
                                                            other["exception_id"]]
    shown = runner.invoke(cli, ["exceptions", "show", str(held["exception_id"])])
    assert shown.exit_code == 0 and "no exchange rate configured for XXX" in shown.output
    # A replay that still fails leaves the exception open and says why
    failing = runner.invoke(cli, ["exceptions", "replay", str(held["exception_id"]),
                                  "--by", "ana"])
    assert failing.exit_code == 1 and "currency" in failing.output
    replayed = runner.invoke(cli, ["exceptions", "replay", str(held["exception_id"]),
                                   "--set", "currency=USD", "--by", "ana", "--json"])
    assert replayed.exit_code == 0, replayed.output
    assert json.loads(replayed.output)["status"] == "replayed"
    dropped = runner.invoke(cli, ["exceptions", "drop", str(other["exception_id"]),
                                  "--reason", "a duplicate the store re-created", "--by", "ben"])
    assert dropped.exit_code == 0, dropped.output
    twice = runner.invoke(cli, ["exceptions", "drop", str(other["exception_id"]),
                                "--reason", "again"])
    assert twice.exit_code == 1 and "not open" in twice.output
    with unit_of_work(settings) as uow:
        report = build_report(uow.session)
    assert report["intake_exceptions"]["by_status"] == {
        "open": 0, "replayed": 1, "superseded": 0, "dropped": 1}
    assert [o.currency for o in orders(settings)] == ["USD"]


def test_the_http_desk_needs_the_review_token(db, broker, settings, monkeypatch) -> None:
    from config.settings import get_settings

    monkeypatch.setenv("ORDERFLEET_REVIEW_API_TOKEN", "s3cret-token-0123456789")
    get_settings.cache_clear()
    try:
        s = api_settings(settings, review_api_token="s3cret-token-0123456789")
        with ThreadedServer(create_app(s), lifespan="on") as server:
            held = post_shopify(server.url, "orders/paid", shopify_order(
                51, shipping_address="nowhere")).json()
            ref = f"{server.url}/review/exceptions/{held['exception_id']}"
            assert httpx.get(f"{server.url}/review/exceptions").status_code == 401
            assert httpx.post(f"{ref}/drop", json={"by": "x", "reason": "y"}).status_code == 401
            good = {"Authorization": "Bearer s3cret-token-0123456789"}
            listed = httpx.get(f"{server.url}/review/exceptions", headers=good)
            assert listed.status_code == 200 and listed.json()["count"] == 1
            shown = httpx.get(ref, headers=good).json()
            assert shown["body"]["shipping_address"] == "nowhere"
            assert httpx.get(f"{server.url}/review/exceptions/999999",
                             headers=good).status_code == 404
            dropped = httpx.post(f"{ref}/drop", headers=good,
                                 json={"by": "ana", "reason": "test delivery"})
            assert dropped.status_code == 200 and dropped.json()["status"] == "dropped"
    finally:
        monkeypatch.delenv("ORDERFLEET_REVIEW_API_TOKEN")
        get_settings.cache_clear()


def test_alerts_when_exceptions_pile_up_or_wait(api, settings) -> None:
    url, _ = api
    s = settings.model_copy(update={"exceptions_alert_count": 3, "exceptions_overdue_s": 600})
    for i in range(3):
        post_shopify(url, "orders/paid", shopify_order(60 + i, shipping_address="x"))
    with unit_of_work(s) as uow:
        assert {a.key for a in open_alerts(uow.session, HELD_ALERT)} == {"shopify/acme"}
        assert raise_backlog_alerts(uow.session, s) == ["backlog"]
        assert raise_backlog_alerts(uow.session, s) == []  # raised once
        uow.session.execute(update(RejectedOrder).values(
            received_at=utcnow() - timedelta(hours=1)))
        assert raise_backlog_alerts(uow.session, s) == ["waiting"]
        uow.session.execute(update(RejectedOrder).values(status="dropped"))
        raise_backlog_alerts(uow.session, s)
        assert open_alerts(uow.session, BACKLOG_ALERT) == []
        assert open_alerts(uow.session, HELD_ALERT) == []
