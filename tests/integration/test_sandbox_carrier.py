"""The sandbox carrier over real HTTP, and the carrier client's retry behaviour.

Every test talks to a real server on a free local port: either the sandbox carrier under uvicorn
in a background thread, or (for retry behaviour) a tiny scripted ``http.server``.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from domain.carriers import (
    TRACKING_STATUSES,
    CarrierClient,
    CarrierRejected,
    CarrierUnavailable,
    Label,
    LabelRequest,
)
from sandbox.carrier import SandboxCarrierServer
from tests.waiting import eventually

StartCarrier = Callable[..., SandboxCarrierServer]


@pytest.fixture
def start_carrier() -> Iterator[StartCarrier]:
    """Start sandbox carriers (each on its own free port, healthy before it is returned)."""
    servers: list[SandboxCarrierServer] = []

    def start(time_scale: float = 1.0, **options: Any) -> SandboxCarrierServer:
        server = SandboxCarrierServer(port=0, time_scale=time_scale, **options)
        server.start()
        servers.append(server)
        assert httpx.get(f"{server.url}/healthz").json() == {"ok": True}
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def carrier_url(start_carrier: StartCarrier) -> str:
    return start_carrier().url


@pytest.fixture
def client(carrier_url: str) -> Iterator[CarrierClient]:
    with CarrierClient(carrier_url, timeout_s=5.0, retry_max_s=2.0) as c:
        yield c


def label_request(key: str, carrier: str = "sbx-post", **overrides: Any) -> LabelRequest:
    fields: dict[str, Any] = {
        "idempotency_key": key,
        "carrier": carrier,
        "service": "ground" if carrier == "sbx-post" else "express",
        "from_country": "US",
        "to_country": "DE",
        "to_postal_code": "10115",
        "weight_g": 1200,
        "reference": f"order-{key}",
    }
    fields.update(overrides)
    return LabelRequest(**fields)


# -- labels and idempotency ----------------------------------------------------------------------


def test_same_idempotency_key_twice_buys_one_label(client: CarrierClient) -> None:
    # given a shipment's label request
    request = label_request("ship-1")

    # when it is sent twice (a worker retrying after a lost response)
    first = client.buy_label(request)
    second = client.buy_label(request)

    # then the carrier charged once and returned the same label, flagged as a replay
    assert second.label_id == first.label_id
    assert second.tracking_number == first.tracking_number
    assert (first.replayed, second.replayed) == (False, True)
    stats = client.stats()
    assert stats["labels_purchased"] == 1
    assert stats["label_requests"] == 2
    assert stats["replays"] == 1
    # and a look-up by key (done before retrying) finds that label; an unknown key finds none
    assert client.find_label("ship-1") == first
    assert client.find_label("ship-never-bought") is None


def test_concurrent_purchases_with_one_key_charge_once(client: CarrierClient) -> None:
    # given eight workers racing to buy the label of the same shipment
    request = label_request("ship-race")
    labels: list[Label] = []
    lock = threading.Lock()

    def buy() -> None:
        with CarrierClient(client.base_url) as own_client:
            label = own_client.buy_label(request)
        with lock:
            labels.append(label)

    # when they all call the carrier at once
    threads = [threading.Thread(target=buy) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    # then exactly one label was charged and every worker got it
    assert len(labels) == 8
    assert {label.tracking_number for label in labels} == {labels[0].tracking_number}
    assert sum(not label.replayed for label in labels) == 1
    assert client.stats()["labels_purchased"] == 1


def test_label_fields_look_like_a_carriers(client: CarrierClient) -> None:
    # when a label is bought on each carrier
    post = client.buy_label(label_request("p", "sbx-post"))
    air = client.buy_label(label_request("a", "sbx-air"))

    # then tracking numbers carry the carrier prefix and 12 digits, and the rest is typed
    assert post.tracking_number.startswith("SBXP") and post.tracking_number[4:].isdigit()
    assert air.tracking_number.startswith("SBXA") and air.tracking_number[4:].isdigit()
    assert len(post.tracking_number) == len(air.tracking_number) == 16
    assert post.label_id.startswith("LBL-")
    assert post.currency == "USD"
    assert isinstance(post.rate, Decimal) and post.rate > 0
    assert post.created_at.tzinfo is not None
    assert abs(datetime.now(UTC) - post.created_at) < timedelta(seconds=30)


def test_batch_of_50_buys_50_distinct_labels_and_replays_on_resend(client: CarrierClient) -> None:
    # given 50 shipments across both carriers
    requests = [label_request(f"batch-{i}", "sbx-post" if i % 2 else "sbx-air") for i in range(50)]

    # when they are bought in one batch
    result = client.buy_labels(requests)

    # then 50 labels with 50 distinct tracking numbers were charged
    assert result.errors == {}
    assert len(result.labels) == 50
    assert len({label.tracking_number for label in result.labels}) == 50
    assert [label.idempotency_key for label in result.labels] == [
        r.idempotency_key for r in requests
    ]
    assert client.stats()["labels_purchased"] == 50

    # and when the whole batch is sent again, nothing more is charged
    again = client.buy_labels(requests)
    assert all(label.replayed for label in again.labels)
    assert [label.label_id for label in again.labels] == [label.label_id for label in result.labels]
    assert client.stats()["labels_purchased"] == 50


def test_batch_reports_invalid_items_and_buys_the_valid_ones(client: CarrierClient) -> None:
    # given a batch with a weight a postal carrier refuses and an unknown carrier
    requests = [
        label_request("ok-1"),
        label_request("too-heavy", weight_g=45_000),
        label_request("bad-carrier", carrier="sbx-teleport", service="ground"),
        label_request("ok-2"),
    ]

    # when it is bought
    result = client.buy_labels(requests)

    # then the valid items were bought and each invalid one is named with its reason
    assert [label.idempotency_key for label in result.labels] == ["ok-1", "ok-2"]
    assert set(result.errors) == {"too-heavy", "bad-carrier"}
    assert "weight_g" in result.errors["too-heavy"]
    assert "carrier" in result.errors["bad-carrier"]
    assert client.stats()["labels_purchased"] == 2


def test_client_splits_large_batches_and_server_caps_batch_size(
    client: CarrierClient, carrier_url: str
) -> None:
    # given more shipments than one carrier batch may hold
    requests = [label_request(f"big-{i}") for i in range(501)]

    # when the client buys them, it sends two batches and every label is bought
    result = client.buy_labels(requests)
    assert len(result.labels) == 501
    stats = client.stats()
    assert stats["batch_requests"] == 2
    assert stats["labels_purchased"] == 501

    # and the server itself refuses a batch over 500
    body = {"labels": [r.to_json() for r in requests]}
    response = httpx.post(f"{carrier_url}/v1/labels/batch", json=body)
    assert response.status_code == 413
    assert "500" in response.json()["error"]


def test_invalid_single_label_is_rejected_with_the_field_named(client: CarrierClient) -> None:
    # when a label is requested from an unknown carrier, or with no weight
    with pytest.raises(CarrierRejected) as unknown_carrier:
        client.buy_label(label_request("x", carrier="sbx-teleport", service="ground"))
    with pytest.raises(CarrierRejected) as no_weight:
        client.buy_label(label_request("y", weight_g=0))

    # then the carrier answered 422 naming the field, and charged nothing
    assert unknown_carrier.value.status_code == 422
    assert "carrier" in unknown_carrier.value.error
    assert no_weight.value.status_code == 422
    assert "weight_g" in no_weight.value.error
    assert client.stats()["labels_purchased"] == 0


def test_reusing_a_key_for_a_different_parcel_is_refused(client: CarrierClient) -> None:
    # given a label bought under a key
    client.buy_label(label_request("ship-7", weight_g=1000))

    # when the same key is used for a different parcel
    with pytest.raises(CarrierRejected) as rejected:
        client.buy_label(label_request("ship-7", weight_g=9000))

    # then the carrier refuses rather than hand back a label for another parcel
    assert rejected.value.status_code == 409
    assert client.stats()["labels_purchased"] == 1


# -- tracking -----------------------------------------------------------------------------------


def test_tracking_progresses_to_delivered(start_carrier: StartCarrier) -> None:
    # given a carrier running 72000x fast (42 carrier hours to deliver sbx-air = ~2.1 s)
    time_scale = 72_000.0
    server = start_carrier(time_scale=time_scale)
    with CarrierClient(server.url) as client:
        label = client.buy_label(label_request("fast", "sbx-air"))

        # when its tracking is polled until delivered
        seen: list[str] = []

        def delivered() -> Any:
            (tracker,) = client.track([label.tracking_number])
            if not seen or seen[-1] != tracker.status:
                seen.append(tracker.status)
            return tracker.status == "delivered" and tracker

        tracker = eventually(delivered, 10, f"{label.tracking_number} to be delivered")

    # then it went through the milestones in order and ended delivered
    assert seen[0] == "info_received"
    assert seen[-1] == "delivered"
    assert "in_transit" in seen
    assert seen == sorted(set(seen), key=seen.index)  # no status came back after it left
    assert [e.status for e in tracker.events] == [
        "info_received",
        "in_transit",
        "in_transit",
        "out_for_delivery",
        "delivered",
    ]
    assert all(e.status in TRACKING_STATUSES for e in tracker.events)
    assert [e.id for e in tracker.events] == [f"{label.tracking_number}-{n}" for n in range(1, 6)]
    assert tracker.events[2].message == "Departed origin country (US)"
    assert tracker.events[0].location.endswith(", US")
    assert tracker.events[-1].location.endswith(", DE")
    # event times are wall-clock: label time + carrier hours scaled down
    offsets_h = [
        (e.at - label.created_at).total_seconds() * time_scale / 3600 for e in tracker.events
    ]
    assert offsets_h == pytest.approx([0, 6, 20, 36, 42], abs=0.1)


def test_tracking_milestones_follow_carrier_time(start_carrier: StartCarrier) -> None:
    # given a carrier on a clock the test controls, and an sbx-post label bought at t0
    now = [1_700_000_000.0]
    server = start_carrier(time_scale=1.0, clock=lambda: now[0])
    with CarrierClient(server.url) as client:
        label = client.buy_label(label_request("clocked", "sbx-post", to_country="US"))

        def statuses_at(hours: float) -> list[str]:
            now[0] = 1_700_000_000.0 + hours * 3600
            (tracker,) = client.track([label.tracking_number])
            assert tracker.status == tracker.events[-1].status
            return [e.status for e in tracker.events]

        # then each milestone appears exactly when its carrier hour is reached
        assert statuses_at(5.9) == ["info_received"]
        assert statuses_at(6) == ["info_received", "in_transit"]
        assert statuses_at(20) == ["info_received", "in_transit", "in_transit"]
        assert statuses_at(47.9)[-1] == "in_transit"
        assert statuses_at(48)[-1] == "out_for_delivery"
        assert statuses_at(53.9)[-1] == "out_for_delivery"
        assert statuses_at(54)[-1] == "delivered"
        assert statuses_at(500)[-1] == "delivered"

        # and polling again gives the same, stable events
        first = client.track([label.tracking_number])[0].events
        assert client.track([label.tracking_number])[0].events == first


def test_unknown_tracking_number_is_reported_unknown(client: CarrierClient) -> None:
    (tracker,) = client.track(["SBXP000000000000"])
    assert tracker.status == "unknown"
    assert tracker.events == []


# -- void -----------------------------------------------------------------------------------------


def test_void_is_idempotent_and_stops_tracking(client: CarrierClient) -> None:
    # given a bought label
    label = client.buy_label(label_request("to-void"))

    # when it is voided twice
    client.void_label(label.label_id)
    client.void_label(label.label_id)

    # then it was voided once, and its tracking ends in an exception saying so
    assert client.stats()["labels_voided"] == 1
    (tracker,) = client.track([label.tracking_number])
    assert tracker.status == "exception"
    assert tracker.events[-1].message == "label voided"
    # and voiding a label the carrier never issued is a 404
    with pytest.raises(CarrierRejected) as unknown:
        client.void_label("LBL-DOESNOTEXIST")
    assert unknown.value.status_code == 404


# -- rates ----------------------------------------------------------------------------------------


def test_rates_depend_on_carrier_zone_and_weight(client: CarrierClient) -> None:
    def price(carrier: str, service: str, to_country: str, weight_g: int) -> Decimal:
        (rate,) = [
            r
            for r in client.rates("US", to_country, weight_g, carrier=carrier)
            if r.service == service
        ]
        return rate.rate

    # sbx-post is cheaper than sbx-air, domestic cheaper than international
    assert price("sbx-post", "ground", "DE", 1000) < price("sbx-air", "ground", "DE", 1000)
    assert price("sbx-post", "ground", "US", 1000) < price("sbx-post", "ground", "DE", 1000)
    # weight is charged per started 500 g
    assert price("sbx-air", "express", "DE", 1) == price("sbx-air", "express", "DE", 500)
    assert price("sbx-air", "express", "DE", 501) > price("sbx-air", "express", "DE", 500)
    # all quotes come back cheapest first, and a label costs what was quoted
    quotes = client.rates("US", "DE", 1200)
    assert [q.rate for q in quotes] == sorted(q.rate for q in quotes)
    label = client.buy_label(label_request("priced", "sbx-air", weight_g=1200))
    assert label.rate == price("sbx-air", "express", "DE", 1200)


# -- retries (against a tiny scripted server) ----------------------------------------------------


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Scripted:
    url: str
    requests: list[tuple[float, str, bytes]]  # (monotonic time, path, body)


def planned_pauses(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The pause the carrier client chose before each retry, as it logged it."""
    return [float(m.group(1)) for r in caplog.records
            if (m := re.search(r"retrying in ([\d.]+)s$", r.getMessage()))]


