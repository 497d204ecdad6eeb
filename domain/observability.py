"""What ops watch, computed from the database: the one source of the metrics exporter, the
order-health page, ``orderfleet alerts`` and ``orderfleet report``.

Every figure is read from PostgreSQL (the source of truth), so any process can compute it at
any time, whatever worker processes came and went. Windows are explicit (``start``/``end``),
so a past day is computed exactly as the present one.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from config.settings import Settings
from domain.lifecycle import PROCESSING, State, not_held_in_a_wave
from domain.models import (
    OPEN_SHIPMENTS,
    NoncoreJob,
    OrderEvent,
    OrderRow,
    RejectedOrder,
    RejectedTrackingPush,
    Shipment,
    SkuHealth,
    SkuHold,
)
from domain.noncore import UNCERTAIN

# An order reaching one of these needs more than the happy path: a person (on hold, label
# failed), stock (backordered) or a fraud verdict (rejected). Counted per stage.
EXCEPTION_STATES: tuple[str, ...] = (State.ON_HOLD.value, State.REJECTED.value,
                                     State.BACKORDERED.value, State.LABEL_FAILED.value)
# Orders still waiting for a label that a store may still expect on time. Not ``split``: a
# split order never gets a label itself; its parts (orders of their own) are counted instead.
AWAITING_LABEL: tuple[str, ...] = tuple(
    s.value for s in (*PROCESSING, State.ON_HOLD, State.BACKORDERED, State.LABEL_FAILED))
# Seconds: from a fraction of a second (a bulk stage) to a day (a review, a backorder).
STAGE_LATENCY_BUCKETS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
DAY = timedelta(days=1)


def promise_hours(settings: Settings, lane: str | None) -> float:
    hours = settings.sla_dispatch_hours
    return hours.get(lane or "standard", hours["standard"])


# --- stage latency: an incremental tally over the append-only event log ----------------------
@dataclass
class StageHistogram:
    buckets: list[int]  # cumulative counts, one per STAGE_LATENCY_BUCKETS bound
    count: int = 0
    total_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total_s += seconds
        for i, bound in enumerate(STAGE_LATENCY_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1


@dataclass
class EventTally:
    """Counters over ``order_events`` that only grow: stage latencies and exceptions.

    ``update`` reads only the events appended since its last call (by id), so a scrape costs
    the new events, not the whole history; a new exporter process starts from zero and
    catches up (a counter reset Prometheus handles).
    """

    last_event_id: int = 0
    latency: dict[str, StageHistogram] = field(default_factory=dict)
    exceptions: Counter[tuple[str, str]] = field(default_factory=Counter)
    page: int = 20_000

    def update(self, session: Session) -> int:
        prev = aliased_prev_at()
        seen = 0
        while True:
            rows = session.execute(
                select(OrderEvent.id, OrderEvent.stage, OrderEvent.to_state, OrderEvent.at,
                       prev.label("prev_at"))
                .where(OrderEvent.id > self.last_event_id).order_by(OrderEvent.id)
                .limit(self.page)).all()
            for event_id, stage, to_state, at, prev_at in rows:
                if prev_at is not None:
                    hist = self.latency.setdefault(
                        stage, StageHistogram([0] * len(STAGE_LATENCY_BUCKETS)))
                    hist.observe(max((at - prev_at).total_seconds(), 0.0))
                if to_state in EXCEPTION_STATES:
                    self.exceptions[(stage, to_state)] += 1
                self.last_event_id = event_id
            seen += len(rows)
            if len(rows) < self.page:
                return seen


def aliased_prev_at() -> Any:
    """The time of the order's previous event (a correlated subquery, portable to SQLite)."""
    from sqlalchemy.orm import aliased

    prev = aliased(OrderEvent)
    return (select(func.max(prev.at)).where(prev.order_id == OrderEvent.order_id,
                                            prev.id < OrderEvent.id)
            .correlate(OrderEvent).scalar_subquery())


# --- point-in-time figures -------------------------------------------------------------------
@dataclass
class Sla:
    on_time: int
    late: int

    @property
    def ratio(self) -> float | None:
        n = self.on_time + self.late
        return None if n == 0 else self.on_time / n


