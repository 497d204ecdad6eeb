"""Tracking: a beat-scheduled backfill sweep, and carrier pushes, write normalised events.

The sweep (hourly by default, ``tracking_sweep_interval_s``) only selects undelivered
shipments and fans them out in batches of ``tracking_batch_size``; each backfill task fetches
the trackers per carrier in one call, records new events (unique per shipment and carrier
event id, so a re-run adds nothing) and moves orders: ``in_transit`` on the first scan,
``delivered`` (the order is complete) on delivery. Statuses are normalised to the fixed set
in ``domain.carriers.TRACKING_STATUSES`` by the adapters; a carrier exception flags the
shipment for a person. Carriers may also push trackers to ``POST /webhooks/tracking``
(``workers.tracking_api``), which lands in :func:`ingest_tracking_push`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Task
from sqlalchemy import or_, select, update

from config.settings import Settings, get_settings
from domain.alerts import raise_alert, resolve_alert
from domain.carriers import (
    TRACKING_STATUSES,
    CarrierAdapter,
    CarrierUnavailable,
    Tracker,
    TrackingEvent,
    UnknownTrackingStatus,
    normalize_status,
)
from domain.carriers.base import parse_time
from domain.carriers.easypost import tracker_from_easypost
from domain.carriers.shared import carrier_client
from domain.clock import utcnow
from domain.db import UnitOfWork, chunks, insert_ignoring_conflicts, unit_of_work
from domain.lifecycle import Move, State, apply_transitions, claim
from domain.models import OPEN_SHIPMENTS, RejectedTrackingPush, Shipment, ShipmentStatus
from domain.models import TrackingEvent as TrackingEventRow
from domain.notifications import notify_store
from domain.pipeline import TRACKING_BACKFILL, noncore_after
from domain.surge import low_priority_paused
from tasks.base import parse_ids, retry_countdown, retry_on_transient, stage_task

log = logging.getLogger(__name__)

IN_TRANSIT_STATUSES = frozenset({"in_transit", "out_for_delivery", "failed_attempt"})
# Statuses a person must look at; the parcel's order stays where it is.
PROBLEM_STATUSES = frozenset({"exception", "expired"})
MAX_PUSH_TRACKERS = 1000


def due_shipments(uow: UnitOfWork, settings: Settings, limit: int = 20_000) -> list[int]:
    """Undelivered shipments not checked within the last half sweep interval."""
    cutoff = utcnow() - timedelta(seconds=settings.tracking_sweep_interval_s / 2)
    return list(uow.session.execute(
        select(Shipment.id)
        .where(Shipment.status.in_(OPEN_SHIPMENTS),
               or_(Shipment.last_checked_at.is_(None), Shipment.last_checked_at < cutoff))
        .order_by(Shipment.id).limit(limit)
    ).scalars())


def _normalised(status: str) -> str | None:
    """An adapter's status, checked against the fixed set (None: nothing to say yet)."""
    if status in TRACKING_STATUSES:
        return status
    return normalize_status(status)


def record_trackers(uow: UnitOfWork, shipment_ids: list[int], trackers: list[Tracker]) -> int:
    """Write new tracking events and advance orders; return the number of new events."""
    session = uow.session
    now = utcnow()
    shipments = {
        s.tracking_number: s for s in session.execute(
            select(Shipment).where(Shipment.id.in_(shipment_ids),
                                   Shipment.status.in_(OPEN_SHIPMENTS))
            .with_for_update(skip_locked=True)
        ).scalars()
    }
    events: list[dict[str, Any]] = []
    moves_by_order: dict[int, State] = {}
    changed: list[int] = []
    for tr in trackers:
        s = shipments.get(tr.tracking_number)
        if s is None:
            continue
        s.last_checked_at = now
        try:
            status = _normalised(tr.status)
            tr_events = [(ev, _normalised(ev.status)) for ev in tr.events]
        except UnknownTrackingStatus as exc:
            log.warning("shipment %s: %s; tracker skipped", s.id, exc)
            continue
        for ev, ev_status in tr_events:
            if ev_status is None:
                continue
            events.append({"shipment_id": s.id, "carrier_event_id": ev.id, "status": ev_status,
                           "at": ev.at, "location": ev.location, "message": ev.message,
                           "recorded_at": now})
        if tr.events:
            latest = max(ev.at for ev in tr.events)
            s.last_event_at = max(s.last_event_at, latest) if s.last_event_at else latest
        if status is None:
            continue
        if status != s.tracking_status:
            changed.append(s.order_id)
            s.tracking_status = status
        if status == "delivered":
            s.status, s.delivered_at = ShipmentStatus.DELIVERED, s.last_event_at or now
            moves_by_order[s.order_id] = State.DELIVERED
        elif status in IN_TRANSIT_STATUSES:
            s.status = ShipmentStatus.IN_TRANSIT
            moves_by_order[s.order_id] = State.IN_TRANSIT
        elif status in PROBLEM_STATUSES and s.flagged_at is None:
            s.flagged_at, s.flag_reason = now, f"carrier reports {status}"
            raise_alert(session, "tracking_exception", s.tracking_number or str(s.id),
                        f"order {s.order_id}: carrier {s.carrier} reports {status} for "
                        f"{s.tracking_number}; check the parcel", detail={"order_id": s.order_id})
    inserted = insert_ignoring_conflicts(
        session, TrackingEventRow, events, ["shipment_id", "carrier_event_id"],
        returning=[TrackingEventRow.shipment_id])
    _clear_silence(uow, {row.shipment_id for row in inserted}, shipments.values())
    orders = {o.id: State(o.state) for o in claim(
        session, moves_by_order, [State.LABELLED, State.IN_TRANSIT], with_payload=False)}
    moves = [Move(oid, src, moves_by_order[oid]) for oid, src in orders.items()
             if src != moves_by_order[oid]]
    applied = apply_transitions(session, moves, stage="tracking")
    session.flush()
    noncore_after(uow, State.DELIVERED,
                  [m.order_id for m in applied if m.dst == State.DELIVERED])
    if changed:
        notify_store(uow, changed, "tracking_changed")
    return len(inserted)


