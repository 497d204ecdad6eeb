"""Label purchase: one label per shipment, bought in one batch call per wave and carrier.

Exactly once, even when a call times out after the carrier charged:

* each shipment gets an idempotency key (stored, unique) before any call, and the carrier
  sees it with every purchase (the sandbox de-duplicates on it; EasyPost finds by it);
* every purchase call is counted on the shipment first; a shipment with an earlier call
  whose outcome is unknown is looked up by its key before it is bought again;
* the HTTP calls happen between two short transactions, never while rows are locked, and
  whatever was bought is recorded even when a later call of the same run failed.

Rate shopping picks, per order, the cheapest service whose delivery estimate meets the
order's promise (days per lane); the choice is stored with the shipment and never changes,
since the carrier ties the idempotency key to the exact request.

A carrier that is down (its circuit breaker open, or calls failing past the retry budget)
defers the wave: the task is re-sent with a countdown, the orders stay ``in_wave`` with the
reason in ``hold_reason``, and only after ``label_give_up_s`` do they go to ``label_failed``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import redis
from celery import Task
from sqlalchemy import select, update

from config.settings import Settings, get_settings
from domain.alerts import raise_alert, resolve_alert
from domain.carriers import (
    CarrierAdapter,
    CarrierCircuitOpen,
    CarrierRejected,
    CarrierUnavailable,
    Label,
    LabelRequest,
    Rate,
)
from domain.carriers.shared import carrier_client, shared_redis
from domain.clock import utcnow
from domain.db import UnitOfWork, any_of, insert_ignoring_conflicts, unit_of_work, update_rows
from domain.lifecycle import Move, State, apply_transitions, claim, claim_columns, claim_ids
from domain.models import OrderRow, Shipment, ShipmentStatus, Warehouse, Wave, WaveStatus
from domain.notifications import notify_store
from domain.pipeline import BUY_LABELS, VOID_LABELS, label_waves, noncore_after
from domain.reservations import consume_reservations
from domain.route_learning import (
    RULES,
    ParcelFeatures,
    RoutingModels,
    RoutingStrategy,
    latest_models,
    strategy_for,
)
from domain.routing import carrier_for
from domain.zones import zone_of
from tasks.base import parse_ids, retry_on_transient, stage_task

log = logging.getLogger(__name__)

# Rates are a pure function of (lane, weight, carrier) at a carrier for hours; ten minutes of
# reuse turns a wave of 50 similar parcels into a handful of quote calls.
RATE_CACHE_TTL_S = 600.0
# A message for a deferred wave that arrives this much before its scheduled attempt is a
# duplicate (a re-drive copy): the scheduled one is on its way.
EARLY_TOLERANCE_S = 1.0
# Quote calls in flight at once for one wave: enough to hide a slow carrier's latency,
# few enough not to look like an attack to its rate limiter.
RATE_QUOTE_THREADS = 8

_rate_cache: dict[tuple[Any, ...], tuple[float, list[Rate]]] = {}
# The quotes are shared through Redis as well: each worker process would otherwise ask the
# carrier for the same brackets again (a fleet of N processes, N times the calls, each with a
# real carrier's latency and rate limit, and a breaker check in Redis).
SHARED_RATES_PREFIX = "orderfleet:rates:"


# Carriers price parcels by weight bracket: quoting the bracket's upper bound lets one quote
# (cached) serve every parcel in it, instead of one HTTP round trip per order. The label itself
# is bought at the parcel's real weight.
QUOTE_BRACKET_G = 250


def quote_bracket(weight_g: int) -> int:
    return max(-(-weight_g // QUOTE_BRACKET_G), 1) * QUOTE_BRACKET_G


def idempotency_key(order_id: int) -> str:
    return f"orderfleet-shipment-{order_id}"


# --------------------------------------------------------------------------------------------
# Rate shopping
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceChoice:
    carrier: str
    service: str
    rate: Decimal | None
    est_delivery_days: int | None
    promise_days: int
    meets_promise: bool
    arm: str = RULES  # the routing strategy that chose it (A/B arm)


def promise_days_for(settings: Settings, lane: str | None) -> int:
    """The delivery promise of a lane, in days ("standard" for lanes not configured)."""
    promises = settings.delivery_promise_days
    return promises.get(lane or "standard", promises["standard"])


def choose_service(rates: list[Rate], promise_days: int,
                   carriers: set[str] | None = None) -> ServiceChoice | None:
    """The cheapest rate whose estimate meets the promise; if none can, the fastest (then
    cheapest) one, marked as missing the promise. None when nothing is quoted."""
    candidates = [r for r in rates if carriers is None or r.carrier in carriers]
    if not candidates:
        return None
    meeting = [r for r in candidates if r.est_delivery_days <= promise_days]
    if meeting:
        best = min(meeting, key=lambda r: (r.rate, r.est_delivery_days, r.carrier, r.service))
    else:
        best = min(candidates, key=lambda r: (r.est_delivery_days, r.rate, r.carrier, r.service))
    return ServiceChoice(best.carrier, best.service, best.rate, best.est_delivery_days,
                         promise_days, bool(meeting))


@dataclass(frozen=True)
class RateQuery:
    order_id: int
    lane: str
    from_country: str
    to_country: str
    weight_g: int
    wave_carrier: str
    value_usd: float = 0.0


def _rate_key(client: CarrierAdapter, q: RateQuery, carrier: str | None) -> tuple[Any, ...]:
    return (client.name, getattr(client, "base_url", ""), q.from_country, q.to_country,
            q.weight_g, carrier)


def _cached_rates(client: CarrierAdapter, q: RateQuery, carrier: str | None) -> list[Rate] | None:
    hit = _rate_cache.get(_rate_key(client, q, carrier))
    return hit[1] if hit is not None and hit[0] > time.monotonic() else None


def _shared_key(key: tuple[Any, ...]) -> str:
    # Hashed: the key holds the carrier API's URL.
    return SHARED_RATES_PREFIX + hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()


def _rates_redis(settings: Settings) -> redis.Redis | None:
    """Where quotes are shared: the shared Redis (none configured, e.g. an in-memory broker
    in a one-process run: each process keeps its own)."""
    if not settings.shared_redis.startswith(("redis://", "rediss://")):
        return None
    return shared_redis(settings)


def _shared_rates(settings: Settings, keys: dict[Any, tuple[Any, ...]]) -> dict[Any, list[Rate]]:
    """Quotes another worker process stored (``keys``: caller's key -> rate key), copied into
    this process's cache until they expire; a value that cannot be read, or a Redis that
    cannot be reached, is a miss (the carrier is asked)."""
    shared = _rates_redis(settings) if keys else None
    if shared is None:
        return {}
    try:
        raw = shared.mget([_shared_key(k) for k in keys.values()])
    except redis.RedisError as exc:
        log.warning("could not read shared rate quotes: %s", exc)
        return {}
    wall, mono = time.time(), time.monotonic()
    out: dict[Any, list[Rate]] = {}
    for (mine, key), value in zip(keys.items(), raw, strict=True):
        if value is None:
            continue
        try:
            doc = json.loads(value)
            until = float(doc["until"])
            rates = [Rate(c, s, Decimal(p), cur, int(d)) for c, s, p, cur, d in doc["rates"]]
        except (ValueError, KeyError, TypeError, ArithmeticError):
            continue
        if until > wall:
            _rate_cache[key] = (mono + until - wall, rates)
            out[mine] = rates
    return out


def _share_rates(settings: Settings, fresh: dict[tuple[Any, ...], list[Rate]]) -> None:
    """Store quotes just had from the carrier for the other worker processes."""
    shared = _rates_redis(settings) if fresh else None
    if shared is None:
        return
    until = time.time() + RATE_CACHE_TTL_S
    pipe = shared.pipeline(transaction=False)
    for key, rates in fresh.items():
        doc = {"until": until, "rates": [[r.carrier, r.service, str(r.rate), r.currency,
                                          r.est_delivery_days] for r in rates]}
        pipe.set(_shared_key(key), json.dumps(doc), ex=int(RATE_CACHE_TTL_S))
    try:
        pipe.execute()
    except redis.RedisError as exc:  # the quotes are in hand: sharing them can wait
        log.warning("could not share %d rate quote(s): %s", len(fresh), exc)


def _quote(client: CarrierAdapter, q: RateQuery, carrier: str | None) -> list[Rate]:
    hit = _cached_rates(client, q, carrier)
    if hit is not None:
        return hit
    rates = client.rates(q.from_country, q.to_country, q.weight_g, carrier=carrier)
    _rate_cache[_rate_key(client, q, carrier)] = (time.monotonic() + RATE_CACHE_TTL_S, rates)
    return rates


@dataclass
class Shopped:
    """Rate shopping's outcome: a service per order, and the orders that could not be quoted
    (their carrier unreachable: ``error`` says why), which wait; the others go on."""

    choices: dict[int, ServiceChoice]
    unquoted: set[int] = field(default_factory=set)
    error: CarrierUnavailable | None = None


def rate_shop(client: CarrierAdapter, queries: list[RateQuery], settings: Settings,
              models: RoutingModels | None = None) -> Shopped:
    """Choose a service per order through its A/B arm's routing strategy (the rules, or the
    learned model once one is trained). An order whose quotes cannot be had gets no choice
    (the choice is final once stored, so it is not made blind): it is in ``unquoted``.

    Distinct parcels are quoted concurrently: a wave's quotes would otherwise wait on each
    other's retries when the carrier is slow or failing.
    """
    def carrier_of(q: RateQuery) -> str | None:
        return None if settings.rate_shop_across_carriers else q.wave_carrier

    def quote(q: RateQuery) -> list[Rate] | CarrierUnavailable:
        try:
            return _quote(client, q, carrier_of(q))
        except CarrierUnavailable as exc:  # this carrier's parcels wait; others go on
            return exc

    distinct = {(q.from_country, q.to_country, q.weight_g, carrier_of(q)): q for q in queries}
    quotes: dict[tuple[str, str, int, str | None], list[Rate] | CarrierUnavailable] = {}
    misses = {}
    for key, q in distinct.items():
        hit = _cached_rates(client, q, carrier_of(q))
        if hit is None:
            misses[key] = q
        else:
            quotes[key] = hit
    if misses:
        shared = _shared_rates(settings, {key: _rate_key(client, q, carrier_of(q))
                                          for key, q in misses.items()})
        quotes.update(shared)
        misses = {key: q for key, q in misses.items() if key not in shared}
    if misses:  # threads only for the calls (most quotes are cached: no pool to start)
        with ThreadPoolExecutor(max_workers=min(RATE_QUOTE_THREADS, len(misses))) as pool:
            fetched = dict(zip(misses, pool.map(quote, misses.values()), strict=True))
        quotes.update(fetched)
        _share_rates(settings, {_rate_key(client, misses[key], carrier_of(misses[key])): rates
                                for key, rates in fetched.items()
                                if not isinstance(rates, CarrierUnavailable)})
    shopped = Shopped({})
    # Each order's A/B arm routes it; a learned arm asks its model once for the whole wave.
    by_strategy: dict[str, tuple[RoutingStrategy, list[tuple[RateQuery, ParcelFeatures,
                                                             list[Rate]]]]] = {}
    for q in queries:
        rates = quotes[(q.from_country, q.to_country, q.weight_g, carrier_of(q))]
        if isinstance(rates, CarrierUnavailable):
            shopped.unquoted.add(q.order_id)
            shopped.error = shopped.error or rates
            continue
        parcel = ParcelFeatures(zone_of(q.from_country, q.to_country), q.lane, q.weight_g,
                                q.value_usd, promise_days_for(settings, q.lane))
        strategy = strategy_for(q.order_id, models, settings)
        by_strategy.setdefault(strategy.name, (strategy, []))[1].append((q, parcel, rates))
    choices = shopped.choices
    for strategy, items in by_strategy.values():
        routed = strategy.choose_many([(parcel, rates) for _, parcel, rates in items])
        for (q, _, _), r in zip(items, routed, strict=True):
            if r is not None:
                choices[q.order_id] = ServiceChoice(r.carrier, r.service, r.rate,
                                                    r.est_delivery_days, r.promise_days,
                                                    r.meets_promise, r.arm)
        # No quote (too heavy for every service): the default service is asked for, and the
        # carrier's refusal, naming the reason, puts the order in label_failed.
    return shopped


def _wave_ids(wave_ids: int | Sequence[int]) -> list[int]:
    """One wave id (an older message, a test) or a message's list, sorted, once each."""
    return [wave_ids] if isinstance(wave_ids, int) else sorted(set(wave_ids))


