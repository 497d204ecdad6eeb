"""Re-drive: the database, not the message, guarantees that every order progresses.

A message can be lost (a chain's next task, a broker restart); this beat sweep finds orders
that sat in an automated stage past the deadline and sends their stage task again. Every
stage is idempotent, so a re-drive of an order that was merely slow costs nothing.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select

from config.settings import Settings, get_settings
from domain.clock import utcnow
from domain.db import UnitOfWork, unit_of_work
from domain.lifecycle import State
from domain.models import Batch, OrderRow
from tasks.base import chunks, stage_task

log = logging.getLogger(__name__)

MAX_PER_SWEEP = 20_000


def stuck_orders(uow: UnitOfWork, settings: Settings) -> dict[State, list[int]]:
    cutoff = utcnow() - timedelta(seconds=settings.stage_deadline_s)
    rows = uow.session.execute(
        select(OrderRow.state, OrderRow.id)
        .where(OrderRow.state.in_([State.RECEIVED.value, State.FRAUD_CHECKED.value,
                                   State.RESERVED.value]),
               OrderRow.updated_at < cutoff)
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
        select(Batch.id).where(Batch.status == "closed", Batch.closed_at < cutoff)
        .order_by(Batch.id).limit(MAX_PER_SWEEP)
    ).scalars())


def queue_depths(names: list[str]) -> dict[str, int]:
    """Messages waiting in each queue, on Redis or RabbitMQ."""
    from workers.app import app

    with app.connection_for_read() as conn:
        channel = conn.default_channel
        if conn.transport.driver_type == "redis":
            # An empty queue is a missing key on Redis, which a passive declare reports as 404.
            return {name: int(channel.client.llen(name)) for name in names}
        return {name: channel.queue_declare(name, passive=True).message_count for name in names}


def redrive_stuck(settings: Settings) -> dict[str, int]:
    from tasks.fraud import check
    from tasks.inventory import reserve
    from tasks.labels import buy
    from tasks.sharding import assign

    stage_task_for = {State.RECEIVED: check, State.FRAUD_CHECKED: reserve,
                      State.RESERVED: assign}
    queue_of = {State.RECEIVED: "fraud", State.FRAUD_CHECKED: "inventory",
                State.RESERVED: "sharding"}
    # During a surge orders wait in a deep queue for longer than the deadline: they are not
    # lost, and re-sending them would only deepen the queue. Re-drive a stage once it drained.
    depths = queue_depths([*queue_of.values(), "labels"])
    counts: dict[str, int] = {}
    with unit_of_work(settings) as uow:
        for state, ids in stuck_orders(uow, settings).items():
            if depths[queue_of[state]]:
                continue
            counts[state.value] = len(ids)
            for part in chunks(ids, settings.batch_size):
                uow.after_commit(lambda t=stage_task_for[state], p=part: t.delay(p))
        waves = [] if depths["labels"] else stuck_waves(uow, settings)
        counts["waves"] = len(waves)
        for wave_id in waves:
            uow.after_commit(lambda w=wave_id: buy.delay(w))
    if any(counts.values()):
        log.warning("re-drove stuck work: %s", counts)
    return counts


@stage_task("orderfleet.sweeps.redrive")
def redrive(self) -> None:  # type: ignore[no-untyped-def]
    redrive_stuck(get_settings())
