"""Fraud check: the triple check (address, payment behaviour, customer profile) per micro-batch.

One task carries up to ``batch_size`` order ids. For the whole batch the stage runs a fixed
number of round trips, whatever its size: one claim, one query for the customers' histories (two
statements), one for the warehouse countries, one Redis call for every velocity counter, one
bulk UPDATE of the verdicts, the transitions, and one upsert of the approved orders into their
customers' histories. The rules themselves are plain functions in ``domain.fraud``.

Verdict: a score 0-100 with the reasons that produced it, stored on the order; the configured
thresholds send it on (approve), to the review desk (``on_hold``) or to ``rejected``. Orders over
the review line (USD equivalent, default $500) always go to the desk. Approved orders continue
at reservation; the desk (``domain.review``) resumes held ones there.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from celery import Task
from pydantic import ValidationError
from sqlalchemy import select

from config.settings import Settings, get_settings
from domain.db import UnitOfWork, unit_of_work
from domain.fraud.address import address_key, building_key
from domain.fraud.engine import Context, Verdict, assess
from domain.fraud.profile import (
    Accepted,
    card_key,
    ip_country,
    load_histories,
    record_accepted,
)
from domain.fraud.velocity import VelocityInput, VelocityStore, velocity_redis
from domain.intake_exceptions import raise_backlog_alerts
from domain.lifecycle import Move, State, Sweep, apply_transitions
from domain.models import OrderRow, Warehouse
from domain.pipeline import FRAUD_CHECK, advance, take
from domain.review import raise_overdue_alerts
from domain.routing import delivering_carrier
from domain.schemas import Order
from tasks.base import batch_sweep, parse_ids, retry_on_transient, stage_task

log = logging.getLogger(__name__)

__all__ = ["Verdict", "check", "check_orders", "review_overdue", "score_order", "velocity_store"]


def score_order(order: Order, total_usd: Decimal, settings: Settings,
                ctx: Context | None = None) -> Verdict:
    """The verdict for one order on its own (no velocity or history unless given)."""
    return assess(order, total_usd, settings, ctx)


def velocity_store(settings: Settings) -> VelocityStore:
    """The shared velocity counters (one Redis client per process)."""
    return VelocityStore(velocity_redis(settings.fraud_redis), settings.fraud_velocity_namespace)


def _verdict_columns(score: int | None, reasons: list[str], hold: str | None) -> dict[str, Any]:
    return {"fraud_score": score, "fraud_reasons": reasons, "hold_reason": hold}


@dataclass
class _Item:
    row: OrderRow
    order: Order
    addr: str
    card: str


def check_orders(uow: UnitOfWork, order_ids: list[int], settings: Settings,
                 velocity: VelocityStore | None = None, sweep: Sweep | None = None
                 ) -> list[int]:
    """Check the received orders among ``order_ids`` (and, with ``sweep``, others waiting);
    store verdicts; return the approved ids."""
    session = uow.session
    rows = take(uow, State.RECEIVED, order_ids, sweep)
    if not rows:
        return []
    velocity = velocity or velocity_store(settings)
    items: list[_Item] = []
    moves: list[Move] = []
    for row in rows:
        try:
            order = Order.model_validate(row.payload)
        except ValidationError as exc:
            # Stored at intake, so this is schema drift: hold it for a person, naming the field.
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(order)"
            hold = f"stored order no longer valid: {where}: {first['msg']}"[:1000]
            moves.append(Move(row.id, State.RECEIVED, State.ON_HOLD, {"hold_reason": hold},
                              _verdict_columns(None, [], hold)))
            log.warning("order %s: stored payload invalid at %s", row.id, where)
            continue
        ship = order.shipping_address
        items.append(_Item(row, order, address_key(ship),
                           card_key(order.payment.card_bin, order.payment.card_last4)))

    histories = load_histories(session, {(i.row.store, i.row.customer_id) for i in items})
    warehouse_countries = set(session.execute(select(Warehouse.country).distinct()).scalars())
    counts: dict[int, dict[str, int]] = {}
    by_store: dict[str, list[_Item]] = defaultdict(list)
    for i in items:
        by_store[i.row.store].append(i)
    for store, group in by_store.items():
        observed = velocity.observe(store, [
            VelocityInput.build(
                order_id=i.row.id, ts=i.order.paid_at.timestamp(),
                card_bin=i.order.payment.card_bin, card_last4=i.order.payment.card_last4,
                email=i.order.customer.email, ip=i.order.client.browser_ip,
                building=building_key(i.order.shipping_address),
                customer_id=i.row.customer_id,
                new_customer=(i.order.customer.order_count <= 1
                              and (i.row.store, i.row.customer_id) not in histories))
            for i in group])
        counts.update((i.row.id, c) for i, c in zip(group, observed, strict=True))

    accepted: list[tuple[int, Accepted]] = []
    tally: dict[str, int] = defaultdict(int)
    for i in items:
        row, order = i.row, i.order
        ctx = Context(velocity=counts[row.id], history=histories.get((row.store, row.customer_id)),
                      carrier=delivering_carrier(order.shipping_address.country,
                                                 warehouse_countries),
                      addr_key=i.addr, card=i.card)
        verdict = assess(order, row.total_usd, settings, ctx)
        reasons = list(verdict.reasons)
        detail: dict[str, object] = {"score": verdict.score, "reasons": reasons}
        if verdict.hold_reason:
            detail["hold_reason"] = verdict.hold_reason
        moves.append(Move(row.id, State.RECEIVED, verdict.decision, detail,
                          _verdict_columns(verdict.score, reasons, verdict.hold_reason)))
        tally[verdict.decision.value] += 1
        if verdict.decision == State.FRAUD_CHECKED:
            accepted.append((row.id, Accepted(row.store, row.customer_id,
                                              Decimal(row.total_usd), order.paid_at, i.addr,
                                              i.card, ip_country(order.client.browser_ip) or "")))
    # The verdict is written by the UPDATE that moves the order (one row version, not two).
    applied = apply_transitions(session, moves, stage="fraud")
    approved = {m.order_id for m in applied if m.dst == State.FRAUD_CHECKED}
    record_accepted(session, [a for order_id, a in accepted if order_id in approved])
    log.info("fraud check of %d orders: %s", len(rows), dict(tally))
    return sorted(approved)


@stage_task(FRAUD_CHECK)
def check(task: Task, order_ids: list[int]) -> None:
    settings = get_settings()
    # The database or the velocity Redis may blink: the check is idempotent, run it again.
    with retry_on_transient(task), unit_of_work(settings) as uow:
        approved = check_orders(uow, parse_ids(order_ids), settings,
                                sweep=batch_sweep(task, settings))
        advance(uow, State.FRAUD_CHECKED, approved)


@stage_task("orderfleet.fraud.review_overdue")
def review_overdue(task: Task) -> None:
    """Beat: raise an alert for every order waiting at the review desk past the deadline, and
    for deliveries held at the door that pile up or wait (the exceptions desk)."""
    settings = get_settings()
    with retry_on_transient(task), unit_of_work(settings) as uow:
        raise_overdue_alerts(uow, settings)
        raise_backlog_alerts(uow.session, settings)
