"""Tracking on real PostgreSQL and the sandbox carrier over HTTP: backfill, normalised
events, delivered completes the order, carrier pushes, and the ops alerts."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from sqlalchemy import func, select, update
from starlette.applications import Starlette

from config.settings import Settings
from domain.alerts import open_alerts
from domain.breaker import CircuitBreaker
from domain.carriers import CarrierCircuitOpen, EasyPostCarrier, SandboxCarrier
from domain.carriers.shared import breaker_policy
from domain.clock import utcnow
from domain.db import unit_of_work
from domain.models import OrderRow, RejectedTrackingPush, Shipment, TrackingEvent
from sandbox.carrier import SandboxCarrierServer
from tasks.fraud import check_orders
from tasks.intake import submit_orders
from tasks.inventory import reserve_orders
from tasks.labels import buy_wave_labels
from tasks.sharding import assign_orders, close_waves_older_than
from tasks.tracking import backfill_shipments
from tasks.watchdog import run_watchdog
from tests.integration.helpers import native_order, put_stock
from tests.waiting import eventually
from workers.tracking_api import signature, tracking_routes_for

BERLIN = {"line1": "Unter den Linden 1", "city": "Berlin", "postal_code": "10117",
          "country": "DE"}


@pytest.fixture
def server() -> Iterator[SandboxCarrierServer]:
    # 72,000x: a carrier hour passes in 0.05 s; every parcel misses its first delivery round.
    with SandboxCarrierServer(time_scale=72_000, failed_attempt_rate=1.0,
                              easypost_api_key="EZTK-test") as s:
        yield s


@pytest.fixture
def labelled(db, broker, settings, server) -> Callable[..., dict[str, int]]:
    """Orders taken up to labelled; returns source order id -> shipment id."""
    put_stock(settings, [("TEE-M", "US-EAST", "US", 100)])

    def make(orders: list[dict[str, Any]]) -> dict[str, int]:
        ids = submit_orders(orders, settings=settings).accepted
        for step in (check_orders, reserve_orders, assign_orders):
            with unit_of_work(settings) as uow:
                step(uow, ids, settings)
        with unit_of_work(settings) as uow:
            waves = close_waves_older_than(uow, 0.0)
        for wave in waves:
            buy_wave_labels(wave, settings, SandboxCarrier(server.url))
        with unit_of_work(settings) as uow:
            return dict(uow.session.execute(
                select(OrderRow.source_order_id, Shipment.id)
                .join(Shipment, Shipment.order_id == OrderRow.id)).all())

    return make


def order_state(settings: Settings, source_id: str) -> str:
    with unit_of_work(settings) as uow:
        return uow.session.execute(select(OrderRow.state).where(
            OrderRow.source_order_id == source_id)).scalar_one()


def parcel_statuses(server: SandboxCarrierServer, settings: Settings,
                    shipment_ids: list[int]) -> list[str]:
    """What the carrier reports now for each shipment's parcel (no breaker in the way)."""
    with unit_of_work(settings) as uow:
        numbers = uow.session.scalars(select(Shipment.tracking_number)
                                      .where(Shipment.id.in_(shipment_ids))).all()
    return [t.status for t in SandboxCarrier(server.url).track([str(n) for n in numbers])]


def event_statuses(settings: Settings, shipment_id: int) -> list[str]:
    with unit_of_work(settings) as uow:
        return list(uow.session.execute(
            select(TrackingEvent.status).where(TrackingEvent.shipment_id == shipment_id)
            .order_by(TrackingEvent.at, TrackingEvent.id)).scalars())


@pytest.mark.parametrize("adapter", ["sandbox", "easypost"])
def test_backfill_records_normalised_events_and_delivery_completes_the_order(
        labelled, settings, server, adapter: str) -> None:
    # Given a labelled order whose parcel misses its first delivery round
    ship = labelled([native_order("TRK-1")])
    client = (SandboxCarrier(server.url) if adapter == "sandbox"
              else EasyPostCarrier(server.url, "EZTK-test"))

    # when the backfill runs until the carrier reports it delivered
    def delivered() -> bool:
        backfill_shipments([ship["TRK-1"]], settings, client)
        return order_state(settings, "TRK-1") == "delivered"

    eventually(delivered, 20, "the backfill to deliver TRK-1")

    # then every scan is stored once, in the fixed vocabulary, and the order is complete
    assert order_state(settings, "TRK-1") == "delivered"
    statuses = event_statuses(settings, ship["TRK-1"])
    assert statuses == ["info_received", "in_transit", "in_transit", "out_for_delivery",
                        "failed_attempt", "out_for_delivery", "delivered"]
    assert backfill_shipments([ship["TRK-1"]], settings, client) == 0  # delivered: not asked
    with unit_of_work(settings) as uow:
        s = uow.session.get_one(Shipment, ship["TRK-1"])
        assert (s.status, s.tracking_status) == ("delivered", "delivered")
        assert s.delivered_at is not None and s.last_event_at == s.delivered_at