def rate_queries(uow: UnitOfWork, wave_ids: int | Sequence[int]) -> list[RateQuery]:
    """The waves' orders (in_wave) that have no shipment yet (read only, nothing locked)."""
    session = uow.session
    waves = _wave_ids(wave_ids)
    countries = dict(session.execute(select(Warehouse.code, Warehouse.country)).all())
    wave_carriers = dict(session.execute(
        select(Wave.id, Wave.carrier).where(any_of(session, Wave.id, waves))).all())
    rows = session.execute(
        select(OrderRow.id, OrderRow.wave_id, OrderRow.lane, OrderRow.warehouse,
               OrderRow.ship_country, OrderRow.weight_g, OrderRow.total_usd)
        .outerjoin(Shipment, Shipment.order_id == OrderRow.id)
        .where(any_of(session, OrderRow.wave_id, waves),
               OrderRow.state == State.IN_WAVE.value, Shipment.id.is_(None))
        .order_by(OrderRow.id)
    ).all()
    out = []
    for r in rows:
        from_country = countries[r.warehouse]
        out.append(RateQuery(
            order_id=r.id, lane=r.lane or "standard", from_country=from_country,
            to_country=r.ship_country, weight_g=quote_bracket(r.weight_g),
            wave_carrier=(wave_carriers.get(r.wave_id)
                          or carrier_for(from_country, r.ship_country)[0]),
            value_usd=float(r.total_usd)))
    return out