def _label_json(key: str) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "label_id": "LBL-1",
        "tracking_number": "SBXP000000000001",
        "carrier": "sbx-post",
        "service": "ground",
        "rate": "4.50",
        "currency": "USD",
        "created_at": "2025-01-01T00:00:00.000Z",
        "replayed": False,
    }


@pytest.fixture
def scripted_server() -> Iterator[Callable[[list[Reply]], Scripted]]:
    """A tiny HTTP server answering with the given replies in order (the last one repeats)."""
    servers: list[ThreadingHTTPServer] = []

    def start(replies: list[Reply]) -> Scripted:
        received: list[tuple[float, str, bytes]] = []
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    received.append((time.monotonic(), self.path, body))
                    reply = replies[min(len(received), len(replies)) - 1]
                time.sleep(reply.delay_s)
                payload = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and hung up is expected here

        server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return Scripted(url=f"http://127.0.0.1:{server.server_port}", requests=received)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_retries_503_then_succeeds_with_the_same_request(scripted_server: Any) -> None:
    # given a carrier that fails twice with 503 and then answers
    carrier = scripted_server(
        [Reply(503, {"error": "busy"}), Reply(503, {"error": "busy"}), Reply(200, _label_json("k"))]
    )

    # when a label is bought
    with CarrierClient(carrier.url, retry_max_s=5.0) as client:
        label = client.buy_label(label_request("k"))

    # then the client retried the identical request (same idempotency key) until it succeeded
    assert label.label_id == "LBL-1"
    assert len(carrier.requests) == 3
    assert len({body for _, _, body in carrier.requests}) == 1
    assert json.loads(carrier.requests[0][2])["idempotency_key"] == "k"


