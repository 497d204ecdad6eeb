"""The per-carrier circuit breaker on a real Redis, shared as every worker shares it.

Time is the breaker's injected clock, so nothing here sleeps or races the wall clock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from domain.breaker import BreakerPolicy, CircuitBreaker
from domain.carriers import CarrierCircuitOpen, CarrierUnavailable, SandboxCarrier
from sandbox.carrier import FaultProfile, SandboxCarrierServer

POLICY = BreakerPolicy(window_s=10, min_calls=4, failure_rate=0.5, open_s=5, max_open_s=20,
                       probe_lease_s=3)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_breaker(redis_client, clock) -> Callable[..., CircuitBreaker]:
    def make(policy: BreakerPolicy = POLICY) -> CircuitBreaker:
        return CircuitBreaker(redis_client, policy, prefix="test:breaker", clock=clock)

    return make


def _trip(breaker: CircuitBreaker, name: str = "sbx-air") -> None:
    for ok in (True, False, False):
        breaker.record(name, ok)
    assert breaker.record(name, False) == "open"


def test_opens_only_past_the_failure_rate_with_enough_calls(make_breaker, clock) -> None:
    breaker = make_breaker()
    # given three failures out of three calls: too few calls to judge
    for _ in range(3):
        assert breaker.record("sbx-air", ok=False) == "closed"
    # when a fourth call succeeds, 3 of 4 failed, but a success never opens the breaker
    assert breaker.record("sbx-air", ok=True) == "closed"
    # then the next failure (4 of 5, over 50%) opens it
    assert breaker.record("sbx-air", ok=False) == "open"
    permit = breaker.acquire("sbx-air")
    assert not permit.allowed and permit.state == "open"
    assert permit.retry_after_s == pytest.approx(5.0)
    # and another carrier is unaffected
    assert breaker.acquire("sbx-post").allowed


def test_old_failures_leave_the_window(make_breaker, clock) -> None:
    breaker = make_breaker()
    for _ in range(3):
        breaker.record("sbx-air", ok=False)
    clock.now += 11  # the window is 10 s
    breaker.record("sbx-air", ok=True)
    breaker.record("sbx-air", ok=True)
    breaker.record("sbx-air", ok=True)
    assert breaker.record("sbx-air", ok=False) == "closed"  # 1 of 4 in the window


def test_one_worker_probes_and_its_success_closes(make_breaker, clock) -> None:
    breaker = make_breaker()
    _trip(breaker)
    clock.now += 5
    # when eight workers ask at once after the pause
    permits = []
    lock = threading.Lock()

    def ask() -> None:
        p = make_breaker().acquire("sbx-air")
        with lock:
            permits.append(p)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then exactly one may call (the probe); the rest defer
    probes = [p for p in permits if p.allowed]
    assert len(probes) == 1 and probes[0].is_probe
    assert all(p.state == "half_open" and p.retry_after_s > 0 for p in permits if not p.allowed)
    # and a straggler's late success (no probe token) does not close it; the probe's does
    assert breaker.record("sbx-air", ok=True) == "half_open"
    assert breaker.record(probes[0], ok=True) == "closed"
    assert breaker.acquire("sbx-air").allowed
    assert [(t["from"], t["to"]) for t in breaker.transitions("sbx-air")] == [
        ("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_a_failed_probe_reopens_for_twice_as_long(make_breaker, clock) -> None:
    breaker = make_breaker()
    _trip(breaker)
    clock.now += 5
    probe = breaker.acquire("sbx-air")
    assert breaker.record(probe, ok=False) == "open"
    assert breaker.acquire("sbx-air").retry_after_s == pytest.approx(10.0)
    clock.now += 10
    probe = breaker.acquire("sbx-air")
    assert breaker.record(probe, ok=False) == "open"
    assert breaker.acquire("sbx-air").retry_after_s == pytest.approx(20.0)  # capped at max
    clock.now += 20
    assert breaker.record(breaker.acquire("sbx-air"), ok=True) == "closed"
    # after closing, the pause starts from open_s again
    _trip(breaker)
    assert breaker.acquire("sbx-air").retry_after_s == pytest.approx(5.0)
    status = breaker.status("sbx-air")
    assert status.opened_total == 4 and status.state == "open"


def test_a_probe_that_never_reports_is_handed_on(make_breaker, clock) -> None:
    breaker = make_breaker()
    _trip(breaker)
    clock.now += 5
    lost = breaker.acquire("sbx-air")  # its worker dies before reporting
    assert lost.is_probe
    clock.now += 2
    assert not breaker.acquire("sbx-air").allowed
    clock.now += 1.5  # past the 3 s probe lease
    second = breaker.acquire("sbx-air")
    assert second.allowed and second.probe_token != lost.probe_token
    # the dead probe's late answer is ignored; the live one decides
    assert breaker.record(lost, ok=False) == "half_open"
    assert breaker.record(second, ok=True) == "closed"


def test_the_transport_stops_calling_once_open(redis_client) -> None:
    # Given a carrier answering every sbx-air call with a 5xx, and a breaker on the real clock
    breaker = CircuitBreaker(redis_client, BreakerPolicy(window_s=30, min_calls=4,
                                                         failure_rate=0.5, open_s=30),
                             prefix="test:breaker")
    faults = FaultProfile(error_rate=1.0, carriers=("sbx-air",))
    with SandboxCarrierServer(faults=faults) as server, \
            SandboxCarrier(server.url, timeout_s=2, retry_max_s=1.0, breaker=breaker) as client:
        # when a call retries until its budget runs out, the breaker opens on the way
        with pytest.raises(CarrierUnavailable):
            client.rates("US", "DE", 500, carrier="sbx-air")
        sent = server.state.stats.api_requests
        assert breaker.status("sbx-air").state == "open"
        # then the next call fails at once without reaching the carrier, saying when to retry
        with pytest.raises(CarrierCircuitOpen) as open_:
            client.rates("US", "DE", 500, carrier="sbx-air")
        assert server.state.stats.api_requests == sent
        assert 0 < open_.value.retry_after_s <= 30
        assert "sbx-air circuit is open" in str(open_.value)
        # and calls about the other carrier still go through
        assert [r.service for r in client.rates("US", "US", 500, carrier="sbx-post")]
        assert server.state.stats.api_requests == sent + 1