# --------------------------------------------------------------------------------------------
# Shipments, purchase, recording
# --------------------------------------------------------------------------------------------


@dataclass
class LabelOutcome:
    labelled: list[int]
    failed: dict[int, str]
    recovered: list[int] = field(default_factory=list)  # found by look-up, not bought again


def prepare_shipments(uow: UnitOfWork, wave_ids: int | Sequence[int],
                      choices: dict[int, ServiceChoice] | None = None,
                      settings: Settings | None = None,
                      unquoted: Collection[int] = ()) -> list[LabelRequest]:
    """Create (once) a shipment per in_wave order of the waves; return the requests to send.

    ``choices`` (rate shopping) decides carrier and service of new shipments; without one an
    order gets its wave's default. An existing shipment keeps what it was created with.
    Orders in ``unquoted`` (their carrier could not quote) are left for the wave's next try.
    """
    session = uow.session
    settings = settings or get_settings()
    choices = choices or {}
    # The few fields a label needs, the ship-to address alone out of the order JSON.
    orders = {o.id: o for o in claim_columns(
        session, _orders_of(uow, _wave_ids(wave_ids)), [State.IN_WAVE], OrderRow.id,
        OrderRow.wave_id, OrderRow.warehouse, OrderRow.ship_country, OrderRow.weight_g,
        OrderRow.store, OrderRow.source_order_id,
        OrderRow.payload["shipping_address"].label("ship_to")) if o.id not in unquoted}
    if not orders:
        return []
    countries = dict(session.execute(select(Warehouse.code, Warehouse.country)).all())
    rows = []
    for o in orders.values():
        choice = choices.get(o.id)
        carrier, service = ((choice.carrier, choice.service) if choice
                            else carrier_for(countries[_warehouse(o)], o.ship_country))
        rows.append({"order_id": o.id, "wave_id": o.wave_id, "carrier": carrier,
                     "service": service, "idempotency_key": idempotency_key(o.id),
                     "status": ShipmentStatus.PENDING, "rate": choice.rate if choice else None,
                     "rate_currency": None,
                     "promise_days": choice.promise_days if choice else None,
                     "routing_arm": choice.arm if choice else None,
                     "zone": zone_of(countries[_warehouse(o)], o.ship_country),
                     "est_delivery_days": choice.est_delivery_days if choice else None})
    insert_ignoring_conflicts(session, Shipment, rows, ["order_id"])
    pending = session.execute(
        select(Shipment.order_id, Shipment.idempotency_key, Shipment.carrier, Shipment.service)
        .where(any_of(session, Shipment.order_id, list(orders)),
               Shipment.label_id.is_(None),
               Shipment.status == ShipmentStatus.PENDING)
        .order_by(Shipment.id)
    ).all()
    requests = []
    for s in pending:
        o = orders[s.order_id]
        requests.append(LabelRequest(
            idempotency_key=s.idempotency_key, carrier=s.carrier, service=s.service,
            from_country=countries[_warehouse(o)], to_country=o.ship_country,
            to_postal_code=o.ship_to.get("postal_code", ""),
            weight_g=max(o.weight_g, 1), reference=f"{o.store}/{o.source_order_id}",
            to_address=o.ship_to, from_address=settings.ship_from_addresses.get(_warehouse(o))))
    return requests