def _clear_silence(uow: UnitOfWork, with_news: set[int], shipments: Any) -> None:
    """New events end a "tracking silent" flag and its alert."""
    for s in shipments:
        if s.id in with_news and s.flag_reason and s.flag_reason.startswith("tracking silent"):
            s.flagged_at = s.flag_reason = None
            resolve_alert(uow.session, "tracking_silent", s.tracking_number or str(s.id))


@dataclass
class BackfillOutcome:
    new_events: int = 0
    unavailable: dict[str, str] = field(default_factory=dict)  # carrier -> why


def backfill_shipments(shipment_ids: list[int], settings: Settings,
                       client: CarrierAdapter) -> int:
    """Fetch and record the trackers of these shipments; return the number of new events.

    One call per carrier (each has its own breaker). Raises the first CarrierUnavailable
    after recording what the other carriers answered, so the task retries.
    """
    with unit_of_work(settings) as uow:
        rows = uow.session.execute(
            select(Shipment.tracking_number, Shipment.carrier)
            .where(Shipment.id.in_(shipment_ids), Shipment.tracking_number.is_not(None),
                   Shipment.status.in_(OPEN_SHIPMENTS))
        ).all()
    by_carrier: dict[str, list[str]] = defaultdict(list)
    for number, carrier in rows:
        if number is not None:  # the query asks for tracked shipments only
            by_carrier[carrier].append(number)
    trackers: list[Tracker] = []
    error: CarrierUnavailable | None = None
    for carrier, numbers in sorted(by_carrier.items()):
        try:
            trackers.extend(client.track(numbers, carrier=carrier))
        except CarrierUnavailable as exc:
            error = error or exc
    new_events = 0
    if trackers:
        with unit_of_work(settings) as uow:
            new_events = record_trackers(uow, shipment_ids, trackers)
    if error is not None:
        raise error
    return new_events


# --------------------------------------------------------------------------------------------
# Carrier pushes (POST /webhooks/tracking)
# --------------------------------------------------------------------------------------------