def sla_attainment(session: Session, settings: Settings, start: datetime, end: datetime) -> Sla:
    """Orders labelled in [start, end) on time or late against their lane's promised dispatch,
    plus orders whose promise ran out in the window without a label by its end (late)."""
    label_at = (select(OrderEvent.order_id, func.min(OrderEvent.at).label("at"))
                .where(OrderEvent.to_state == State.LABELLED.value)
                .group_by(OrderEvent.order_id).subquery())
    on_time = late = 0
    for paid_at, lane, at in session.execute(
            select(OrderRow.paid_at, OrderRow.lane, label_at.c.at)
            .join(label_at, label_at.c.order_id == OrderRow.id)
            .where(label_at.c.at >= start, label_at.c.at < end)):
        if at - paid_at <= timedelta(hours=promise_hours(settings, lane)):
            on_time += 1
        else:
            late += 1
    hours = settings.sla_dispatch_hours.values()
    for paid_at, lane, _at in session.execute(
            select(OrderRow.paid_at, OrderRow.lane, label_at.c.at)
            .outerjoin(label_at, label_at.c.order_id == OrderRow.id)
            .where(OrderRow.paid_at >= start - timedelta(hours=max(hours)),
                   OrderRow.paid_at < end - timedelta(hours=min(hours)),
                   or_(label_at.c.at.is_(None), label_at.c.at >= end),
                   or_(label_at.c.at.is_not(None), OrderRow.state.in_(AWAITING_LABEL)))):
        deadline = paid_at + timedelta(hours=promise_hours(settings, lane))
        if start <= deadline < end:
            late += 1
    return Sla(on_time, late)


@dataclass
class CostShare:
    cost_usd: Decimal
    gmv_usd: Decimal
    labels: int

    @property
    def share(self) -> float | None:
        return None if self.gmv_usd <= 0 else float(self.cost_usd / self.gmv_usd)


def cost_share(session: Session, settings: Settings, start: datetime, end: datetime) -> CostShare:
    """Label cost (plus the handling cost per order, when configured) as a share of the value
    of the orders whose labels were bought in the window. Labels in a currency without a
    known rate are left out, with their orders: only known costs are compared."""
    cost, gmv, n = Decimal(0), Decimal(0), 0
    handling = settings.handling_cost_per_order_usd or Decimal(0)
    for rate, currency, total_usd in session.execute(
            select(Shipment.rate, Shipment.rate_currency, OrderRow.total_usd)
            .join(OrderRow, OrderRow.id == Shipment.order_id)
            .where(Shipment.label_bought_at >= start, Shipment.label_bought_at < end,
                   Shipment.rate.is_not(None))):
        fx = settings.fx_rates_to_usd.get((currency or "USD").upper())
        if fx is None or rate is None:
            continue
        cost += rate * fx + handling
        gmv += total_usd
        n += 1
    return CostShare(cost, gmv, n)


@dataclass
class ExceptionRates:
    exceptions: int
    orders: int
    previous_exceptions: int
    previous_orders: int

    @property
    def rate(self) -> float | None:
        return None if self.orders == 0 else self.exceptions / self.orders

    @property
    def previous_rate(self) -> float | None:
        if self.previous_orders == 0:
            return None
        return self.previous_exceptions / self.previous_orders


def exception_rates(session: Session, end: datetime, period: timedelta = DAY) -> ExceptionRates:
    """Exceptions (events into EXCEPTION_STATES, and payloads refused at the door) per order
    received, in the period ending at ``end`` and in the one before."""
    def count(start: datetime, stop: datetime) -> tuple[int, int]:
        events = session.execute(select(func.count()).select_from(OrderEvent).where(
            OrderEvent.at >= start, OrderEvent.at < stop,
            OrderEvent.to_state.in_(EXCEPTION_STATES))).scalar_one()
        refused = session.execute(select(func.count()).select_from(RejectedOrder).where(
            RejectedOrder.received_at >= start, RejectedOrder.received_at < stop)).scalar_one()
        orders = session.execute(select(func.count()).select_from(OrderRow).where(
            OrderRow.received_at >= start, OrderRow.received_at < stop)).scalar_one()
        return events + refused, orders + refused

    now_exc, now_orders = count(end - period, end)
    prev_exc, prev_orders = count(end - 2 * period, end - period)
    return ExceptionRates(now_exc, now_orders, prev_exc, prev_orders)