def _warehouse(order: Any) -> str:
    """The warehouse an order in a wave ships from (set when its stock was reserved)."""
    if order.warehouse is None:
        raise ValueError(f"order {order.id} is in a wave but has no warehouse")
    return str(order.warehouse)


def _orders_of(uow: UnitOfWork, wave_ids: list[int]) -> list[int]:
    return list(uow.session.execute(
        select(OrderRow.id).where(any_of(uow.session, OrderRow.wave_id, wave_ids))).scalars())


def count_purchase_attempts(uow: UnitOfWork, keys: list[str]) -> set[str]:
    """Count one more purchase call for these shipments; return the keys that had one before
    (its outcome may be unknown: look them up before buying)."""
    if not keys:
        return set()
    rows = uow.session.execute(
        update(Shipment).where(any_of(uow.session, Shipment.idempotency_key, keys))
        .values(label_attempts=Shipment.label_attempts + 1)
        .returning(Shipment.idempotency_key, Shipment.label_attempts)
    ).all()
    return {key for key, attempts in rows if attempts > 1}


def record_labels(uow: UnitOfWork, labels: list[Label]) -> list[int]:
    """Store bought labels, ship the stock, move the orders to labelled; return order ids.

    A label bought for an order cancelled meanwhile is recorded on its shipment and handed
    to the cancellation stage to void, so no charged label is ever left behind.
    """
    session = uow.session
    if not labels:
        return []
    by_key = {lb.idempotency_key: lb for lb in labels}
    shipments = session.execute(
        select(Shipment.id, Shipment.order_id, Shipment.idempotency_key, Shipment.status,
               Shipment.label_id)
        .where(any_of(session, Shipment.idempotency_key, by_key))
    ).all()
    order_ids = [s.order_id for s in shipments]
    still_in_wave = set(claim_ids(session, order_ids, [State.IN_WAVE]))
    # The others' states (cancelled meanwhile?): none in the usual run, so no query.
    rest = [i for i in order_ids if i not in still_in_wave]
    states = dict(session.execute(
        select(OrderRow.id, OrderRow.state).where(any_of(session, OrderRow.id, rest))).all()
    ) if rest else {}
    updates, moves, to_void = [], [], []
    for s in shipments:
        lb = by_key[s.idempotency_key]
        if s.order_id in still_in_wave:
            updates.append({"id": s.id, "label_id": lb.label_id,
                            "tracking_number": lb.tracking_number, "rate": lb.rate,
                            "rate_currency": lb.currency, "status": ShipmentStatus.LABELLED,
                            "label_bought_at": lb.created_at})
            moves.append(Move(s.order_id, State.IN_WAVE, State.LABELLED,
                              {"tracking_number": lb.tracking_number, "carrier": lb.carrier,
                               "service": lb.service, "replayed": lb.replayed}))
        elif states.get(s.order_id) == State.CANCELLED.value and s.label_id is None:
            # Cancelled while the purchase was in flight: void what was charged.
            updates.append({"id": s.id, "label_id": lb.label_id,
                            "tracking_number": lb.tracking_number, "rate": lb.rate,
                            "rate_currency": lb.currency, "status": ShipmentStatus.VOID_PENDING,
                            "label_bought_at": lb.created_at})
            to_void.append(s.order_id)
        # else: recorded by an earlier run, or another worker is recording it right now
    if updates:
        update_rows(session, Shipment, updates)
    if moves:
        consume_reservations(uow, [m.order_id for m in moves])
    applied = apply_transitions(session, moves, stage="labels")
    labelled = [m.order_id for m in applied]
    if labelled:
        # Only rows that carry a reason (a label that failed before): rewriting every labelled
        # order's row to the NULL it already holds was 3% of PostgreSQL's time in the pipeline.
        session.execute(update(OrderRow).where(any_of(session, OrderRow.id, labelled),
                                               OrderRow.hold_reason.is_not(None))
                        .values(hold_reason=None))
        notify_store(uow, labelled, "label_bought")
        noncore_after(uow, State.LABELLED, labelled)
    if to_void:
        log.warning("%d labels were bought for orders cancelled meanwhile; voiding them",
                    len(to_void))
        uow.enqueue(VOID_LABELS, to_void, True)
    return labelled


