"""WooCommerce and CSV orders map onto the native schema; webhook signatures are checked."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from decimal import Decimal
from pathlib import Path

import pytest

from domain.platforms import (
    OrderFeedError,
    parse_order_csv,
    sign_body,
    signature_matches,
    woocommerce_to_native,
)
from domain.schemas import OrderValidationError, hold_reasons, parse_order

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_signature_is_base64_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"id": 1}'
    expected = base64.b64encode(hmac.new(b"s3cret-key", body, hashlib.sha256).digest()).decode()
    assert sign_body("s3cret-key", body) == expected
    assert signature_matches("s3cret-key", body, expected)
    # One changed byte, a wrong secret or no header at all: refused.
    assert not signature_matches("s3cret-key", b'{"id": 2}', expected)
    assert not signature_matches("other-key", body, expected)
    assert not signature_matches("s3cret-key", body, None)
    assert not signature_matches("s3cret-key", body, "not base64 ✓")


def test_woocommerce_order_maps_to_the_native_schema() -> None:
    raw = json.loads((FIXTURES / "woocommerce" / "order_processing.json").read_text())
    order = parse_order(woocommerce_to_native(raw, store="lyon-shop"))
    assert (order.source, order.store, order.order_id) == ("woocommerce", "lyon-shop", "7312")
    assert order.paid_at.isoformat() == "2026-11-27T14:20:44+00:00"  # *_gmt is UTC
    # Unit price is the line before the coupon (subtotal / quantity); totals add up.
    assert [(ln.sku, ln.quantity, ln.unit_price) for ln in order.lines] == [
        ("TOTE-LIN-NAT", 2, Decimal("15.00")), ("PATCH-EMB", 1, Decimal("30.00"))]
    assert order.totals.subtotal == Decimal("60") and order.totals.total == Decimal("61.90")
    assert order.totals.discount == Decimal("5.00") and order.totals.shipping == Decimal("6.90")
    # Visible meta becomes line properties; WooCommerce's "_" internals do not.
    assert order.lines[0].properties == {"Colour": "Natural"}
    assert order.lines[1].properties == {"Embroidery text": "LM"}
    assert order.shipping_address.country == "FR" and order.customer.id == "118"
    assert order.client.browser_ip == "192.0.2.44" and order.payment.gateway == "stripe"


def test_woocommerce_guest_order_without_shipping_block_ships_to_billing() -> None:
    raw = json.loads((FIXTURES / "woocommerce" / "order_processing.json").read_text())
    raw["customer_id"] = 0
    raw["shipping"] = {k: "" for k in raw["shipping"]}
    order = parse_order(woocommerce_to_native(raw, store="lyon-shop"))
    assert order.customer.id == "lea.martin@example.com"
    assert order.shipping_address.line1 == "12 rue des Lilas"


def test_woocommerce_bad_line_is_reported_by_its_native_field() -> None:
    raw = json.loads((FIXTURES / "woocommerce" / "order_processing.json").read_text())
    raw["line_items"][1].update(sku="", product_id=None, variation_id=None)
    with pytest.raises(OrderValidationError) as err:
        parse_order(woocommerce_to_native(raw, store="lyon-shop"))
    assert [e["field"] for e in err.value.errors] == ["lines.1.sku"]


def test_a_woocommerce_line_without_sku_uses_its_product_and_holds_the_order() -> None:
    raw = json.loads((FIXTURES / "woocommerce" / "order_processing.json").read_text())
    raw["line_items"][1]["sku"] = ""
    order = parse_order(woocommerce_to_native(raw, store="lyon-shop"))
    product = raw["line_items"][1].get("variation_id") or raw["line_items"][1]["product_id"]
    assert order.lines[1].sku == f"woo-product-{product}"
    assert hold_reasons(order) == [f"line 2 has no SKU: woo-product-{product} stands in for it"]


def test_csv_feed_groups_rows_into_orders_and_reports_bad_rows() -> None:
    feed = parse_order_csv((FIXTURES / "orders_feed.csv").read_text())
    by_id = {o["order_id"]: o for o in feed.orders}
    # MKT-9003 contradicts itself (currency) on row 6: reported, and the order left out whole.
    assert sorted(by_id) == ["MKT-9001", "MKT-9002", "MKT-9004"]
    assert [(e["row"], e["order_id"], e["field"]) for e in feed.errors] == [
        (6, "MKT-9003", "currency")]
    first = parse_order(by_id["MKT-9001"])
    assert first.source == "csv" and first.store == "marketplace-eu"
    assert [ln.sku for ln in first.lines] == ["TEE-ORG-M", "RING-ENG-7"]
    assert first.lines[1].properties == {"Engraving": "J & K", "Font": "serif"}
    assert first.totals.total == Decimal("124.90")  # lines + shipping, computed
    second = parse_order(by_id["MKT-9002"])
    assert second.tags == ("gift", "priority") and second.totals.total == Decimal("31.50")
    with pytest.raises(OrderValidationError) as err:
        parse_order(by_id["MKT-9004"])
    assert "lines.0.quantity" in [e["field"] for e in err.value.errors]


def test_csv_feed_without_required_columns_is_refused_whole() -> None:
    with pytest.raises(OrderFeedError, match="missing required columns: .*ship_country"):
        parse_order_csv("order_id,store,paid_at,currency,customer_id,sku,quantity,unit_price,"
                        "ship_line1,ship_city\n1,s,2026-01-01,EUR,c,A,1,1.00,x,y\n")
    with pytest.raises(OrderFeedError, match="unknown columns: colour"):
        parse_order_csv("order_id,store,paid_at,currency,customer_id,sku,quantity,unit_price,"
                        "ship_line1,ship_city,ship_country,colour\n")


def test_csv_store_comes_from_the_command_line_when_the_column_is_absent() -> None:
    text = ("order_id,paid_at,currency,customer_id,sku,quantity,unit_price,ship_line1,"
            "ship_city,ship_country\n1001,2026-11-27T08:00:00Z,USD,c1,MUG,1,9.50,1 Main St,"
            "Austin,US\n")
    (order,) = parse_order_csv(text, store="etsy-shop").orders
    assert parse_order(order).store == "etsy-shop"
