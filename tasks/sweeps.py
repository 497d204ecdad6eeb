"""Re-drive: the database, not the message, guarantees that every order progresses.

A message can be lost (a chain's next task, a broker restart); this beat sweep finds orders
that sat in an automated stage past the deadline and sends their stage task again. Every
stage is idempotent, so a re-drive of an order that was merely slow costs nothing.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery, Task
from sqlalchemy import select

from config.celery import TASK_ROUTES
from config.settings import Settings, get_settings
from domain.clock import utcnow
from domain.db import UnitOfWork, unit_of_work
from domain.lifecycle import State, values
from domain.models import OrderRow, Wave, WaveStatus
from domain.pipeline import (
    BUY_LABELS,
    LANE_LABEL_QUEUES,
    STAGE_FOR_STATE,
    advance,
    label_waves,
)
from tasks.base import retry_on_transient, stage_task

log = logging.getLogger(__name__)

MAX_PER_SWEEP = 20_000


def stuck_orders(uow: UnitOfWork, settings: Settings) -> dict[State, list[int]]:
    cutoff = utcnow() - timedelta(seconds=settings.stage_deadline_s)
    rows = uow.session.execute(
        select(OrderRow.state, OrderRow.id)
        .where(OrderRow.state.in_(values(STAGE_FOR_STATE)), OrderRow.updated_at < cutoff)
        .order_by(OrderRow.id).limit(MAX_PER_SWEEP)
    ).all()
    out: dict[State, list[int]] = {}
    for state, order_id in rows:
        out.setdefault(State(state), []).append(order_id)
    return out


def stuck_waves(uow: UnitOfWork, settings: Settings) -> list[int]:
    """Closed waves whose label call has not completed past the deadline."""
    cutoff = utcnow() - timedelta(seconds=settings.stage_deadline_s)
    return list(uow.session.execute(
        select(Wave.id).where(Wave.status == WaveStatus.CLOSED, Wave.closed_at < cutoff)
        .order_by(Wave.id).limit(MAX_PER_SWEEP)
    ).scalars())


def queue_depths(app: Celery, names: list[str]) -> dict[str, int]:
    """Messages waiting in each queue, on Redis or RabbitMQ."""
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        if conn.transport.driver_type == "redis":
            # An empty queue is a missing key on Redis, which a passive declare reports as 404.
            return {name: int(channel.client.llen(name)) for name in names}
        return {name: channel.queue_declare(name, passive=True).message_count for name in names}


def redrive_stuck(settings: Settings, app: Celery) -> dict[str, int]:
    queue_of = {state: TASK_ROUTES[task] for state, task in STAGE_FOR_STATE.items()}
    labels_queues = {TASK_ROUTES[BUY_LABELS], *LANE_LABEL_QUEUES.values()}
    # During a surge orders wait in a deep queue for longer than the deadline: they are not
    # lost, and re-sending them would only deepen the queue. Re-drive a stage once it drained.
    depths = queue_depths(app, sorted({*queue_of.values(), *labels_queues}))
    counts: dict[str, int] = {}
    with unit_of_work(settings) as uow:
        for state, ids in stuck_orders(uow, settings).items():
            if depths[queue_of[state]]:
                continue
            counts[state.value] = len(ids)
            advance(uow, state, ids)
        waves = [] if any(depths[q] for q in labels_queues) else stuck_waves(uow, settings)
        counts["waves"] = len(waves)
        label_waves(uow, waves)
    if any(counts.values()):
        log.warning("re-drove stuck work: %s", counts)
    return counts


@stage_task("orderfleet.sweeps.redrive")
def redrive(task: Task) -> None:
    with retry_on_transient(task):
        redrive_stuck(get_settings(), task.app)