def fail_labels(uow: UnitOfWork, failed: dict[int, str]) -> list[int]:
    """Orders whose label cannot be had (the carrier refused the parcel: bad address, too
    heavy; or gave no label within label_give_up_s) wait for a person in label_failed, with
    the reason, instead of being retried forever."""
    session = uow.session
    held = claim_ids(session, failed, [State.IN_WAVE])
    if not held:
        return []
    applied = apply_transitions(session, [
        Move(i, State.IN_WAVE, State.LABEL_FAILED, {"carrier_error": failed[i][:500]},
             {"hold_reason": f"no label: {failed[i]}"[:1000]})
        for i in held], stage="labels")
    for m in applied:
        raise_alert(session, "label_failed", str(m.order_id),
                    f"order {m.order_id} has no label: {failed[m.order_id][:300]}")
    return [m.order_id for m in applied]


def finish_waves(uow: UnitOfWork, wave_ids: Sequence[int]) -> None:
    """Mark labelled the waves none of whose orders waits for a label."""
    session = uow.session
    waiting = set(session.scalars(
        select(OrderRow.wave_id).where(any_of(session, OrderRow.wave_id, list(wave_ids)),
                                       OrderRow.state == State.IN_WAVE.value).distinct()))
    done = sorted(set(wave_ids) - waiting)
    if done:
        session.execute(
            update(Wave).where(any_of(session, Wave.id, done), Wave.status == WaveStatus.CLOSED)
            .values(status=WaveStatus.LABELLED, next_label_attempt_at=None, label_error=None))


