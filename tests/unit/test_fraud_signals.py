"""Payment behaviour and customer-profile signals of single orders."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from domain.fraud.payment import payment_signals
from domain.fraud.profile import (
    History,
    email_resembles_name,
    ip_country,
    is_disposable,
    looks_random,
    profile_signals,
)
from domain.fraud.velocity import ip_identity, normalise_email, velocity_signals
from domain.schemas import Order, parse_order

HOME = {"name": "Ana Silva", "line1": "Torstraße 12", "city": "Berlin", "postal_code": "10119",
        "country": "DE"}


def order(**over: Any) -> Order:
    data: dict[str, Any] = {
        "order_id": "1", "store": "s", "paid_at": "2026-11-27T10:00:00Z",
        "customer": {"id": "c", "email": "ana.silva@example.com", "order_count": 1},
        "lines": [{"sku": "A", "quantity": 1, "unit_price": "50.00"}],
        "currency": "EUR", "totals": {"subtotal": "50.00", "total": "50.00"},
        "shipping_address": HOME, "billing_address": HOME,
        "payment": {"avs_result": "Y", "cvv_result": "M", "attempts": 1},
    }
    data.update(over)
    return parse_order(data)


def pay_codes(**payment: Any) -> list[str]:
    return [s.code for s in payment_signals(order(payment=payment))]


def test_avs_and_cvv_result_codes() -> None:
    assert pay_codes(avs_result="Y", cvv_result="M") == []
    assert pay_codes(avs_result="N", cvv_result="N") == ["avs_no_match", "cvv_no_match"]
    assert pay_codes(avs_result="a", cvv_result="P") == ["avs_partial", "cvv_unverified"]
    assert pay_codes(cvv_result="S") == ["cvv_missing"]


def test_avs_unavailable_counts_only_where_avs_is_supported() -> None:
    # A German card's issuer answers "unavailable" as a matter of course; a US one should not.
    assert pay_codes(avs_result="U") == []
    us = {**HOME, "line1": "1 Main St", "city": "Austin", "region": "TX",
          "postal_code": "78701", "country": "US"}
    o = order(billing_address=us, shipping_address=us, payment={"avs_result": "U"})
    assert [s.code for s in payment_signals(o)] == ["avs_unavailable"]


@pytest.mark.parametrize(("attempts", "points"), [(1, 0), (2, 5), (3, 15), (4, 25), (9, 35)])
def test_more_payment_attempts_weigh_more(attempts: int, points: int) -> None:
    signals = payment_signals(order(payment={"attempts": attempts}))
    assert sum(s.points for s in signals) == points


def test_retrying_while_avs_keeps_failing_is_its_own_signal() -> None:
    assert "retried_failing" in pay_codes(avs_result="N", attempts=3)
    assert "retried_failing" not in pay_codes(avs_result="Y", attempts=3)


def profile_codes(o: Order, history: History | None = None, *, total: str = "50",
                  addr_key: str = "home", card: str = "card1", ip: str | None = "DE",
                  billing_key: str | None = "home") -> list[str]:
    return [s.code for s in profile_signals(o, Decimal(total), history, addr_key=addr_key,
                                            card=card, ip_country_code=ip,
                                            billing_key=billing_key)]


def test_new_customer_with_a_high_value_first_order() -> None:
    assert profile_codes(order()) == ["new_customer"]
    assert profile_codes(order(), total="250") == ["new_customer", "high_value_first_order"]
    assert "away_from_billing" in profile_codes(order(), addr_key="drop", billing_key="home")
    # The store says the customer is returning: no "new customer", and a small credit.
    returning = order(customer={"id": "c", "email": "ana.silva@example.com", "order_count": 5})
    assert profile_codes(returning, total="250") == ["store_returning"]


def test_returning_customer_compared_with_their_history() -> None:
    h = History(orders=3, total_usd=Decimal("150"), max_usd=Decimal("60"),
                addresses=frozenset({"home"}), cards=frozenset({"card1"}),
                ip_countries=frozenset({"DE"}))
    assert profile_codes(order(), h) == ["known_address", "known_card"]
    spree = profile_codes(order(), h, total="400", addr_key="elsewhere", card="card2",
                          ip="NG")
    assert {"new_address", "new_card", "value_spike", "new_ip_country", "takeover_shape",
            "ip_country"} <= set(spree)


def test_disposable_email_domains_and_their_subdomains() -> None:
    assert is_disposable("x@mailinator.com") and is_disposable("x@eu.mailinator.com")
    assert not is_disposable("ana@example.com") and not is_disposable("no-at-sign")
    o = order(customer={"id": "c", "email": "x@yopmail.com", "order_count": 1})
    assert "disposable_email" in profile_codes(o)


def test_email_against_the_names_on_the_order() -> None:
    assert email_resembles_name("ana.silva@example.com", ["Ana Silva"]) is True
    assert email_resembles_name("asilva77@example.com", ["Ana Silva"]) is True
    assert email_resembles_name("kx7qpl2m@gmail.com", ["Ana Silva"]) is False
    # A name in another script cannot be compared with a Latin e-mail: no verdict.
    assert email_resembles_name("wei.wang@example.com", ["王伟"]) is None
    assert looks_random("kx7qpl2m@gmail.com") and looks_random("zxcvbnmq@gmail.com")
    assert not looks_random("sunnyfox123@gmail.com") and not looks_random("ana.silva@x.com")
    o = order(customer={"id": "c", "email": "kx7qpl2m@gmail.com", "order_count": 1})
    assert {"email_not_name", "random_email"} <= set(profile_codes(o))


def test_ip_country_against_the_cardholder_and_the_parcel() -> None:
    assert ip_country("8.8.8.8") == "US" and ip_country("192.0.2.1") is None
    assert ip_country("") is None and ip_country("not an ip") is None
    assert "ip_country" in profile_codes(order(), ip="US")
    # A gift sent abroad from home: the IP is the cardholder's country, nothing to say.
    gift = order(shipping_address={**HOME, "city": "Paris", "postal_code": "75008",
                                   "country": "FR"})
    assert profile_codes(gift, ip="DE") == ["new_customer"]
    assert {"ip_country", "ip_country_neither"} <= set(profile_codes(gift, ip="NG"))


def test_ip_and_email_identities_for_velocity() -> None:
    assert ip_identity("8.8.8.8") == "8.8.8.8"
    assert ip_identity("2001:4860:4860::8888") == "2001:4860:4860::"  # the /64
    assert ip_identity("10.0.0.7") is None and ip_identity("192.0.2.9") is None
    assert ip_identity("garbage") is None
    assert normalise_email("A.Na+shop@GoogleMail.com") == "ana@gmail.com"
    assert normalise_email("ana@example.com") == "ana@example.com"
    assert normalise_email("") == ""


def test_velocity_signals_take_the_strongest_matching_rule_per_group() -> None:
    signals = velocity_signals({"ip_cards_1h": 6, "ip_cards_24h": 9, "card_orders_1h": 1})
    assert [(s.code, s.points) for s in signals] == [("velocity_ip_cards", 40)]
    assert velocity_signals({}) == []