@dataclass
class Snapshot:
    """The figures of one moment (the exporter's gauges, the page's panels)."""

    at: datetime
    orders_by_state: dict[str, int]
    orders_total: int
    # Per processing state: orders, seconds since the oldest one last changed.
    lag_by_state: dict[str, tuple[int, float]]
    status_lag_s: float  # the longest an order in an automated stage has not moved
    status_lagging: int  # orders past settings.status_lag_alert_s
    backlog_oldest_s: float  # the oldest order still in the pipeline, since it was received
    sla_24h: Sla
    tracking_silent: int
    sku_failures: dict[str, tuple[int, int]]  # sku -> (failures, attempts) in its window
    reservation_attempts: int
    reservation_failures: int
    on_hold: int
    on_hold_for_sku: int  # of which held for a frozen SKU (the rest wait for fraud review)
    on_hold_oldest_s: float
    intake_rejections: int
    tracking_push_rejections: int
    cost_7d: CostShare
    exceptions: ExceptionRates
    # E-mails the mail server may or may not have taken: never re-sent without a person.
    emails_uncertain: int


def snapshot(session: Session, settings: Settings, now: datetime) -> Snapshot:
    by_state = {s.value: 0 for s in State}
    for state, n in session.execute(select(OrderRow.state, func.count())
                                    .group_by(OrderRow.state)):
        by_state[state] = n
    lag: dict[str, tuple[int, float]] = {}
    lagging = 0
    oldest_received: datetime | None = None
    lag_cut = now - timedelta(seconds=settings.status_lag_alert_s)
    for state, n, oldest_update, first_received, late in session.execute(
            select(OrderRow.state, func.count(), func.min(OrderRow.updated_at),
                   func.min(OrderRow.received_at),
                   func.count().filter(OrderRow.updated_at < lag_cut))
            .where(OrderRow.state.in_([s.value for s in PROCESSING]), not_held_in_a_wave(now))
            .group_by(OrderRow.state)):
        lag[state] = (n, max((now - oldest_update).total_seconds(), 0.0))
        lagging += late
        if oldest_received is None or first_received < oldest_received:
            oldest_received = first_received
    silent_cut = now - timedelta(seconds=settings.tracking_silent_alert_s)
    silent = session.execute(select(func.count()).select_from(Shipment).where(
        Shipment.status.in_([s.value for s in OPEN_SHIPMENTS]),
        or_(Shipment.last_event_at < silent_cut,
            and_(Shipment.last_event_at.is_(None), Shipment.label_bought_at < silent_cut)),
    )).scalar_one()
    sku_failures: dict[str, tuple[int, int]] = {}
    attempts = failures = 0
    for sku, recent in session.execute(select(SkuHealth.sku, SkuHealth.recent)):
        f = recent.count("1")
        attempts += len(recent)
        failures += f
        if f:
            sku_failures[sku] = (f, len(recent))
    on_hold, hold_oldest = session.execute(
        select(func.count(), func.min(OrderRow.updated_at))
        .where(OrderRow.state == State.ON_HOLD.value)).one()
    held_for_sku = session.execute(
        select(func.count(func.distinct(SkuHold.order_id)))
        .join(OrderRow, OrderRow.id == SkuHold.order_id)
        .where(OrderRow.state == State.ON_HOLD.value)).scalar_one()
    return Snapshot(
        at=now,
        orders_by_state=by_state,
        orders_total=sum(by_state.values()),
        lag_by_state=lag,
        status_lag_s=max((s for _, s in lag.values()), default=0.0),
        status_lagging=lagging,
        backlog_oldest_s=0.0 if oldest_received is None
        else max((now - oldest_received).total_seconds(), 0.0),
        sla_24h=sla_attainment(session, settings, now - DAY, now),
        tracking_silent=silent,
        sku_failures=sku_failures,
        reservation_attempts=attempts,
        reservation_failures=failures,
        on_hold=on_hold,
        on_hold_for_sku=held_for_sku,
        on_hold_oldest_s=0.0 if hold_oldest is None
        else max((now - hold_oldest).total_seconds(), 0.0),
        intake_rejections=session.execute(
            select(func.count()).select_from(RejectedOrder)).scalar_one(),
        tracking_push_rejections=session.execute(
            select(func.count()).select_from(RejectedTrackingPush)).scalar_one(),
        cost_7d=cost_share(session, settings, now - 7 * DAY, now),
        exceptions=exception_rates(session, now),
        emails_uncertain=session.execute(select(func.count()).select_from(NoncoreJob).where(
            NoncoreJob.outcome == UNCERTAIN)).scalar_one(),
    )