def buy_wave_labels(wave_ids: int | Sequence[int], settings: Settings,
                    client: CarrierAdapter) -> LabelOutcome:
    """The whole stage for the waves of one message: rate shop, prepare, look up, buy, record.

    The waves go together: one batch call per carrier for all of them, and the same few
    transactions and statements whether a message carries one wave or ten (a wave closed on
    age is often a handful of orders, and each run costs tens of statements and three commits).

    Raises CarrierUnavailable (CarrierCircuitOpen included) after recording whatever was
    bought, when some carrier of the waves could not be reached.
    """
    waves = _wave_ids(wave_ids)
    with unit_of_work(settings) as uow:
        queries = rate_queries(uow, waves)
        models = latest_models(uow.session) if queries else None
    shopped = rate_shop(client, queries, settings, models) if queries else Shopped({})
    with unit_of_work(settings) as uow:
        requests = prepare_shipments(uow, waves, shopped.choices, settings, shopped.unquoted)
        look_up = count_purchase_attempts(uow, [r.idempotency_key for r in requests])
    order_of = {r.idempotency_key: int(r.idempotency_key.rsplit("-", 1)[1]) for r in requests}
    labels: list[Label] = []
    recovered: list[int] = []
    failed: dict[int, str] = {}
    error: CarrierUnavailable | None = shopped.error
    by_carrier: dict[str, list[LabelRequest]] = {}
    for r in requests:
        by_carrier.setdefault(r.carrier, []).append(r)
    for carrier, group in sorted(by_carrier.items()):
        try:
            keys = [r.idempotency_key for r in group if r.idempotency_key in look_up]
            found = client.find_labels(keys, carrier=carrier) if keys else {}
            labels.extend(found.values())
            recovered.extend(order_of[k] for k in found)
            to_buy = [r for r in group if r.idempotency_key not in found]
            if to_buy:
                result = client.buy_labels(to_buy)  # retried inside (tenacity)
                labels.extend(result.labels)
                for key, reason in result.errors.items():
                    if key in order_of:
                        failed[order_of[key]] = f"carrier refused the label: {reason}"
        except CarrierUnavailable as exc:
            error = error or exc
        except CarrierRejected as exc:
            # The whole call was refused (not one item): a person must look at these orders.
            for r in group:
                failed[order_of[r.idempotency_key]] = f"carrier refused the label: {exc.error}"
    if failed:
        log.warning("no label for %d orders of waves %s", len(failed), waves)
    with unit_of_work(settings) as uow:
        labelled = record_labels(uow, labels)
        fail_labels(uow, failed)
        finish_waves(uow, waves)
    if error is not None:
        raise error
    return LabelOutcome(labelled, failed, recovered)


