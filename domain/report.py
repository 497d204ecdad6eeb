"""The ops report: orders by state, labels, reservations, rejects, stage latencies, and the
figures ops review (cancellation rate, exception heatmap, handling-time variance against the
baseline, delayed status updates, SLA attainment, cost as a share of GMV)."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.settings import Settings, get_settings
from domain.clock import utcnow
from domain.intake_exceptions import exception_counts
from domain.lifecycle import State
from domain.models import OrderEvent, OrderRow, RejectedOrder, Reservation, Shipment, UTCDateTime


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def stage_latencies(session: Session) -> dict[str, dict[str, float | None]]:
    """Seconds an order spent before each stage's transition (previous event -> this one)."""
    prev = func.lag(OrderEvent.at, type_=UTCDateTime()).over(
        partition_by=OrderEvent.order_id, order_by=OrderEvent.id)
    sub = select(OrderEvent.stage, OrderEvent.at, prev.label("prev_at")).subquery()
    durations: dict[str, list[float]] = defaultdict(list)
    for stage, at, prev_at in session.execute(select(sub.c.stage, sub.c.at, sub.c.prev_at)):
        if prev_at is not None:
            durations[stage].append((at - prev_at).total_seconds())
    return {
        stage: {"count": len(v), "p50_s": _round(percentile(v, 50)),
                "p95_s": _round(percentile(v, 95))}
        for stage, v in sorted(durations.items())
    }


def paid_to_label(session: Session) -> list[float]:
    rows = session.execute(
        select(OrderRow.paid_at, OrderEvent.at)
        .join(OrderEvent, OrderEvent.order_id == OrderRow.id)
        .where(OrderEvent.to_state == State.LABELLED.value)
    ).all()
    return [(at - paid).total_seconds() for paid, at in rows]


def ops_figures(session: Session, settings: Settings, now: datetime) -> dict[str, Any]:
    """What ops review daily and weekly; windows end at ``now``."""
    from domain.observability import (
        DAY,
        cost_share,
        delayed_status_share,
        exception_heatmap,
        exception_rates,
        handling_variance,
        sla_attainment,
    )

    total, cancelled = session.execute(select(
        func.count(), func.count().filter(OrderRow.state == State.CANCELLED.value))).one()
    sla_day = sla_attainment(session, settings, now - DAY, now)
    sla_week = sla_attainment(session, settings, now - 7 * DAY, now)
    cost = cost_share(session, settings, now - 7 * DAY, now)
    exc = exception_rates(session, now)
    return {
        "cancellation_rate": None if not total else round(cancelled / total, 4),
        "cancelled": cancelled,
        "sla_attainment_24h": _round(sla_day.ratio),
        "sla_attainment_7d": _round(sla_week.ratio),
        "sla_orders_7d": {"on_time": sla_week.on_time, "late": sla_week.late},
        "handling_time": handling_variance(session, now),
        "delayed_status_updates_7d": delayed_status_share(session, settings, now - 7 * DAY, now),
        "cost_share_of_gmv_7d": None if cost.share is None else round(cost.share, 4),
        "cost_usd_7d": str(cost.cost_usd.quantize(Decimal("0.01"))),
        "gmv_usd_7d": str(cost.gmv_usd.quantize(Decimal("0.01"))),
        "exceptions_per_order_24h": _round(exc.rate),
        "exceptions_per_order_previous_24h": _round(exc.previous_rate),
        "exception_heatmap_7d": exception_heatmap(session, now - 7 * DAY, now),
    }


def build_report(session: Session, settings: Settings | None = None,
                 now: datetime | None = None) -> dict[str, Any]:
    by_state = {s.value: 0 for s in State}
    for state, n in session.execute(select(OrderRow.state, func.count()).group_by(OrderRow.state)):
        by_state[state] = n
    reservations = dict(session.execute(
        select(Reservation.status, func.count()).group_by(Reservation.status)).all())
    labels = session.execute(
        select(func.count()).select_from(Shipment).where(Shipment.label_id.is_not(None))
    ).scalar_one()
    reasons: Counter[str] = Counter()
    rejected_total = 0
    for (errors,) in session.execute(select(RejectedOrder.errors)):
        rejected_total += 1
        for e in errors or []:
            reasons[f"{e.get('field')}: {e.get('message')}"] += 1
    fraud_rejected = by_state[State.REJECTED.value]
    p2l = paid_to_label(session)
    return {
        "orders": sum(by_state.values()),
        "by_state": by_state,
        "labels": labels,
        "reservations": {k: reservations.get(k, 0)
                         for k in ("active", "consumed", "released", "restocked")},
        "rejected_at_intake": rejected_total,
        "intake_exceptions": exception_counts(session),
        "rejected_by_fraud": fraud_rejected,
        "rejected_reasons": dict(reasons.most_common(10)),
        "stage_latency_s": stage_latencies(session),
        "p50_paid_to_label_s": _round(percentile(p2l, 50)),
        "p95_paid_to_label_s": _round(percentile(p2l, 95)),
        "ops": ops_figures(session, settings or get_settings(), now or utcnow()),
    }
