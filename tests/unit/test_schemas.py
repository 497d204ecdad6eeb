"""Order schema: native and Shopify payloads map onto one Order; bad input names the field."""

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from domain.schemas import OrderValidationError, hold_reasons, parse_order

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def native(**over: object) -> dict[str, Any]:
    order: dict[str, Any] = {
        "order_id": "1001", "store": "acme", "paid_at": "2026-11-27T10:00:00Z",
        "customer": {"id": "c1", "email": "a@example.com", "order_count": 2},
        "lines": [{"sku": "TEE-M", "quantity": 2, "unit_price": "20.00", "weight_g": 200}],
        "currency": "USD",
        "totals": {"subtotal": "40.00", "shipping": "5.00", "total": "45.00"},
        "shipping_address": {"line1": "1 Main St", "city": "Austin", "region": "TX",
                             "postal_code": "78701", "country": "us"},
    }
    order.update(over)
    return order


def test_native_order_parses() -> None:
    order = parse_order(native())
    assert order.source == "native"
    assert order.shipping_address.country == "US"
    assert order.weight_g == 400
    assert order.paid_at.tzinfo is not None


def test_shopify_order_paid_body_parses_as_it_is() -> None:
    body = json.loads((FIXTURES / "shopify_order_paid.json").read_text())
    order = parse_order(body, store="acme-eu")
    assert order.source == "shopify"
    assert order.order_id == "5213468229876"
    assert order.store == "acme-eu"
    assert order.currency == "EUR"
    assert order.totals.total == Decimal("132.80")
    assert order.totals.discount == Decimal("10.00")
    assert order.totals.shipping == Decimal("12.80")
    assert [line.sku for line in order.lines] == ["TEE-ORG-M", "RING-ENG-7"]
    assert order.lines[1].properties == {"Engraving": "A & M"}
    assert order.shipping_address.postal_code == "10119"
    assert order.payment.avs_result == "Y" and order.payment.cvv_result == "M"
    assert order.payment.card_last4 == "4242"
    assert order.client.browser_ip == "203.0.113.17"
    assert order.customer.order_count == 4
    assert order.tags == ("wholesale", "gift")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"shipping_address": None}, "shipping_address"),
        ({"lines": []}, "lines"),
        ({"lines": [{"sku": "X", "quantity": 0, "unit_price": "1.00"}]}, "lines.0.quantity"),
        ({"lines": [{"sku": "X", "quantity": 1, "unit_price": "-1.00"}]}, "lines.0.unit_price"),
        ({"currency": "dollars"}, "currency"),
        ({"paid_at": "yesterday"}, "paid_at"),
    ],
)
def test_invalid_order_names_the_field(change: dict, field: str) -> None:
    with pytest.raises(OrderValidationError) as exc:
        parse_order(native(**change))
    assert field in [e["field"] for e in exc.value.errors], exc.value.errors


def test_totals_that_do_not_add_up_are_a_hold_reason_not_a_refusal() -> None:
    order = parse_order(native(totals={"subtotal": "99.00", "total": "99.00"}))
    reasons = hold_reasons(order)
    assert len(reasons) == 1 and "subtotal" in reasons[0]


def test_a_total_that_is_not_lines_minus_discount_plus_shipping_and_tax_is_a_hold_reason() -> None:
    assert hold_reasons(parse_order(native())) == []
    short = parse_order(native(totals={"subtotal": "40.00", "shipping": "5.00",
                                       "total": "30.00"}))
    assert "totals.total" in hold_reasons(short)[0]
    taxed = native(totals={"subtotal": "40.00", "shipping": "5.00", "tax": "4.00",
                           "tax_included": True, "total": "45.00"})
    assert hold_reasons(parse_order(taxed)) == []


def test_non_object_payload_is_refused_clearly() -> None:
    with pytest.raises(OrderValidationError, match="expected a JSON object"):
        parse_order(["not", "an", "order"])


def test_non_latin_addresses_are_accepted() -> None:
    order = parse_order(native(shipping_address={
        "name": "山田太郎", "line1": "千代田区丸の内1-1", "city": "東京都",
        "postal_code": "100-0005", "country": "JP"}))
    assert order.shipping_address.city == "東京都"


def test_the_shipping_method_comes_from_shopifys_shipping_lines() -> None:
    # Shopify's own orders/paid sample (tests/fixtures/shopify_order_paid.json) ships "Standard"
    from domain.routing import lane_for
    from domain.schemas import shopify_to_native

    sample = json.loads((FIXTURES / "shopify_order_paid.json").read_text())
    assert shopify_to_native(sample)["shipping_method"] == "Standard"
    # Its engraved ring makes it custom-made, whatever the shipping paid for.
    assert lane_for(shopify_to_native(sample)) == "custom"
    tee_only = {**sample, "line_items": sample["line_items"][:1],
                "shipping_lines": [{"title": "Express (1-2 days)", "code": "EXP",
                                    "price": "15.00"}]}
    assert lane_for(shopify_to_native(tee_only)) == "express"