# --------------------------------------------------------------------------------------------
# Deferral and giving up
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaveAttempt:
    """What the label task decided for a wave."""

    outcome: str  # done | deferred | gave_up | duplicate | no_wave
    countdown_s: float = 0.0
    reason: str = ""


def defer_wave(uow: UnitOfWork, wave_id: int, reason: str, retry_at: datetime) -> None:
    """Note why the wave waits and when it is tried next; show it on its orders."""
    session = uow.session
    session.execute(update(Wave).where(Wave.id == wave_id).values(
        label_attempts=Wave.label_attempts + 1, next_label_attempt_at=retry_at,
        label_error=reason[:2000]))
    session.execute(
        update(OrderRow)
        .where(OrderRow.wave_id == wave_id, OrderRow.state == State.IN_WAVE.value)
        .values(hold_reason=f"label deferred: {reason} (next attempt "
                            f"{retry_at:%Y-%m-%d %H:%M:%S}Z)"[:1000]))


def give_up_wave(uow: UnitOfWork, wave_id: int, reason: str) -> list[int]:
    """Past label_give_up_s: the wave's waiting orders go to label_failed, for a person."""
    waiting = list(uow.session.execute(
        select(OrderRow.id).where(OrderRow.wave_id == wave_id,
                                  OrderRow.state == State.IN_WAVE.value)).scalars())
    failed = fail_labels(uow, dict.fromkeys(waiting, reason))
    uow.session.execute(update(Wave).where(Wave.id == wave_id).values(
        next_label_attempt_at=None, label_error=reason[:2000]))
    finish_waves(uow, [wave_id])
    return failed


def retry_failed_labels(uow: UnitOfWork, order_ids: list[int]) -> list[int]:
    """Ops: send label_failed orders (address fixed, carrier back) through the label stage
    again. Their waves get a fresh give-up clock; a shipment whose purchase outcome was
    unknown is looked up by its key first, as always. Returns the order ids moved."""
    session = uow.session
    orders = claim(session, order_ids, [State.LABEL_FAILED], with_payload=False)
    applied = apply_transitions(session, [
        Move(o.id, State.LABEL_FAILED, State.IN_WAVE, {"reason": "label retried by ops"})
        for o in orders], stage="labels")
    moved = [m.order_id for m in applied]
    if not moved:
        return []
    session.execute(update(OrderRow).where(OrderRow.id.in_(moved)).values(hold_reason=None))
    waves = sorted({o.wave_id for o in orders if o.id in moved and o.wave_id is not None})
    session.execute(update(Wave).where(Wave.id.in_(waves)).values(
        status=WaveStatus.CLOSED, closed_at=utcnow(), next_label_attempt_at=None,
        label_error=None))
    for order_id in moved:
        resolve_alert(session, "label_failed", str(order_id))
    label_waves(uow, waves)
    return moved


def _countdown(exc: CarrierUnavailable, attempts: int, settings: Settings) -> float:
    cap = settings.label_retry_max_countdown_s
    if isinstance(exc, CarrierCircuitOpen):
        # Just after the breaker's pause (+ jitter, so deferred waves do not all pile onto
        # the half-open probe at once).
        base = exc.retry_after_s + random.uniform(0.2, 1.5)
    elif exc.retry_after_s is not None:
        base = exc.retry_after_s
    else:
        base = min(cap, 2.0 ** max(attempts, 0)) * random.uniform(0.75, 1.25)
    return max(1.0, min(cap, base))


