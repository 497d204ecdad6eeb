"""The EasyPost-shaped adapter against the sandbox carrier's EasyPost dialect (``/v2``)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from pydantic import SecretStr

from config.settings import Settings
from domain.carriers import (
    TRACKING_STATUSES,
    CarrierRejected,
    CarrierUnavailable,
    EasyPostCarrier,
    LabelRequest,
    build_carrier,
)
from domain.carriers.easypost import ounces
from sandbox.carrier import FaultProfile, SandboxCarrierServer
from tests.waiting import eventually

KEY = "EZTK-sandbox-key"


def request(key: str, carrier: str = "sbx-air", **over: object) -> LabelRequest:
    fields: dict[str, object] = {
        "idempotency_key": key, "carrier": carrier,
        "service": "express" if carrier == "sbx-air" else "ground", "from_country": "US",
        "to_country": "DE", "to_postal_code": "10117", "weight_g": 1200,
        "reference": "acme/1001",
        "to_address": {"name": "Jo Doe", "line1": "Unter den Linden 1", "city": "Berlin",
                       "postal_code": "10117", "country": "DE"},
        "from_address": {"line1": "1 Dock Rd", "city": "Newark", "region": "NJ",
                         "postal_code": "07114", "country": "US"},
    }
    fields.update(over)
    return LabelRequest(**fields)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[SandboxCarrierServer]:
    with SandboxCarrierServer(time_scale=72_000, easypost_api_key=KEY) as s:
        yield s


@pytest.fixture
def client(server: SandboxCarrierServer) -> Iterator[EasyPostCarrier]:
    with EasyPostCarrier(server.url, KEY, timeout_s=2, retry_max_s=2) as c:
        yield c


def test_the_settings_choose_the_easypost_adapter(server: SandboxCarrierServer) -> None:
    adapter = build_carrier(Settings(carrier_api="easypost", carrier_url=server.url,
                                     carrier_api_key=SecretStr(KEY)))
    assert isinstance(adapter, EasyPostCarrier)
    with pytest.raises(ValueError, match="carrier_api_key"):
        Settings(carrier_api="easypost")


def test_rates_come_from_a_rated_shipment(client: EasyPostCarrier) -> None:
    rates = client.rates("US", "DE", 1200)
    assert [r.rate for r in rates] == sorted(r.rate for r in rates)
    assert {(r.carrier, r.service) for r in rates} >= {("sbx-air", "express"),
                                                       ("sbx-post", "ground")}
    assert all(r.est_delivery_days > 0 and r.currency == "USD" for r in rates)
    assert {r.carrier for r in client.rates("US", "DE", 1200, carrier="sbx-post")} == {"sbx-post"}


def test_one_call_buy_and_lookup_by_reference(client: EasyPostCarrier,
                                              server: SandboxCarrierServer) -> None:
    # when a label is bought
    label = client.buy_label(request("orderfleet-shipment-7"))
    # then it is the shipment's label, at the quoted price, found again by our key
    assert label.label_id.startswith("shp_") and label.tracking_number.startswith("SBXA")
    assert label.idempotency_key == "orderfleet-shipment-7" and not label.replayed
    quoted = {(r.carrier, r.service): r.rate for r in client.rates("US", "DE", 1200)}
    assert label.rate == quoted[("sbx-air", "express")] and isinstance(label.rate, Decimal)
    found = client.find_label("orderfleet-shipment-7")
    assert found is not None and found.label_id == label.label_id and found.replayed
    assert client.find_label("orderfleet-shipment-never") is None
    # the parcel was declared in ounces, rounded up
    shipment = server.state.ep_shipments[label.label_id]
    assert shipment["parcel"]["weight"] == ounces(1200) == 42.4
    assert server.state.stats.labels_purchased == 1


def test_easypost_does_not_deduplicate_so_the_adapter_never_blindly_retries(
        server: SandboxCarrierServer) -> None:
    # Given a purchase whose answer is lost after the carrier charged
    server.state.set_faults(FaultProfile(lost_rate=1.0, hang_s=1.0))
    with EasyPostCarrier(server.url, KEY, timeout_s=0.3, retry_max_s=5) as client:
        # when the label is bought, the adapter does not retry: the outcome is unknown
        with pytest.raises(CarrierUnavailable) as unknown:
            client.buy_label(request("orderfleet-shipment-8"))
        assert unknown.value.outcome_unknown
        assert server.state.stats.api_requests == 1
        # then the look-up before the next attempt finds the label: nothing is bought twice
        server.state.set_faults(FaultProfile())
        found = client.find_label("orderfleet-shipment-8")
    assert found is not None
    assert server.state.stats.labels_purchased == 1


def test_a_refused_connection_or_429_is_safe_to_retry(server: SandboxCarrierServer) -> None:
    server.state.set_faults(FaultProfile(rate_limit_rate=1.0, retry_after_s=0.2,
                                         duration_s=0.5))
    with EasyPostCarrier(server.url, KEY, timeout_s=2, retry_max_s=5) as client:
        label = client.buy_label(request("orderfleet-shipment-9"))
    assert label.tracking_number and server.state.stats.labels_purchased == 1
    assert server.state.stats.faults_rate_limit >= 1


def test_batch_create_and_buy(client: EasyPostCarrier, server: SandboxCarrierServer) -> None:
    requests = [request(f"orderfleet-shipment-{i}", "sbx-post" if i % 2 else "sbx-air")
                for i in range(10, 16)]
    requests.append(request("orderfleet-shipment-99", "sbx-post", weight_g=45_000))  # too heavy
    result = client.buy_labels(requests)
    assert [lb.idempotency_key for lb in result.labels] == [r.idempotency_key
                                                            for r in requests[:-1]]
    assert list(result.errors) == ["orderfleet-shipment-99"]
    assert "no rate" in result.errors["orderfleet-shipment-99"]
    assert server.state.stats.labels_purchased == 6
    assert server.state.stats.batch_requests == 2  # one batch per carrier


def test_refund_voids_the_label(client: EasyPostCarrier, server: SandboxCarrierServer) -> None:
    label = client.buy_label(request("orderfleet-shipment-20"))
    client.void_label(label.label_id)
    client.void_label(label.label_id)  # twice is fine
    assert server.state.stats.labels_voided == 1
    assert client.find_label("orderfleet-shipment-20") is None  # refunded: not a usable label
    with pytest.raises(CarrierRejected) as missing:
        client.void_label("shp_doesnotexist")
    assert missing.value.status_code == 404


def test_trackers_are_normalised(client: EasyPostCarrier) -> None:
    label = client.buy_label(request("orderfleet-shipment-30"))
    eventually(lambda: client.track([label.tracking_number])[0].status == "delivered", 10,
               f"{label.tracking_number} to be delivered")
    (tracker,) = client.track([label.tracking_number])
    assert tracker.status == "delivered"
    assert [e.status for e in tracker.events] == ["info_received", "in_transit", "in_transit",
                                                  "out_for_delivery", "delivered"]
    assert all(e.status in TRACKING_STATUSES for e in tracker.events)
    assert tracker.events[-1].location.endswith("DE")
    assert len({e.id for e in tracker.events}) == 5
    assert client.track([label.tracking_number])[0].events == tracker.events  # stable ids
    (unknown,) = client.track(["SBXA000000000000"])
    assert unknown.status == "unknown" and unknown.events == []


def test_the_api_key_is_required(server: SandboxCarrierServer) -> None:
    response = httpx.post(f"{server.url}/v2/shipments", json={"shipment": {}})
    assert response.status_code == 401
    with EasyPostCarrier(server.url, "wrong-key", retry_max_s=0.5) as client, \
            pytest.raises(CarrierRejected) as refused:
        client.rates("US", "DE", 100)
    assert refused.value.status_code == 401


def test_an_invalid_shipment_names_the_field(client: EasyPostCarrier) -> None:
    with pytest.raises(CarrierRejected) as refused:
        client.buy_label(request("orderfleet-shipment-40", to_country="Germany",
                                 to_address={"country": "Germany"}))
    assert refused.value.status_code == 422
    assert "shipment.to_address.country" in refused.value.error
