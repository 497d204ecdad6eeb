"""Sharding: reserved orders grouped into pick waves by warehouse, carrier service,
destination zone and lane.

A wave closes when it reaches its size or ``wave_max_age_s`` seconds, whichever comes first;
a closed wave's labels are bought in one call to its carrier. With ``wave_daily_target`` set,
the size is the measured order rate over the target (a 12,000-order day at 200 waves a day
gives waves of 60); otherwise ``wave_size``. An order is claimed in ``reserved`` and leaves it
in the same transaction, so a re-run never puts it in a second wave. A closed wave's label
message goes to its lane's queue (``domain.pipeline.label_waves``): custom-made waves never
wait behind standard ones, nor standard behind them.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from datetime import timedelta

from celery import Task
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from config.settings import Settings, get_settings
from domain.clock import utcnow
from domain.db import UnitOfWork, any_of, unit_of_work
from domain.lifecycle import Move, State, apply_transitions, claim
from domain.models import OrderRow, Warehouse, Wave, WaveStatus
from domain.pipeline import ASSIGN_WAVES, label_waves
from domain.routing import carrier_for, lane_for
from domain.zones import zone_of
from tasks.base import parse_ids, retry_on_transient, stage_task

log = logging.getLogger(__name__)


WaveKey = tuple[str, str, str, str, str]  # warehouse, carrier, service, zone, lane


def wave_target_size(uow: UnitOfWork, settings: Settings) -> int:
    """The size waves close at: orders per day (measured over the last window) over the
    daily wave target, within [wave_size_min, wave_size]; ``wave_size`` without a target."""
    if settings.wave_daily_target is None:
        return settings.wave_size
    window = settings.wave_rate_window_s
    recent = uow.session.execute(
        select(func.count()).select_from(OrderRow)
        .where(OrderRow.received_at >= utcnow() - timedelta(seconds=window))).scalar_one()
    per_day = recent * 86_400.0 / window
    size = math.ceil(per_day / settings.wave_daily_target)
    return max(settings.wave_size_min, min(settings.wave_size, size))


def _open_wave(uow: UnitOfWork, key: WaveKey, target: int) -> Wave:
    """The open wave for the key, locked; created (closing at ``target``) if there is none."""
    session = uow.session
    warehouse, carrier, service, zone, lane = key
    query = (
        select(Wave)
        .where(Wave.warehouse == warehouse, Wave.carrier == carrier, Wave.service == service,
               Wave.zone == zone, Wave.lane == lane, Wave.status == WaveStatus.OPEN)
        .with_for_update()
    )
    wave = session.execute(query).scalar_one_or_none()
    if wave is not None:
        return wave
    try:
        with session.begin_nested():
            session.execute(insert(Wave).values(
                warehouse=warehouse, carrier=carrier, service=service, zone=zone, lane=lane,
                status=WaveStatus.OPEN, size=0, target_size=target, opened_at=utcnow()))
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
    groups: dict[WaveKey, list[OrderRow]] = defaultdict(list)
    for o in orders:
        assert o.warehouse is not None, "a reserved order has a warehouse"
        carrier, service = carrier_for(countries[o.warehouse], o.ship_country)
        lane = o.lane or lane_for(o.payload, settings.lanes_of(o.store))
        zone = zone_of(countries[o.warehouse], o.ship_country)
        groups[(o.warehouse, carrier, service, zone, lane)].append(o)

    target = wave_target_size(uow, settings)
    closed: list[int] = []
    placed: dict[tuple[int, str, str], list[int]] = defaultdict(list)
    moves: list[Move] = []
    now = utcnow()
    for key in sorted(groups):  # sorted: waves are locked in one order by every worker
        _, carrier, service, zone, lane = key
        pending = groups[key]
        while pending:
            wave = _open_wave(uow, key, target)
            size = wave.target_size or settings.wave_size
            take, pending = pending[:max(size - wave.size, 1)], pending[max(size - wave.size, 1):]
            wave.size += len(take)
            placed[(wave.id, carrier, lane)].extend(o.id for o in take)
            for o in take:
                moves.append(Move(o.id, State.RESERVED, State.IN_WAVE,
                                  {"wave_id": wave.id, "lane": lane, "carrier": carrier,
                                   "service": service, "zone": zone}))
            if wave.size >= size:
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
