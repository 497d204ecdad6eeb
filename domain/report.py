"""The ops report: orders by state, labels, reservations, rejects, stage latencies."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

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


def build_report(session: Session) -> dict[str, Any]:
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
    }
