"""The label stage on real PostgreSQL, Redis and the sandbox carrier over HTTP: rate shopping,
exactly one label through lost answers, deferral behind an open breaker, a bounded give-up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, update

from config.settings import Settings
from domain.alerts import open_alerts
from domain.breaker import CircuitBreaker
from domain.carriers import EasyPostCarrier, SandboxCarrier
from domain.carriers.shared import breaker_policy
from domain.clock import utcnow
from domain.db import unit_of_work
from domain.models import OrderRow, Shipment, Wave
from sandbox.carrier import FaultProfile, SandboxCarrierServer
from tasks import labels as labels_module
from tasks.fraud import check_orders
from tasks.intake import submit_orders
from tasks.inventory import reserve_orders
from tasks.labels import (
    SHARED_RATES_PREFIX,
    buy_wave_labels,
    label_wave,
    label_wave_batch,
    rate_queries,
    rate_shop,
    record_labels,
    retry_failed_labels,
)
from tasks.sharding import assign_orders, close_waves_older_than
from tests.integration.helpers import native_order, put_stock

BERLIN = {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117",
          "country": "DE"}


@pytest.fixture
def server() -> Iterator[SandboxCarrierServer]:
    with SandboxCarrierServer(time_scale=3600, easypost_api_key="EZTK-test") as s:
        yield s


@pytest.fixture
def waves(db, broker, settings) -> Callable[..., list[int]]:
    """Paid orders taken through fraud, inventory and sharding; returns the closed waves."""
    put_stock(settings, [("TEE-M", "US-EAST", "US", 100)])

    def make(orders: list[dict[str, Any]], s: Settings = settings) -> list[int]:
        ids = submit_orders(orders, settings=s).accepted
        assert len(ids) == len(orders)
        for step in (check_orders, reserve_orders, assign_orders):
            with unit_of_work(s) as uow:
                step(uow, ids, s)
        with unit_of_work(s) as uow:
            return sorted(close_waves_older_than(uow, 0.0))

    return make


def shipments(settings: Settings) -> dict[str, Shipment]:
    with unit_of_work(settings) as uow:
        rows = uow.session.execute(select(Shipment, OrderRow.source_order_id)
                                   .join(OrderRow, OrderRow.id == Shipment.order_id)).all()
        return {oid: s for s, oid in rows}


def orders(settings: Settings) -> dict[str, OrderRow]:
    with unit_of_work(settings) as uow:
        return {o.source_order_id: o for o in uow.session.execute(select(OrderRow)).scalars()}


def test_rate_shopping_picks_the_cheapest_service_meeting_each_promise(
        waves, settings, server) -> None:
    # Given a standard order, a VIP order (promise 2 days) and a custom-made order going abroad
    # (promise 10 days), shopping across every carrier
    across = settings.model_copy(update={"rate_shop_across_carriers": True})
    wave_ids = waves([native_order("STD-1"), native_order("VIP-1", tags=["vip"]),
                      native_order("CUS-1", tags=["custom"], shipping_address=BERLIN)], across)
    client = SandboxCarrier(server.url)

    # when their waves are labelled
    for wave in wave_ids:
        buy_wave_labels(wave, across, client)

    # then each got the cheapest service that arrives within its promise
    got = {k: (s.carrier, s.service, s.promise_days, s.est_delivery_days)
           for k, s in shipments(settings).items()}
    assert got == {
        "STD-1": ("sbx-post", "ground", 5, 4),     # 4.50, 4 days: cheapest domestic
        "VIP-1": ("sbx-post", "express", 2, 2),    # ground (4 days) would break the promise
        "CUS-1": ("sbx-post", "ground", 10, 10),   # the post beats the wave's air carrier
    }
    # ... and paid what was quoted
    assert shipments(settings)["STD-1"].rate == Decimal("4.50")
    assert {o.state for o in orders(settings).values()} == {"labelled"}


def test_a_quote_one_worker_process_had_serves_the_others(waves, settings, server,
                                                          broker) -> None:
    # Given orders to three destinations in waves, quoted once by a worker process
    wave_ids = waves([native_order("Q-1"), native_order("Q-2", shipping_address=BERLIN),
                      native_order("Q-3", tags=["vip"])])
    with unit_of_work(settings) as uow:
        queries = rate_queries(uow, wave_ids)
    first = rate_shop(SandboxCarrier(server.url), queries, settings)
    asked = server.state.stats.api_requests
    assert asked >= 2 and not first.unquoted
    assert broker.keys(SHARED_RATES_PREFIX + "*")
    # When another process (its own cache empty, its own client) shops the same parcels
    labels_module._rate_cache.clear()
    again = rate_shop(SandboxCarrier(server.url), queries, settings)
    # then it chose the same services without asking the carrier again
    assert server.state.stats.api_requests == asked
    assert again.choices == first.choices


def test_within_the_waves_carrier_by_default(waves, settings, server) -> None:
    (wave,) = waves([native_order("CUS-2", tags=["custom"], shipping_address=BERLIN)])
    buy_wave_labels(wave, settings, SandboxCarrier(server.url))
    s = shipments(settings)["CUS-2"]
    assert (s.carrier, s.service) == ("sbx-air", "ground")  # cheapest sbx-air within 10 days


@pytest.mark.parametrize("adapter", ["sandbox", "easypost"])
def test_a_charged_label_whose_answer_was_lost_is_found_not_bought_again(
        waves, settings, server, adapter: str) -> None:
    # Given a carrier that charges every purchase but never gets the answer back in time
    (wave,) = waves([native_order("LOST-1"), native_order("LOST-2")])
    server.state.set_faults(FaultProfile(lost_rate=1.0, hang_s=1.0, operations=("labels",)))
    client = (SandboxCarrier(server.url, timeout_s=0.3, retry_max_s=0.2) if adapter == "sandbox"
              else EasyPostCarrier(server.url, "EZTK-test", timeout_s=0.3, retry_max_s=0.2))

    # when the label task runs, the purchase looks failed and the wave is deferred
    attempt = label_wave(wave, settings, client)
    assert attempt.outcome == "deferred" and attempt.countdown_s >= 1
    charged = server.state.stats.labels_purchased
    assert charged == 2 and server.state.stats.lost_labels == 2
    o = orders(settings)
    assert {x.state for x in o.values()} == {"in_wave"}
    assert o["LOST-1"].hold_reason is not None
    assert o["LOST-1"].hold_reason.startswith("label deferred:")
    assert {s.label_attempts for s in shipments(settings).values()} == {1}

    # and when it runs again once the carrier answers (the scheduled retry)
    server.state.set_faults(FaultProfile())
    with unit_of_work(settings) as uow:
        uow.session.execute(update(Wave).values(next_label_attempt_at=utcnow()))
    assert label_wave(wave, settings, client).outcome == "done"

    # then it looked the labels up by key and recorded them: nothing was charged twice
    assert server.state.stats.labels_purchased == charged
    assert server.state.stats.lookups >= 1
    assert {x.state for x in orders(settings).values()} == {"labelled"}
    assert all(x.hold_reason is None for x in orders(settings).values())
    s = shipments(settings)["LOST-1"]
    assert s.label_id and s.tracking_number in server.state.by_tracking


def test_an_open_breaker_defers_the_wave_without_calling_the_carrier(
        waves, settings, server, redis_client) -> None:
    # Given the sbx-post breaker open (shared by all workers, in Redis)
    (wave,) = waves([native_order("BRK-1")])
    breaker = CircuitBreaker(redis_client, breaker_policy(settings))
    for _ in range(settings.breaker_min_calls):
        breaker.record("sbx-post", ok=False)
    assert breaker.status("sbx-post").state == "open"
    client = SandboxCarrier(server.url, breaker=breaker)

    # when the label task runs
    attempt = label_wave(wave, settings, client)

    # then it is deferred until the breaker's pause is over, not failed; the order says why
    assert attempt.outcome == "deferred"
    assert settings.breaker_open_s <= attempt.countdown_s <= settings.breaker_open_s + 2
    assert server.state.stats.api_requests == 0
    order = orders(settings)["BRK-1"]
    assert order.state == "in_wave"
    assert order.hold_reason is not None
    assert "sbx-post circuit is open" in order.hold_reason
    with unit_of_work(settings) as uow:
        batch = uow.session.get_one(Wave, wave)
        assert batch.label_attempts == 1 and batch.next_label_attempt_at is not None
        assert batch.next_label_attempt_at > utcnow()
    # and a copy of the message arriving early (a re-drive) is dropped as a duplicate
    assert label_wave(wave, settings, client).outcome == "duplicate"


def test_waves_of_one_message_are_bought_together_and_deferred_apart(
        waves, settings, server, redis_client) -> None:
    # Given two waves closed together, one shipping by sbx-post (domestic) and one by sbx-air
    # (to Berlin), and the sbx-post breaker open
    wave_ids = waves([native_order("TOG-1"), native_order("TOG-2", shipping_address=BERLIN)])
    assert len(wave_ids) == 2
    breaker = CircuitBreaker(redis_client, breaker_policy(settings))
    for _ in range(settings.breaker_min_calls):
        breaker.record("sbx-post", ok=False)
    client = SandboxCarrier(server.url, breaker=breaker)

    # when one label run takes both
    attempts = label_wave_batch(wave_ids, settings, client)

    # then the sbx-air parcel has its label and its wave is done, while the sbx-post wave
    # waits for the breaker, alone: its order says why
    o = orders(settings)
    post_wave, air_wave = o["TOG-1"].wave_id, o["TOG-2"].wave_id
    assert post_wave is not None and air_wave is not None
    assert {post_wave, air_wave} == set(wave_ids)
    assert (o["TOG-1"].state, o["TOG-2"].state) == ("in_wave", "labelled")
    assert attempts[air_wave].outcome == "done"
    assert attempts[post_wave].outcome == "deferred"
    assert o["TOG-1"].hold_reason is not None and o["TOG-2"].hold_reason is None
    with unit_of_work(settings) as uow:
        assert uow.session.get_one(Wave, air_wave).status == "labelled"
        post = uow.session.get_one(Wave, post_wave)
        assert post.status == "closed" and post.next_label_attempt_at is not None
    assert server.state.stats.labels_purchased == 1

    # and the same message delivered again buys nothing: one wave is done, the other's attempt
    # is not due (its own retry carries it)
    again = label_wave_batch(wave_ids, settings, client)
    assert (again[air_wave].outcome, again[post_wave].outcome) == ("done", "duplicate")
    assert server.state.stats.labels_purchased == 1

    # and once the breaker lets calls through, the retry labels the other: one label each
    breaker.record("sbx-post", ok=True)
    redis_client.flushdb()
    with unit_of_work(settings) as uow:
        uow.session.execute(update(Wave).values(next_label_attempt_at=utcnow()))
    assert label_wave_batch([post_wave], settings, client)[post_wave].outcome == "done"
    assert {x.state for x in orders(settings).values()} == {"labelled"}
    assert server.state.stats.labels_purchased == 2


def test_past_the_bound_the_wave_gives_up_into_label_failed(waves, settings, server) -> None:
    (wave,) = waves([native_order("GIVE-1")])
    with unit_of_work(settings) as uow:
        uow.session.execute(update(Wave).where(Wave.id == wave).values(
            closed_at=utcnow() - timedelta(hours=7)))
    server.state.set_faults(FaultProfile(error_rate=1.0))
    client = SandboxCarrier(server.url, retry_max_s=0.3)

    attempt = label_wave(wave, settings, client)

    assert attempt.outcome == "gave_up"
    order = orders(settings)["GIVE-1"]
    assert order.state == "label_failed"
    assert order.hold_reason is not None
    assert order.hold_reason.startswith("no label: carrier unavailable for 420 min")
    with unit_of_work(settings) as uow:
        assert [a.key for a in open_alerts(uow.session, "label_failed")] == [str(order.id)]
        assert uow.session.get_one(Wave, wave).status == "labelled"

    # and once the carrier is back, ops send it through again: one label, alert resolved
    server.state.set_faults(FaultProfile())
    with unit_of_work(settings) as uow:
        assert retry_failed_labels(uow, [order.id]) == [order.id]
    assert label_wave(wave, settings, client).outcome == "done"
    assert orders(settings)["GIVE-1"].state == "labelled"
    assert server.state.stats.labels_purchased == 1
    with unit_of_work(settings) as uow:
        assert open_alerts(uow.session, "label_failed") == []


def test_a_refused_parcel_goes_to_label_failed_with_the_carriers_words(
        waves, settings, server) -> None:
    heavy = native_order("HEAVY-1")
    heavy["lines"][0]["weight_g"] = 40_000  # the post takes up to 30 kg
    (wave,) = waves([heavy])
    outcome = buy_wave_labels(wave, settings, SandboxCarrier(server.url))
    assert list(outcome.failed.values()) == ["carrier refused the label: weight_g: sbx-post "
                                             "accepts at most 30000 g"]
    assert orders(settings)["HEAVY-1"].state == "label_failed"


def test_a_label_bought_for_an_order_cancelled_meanwhile_is_voided(
        waves, settings, server) -> None:
    from domain.cancellation import cancel_orders
    from tasks.cancellation import void_cancelled_labels
    from tasks.labels import prepare_shipments

    # Given a purchase in flight (shipment prepared, label charged, not yet recorded)
    (wave,) = waves([native_order("CXL-1")])
    client = SandboxCarrier(server.url)
    with unit_of_work(settings) as uow:
        (req,) = prepare_shipments(uow, wave)
    label = client.buy_label(req)
    # when the order is cancelled before the label is recorded
    with unit_of_work(settings) as uow:
        order_id = orders(settings)["CXL-1"].id
        cancel_orders(uow, [order_id], "customer changed their mind")
    with unit_of_work(settings) as uow:
        assert record_labels(uow, [label]) == []
    # then the label is kept on the shipment for the void, and voided at the carrier
    s = shipments(settings)["CXL-1"]
    assert (s.status, s.label_id) == ("void_pending", label.label_id)
    out = void_cancelled_labels([order_id], settings, client, final=True)
    assert out.voided == [order_id]
    assert server.state.stats.labels_voided == 1
    assert orders(settings)["CXL-1"].state == "cancelled"
