"""Sharding: reserved orders grouped into pick waves by warehouse, carrier and lane.

A wave closes when it reaches ``wave_size`` orders or ``wave_max_age_s`` seconds, whichever
comes first; a closed wave's labels are bought in one call to its carrier. Lanes keep custom-made
and VIP orders from queueing behind standard ones.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta

from celery import Task
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from config.settings import Settings, get_settings
from domain.clock import utcnow
from domain.db import UnitOfWork, any_of, unit_of_work
from domain.lifecycle import Move, State, apply_transitions, claim
from domain.models import OrderRow, Warehouse, Wave, WaveStatus
from domain.pipeline import ASSIGN_WAVES, label_waves
from domain.routing import carrier_for, lane_for
from tasks.base import parse_ids, retry_on_transient, stage_task

log = logging.getLogger(__name__)


def _open_wave(uow: UnitOfWork, key: tuple[str, str, str]) -> Wave:
    """The open wave for (warehouse, carrier, lane), locked; created if there is none."""
    session = uow.session
    warehouse, carrier, lane = key
    query = (
        select(Wave)
        .where(Wave.warehouse == warehouse, Wave.carrier == carrier, Wave.lane == lane,
               Wave.status == WaveStatus.OPEN)
        .with_for_update()
    )
    wave = session.execute(query).scalar_one_or_none()
    if wave is not None:
        return wave
    try:
        with session.begin_nested():
            session.execute(insert(Wave).values(
                warehouse=warehouse, carrier=carrier, lane=lane, status=WaveStatus.OPEN, size=0,
                opened_at=utcnow()))
    except IntegrityError:
        pass  # another worker opened it first: the unique partial index said so
    return session.execute(query.execution_options(populate_existing=True)).scalar_one()


def assign_orders(uow: UnitOfWork, order_ids: list[int], settings: Settings) -> list[int]:
    """Put reserved orders into waves; return the ids of waves closed by size."""
    session = uow.session
    orders = claim(session, order_ids, [State.RESERVED])
    if not orders:
        return []
    countries = dict(session.execute(select(Warehouse.code, Warehouse.country)).all())
    groups: dict[tuple[str, str, str], list[OrderRow]] = defaultdict(list)
    services: dict[int, str] = {}
    for o in orders:
        assert o.warehouse is not None, "a reserved order has a warehouse"
        carrier, service = carrier_for(countries[o.warehouse], o.ship_country)
        services[o.id] = service
        groups[(o.warehouse, carrier, lane_for(o.payload))].append(o)

    closed: list[int] = []
    placed: dict[tuple[int, str, str], list[int]] = defaultdict(list)
    moves: list[Move] = []
    now = utcnow()
    for key in sorted(groups):  # sorted: waves are locked in one order by every worker
        pending = groups[key]
        while pending:
            wave = _open_wave(uow, key)
            room = settings.wave_size - wave.size
            take, pending = pending[:room], pending[room:]
            wave.size += len(take)
            placed[(wave.id, key[1], key[2])].extend(o.id for o in take)
            for o in take:
                moves.append(Move(o.id, State.RESERVED, State.IN_WAVE,
                                  {"wave_id": wave.id, "lane": key[2], "carrier": key[1],
                                   "service": services[o.id]}))
            if wave.size >= settings.wave_size:
                wave.status, wave.closed_at, wave.close_reason = WaveStatus.CLOSED, now, "size"
                closed.append(wave.id)
            session.flush()
    # One UPDATE per wave, not one per order.
    for (wave_id, carrier, lane), ids in placed.items():
        session.execute(update(OrderRow).where(any_of(session, OrderRow.id, ids))
                        .values(wave_id=wave_id, carrier=carrier, lane=lane)
                        .execution_options(synchronize_session=False))
    apply_transitions(session, moves, stage="sharding")
    return closed


def close_waves_older_than(uow: UnitOfWork, max_age_s: float) -> list[int]:
    """Close open waves older than ``max_age_s``; return their ids."""
    now = utcnow()
    return list(uow.session.execute(
        update(Wave)
        .where(Wave.status == WaveStatus.OPEN, Wave.opened_at <= now - timedelta(seconds=max_age_s))
        .values(status=WaveStatus.CLOSED, closed_at=now, close_reason="age")
        .returning(Wave.id)
    ).scalars())


@stage_task(ASSIGN_WAVES)
def assign(task: Task, order_ids: list[int]) -> None:
    settings = get_settings()
    with retry_on_transient(task), unit_of_work(settings) as uow:
        label_waves(uow, assign_orders(uow, parse_ids(order_ids), settings))


@stage_task("orderfleet.sharding.close_aged_waves")
def close_aged_waves(task: Task) -> None:
    settings = get_settings()
    with retry_on_transient(task), unit_of_work(settings) as uow:
        label_waves(uow, close_waves_older_than(uow, settings.wave_max_age_s))
