"""Velocity counters on a real Redis: sliding windows, shared by workers, idempotent."""

from __future__ import annotations

import redis

from domain.fraud.velocity import VelocityInput, VelocityStore

T0 = 1_800_000_000.0  # payment times are the orders' own, not the clock's


def order(n: int, ts: float, *, card: str = "4242", ip: str = "8.8.8.8",
          email: str = "ana@example.com", new: bool = True) -> VelocityInput:
    return VelocityInput.build(order_id=n, ts=ts, card_bin="414720", card_last4=card,
                               email=email, ip=ip, building="b1", customer_id=f"c{n}",
                               new_customer=new)


def store(settings, ns: str = "test:fraud") -> VelocityStore:
    return VelocityStore(redis.Redis.from_url(settings.broker_url), ns)


def test_orders_per_card_count_within_their_windows(broker, settings) -> None:
    v = store(settings)
    counts = v.observe("acme", [order(1, T0), order(2, T0 + 60), order(3, T0 + 2 * 3600)])
    assert [c["card_orders_1h"] for c in counts] == [1, 2, 1]  # the third is 2 h later
    assert [c["card_orders_24h"] for c in counts] == [1, 2, 3]


def test_two_workers_share_the_counts_and_a_redelivery_counts_once(broker, settings) -> None:
    worker_a, worker_b = store(settings), store(settings)
    worker_a.observe("acme", [order(1, T0), order(2, T0 + 10)])
    (again,) = worker_b.observe("acme", [order(2, T0 + 10)])  # the same order, redelivered
    assert again["card_orders_1h"] == 2
    (third,) = worker_b.observe("acme", [order(3, T0 + 20)])
    assert third["card_orders_1h"] == 3


def test_distinct_new_cards_per_ip_count_card_testing_not_known_customers(broker,
                                                                         settings) -> None:
    v = store(settings)
    burst = [order(i, T0 + i, card=f"{1000 + i}") for i in range(6)]
    assert [c["ip_cards_1h"] for c in v.observe("acme", burst)] == [1, 2, 3, 4, 5, 6]
    # Known customers behind the same (mobile carrier's) IP add no "new cards".
    regulars = [order(10 + i, T0 + 10 + i, card=f"{2000 + i}", new=False) for i in range(3)]
    assert [c.get("ip_cards_1h") for c in v.observe("acme", regulars)] == [None] * 3
    assert [c["ip_orders_1h"] for c in v.observe("acme", [order(20, T0 + 30)])] == [10]


def test_orders_in_one_batch_count_each_other_in_payment_time_order(broker, settings) -> None:
    v = store(settings)
    late, early = order(1, T0 + 30, card="1111"), order(2, T0, card="2222")
    counts = v.observe("acme", [late, early])
    assert counts[1]["ip_cards_1h"] == 1 and counts[0]["ip_cards_1h"] == 2


def test_stores_and_namespaces_are_kept_apart_and_cleared(broker, settings) -> None:
    v, other = store(settings), store(settings, "test:other")
    v.observe("acme", [order(1, T0)])
    (b,) = v.observe("globex", [order(2, T0)])
    assert b["card_orders_1h"] == 1
    (o,) = other.observe("acme", [order(3, T0)])
    assert o["card_orders_1h"] == 1
    assert v.clear() > 0
    assert not list(broker.scan_iter(match="test:fraud:*"))
    assert list(broker.scan_iter(match="test:other:*"))
    # Nothing personal reaches Redis: keys and members are hashes.
    dump = b"".join(broker.scan_iter(match="test:other:*"))
    assert b"ana@example.com" not in dump and b"8.8.8.8" not in dump


def test_orders_without_card_ip_or_email_count_nothing_for_them(broker, settings) -> None:
    v = store(settings)
    bare = VelocityInput.build(order_id=1, ts=T0, card_bin="", card_last4="", email="",
                               ip="10.1.2.3", building="", customer_id="c1", new_customer=True)
    assert v.observe("acme", [bare]) == [{}]