def test_gives_up_with_carrier_unavailable_within_budget(scripted_server: Any,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    # given a carrier that always fails with 500
    carrier = scripted_server([Reply(500, {"error": "boom"})])
    caplog.set_level(logging.WARNING, logger="domain.carriers")

    # when a label is bought with a 1.5 s retry budget
    with (
        CarrierClient(carrier.url, retry_max_s=1.5) as client,
        pytest.raises(CarrierUnavailable) as unavailable,
    ):
        client.buy_label(label_request("k"))

    # then it retried with backoff and gave up within the budget, keeping the cause
    assert 3 <= len(carrier.requests) <= 6
    pauses = planned_pauses(caplog)
    assert len(pauses) == len(carrier.requests) - 1
    assert sum(pauses) <= 1.5
    assert unavailable.value.cause is not None
    assert "500" in str(unavailable.value)


def test_honours_retry_after_on_429(scripted_server: Any,
                                    caplog: pytest.LogCaptureFixture) -> None:
    # given a carrier that rate-limits the first call with Retry-After: 1
    carrier = scripted_server(
        [Reply(429, {"error": "slow down"}, {"Retry-After": "1"}), Reply(200, _label_json("k"))]
    )
    caplog.set_level(logging.WARNING, logger="domain.carriers")

    # when a label is bought
    with CarrierClient(carrier.url, retry_max_s=5.0) as client:
        label = client.buy_label(label_request("k"))

    # then the client waited the second the carrier asked for before retrying
    assert label.idempotency_key == "k"
    assert len(carrier.requests) == 2
    assert planned_pauses(caplog) == [1.0]
    assert carrier.requests[1][0] - carrier.requests[0][0] >= 0.95


def test_retries_after_a_timeout(scripted_server: Any) -> None:
    # given a carrier whose first answer comes too late
    carrier = scripted_server(
        [Reply(200, _label_json("k"), delay_s=1.0), Reply(200, _label_json("k"))]
    )

    # when a label is bought with a 0.3 s request timeout
    with CarrierClient(carrier.url, timeout_s=0.3, retry_max_s=5.0) as client:
        label = client.buy_label(label_request("k"))

    # then the timed-out request was retried and the retry succeeded
    assert label.label_id == "LBL-1"
    assert len(carrier.requests) == 2


def test_client_errors_are_not_retried(scripted_server: Any) -> None:
    # given a carrier that refuses the request as invalid
    carrier = scripted_server([Reply(422, {"error": "to_postal_code: required"})])

    # when a label is bought, then the refusal surfaces at once with the carrier's reason
    with CarrierClient(carrier.url, retry_max_s=5.0) as client, pytest.raises(CarrierRejected) as e:
        client.buy_label(label_request("k"))
    assert e.value.status_code == 422
    assert e.value.error == "to_postal_code: required"
    assert len(carrier.requests) == 1


def test_unreachable_carrier_raises_carrier_unavailable(
        caplog: pytest.LogCaptureFixture) -> None:
    # given a port nothing listens on
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    caplog.set_level(logging.WARNING, logger="domain.carriers")

    # when the client calls it, then it retries connection errors and gives up in budget
    with (
        CarrierClient(f"http://127.0.0.1:{port}", retry_max_s=0.5) as client,
        pytest.raises(CarrierUnavailable) as unavailable,
    ):
        client.stats()
    pauses = planned_pauses(caplog)
    assert pauses and sum(pauses) <= 0.5
    assert isinstance(unavailable.value.cause, httpx.TransportError)
