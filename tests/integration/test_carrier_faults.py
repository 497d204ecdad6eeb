"""The sandbox carrier's fault injection, seen by the real client over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from domain.carriers import CarrierUnavailable, LabelRequest, SandboxCarrier
from sandbox.carrier import FaultProfile, SandboxCarrierServer
from tests.integration.helpers import sandbox_carrier_process
from tests.waiting import eventually


def request(key: str, carrier: str = "sbx-post") -> LabelRequest:
    return LabelRequest(idempotency_key=key, carrier=carrier,
                        service="ground" if carrier == "sbx-post" else "express",
                        from_country="US", to_country="DE", to_postal_code="10115",
                        weight_g=800, reference=f"ref-{key}")


@pytest.fixture
def server() -> Iterator[SandboxCarrierServer]:
    with SandboxCarrierServer(time_scale=3600) as s:
        yield s


def set_faults(server: SandboxCarrierServer, **profile: Any) -> None:
    response = httpx.put(f"{server.url}/v1/admin/faults", json=profile)
    assert response.status_code == 200, response.text


def test_a_lost_answer_was_charged_and_is_found_by_key(server: SandboxCarrierServer) -> None:
    # Given a carrier that charges, then holds its answer past the client's timeout
    set_faults(server, lost_rate=1.0, hang_s=1.0)
    client = SandboxCarrier(server.url, timeout_s=0.3, retry_max_s=0.1)

    # when a label is bought, the client sees only a timeout
    with pytest.raises(CarrierUnavailable) as unavailable:
        client.buy_label(request("lost-1"))
    assert isinstance(unavailable.value.cause, httpx.ReadTimeout)

    # then the carrier did charge, and a look-up by key finds that very label
    assert server.state.stats.labels_purchased == 1
    assert server.state.stats.faults_lost >= 1
    httpx.delete(f"{server.url}/v1/admin/faults")
    found = client.find_labels(["lost-1", "never-bought"])
    assert list(found) == ["lost-1"]
    assert found["lost-1"].tracking_number == server.state.by_key["lost-1"].tracking_number
    # and buying again (a retry) replays it: still one label charged
    assert client.buy_label(request("lost-1")).replayed
    assert server.state.stats.labels_purchased == 1


def test_a_timeout_was_not_carried_out(server: SandboxCarrierServer) -> None:
    set_faults(server, timeout_rate=1.0, hang_s=1.0)
    client = SandboxCarrier(server.url, timeout_s=0.3, retry_max_s=0.1)
    with pytest.raises(CarrierUnavailable):
        client.buy_label(request("slow-1"))
    assert server.state.stats.labels_purchased == 0
    assert server.state.stats.faults_timeout >= 1


def test_5xx_and_429_are_retried_with_retry_after_honoured(server: SandboxCarrierServer) -> None:
    # Given 40% of calls answered 5xx or 429 (Retry-After 0.2 s), from a fixed seed
    set_faults(server, error_rate=0.2, rate_limit_rate=0.2, retry_after_s=0.2, seed=4)
    client = SandboxCarrier(server.url, timeout_s=2, retry_max_s=10)

    # when 12 labels are bought one by one
    labels = [client.buy_label(request(f"k-{i}")) for i in range(12)]

    # then every purchase succeeded once, after retries the client counted
    stats = server.state.stats
    assert len({lb.label_id for lb in labels}) == 12 and stats.labels_purchased == 12
    faults = stats.faults_error + stats.faults_rate_limit
    assert faults > 0 and stats.faults_rate_limit > 0
    assert client.transport.retries == faults
    assert stats.api_requests == 12 + faults


def test_the_429_carries_retry_after(server: SandboxCarrierServer) -> None:
    set_faults(server, rate_limit_rate=1.0, retry_after_s=7)
    response = httpx.get(f"{server.url}/v1/rates",
                         params={"from_country": "US", "to_country": "US", "weight_g": 100})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"


def test_faults_can_target_one_carrier_and_lapse(server: SandboxCarrierServer) -> None:
    # Given an outage of sbx-air alone, for 1.5 s
    set_faults(server, error_rate=1.0, carriers=["sbx-air"], duration_s=1.5)
    client = SandboxCarrier(server.url, timeout_s=2, retry_max_s=0.2)
    # then sbx-air fails and sbx-post works
    with pytest.raises(CarrierUnavailable):
        client.buy_label(request("air-1", "sbx-air"))
    assert not client.buy_label(request("post-1", "sbx-post")).replayed
    # and after the outage sbx-air works again
    eventually(lambda: not httpx.get(f"{server.url}/v1/admin/faults").json()["error_rate"], 5,
               "the outage to lapse")
    assert not client.buy_label(request("air-1", "sbx-air")).replayed


def test_latency_is_added(server: SandboxCarrierServer) -> None:
    set_faults(server, latency_ms=150)
    started = time.monotonic()
    httpx.get(f"{server.url}/v1/rates",
              params={"from_country": "US", "to_country": "US", "weight_g": 100})
    assert time.monotonic() - started >= 0.15


def test_admin_refuses_a_bad_profile_naming_the_field(server: SandboxCarrierServer) -> None:
    response = httpx.put(f"{server.url}/v1/admin/faults", json={"lost_rate": 2})
    assert response.status_code == 422
    assert "lost_rate" in response.json()["error"]
    assert httpx.get(f"{server.url}/v1/admin/faults").json() == FaultProfile().to_json()


def test_faults_are_set_per_run_from_the_command_line() -> None:
    # Given the carrier started as a process with --error-rate 1 for sbx-air only
    with sandbox_carrier_process("--error-rate", "1", "--fault-carriers", "sbx-air") as url:
        # then its profile is the flags', and sbx-air calls fail while sbx-post ones work
        profile = httpx.get(f"{url}/v1/admin/faults").json()
        assert profile["error_rate"] == 1.0 and profile["carriers"] == ["sbx-air"]
        rates = {c: httpx.get(f"{url}/v1/rates", params={"from_country": "US",
                                                          "to_country": "DE", "weight_g": 100,
                                                          "carrier": c}).status_code
                 for c in ("sbx-air", "sbx-post")}
        assert rates["sbx-post"] == 200 and rates["sbx-air"] in (500, 502, 503)