def test_a_carrier_exception_flags_the_parcel_for_a_person(labelled, settings, server) -> None:
    ship = labelled([native_order("EXC-1")])
    client = SandboxCarrier(server.url)
    with unit_of_work(settings) as uow:
        s = uow.session.get_one(Shipment, ship["EXC-1"])
        label_id = s.label_id
    assert label_id is not None
    client.void_label(label_id)  # the carrier now reports the parcel as an exception

    backfill_shipments([ship["EXC-1"]], settings, client)

    with unit_of_work(settings) as uow:
        s = uow.session.get_one(Shipment, ship["EXC-1"])
        assert s.tracking_status == "exception" and s.flag_reason == "carrier reports exception"
        (alert,) = open_alerts(uow.session, "tracking_exception")
        assert alert.key == s.tracking_number
    assert order_state(settings, "EXC-1") in ("labelled", "in_transit")


def test_one_carriers_open_breaker_does_not_stop_the_others_tracking(
        labelled, settings, server, redis_client) -> None:
    ship = labelled([native_order("POST-1"), native_order("AIR-1", shipping_address=BERLIN)])
    breaker = CircuitBreaker(redis_client, breaker_policy(settings))
    for _ in range(settings.breaker_min_calls):
        breaker.record("sbx-air", ok=False)
    client = SandboxCarrier(server.url, breaker=breaker)
    eventually(lambda: "info_received" not in parcel_statuses(server, settings,
                                                              list(ship.values())),
               10, "both parcels to be in transit")

    with pytest.raises(CarrierCircuitOpen):
        backfill_shipments(list(ship.values()), settings, client)

    assert event_statuses(settings, ship["POST-1"])  # the post's tracking was recorded
    assert event_statuses(settings, ship["AIR-1"]) == []


# -- pushes -------------------------------------------------------------------------------------


@pytest.fixture
def push_client() -> Iterator[Callable[[Settings], httpx.Client]]:
    """The push route served by uvicorn on a free port, and an HTTP client of it."""
    started: list[tuple[uvicorn.Server, threading.Thread, httpx.Client]] = []

    def start(settings: Settings) -> httpx.Client:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(Starlette(routes=tracking_routes_for(settings)),
                                               log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        eventually(lambda: server.started, 10, "the tracking webhook server to start")
        client = httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}")
        started.append((server, thread, client))
        return client

    yield start
    for server, thread, client in started:
        client.close()
        server.should_exit = True
        thread.join(5)


def test_a_pushed_tracker_is_recorded_once(labelled, settings, server, push_client) -> None:
    ship = labelled([native_order("PSH-1")])
    with unit_of_work(settings) as uow:
        number = uow.session.get_one(Shipment, ship["PSH-1"]).tracking_number
    now = utcnow()
    body = {"tracking_number": number, "events": [
        {"id": "scan-1", "status": "InTransit", "at": now.isoformat(), "location": "Memphis"},
        {"id": "scan-2", "status": "Delivered", "at": (now + timedelta(hours=1)).isoformat()},
    ]}
    client = push_client(settings)

    first = client.post("/webhooks/tracking", json=body)
    again = client.post("/webhooks/tracking", json=body)

    assert first.status_code == 200 and first.json()["new_events"] == 2
    assert again.json()["new_events"] == 0
    assert event_statuses(settings, ship["PSH-1"]) == ["in_transit", "delivered"]
    assert order_state(settings, "PSH-1") == "delivered"
    unknown = client.post("/webhooks/tracking", json={**body, "tracking_number": "ZZ1"})
    assert unknown.json()["unknown_tracking_numbers"] == ["ZZ1"]


def test_an_easypost_webhook_must_be_signed_when_a_secret_is_set(
        labelled, settings, server, push_client) -> None:
    ship = labelled([native_order("EPW-1")])
    with unit_of_work(settings) as uow:
        number = uow.session.get_one(Shipment, ship["EPW-1"]).tracking_number
    event = {"object": "Event", "description": "tracker.updated", "result": {
        "object": "Tracker", "tracking_code": number, "status": "out_for_delivery",
        "tracking_details": [
            {"status": "pre_transit", "status_detail": "label_created", "message": "Label",
             "datetime": "2026-11-20T10:00:00Z", "tracking_location": {"city": "Newark"}},
            {"status": "out_for_delivery", "message": "On the van",
             "datetime": "2026-11-22T08:00:00Z",
             "tracking_location": {"city": "Austin", "state": "TX", "country": "US"}},
        ]}}
    raw = json.dumps(event).encode()
    signed = settings.model_copy(update={"carrier_webhook_secret": SecretStr("whsec-123")})
    client = push_client(signed)

    unsigned = client.post("/webhooks/tracking", content=raw)
    forged = client.post("/webhooks/tracking", content=raw,
                         headers={"X-Hmac-Signature": signature("wrong", raw)})
    good = client.post("/webhooks/tracking", content=raw,
                       headers={"X-Hmac-Signature": signature("whsec-123", raw)})

    assert (unsigned.status_code, forged.status_code, good.status_code) == (401, 401, 200)
    assert event_statuses(settings, ship["EPW-1"]) == ["info_received", "out_for_delivery"]
    assert order_state(settings, "EPW-1") == "in_transit"