# --- the report's and the page's longer views -------------------------------------------------
def exception_heatmap(session: Session, start: datetime, end: datetime) -> dict[str, list[int]]:
    """Exceptions per stage and hour of day (UTC) in the window; "intake" is the door."""
    grid: dict[str, list[int]] = defaultdict(lambda: [0] * 24)
    for stage, at in session.execute(select(OrderEvent.stage, OrderEvent.at).where(
            OrderEvent.at >= start, OrderEvent.at < end,
            OrderEvent.to_state.in_(EXCEPTION_STATES))):
        grid[stage][at.hour] += 1
    for (at,) in session.execute(select(RejectedOrder.received_at).where(
            RejectedOrder.received_at >= start, RejectedOrder.received_at < end)):
        grid["intake"][at.hour] += 1
    return dict(sorted(grid.items()))


def handling_times(session: Session, start: datetime, end: datetime) -> list[float]:
    """Seconds from payment to label for orders labelled in the window."""
    rows = session.execute(
        select(OrderRow.paid_at, func.min(OrderEvent.at))
        .join(OrderEvent, OrderEvent.order_id == OrderRow.id)
        .where(OrderEvent.to_state == State.LABELLED.value)
        .group_by(OrderRow.id, OrderRow.paid_at)
        .having(func.min(OrderEvent.at) >= start, func.min(OrderEvent.at) < end)).all()
    return [(at - paid).total_seconds() for paid, at in rows]


def handling_variance(session: Session, now: datetime, baseline_days: int = 7) -> dict[str, Any]:
    """Mean handling time (paid -> label) in the last day against the days before it.

    ``change`` is (current - baseline) / baseline: ops re-examine the process above 20%.
    Without a baseline (a young fleet), the day's own spread (coefficient of variation)
    still shows how uneven handling is.
    """
    current = handling_times(session, now - DAY, now)
    baseline = handling_times(session, now - DAY * (baseline_days + 1), now - DAY)
    cur = statistics.fmean(current) if current else None
    base = statistics.fmean(baseline) if baseline else None
    return {
        "current_mean_s": None if cur is None else round(cur, 3),
        "baseline_mean_s": None if base is None else round(base, 3),
        "change": None if cur is None or not base else round((cur - base) / base, 4),
        "current_cv": round(statistics.pstdev(current) / cur, 4) if cur else None,
        "orders": len(current),
        "baseline_orders": len(baseline),
    }


def delayed_status_share(session: Session, settings: Settings, start: datetime,
                         end: datetime) -> dict[str, Any]:
    """Orders received in the window whose status stood still longer than the status-lag
    threshold in an automated stage (between two events, or now if still waiting)."""
    threshold = timedelta(seconds=settings.status_lag_alert_s)
    processing = {s.value for s in PROCESSING}
    ids = select(OrderRow.id).where(OrderRow.received_at >= start, OrderRow.received_at < end)
    last: dict[int, tuple[str, datetime]] = {}
    delayed: set[int] = set()
    for order_id, to_state, at in session.execute(
            select(OrderEvent.order_id, OrderEvent.to_state, OrderEvent.at)
            .where(OrderEvent.order_id.in_(ids)).order_by(OrderEvent.order_id, OrderEvent.id)):
        before = last.get(order_id)
        if before is not None and before[0] in processing and at - before[1] > threshold:
            delayed.add(order_id)
        last[order_id] = (to_state, at)
    for order_id, (state, at) in last.items():
        if state in processing and end - at > threshold:
            delayed.add(order_id)
    total = session.execute(select(func.count()).select_from(ids.subquery())).scalar_one()
    return {"orders": total, "delayed": len(delayed),
            "share": None if total == 0 else round(len(delayed) / total, 4)}


def daily_sla(session: Session, settings: Settings, now: datetime,
              days: int) -> list[tuple[datetime, Sla]]:
    """SLA attainment of each of the last ``days`` 24-hour periods, oldest first."""
    return [(now - DAY * (i + 1), sla_attainment(session, settings, now - DAY * (i + 1),
                                                 now - DAY * i))
            for i in reversed(range(days))]
