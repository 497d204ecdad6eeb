"""The labelled stream generator: deterministic, valid orders, the patterns it promises."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime

from domain.fraud.address import is_po_box
from domain.fraud.profile import ip_country
from domain.schemas import parse_order
from sandbox.fraud_streams import FRAUD_PATTERNS, generate_stream

START = datetime(2026, 11, 27, tzinfo=UTC)


def test_same_seed_same_stream_and_another_seed_another() -> None:
    a = generate_stream(600, seed=5, start=START)
    b = generate_stream(600, seed=5, start=START)
    c = generate_stream(600, seed=6, start=START)
    assert [(o.payload, o.pattern) for o in a] == [(o.payload, o.pattern) for o in b]
    assert [o.payload for o in a] != [o.payload for o in c]


def test_every_order_is_valid_and_labelled_in_payment_time_order() -> None:
    stream = generate_stream(2000, seed=1, start=START, fraud_rate=0.05)
    orders = [parse_order(o.payload) for o in stream]
    assert len(orders) == 2000 and len({o.order_id for o in orders}) == 2000
    assert [o.paid_at for o in orders] == sorted(o.paid_at for o in orders)
    fraud = Counter(o.pattern for o in stream if o.fraud)
    assert set(fraud) == set(FRAUD_PATTERNS)
    assert 90 <= sum(fraud.values()) <= 110
    genuine = Counter(o.pattern for o in stream if not o.fraud)
    assert genuine["legit_non_latin"] > 0 and genuine["legit_gift_abroad"] > 0
    assert any(is_po_box(o.shipping_address) for o, lo in zip(orders, stream, strict=True)
               if lo.pattern == "legit_po_box")


def test_fraud_patterns_carry_their_signature() -> None:
    stream = generate_stream(3000, seed=2, start=START)
    by = defaultdict(list)
    for lo in stream:
        by[lo.pattern].append(parse_order(lo.payload))
    # Card testing: small orders, mostly sharing a BIN or an IP within minutes.
    testing = by["card_testing"]
    assert all(o.totals.total <= 30 for o in testing)
    bins = Counter(o.payment.card_bin for o in testing)
    assert bins.most_common(1)[0][1] >= 6
    # Mismatched countries: the card's country is not the parcel's.
    assert all(o.billing_address and o.billing_address.country != o.shipping_address.country
               for o in by["mismatched_countries"])
    # Reshippers: a handful of forwarders' buildings take all those parcels.
    assert len({o.shipping_address.line1 for o in by["reshipper"]}) <= 6
    # IPs are real public addresses whose registered country the check can look up.
    assert sum(ip_country(o.client.browser_ip) is not None
               for o in by["legit_new"]) > 0.9 * len(by["legit_new"])
