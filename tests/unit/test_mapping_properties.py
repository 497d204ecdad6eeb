"""Property-based tests (hypothesis) over the Shopify, WooCommerce, CSV and native mappings:
whatever arrives, the answer is an Order or a validation error naming fields, never a crash."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz import leaf_paths
from domain.platforms import OrderFeedError, parse_order_csv, woocommerce_to_native
from domain.schemas import Order, OrderValidationError, hold_reasons, parse_order, shopify_to_native
from workers.api import json_depth_exceeds

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SHOPIFY = json.loads((FIXTURES / "shopify" / "orders_paid_us.json").read_text())
WOO = json.loads((FIXTURES / "woocommerce" / "order_processing.json").read_text())
NATIVE: dict[str, Any] = {
    "order_id": "N-1", "store": "acme", "paid_at": "2026-11-27T10:00:00Z",
    "customer": {"id": "c1", "email": "a@example.com"},
    "lines": [{"sku": "TEE-M", "quantity": 2, "unit_price": "20.00"}],
    "currency": "USD", "totals": {"subtotal": "40.00", "shipping": "5.00", "total": "45.00"},
    "shipping_address": {"line1": "1 Main St", "city": "Austin", "country": "US"},
}

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                    st.text(max_size=20), st.sampled_from(["", "0", "-1", "1e999", "NaN",
                                                           "12.345", "US", "paid"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=5)),
    max_leaves=25)


BASES = {"shopify": SHOPIFY, "woocommerce": WOO, "native": NATIVE}
PATHS = {name: leaf_paths(body) for name, body in BASES.items()}


@st.composite
def mutated(draw: st.DrawFn, platform: str) -> dict[str, Any]:
    """A real body with a few values replaced by anything, or removed."""
    body: dict[str, Any] = copy.deepcopy(BASES[platform])
    for path in draw(st.lists(st.sampled_from(PATHS[platform]), min_size=1, max_size=4)):
        target: Any = body
        try:
            for key in path[:-1]:
                target = target[key]
            if draw(st.booleans()) and isinstance(target, dict):
                target.pop(path[-1], None)
            else:
                target[path[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed the path
    return body


def outcome(payload: Any, *, woo: bool = False) -> Order | OrderValidationError:
    """parse the payload as intake does; anything but a validation error fails the test."""
    try:
        data = woocommerce_to_native(payload, store="s") if woo and isinstance(payload, dict) \
            else payload
        return parse_order(data, store="s")
    except OrderValidationError as exc:
        assert exc.errors and all(e["field"] and e["message"] for e in exc.errors)
        return exc


FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(json_values)
def test_any_json_value_is_an_order_or_a_reason(value: Any) -> None:
    outcome(value)
    outcome(value, woo=True)


@FAST
@given(mutated("shopify"))
def test_a_shopify_body_with_values_changed_is_an_order_or_a_reason(body: dict[str, Any]) -> None:
    native = shopify_to_native(body, store="s")  # the mapping itself never raises
    assert native["source"] == "shopify"
    result = outcome(body)
    if isinstance(result, Order):
        hold_reasons(result)  # computing the reasons never raises either


@FAST
@given(mutated("woocommerce"))
def test_a_woocommerce_body_with_values_changed_is_an_order_or_a_reason(
        body: dict[str, Any]) -> None:
    assert woocommerce_to_native(body, store="s")["source"] == "woocommerce"
    result = outcome(body, woo=True)
    if isinstance(result, Order):
        hold_reasons(result)


@FAST
@given(mutated("native"))
def test_a_native_body_with_values_changed_is_an_order_or_a_reason(body: dict[str, Any]) -> None:
    result = outcome(body)
    if isinstance(result, Order):
        hold_reasons(result)


CSV_HEADER = ("order_id,store,paid_at,currency,customer_id,sku,quantity,unit_price,ship_line1,"
              "ship_city,ship_country,total")
csv_cells = st.one_of(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12),
                      st.sampled_from(["1", "-1", "0", "9" * 30, "12.50", "USD", "XXX",
                                       "2026-11-27T10:00:00Z", "yesterday", "US", ""]))


@FAST
@given(st.lists(st.lists(csv_cells, min_size=1, max_size=14), max_size=8))
def test_any_csv_feed_gives_orders_or_row_errors(rows: list[list[str]]) -> None:
    import csv
    import io

    buf = io.StringIO()
    buf.write(CSV_HEADER + "\n")
    csv.writer(buf).writerows(rows)
    try:
        feed = parse_order_csv(buf.getvalue(), store="s")
    except OrderFeedError:
        return
    for order in feed.orders:
        outcome(order)
    assert all(e["field"] and e["message"] for e in feed.errors)


@FAST
@given(st.lists(st.tuples(st.integers(1, 50), st.decimals("0.00", "999.99", places=2)),
                min_size=1, max_size=6),
       st.decimals("0.00", "50.00", places=2), st.decimals("0.00", "30.00", places=2))
def test_totals_computed_from_lines_hold_nothing_and_any_other_total_holds(
        lines: list[tuple[int, Decimal]], shipping: Decimal, tax: Decimal) -> None:
    subtotal = sum((price * qty for qty, price in lines), Decimal("0"))
    order = {**NATIVE, "lines": [{"sku": f"S{i}", "quantity": q, "unit_price": str(p)}
                                 for i, (q, p) in enumerate(lines)],
             "totals": {"subtotal": str(subtotal), "shipping": str(shipping), "tax": str(tax),
                        "total": str(subtotal + shipping + tax)}}
    assert hold_reasons(parse_order(order)) == []
    off = {**order, "totals": {**order["totals"],
                               "total": str(subtotal + shipping + tax + Decimal("5.00"))}}
    assert "totals.total" in hold_reasons(parse_order(off))[0]


@FAST
@given(json_values, st.integers(1, 40))
def test_the_depth_check_agrees_with_the_json_it_reads(value: Any, limit: int) -> None:
    def depth(v: Any) -> int:
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        return 0

    body = json.dumps(value).encode()
    assert json_depth_exceeds(body, limit) == (depth(value) > limit)
