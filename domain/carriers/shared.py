"""The configured carrier adapter and the circuit breakers every worker shares.

One adapter per process (connection reuse), rebuilt in a forked child; the breakers keep
their state in Redis, so all workers see a carrier's outage at once (the label stage shares
its rate quotes there too). Used by the label, tracking and cancellation stages and by the
ops CLI.
"""

from __future__ import annotations

import os
from typing import Any

import redis

from config.settings import Settings
from domain.breaker import BreakerPolicy, CircuitBreaker
from domain.carriers import CarrierAdapter, build_carrier

_clients: dict[tuple[Any, ...], CarrierAdapter] = {}
_breakers: dict[tuple[Any, ...], CircuitBreaker] = {}
_redis: dict[tuple[int, str], redis.Redis] = {}


def shared_redis(settings: Settings) -> redis.Redis:
    """The Redis of state the carriers' callers share (breakers, rate quotes), one client
    (and connection pool) per process."""
    key = (os.getpid(), settings.shared_redis)
    if key not in _redis:
        _redis[key] = redis.Redis.from_url(settings.shared_redis)
    return _redis[key]


def breaker_policy(settings: Settings) -> BreakerPolicy:
    return BreakerPolicy(
        window_s=settings.breaker_window_s, min_calls=settings.breaker_min_calls,
        failure_rate=settings.breaker_failure_rate, open_s=settings.breaker_open_s,
        max_open_s=settings.breaker_max_open_s, probe_lease_s=settings.breaker_probe_lease_s)


def shared_breaker(settings: Settings) -> CircuitBreaker:
    """The per-carrier breakers every worker shares (state in Redis), one client per process."""
    key = (os.getpid(), settings.shared_redis, breaker_policy(settings))
    if key not in _breakers:
        _breakers[key] = CircuitBreaker(shared_redis(settings), breaker_policy(settings))
    return _breakers[key]


def carrier_client(settings: Settings) -> CarrierAdapter:
    """The configured carrier adapter, guarded by the shared breaker; one per process."""
    key = (os.getpid(), settings.carrier_api, settings.carrier_url, settings.shared_redis,
           breaker_policy(settings))
    if key not in _clients:
        _clients[key] = build_carrier(settings, breaker=shared_breaker(settings))
    return _clients[key]