class TrackingPushError(ValueError):
    """A push that cannot be used; ``errors`` names each faulty field."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


@dataclass
class PushOutcome:
    trackers: int
    new_events: int
    unknown_tracking_numbers: list[str]


def _our_tracker(data: Any, where: str) -> Tracker:
    """Our own push format: {"tracking_number", "status", "events": [{id, status, at, ...}]}."""
    errors: list[dict[str, str]] = []
    if not isinstance(data, dict):
        raise TrackingPushError([{"field": where, "message": "must be an object"}])
    number = data.get("tracking_number")
    if not isinstance(number, str) or not number.strip():
        errors.append({"field": f"{where}.tracking_number", "message": "required string"})
    raw_events = data.get("events", [])
    if not isinstance(raw_events, list):
        errors.append({"field": f"{where}.events", "message": "must be a list"})
        raw_events = []
    events = []
    for n, e in enumerate(raw_events):
        at = f"{where}.events[{n}]"
        if not isinstance(e, dict):
            errors.append({"field": at, "message": "must be an object"})
            continue
        try:
            status = normalize_status(str(e.get("status", "")))
        except UnknownTrackingStatus as exc:
            errors.append({"field": f"{at}.status", "message": str(exc).split(": ", 1)[1]})
            continue
        try:
            when = parse_time(str(e.get("at", "")))
        except ValueError:
            errors.append({"field": f"{at}.at", "message": "must be an ISO 8601 time"})
            continue
        if not isinstance(e.get("id"), str) or not e["id"]:
            errors.append({"field": f"{at}.id", "message": "required string (stable per scan)"})
            continue
        if status is not None:
            events.append(TrackingEvent(id=e["id"], status=status, at=when,
                                        location=str(e.get("location") or ""),
                                        message=str(e.get("message") or "")))
    status_raw = data.get("status") or (events[-1].status if events else "unknown")
    try:
        status = normalize_status(str(status_raw)) or "unknown"
    except UnknownTrackingStatus as exc:
        errors.append({"field": f"{where}.status", "message": str(exc).split(": ", 1)[1]})
        status = "unknown"
    if errors:
        raise TrackingPushError(errors)
    return Tracker(tracking_number=str(number), status=status, events=events)


def parse_tracking_push(payload: Any) -> list[Tracker]:
    """Trackers from a carrier push: an EasyPost webhook Event (``tracker.*``), a tracker, or
    ``{"trackers": [...]}`` in our format. Raises TrackingPushError naming the fields."""
    if not isinstance(payload, dict):
        raise TrackingPushError([{"field": "(body)", "message": "expected a JSON object"}])
    if payload.get("object") == "Event":
        description = str(payload.get("description", ""))
        if not description.startswith("tracker."):
            raise TrackingPushError([{"field": "description",
                                      "message": f"not a tracker event: {description!r}"}])
        try:
            return [tracker_from_easypost(payload["result"])]
        except UnknownTrackingStatus as exc:
            raise TrackingPushError([{"field": "result.status",
                                      "message": str(exc).split(": ", 1)[1]}]) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise TrackingPushError([{"field": "result", "message": f"malformed tracker "
                                      f"({type(exc).__name__}: {exc})"}]) from None
    if "trackers" in payload:
        items = payload["trackers"]
        if not isinstance(items, list) or not items:
            raise TrackingPushError([{"field": "trackers", "message": "non-empty list"}])
        if len(items) > MAX_PUSH_TRACKERS:
            raise TrackingPushError([{"field": "trackers",
                                      "message": f"at most {MAX_PUSH_TRACKERS} per push"}])
        out, errors = [], []
        for n, item in enumerate(items):
            try:
                out.append(_our_tracker(item, f"trackers[{n}]"))
            except TrackingPushError as exc:
                errors.extend(exc.errors)
        if errors:
            raise TrackingPushError(errors)
        return out
    return [_our_tracker(payload, "(tracker)")]


def ingest_tracking_push(uow: UnitOfWork, payload: Any) -> PushOutcome:
    """Record a carrier's tracking push, exactly as the sweep records what it fetches.

    Raises TrackingPushError (fields named) for a malformed push; the caller keeps it with
    :func:`keep_rejected_push`. Tracking numbers we never issued are reported, not an error
    (a carrier account may be shared with other systems).
    """
    trackers = parse_tracking_push(payload)
    numbers = [t.tracking_number for t in trackers]
    ids = dict(uow.session.execute(
        select(Shipment.tracking_number, Shipment.id)
        .where(Shipment.tracking_number.in_(numbers))).all())
    known = [t for t in trackers if t.tracking_number in ids]
    new_events = record_trackers(uow, [ids[t.tracking_number] for t in known], known) \
        if known else 0
    return PushOutcome(trackers=len(trackers), new_events=new_events,
                       unknown_tracking_numbers=[n for n in numbers if n not in ids])


def keep_rejected_push(uow: UnitOfWork, raw: str, reason: str,
                       errors: list[dict[str, str]]) -> int:
    """Keep an unusable push whole for ops; returns its id."""
    row = RejectedTrackingPush(received_at=utcnow(), reason=reason[:2000], errors=errors,
                               raw=raw[:200_000])
    uow.session.add(row)
    uow.session.flush()
    log.warning("rejected tracking push %s: %s", row.id, reason[:300])
    return int(row.id)


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


@stage_task("orderfleet.tracking.sweep")
def sweep(task: Task) -> None:
    settings = get_settings()
    if low_priority_paused(settings):
        log.info("tracking sweep paused: surge stage 1 or above")
        return
    with retry_on_transient(task), unit_of_work(settings) as uow:
        ids = due_shipments(uow, settings)
        # Stamp them now so an overlapping sweep does not fan the same shipments out twice.
        if ids:
            uow.session.execute(update(Shipment).where(Shipment.id.in_(ids))
                                .values(last_checked_at=utcnow()))
        for part in chunks(ids, settings.tracking_batch_size):
            uow.enqueue(TRACKING_BACKFILL, part)
    if ids:
        log.info("tracking sweep: %d shipments in %d messages", len(ids),
                 -(-len(ids) // settings.tracking_batch_size))


@stage_task(TRACKING_BACKFILL, max_retries=8)
def backfill(task: Task, shipment_ids: list[int]) -> None:
    settings = get_settings()
    ids = parse_ids(shipment_ids)
    try:
        with retry_on_transient(task):
            backfill_shipments(ids, settings, carrier_client(settings))
    except CarrierUnavailable as exc:
        if task.request.retries >= task.max_retries:
            # The next sweep picks these shipments up again: nothing is lost by stopping.
            log.warning("tracking backfill of %d shipments gave up until the next sweep: %s",
                        len(ids), exc)
            return
        countdown = exc.retry_after_s or retry_countdown(task.request.retries, cap_s=300)
        raise task.retry(exc=exc, countdown=max(1.0, countdown)) from exc
