"""The synthetic order generator: deterministic, schema-valid, labelled as promised."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from config.settings import DEFAULT_FX_RATES_TO_USD
from domain.schemas import Order, OrderValidationError, hold_reasons, parse_order
from sandbox.synthetic import (
    CATALOGUE,
    KINDS,
    WAREHOUSES,
    OrderKind,
    Product,
    generate_labelled_orders,
    generate_orders,
    generate_stock,
    with_own_emails,
    write_orders,
)

PAID_AT = datetime(2025, 3, 14, 15, 9, 26, tzinfo=UTC)
THRESHOLD_USD = Decimal("500")
EXAMPLE_DOMAINS = {"example.com", "example.org", "example.net"}
DISPOSABLE_DOMAINS = {
    "mailinator.com", "guerrillamail.com", "10minutemail.com", "yopmail.com", "trashmail.com",
}
# Kana and CJK ideographs, Hangul, Cyrillic, Arabic.
NON_LATIN = re.compile("[\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7af\u0400-\u04ff\u0600-\u06ff]")


def _usd(order: Order) -> Decimal:
    return order.totals.total * DEFAULT_FX_RATES_TO_USD[order.currency]


def _is_shopify(payload: dict) -> bool:
    return "line_items" in payload


def _within(observed: int, n: int, rate: float) -> bool:
    """Within 4.5 standard deviations of a binomial(n, rate) count, plus a little slack."""
    sd = math.sqrt(n * rate * (1 - rate))
    return abs(observed - n * rate) <= 4.5 * sd + 2


@pytest.fixture(scope="module")
def labelled() -> list[tuple[OrderKind, dict[str, Any]]]:
    return generate_labelled_orders(2000, seed=7, paid_at=PAID_AT)


@pytest.fixture(scope="module")
def parsed(labelled) -> list[tuple[str, dict, Order]]:
    return [(kind, p, parse_order(p)) for kind, p in labelled if kind != "invalid"]


@pytest.fixture(scope="module")
def big() -> list[tuple[OrderKind, dict[str, Any]]]:
    return generate_labelled_orders(10_000, seed=11, paid_at=PAID_AT)


@pytest.fixture(scope="module")
def big_parsed(big) -> list[tuple[str, dict, Order]]:
    return [(kind, p, parse_order(p)) for kind, p in big if kind != "invalid"]


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_same_payloads():
    a = generate_labelled_orders(300, seed=42, paid_at=PAID_AT)
    b = generate_labelled_orders(300, seed=42, paid_at=PAID_AT)
    assert a == b
    assert json.dumps(a, ensure_ascii=False) == json.dumps(b, ensure_ascii=False)


def test_different_seeds_differ():
    a = generate_orders(300, seed=1, paid_at=PAID_AT)
    b = generate_orders(300, seed=2, paid_at=PAID_AT)
    assert a != b
    # Not a shuffle of the same orders either: most individual payloads differ.
    same = sum(x == y for x, y in zip(a, b, strict=True))
    assert same < 10


def test_generate_orders_is_the_payloads_of_the_labelled_ones():
    kwargs: dict[str, Any] = {"seed": 3, "paid_at": PAID_AT, "invalid_rate": 0.1,
                              "shopify_rate": 0.5}
    assert generate_orders(200, **kwargs) == [p for _, p in generate_labelled_orders(200, **kwargs)]


def test_no_global_random_state_used():
    import random

    random.seed(1234)
    before = random.getstate()
    generate_orders(50, seed=5, paid_at=PAID_AT)
    generate_stock(seed=5)
    assert random.getstate() == before


# --- validity ----------------------------------------------------------------------------------


def test_every_non_invalid_payload_parses(labelled):
    for kind, payload in labelled:
        if kind == "invalid":
            continue
        order = parse_order(payload)  # raises on failure
        assert order.currency in DEFAULT_FX_RATES_TO_USD, (kind, order.currency)


def test_parsed_orders_are_consistent(parsed):
    for _, _, order in parsed:
        lines_total = sum((ln.unit_price * ln.quantity for ln in order.lines), Decimal(0))
        t = order.totals
        assert lines_total == t.subtotal  # exact, not just within the schema's tolerance
        assert t.total == t.subtotal + t.shipping + t.tax - t.discount
        assert 1 <= len(order.lines) <= 5
        assert len({ln.sku for ln in order.lines}) == len(order.lines)
        assert order.paid_at == PAID_AT


def test_every_invalid_payload_is_rejected():
    """Each invalid payload fails in exactly one way.

    Either ``parse_order`` raises OrderValidationError (missing shipping address, quantity 0,
    negative price, no lines, line without SKU), or the order is held for a person (subtotal
    not matching the lines: :func:`domain.schemas.hold_reasons`), or the
    payload parses but its currency is not in DEFAULT_FX_RATES_TO_USD (the unknown "XXX"),
    which the pipeline rejects when it converts the total for the review threshold.
    """
    labelled = generate_labelled_orders(1500, seed=9, invalid_rate=0.4, paid_at=PAID_AT)
    reasons: Counter[str] = Counter()
    for kind, payload in labelled:
        if kind != "invalid":
            continue
        try:
            order = parse_order(payload)
        except OrderValidationError as exc:
            assert len(exc.errors) == 1, exc.errors
            err = exc.errors[0]
            reasons[err["field"].split(".")[0] + ":" + err["field"].split(".")[-1]] += 1
        else:
            held = hold_reasons(order)
            if held:  # totals that do not add up hold the order for a person
                assert len(held) == 1 and held[0].startswith("totals."), held
                reasons["held: subtotal"] += 1
                continue
            assert order.currency not in DEFAULT_FX_RATES_TO_USD, payload
            reasons["unknown currency"] += 1
    assert sum(reasons.values()) > 450
    keys = set(reasons)
    assert "unknown currency" in keys
    assert "shipping_address:shipping_address" in keys
    assert "lines:lines" in keys  # no lines at all
    assert {"lines:quantity", "lines:unit_price", "lines:sku"} <= keys
    assert "held: subtotal" in keys  # subtotal does not match the lines: held, not refused


# --- mix ---------------------------------------------------------------------------------------


def test_kind_shares_match_default_rates(big):
    n = len(big)
    counts = Counter(kind for kind, _ in big)
    assert set(counts) == set(KINDS)
    expected = {"invalid": 0.02, "high_value": 0.04, "risky": 0.03, "normal": 0.91}
    for kind, rate in expected.items():
        assert _within(counts[kind], n, rate), (kind, counts[kind], n * rate)


def test_kind_shares_match_custom_rates():
    rates: dict[str, Any] = {"invalid_rate": 0.1, "high_value_rate": 0.2, "risky_rate": 0.15}
    n = 4000
    counts = Counter(k for k, _ in generate_labelled_orders(n, seed=1, paid_at=PAID_AT, **rates))
    assert _within(counts["invalid"], n, 0.1)
    assert _within(counts["high_value"], n, 0.2)
    assert _within(counts["risky"], n, 0.15)
    assert _within(counts["normal"], n, 0.55)


def test_zero_rates_give_only_normal_orders():
    labelled = generate_labelled_orders(
        500, seed=2, invalid_rate=0, high_value_rate=0, risky_rate=0, shopify_rate=0,
        paid_at=PAID_AT,
    )
    assert {k for k, _ in labelled} == {"normal"}
    assert not any(_is_shopify(p) for _, p in labelled)


def test_high_value_above_and_normal_below_threshold(big_parsed):
    seen: Counter[str] = Counter()
    for kind, payload, order in big_parsed:
        usd = _usd(order)
        seen[kind] += 1
        if kind == "high_value":
            assert usd > THRESHOLD_USD, (usd, payload)
        else:  # normal and risky orders must not trip the value review
            assert usd < THRESHOLD_USD, (kind, usd, payload)
    assert seen["high_value"] > 0 and seen["normal"] > 0


def test_risky_orders_carry_fraud_signals(parsed):
    risky = [(p, o) for k, p, o in parsed if k == "risky"]
    assert risky
    for payload, order in risky:
        assert order.payment.avs_result == "N" and order.payment.cvv_result == "N"
        assert order.billing_address is not None
        assert order.billing_address.country != order.shipping_address.country
        assert order.customer.email.rsplit("@", 1)[1] in DISPOSABLE_DOMAINS
        if not _is_shopify(payload):  # Shopify orders have no attempts field
            assert 3 <= order.payment.attempts <= 5


def test_clean_orders_have_no_fraud_signals(parsed):
    for kind, _, order in parsed:
        if kind == "risky":
            continue
        assert order.payment.avs_result != "N" and order.payment.cvv_result != "N"
        assert order.customer.email.rsplit("@", 1)[1] in EXAMPLE_DOMAINS
        if order.billing_address is not None:
            assert order.billing_address.country == order.shipping_address.country
        assert order.payment.attempts <= 2


def test_shopify_share_and_source(big, big_parsed):
    n = len(big)
    assert _within(sum(_is_shopify(p) for _, p in big), n, 0.3)
    for _, payload, order in big_parsed:
        if not _is_shopify(payload):
            assert order.source == "native"
            continue
        assert order.source == "shopify"
        assert order.order_id == str(payload["id"])
        assert isinstance(payload["id"], int) and payload["id"] >= 5_000_000_000
        assert payload["financial_status"] == "paid"


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_shopify_rate_is_honoured(rate):
    payloads = generate_orders(1000, seed=4, shopify_rate=rate, paid_at=PAID_AT)
    share = sum(_is_shopify(p) for p in payloads)
    assert _within(share, 1000, rate)


def test_order_ids_unique_across_batches():
    first = generate_orders(1000, seed=1, start_id=1, paid_at=PAID_AT)
    second = generate_orders(1000, seed=2, start_id=1001, paid_at=PAID_AT)
    ids = [str(p.get("order_id", p.get("id"))) for p in first + second]
    assert len(ids) == len(set(ids)) == 2000
    native = [p for p in first if not _is_shopify(p)]
    assert native[0]["order_id"].startswith("demo-store-")


def test_destinations_currencies_and_scripts(big_parsed):
    countries: Counter[str] = Counter()
    currencies: Counter[str] = Counter()
    non_latin: Counter[str] = Counter()
    for _, _, order in big_parsed:
        addr = order.shipping_address
        countries[addr.country] += 1
        currencies[order.currency] += 1
        if NON_LATIN.search(addr.name + addr.line1 + addr.city):
            non_latin[addr.country] += 1
    total = sum(countries.values())
    assert 0.40 < countries["US"] / total < 0.50
    assert {"CA", "GB", "DE", "FR", "AU", "JP", "NL", "ES", "IT", "SE", "MX", "BR", "KR", "CN",
            "RU", "AE"} <= set(countries)
    assert set(currencies) <= set(DEFAULT_FX_RATES_TO_USD)
    assert {"USD", "EUR", "GBP", "CAD", "AUD", "JPY", "SEK", "MXN", "BRL", "KRW", "CNY",
            "AED"} <= set(currencies)
    assert {"JP", "CN", "KR", "RU", "AE"} == set(non_latin)


def test_customers_mix(parsed):
    orders = [o for _, _, o in parsed]
    returning = [o for o in orders if o.customer.order_count > 1]
    new = [o for o in orders if o.customer.order_count <= 1]
    assert returning and new
    for o in returning:
        assert o.customer.first_order_at is not None
        assert o.customer.first_order_at < PAID_AT - timedelta(days=1)
    vip_share = sum("vip" in o.customer.tags for o in orders) / len(orders)
    assert 0.02 < vip_share < 0.10


def test_custom_lines_carry_properties(parsed):
    custom_skus = {p.sku for p in CATALOGUE if p.custom}
    seen = 0
    for _, _, order in parsed:
        for line in order.lines:
            if line.sku in custom_skus:
                seen += 1
                assert line.properties, line
            else:
                assert not line.properties, line
    assert seen > 0


def test_payloads_are_json_ready(labelled):
    def check(value):
        if isinstance(value, dict):
            assert all(isinstance(k, str) for k in value)
            for v in value.values():
                check(v)
        elif isinstance(value, list):
            for v in value:
                check(v)
        else:
            assert value is None or isinstance(value, str | int | float | bool), type(value)

    for _, payload in labelled:
        check(payload)
        assert json.loads(json.dumps(payload)) == payload


def test_paid_at_used_and_naive_means_utc():
    naive = datetime(2024, 6, 1, 12, 0, 0)
    payloads = generate_orders(200, seed=1, paid_at=naive, invalid_rate=0)
    for p in payloads:
        order = parse_order(p)
        assert order.paid_at == naive.replace(tzinfo=UTC)
        if _is_shopify(p):
            assert p["processed_at"] == "2024-06-01T12:00:00+00:00"


def test_default_paid_at_is_now():
    before = datetime.now(UTC)
    order = parse_order(generate_orders(1, seed=1, invalid_rate=0)[0])
    assert before - timedelta(seconds=1) <= order.paid_at <= datetime.now(UTC)


@pytest.mark.parametrize(
    "kwargs",
    [{"invalid_rate": -0.1}, {"shopify_rate": 1.5}, {"invalid_rate": 0.5, "high_value_rate": 0.6}],
)
def test_bad_rates_rejected(kwargs):
    with pytest.raises(ValueError):
        generate_orders(1, **kwargs)


# --- catalogue and stock -----------------------------------------------------------------------


def test_catalogue():
    assert 50 <= len(CATALOGUE) <= 70
    assert all(isinstance(p, Product) for p in CATALOGUE)
    assert len({p.sku for p in CATALOGUE}) == len(CATALOGUE)
    custom_share = sum(p.custom for p in CATALOGUE) / len(CATALOGUE)
    assert 0.10 <= custom_share <= 0.20
    assert all(p.price > 0 and p.weight_g > 0 for p in CATALOGUE)


def test_stock_covers_every_sku_in_every_warehouse():
    rows = generate_stock(seed=3, units_per_sku=400)
    pairs = {(r["sku"], r["warehouse"]) for r in rows}
    assert pairs == {(p.sku, code) for p in CATALOGUE for code, _ in WAREHOUSES}
    assert len(rows) == len(pairs)
    countries = dict(WAREHOUSES)
    for r in rows:
        assert r["country"] == countries[r["warehouse"]]
        if r["warehouse"] == "US-EAST":
            assert r["on_hand"] == 400
        else:
            assert 200 <= r["on_hand"] <= 600
    assert generate_stock(seed=3, units_per_sku=400) == rows
    assert generate_stock(seed=4, units_per_sku=400) != rows


# --- helpers and speed -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_write_orders_round_trip(tmp_path, fmt):
    payloads = generate_orders(50, seed=1, paid_at=PAID_AT)
    path = write_orders(tmp_path / f"orders.{fmt}", payloads, fmt=fmt)
    text = path.read_text(encoding="utf-8")
    if fmt == "jsonl":
        loaded = [json.loads(line) for line in text.splitlines()]
    else:
        loaded = json.loads(text)
    assert loaded == payloads


def test_write_orders_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError):
        write_orders(tmp_path / "x", [], fmt="csv")  # type: ignore[arg-type]


# Not a stopwatch (a loaded machine would make one flake): a guard against a generator gone
# quadratic, which would take minutes for the 10,000 orders the bench submits.
@pytest.mark.timeout(60)
def test_ten_thousand_orders_are_generated():
    orders = generate_orders(10_000, seed=0, paid_at=PAID_AT)
    assert len(orders) == 10_000


def test_own_emails_make_every_order_an_address_of_its_own() -> None:
    from domain.fraud.velocity import normalise_email

    # Given a run long enough for the generator to draw the same names again (Shopify payloads
    # carry the address three times)
    payloads = generate_orders(3000, seed=9, invalid_rate=0.0, high_value_rate=0.0,
                               risky_rate=0.0)
    drawn = [parse_order(p).customer.email for p in payloads]
    assert len(set(drawn)) < len(drawn)
    # When each gets its own address
    own = with_own_emails(payloads, first=500)
    orders = [parse_order(p) for p in own]
    # Then no two orders share one, even as the fraud stage compares them
    assert len({normalise_email(o.customer.email) for o in orders}) == len(orders)
    # Then each is the drawn one with the order's number in it, the same in every field
    for n, (p, o, before) in enumerate(zip(own, orders, drawn, strict=True), start=500):
        local, domain = before.split("@")
        assert o.customer.email == f"{local}.{n}@{domain}"
        for key in ("email", "contact_email"):
            if key in p:
                assert p[key] == o.customer.email
    # Then nothing else changed
    assert [o.model_dump(exclude={"customer"}) for o in orders] == [
        parse_order(p).model_dump(exclude={"customer"}) for p in payloads]