def label_wave_batch(wave_ids: Sequence[int], settings: Settings,
                     client: CarrierAdapter) -> dict[int, WaveAttempt]:
    """One label task run for a message's waves: buy, or decide per wave to defer or give up.

    A wave whose next attempt is not due (a re-drive copy of a deferred wave's message) is
    left to its scheduled message; the others are bought together.
    """
    now = utcnow()
    waves = _wave_ids(wave_ids)
    attempts: dict[int, WaveAttempt] = {}
    due: dict[int, tuple[datetime, int]] = {}  # closed at, label attempts so far
    with unit_of_work(settings) as uow:
        rows = {w.id: w for w in uow.session.execute(
            select(Wave).where(any_of(uow.session, Wave.id, waves))
            .order_by(Wave.id).with_for_update()).scalars()}
        for wave_id in waves:
            wave = rows.get(wave_id)
            if wave is None:
                attempts[wave_id] = WaveAttempt("no_wave")
                continue
            at = wave.next_label_attempt_at
            if at is not None and now < at - timedelta(seconds=EARLY_TOLERANCE_S):
                attempts[wave_id] = WaveAttempt(
                    "duplicate", reason=f"next attempt is due at {at.isoformat()}")
                continue
            due[wave_id] = (wave.closed_at or wave.opened_at, wave.label_attempts)
    if not due:
        return attempts
    try:
        outcome = buy_wave_labels(sorted(due), settings, client)
    except CarrierUnavailable as exc:
        attempts.update(_after_carrier_failure(due, exc, settings))
        return attempts
    log.debug("labels of waves %s: %d bought or found, %d failed", sorted(due),
              len(outcome.labelled), len(outcome.failed))
    attempts.update((wave_id, WaveAttempt("done")) for wave_id in due)
    return attempts


def _after_carrier_failure(due: dict[int, tuple[datetime, int]], exc: CarrierUnavailable,
                           settings: Settings) -> dict[int, WaveAttempt]:
    """Some carrier could not be reached: each wave not labelled in full waits (all with one
    countdown, so one message carries them again) or, past label_give_up_s, gives up."""
    reason = str(exc)
    out: dict[int, WaveAttempt] = {}
    with unit_of_work(settings) as uow:
        open_ = set(uow.session.scalars(select(Wave.id).where(
            any_of(uow.session, Wave.id, sorted(due)), Wave.status == WaveStatus.CLOSED)))
        countdown = _countdown(exc, 1 + max(due[w][1] for w in due), settings)
        for wave_id in sorted(due):
            if wave_id not in open_:  # every order of it labelled before the failure
                out[wave_id] = WaveAttempt("done")
                continue
            age_s = (utcnow() - due[wave_id][0]).total_seconds()
            if age_s > settings.label_give_up_s:
                failed = give_up_wave(
                    uow, wave_id, f"carrier unavailable for {age_s / 60:.0f} min: {reason}")
                log.error("gave up on the labels of wave %s after %.0f s: %d orders "
                          "label_failed", wave_id, age_s, len(failed))
                out[wave_id] = WaveAttempt("gave_up", reason=reason)
                continue
            defer_wave(uow, wave_id, reason, utcnow() + timedelta(seconds=countdown))
            out[wave_id] = WaveAttempt("deferred", countdown_s=countdown, reason=reason)
    deferred = [w for w, a in out.items() if a.outcome == "deferred"]
    if deferred:
        log.warning("labels of waves %s deferred %.1fs: %s", deferred, countdown, reason)
    return out


def label_wave(wave_id: int, settings: Settings, client: CarrierAdapter) -> WaveAttempt:
    """:func:`label_wave_batch` for one wave."""
    return label_wave_batch([wave_id], settings, client)[wave_id]


@stage_task(BUY_LABELS, max_retries=None)
def buy(task: Task, wave_ids: list[int] | int) -> None:
    """Labels for a message's waves (a list; one id from a message sent before waves were
    carried together)."""
    settings = get_settings()
    waves = parse_ids(wave_ids if isinstance(wave_ids, list) else [wave_ids])
    with retry_on_transient(task):
        attempts = label_wave_batch(waves, settings, carrier_client(settings))
    deferred = sorted(w for w, a in attempts.items() if a.outcome == "deferred")
    if deferred:
        # Deferred, not failed: the bound is label_give_up_s, not a retry count. Only the
        # deferred waves go again; the others are done or gave up.
        raise task.retry(args=[deferred], countdown=attempts[deferred[0]].countdown_s,
                         max_retries=None)