def test_the_carrier_pushes_tracking_until_the_order_is_delivered(
        labelled, settings, server, push_client) -> None:
    # Given a labelled order, and the carrier told to push signed tracking to our webhook
    ship = labelled([native_order("PUSH-1")])
    signed = settings.model_copy(update={"carrier_webhook_secret": SecretStr("whsec-9")})
    webhook = push_client(signed)
    response = httpx.put(f"{server.url}/v1/admin/webhook", json={
        "url": f"{str(webhook.base_url).rstrip('/')}/webhooks/tracking", "secret": "whsec-9",
        "interval_s": 0.2})
    assert response.json()["signed"] is True

    # when carrier time passes (no backfill runs), then its pushes alone deliver the order
    eventually(lambda: order_state(settings, "PUSH-1") == "delivered", 20,
               "the carrier's pushes to deliver PUSH-1")
    assert order_state(settings, "PUSH-1") == "delivered"
    assert event_statuses(settings, ship["PUSH-1"])[-1] == "delivered"
    assert server.state.stats.pushes > 0 and server.state.stats.push_failures == 0
    httpx.put(f"{server.url}/v1/admin/webhook", json={"url": None})


def test_a_malformed_push_is_refused_naming_the_fields_and_kept(
        labelled, settings, push_client) -> None:
    client = push_client(settings)
    bad = {"trackers": [{"tracking_number": "X1", "events": [
        {"id": "e1", "status": "teleported", "at": "2026-11-22T08:00:00Z"},
        {"id": "e2", "status": "delivered", "at": "yesterday"}]}]}

    response = client.post("/webhooks/tracking", json=bad)
    not_json = client.post("/webhooks/tracking", content=b"{nope")

    assert response.status_code == 422
    fields = [e["field"] for e in response.json()["errors"]]
    assert fields == ["trackers[0].events[0].status", "trackers[0].events[1].at"]
    assert not_json.status_code == 400
    with unit_of_work(settings) as uow:
        kept = uow.session.execute(select(RejectedTrackingPush).order_by(
            RejectedTrackingPush.id)).scalars().all()
        assert [json.loads(k.raw) if k.raw.startswith("{\"") else k.raw for k in kept] == [
            bad, "{nope"]
        assert "teleported" in kept[0].reason


# -- alerts -------------------------------------------------------------------------------------


def test_silent_tracking_is_flagged_after_24h_and_cleared_by_news(
        labelled, settings, server) -> None:
    ship = labelled([native_order("SIL-1")])
    with unit_of_work(settings) as uow:
        uow.session.execute(update(Shipment).values(label_bought_at=utcnow() - timedelta(
            hours=25), last_event_at=None))

    out = run_watchdog(settings)

    assert out.silent_flagged == [ship["SIL-1"]]
    with unit_of_work(settings) as uow:
        s = uow.session.get_one(Shipment, ship["SIL-1"])
        assert s.flag_reason is not None
        assert s.flag_reason.startswith("tracking silent since")
        (alert,) = open_alerts(uow.session, "tracking_silent")
        assert "no tracking news from sbx-post for 25 h" in alert.message
    assert run_watchdog(settings).silent_flagged == []  # raised once

    # when the carrier has news again, the flag and the alert clear
    eventually(lambda: parcel_statuses(server, settings, [ship["SIL-1"]]) != ["info_received"],
               10, "news of SIL-1 from the carrier")
    backfill_shipments([ship["SIL-1"]], settings, SandboxCarrier(server.url))
    with unit_of_work(settings) as uow:
        assert uow.session.get_one(Shipment, ship["SIL-1"]).flagged_at is None
        assert open_alerts(uow.session, "tracking_silent") == []


def test_an_order_stuck_in_processing_for_15_min_raises_status_lag(
        db, broker, settings) -> None:
    ids = submit_orders([native_order("LAG-1"), native_order("LAG-2")],
                        settings=settings).accepted
    with unit_of_work(settings) as uow:
        uow.session.execute(update(OrderRow).where(OrderRow.id == ids[0]).values(
            updated_at=utcnow() - timedelta(minutes=16), state="in_wave",
            hold_reason="label deferred: carrier sbx-air circuit is open"))

    out = run_watchdog(settings)

    assert out.lagging == [ids[0]]
    with unit_of_work(settings) as uow:
        (alert,) = open_alerts(uow.session, "status_lag")
        assert alert.key == str(ids[0])
        assert "has been in_wave for 16 min; label deferred: carrier sbx-air circuit" \
            in alert.message
    assert run_watchdog(settings).lagging == []  # once while open

    # when the order moves on, the alert resolves
    with unit_of_work(settings) as uow:
        uow.session.execute(update(OrderRow).where(OrderRow.id == ids[0]).values(
            updated_at=utcnow(), state="labelled"))
    assert run_watchdog(settings).resolved == 1
    with unit_of_work(settings) as uow:
        assert open_alerts(uow.session, "status_lag") == []
        assert uow.session.execute(select(func.count()).select_from(OrderRow)).scalar() == 2
