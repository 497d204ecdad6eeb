"""Sharding: reserved orders grouped into pick waves by warehouse, carrier service,
destination zone and lane.

A wave closes when it reaches its size or at its ``close_by`` time, whichever comes first; a
closed wave's labels are bought in one call to its carrier. Without ``wave_daily_target`` the
size is ``wave_size`` and ``close_by`` is ``wave_max_age_s`` after the wave opened. With a
target T, both follow the orders received over the last ``wave_rate_window_s`` (W), counted
per wave key k (warehouse, carrier, service, zone, lane) as a rate r_k (orders a second; orders
not in a wave yet are spread over the keys in the measured proportions, R = sum of r_k):

* age limit A_k(S) = clamp(S / r_k, wave_max_age_s, cap_k): the key's expected time to fill
  a wave of S orders, where cap_k is ``wave_priority_max_age_s`` for the express and VIP lanes
  (they wait that long at most) and the lane's promised dispatch (its promise or its SLA, the
  shorter) less ``wave_promise_margin_s`` for the others;
* expected waves a day N(S) = sum over k of 86,400 x r_k / min(S, 1 + r_k x A_k(S)): a wave
  opens on an order and holds S, or what arrives within its age limit if that is fewer;
* size S = the smallest size in [wave_size_min, wave_size] with N(S) <= T. With no key capped
  this is ceil(86,400 x R / T) (a 12,000-order day at 200 waves: 60); the waves capped keys
  add beyond their share make the other keys' waves larger, up to ``wave_size``;
* close_by = opened_at + A_k(S), brought forward by each order that joins to its own promised
  dispatch less the margin: paid_at + min(lane promise, lane SLA) - wave_promise_margin_s. A
  wave whose close_by has passed when an order joins closes at once (reason ``promise``).

The beat's sweep (``close_due_waves``) closes waves whose close_by has come. Closing on
``wave_max_age_s`` alone made one wave per key every minute: ~30 keys at a 12,000-order day
gave ~7,600 waves instead of 200. A simulated day (``benchmarks/waves.py``) now gives ~225 with
express and VIP waves held at most 2 hours; holding those only 60 s makes ~700 of them alone.

An order is claimed in ``reserved`` and leaves it in the same transaction, so a re-run never
puts it in a second wave. Each sharding message also closes the waves that came due since the
beat's last sweep. A closed wave's label message goes to the standard label queue (or its fast
lane), a flooded lane's to that lane's own (``domain.pipeline.label_waves``): a flood of
custom-made waves never delays standard ones.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import Task
from sqlalchemy import and_, func, or_, select, text, update

from config.settings import LaneRules, Settings, get_settings
from domain.clock import utcnow
from domain.db import UnitOfWork, any_of, any_row_of, dialect_insert, unit_of_work
from domain.lifecycle import Move, State, Sweep, apply_transitions, arrivals_since
from domain.models import OPEN_WAVE, OrderRow, Warehouse, Wave, WaveStatus
from domain.pipeline import ASSIGN_WAVES, label_waves, take
from domain.routing import (
    PRIORITY_LANES,
    STANDARD,
    carrier_for,
    lane_for,
    promise_hours,
)
from domain.zones import zone_of
from tasks.base import batch_sweep, parse_ids, retry_on_transient, stage_task

log = logging.getLogger(__name__)


WaveKey = tuple[str, str, str, str, str]  # warehouse, carrier, service, zone, lane
DAY_S = 86_400.0


@dataclass(frozen=True)
class WavePlan:
    """What a wave opened now closes at: the size, and each key's measured order rate."""

    size: int
    per_s: dict[WaveKey, float] = field(default_factory=dict)  # orders a second, per key


def _orders_in_window(uow: UnitOfWork, settings: Settings) -> int:
    return arrivals_since(uow.session,
                          utcnow() - timedelta(seconds=settings.wave_rate_window_s))


def _dispatch_hours(lanes: LaneRules, lane: str, settings: Settings) -> float:
    """Hours from payment to promised dispatch in ``lane``: its promise or its SLA, the
    shorter."""
    sla = settings.sla_dispatch_hours
    return min(float(promise_hours(lanes, lane)), sla.get(lane, sla.get(STANDARD, math.inf)))


def age_cap_s(key: WaveKey, settings: Settings) -> float:
    """The longest a wave of ``key`` may wait for company: ``wave_priority_max_age_s`` for the
    express and VIP lanes, else the lane's promised dispatch less the margin (each order's own
    deadline brings its wave's close_by forward too); never below ``wave_max_age_s``."""
    lane = key[4]
    if lane in PRIORITY_LANES:
        cap = settings.wave_priority_max_age_s
    else:
        hours = _dispatch_hours(settings.lane_defaults, lane, settings)
        cap = hours * 3600.0 - settings.wave_promise_margin_s
    return max(settings.wave_max_age_s, cap)


def age_limit_s(plan: WavePlan, key: WaveKey, settings: Settings) -> float:
    """How long a wave of ``key`` opened now stays open if not full: the key's expected time
    to fill the size at its measured rate, within [wave_max_age_s, its cap]."""
    if settings.wave_daily_target is None:
        return settings.wave_max_age_s
    cap = age_cap_s(key, settings)
    rate = plan.per_s.get(key, 0.0)
    fill = plan.size / rate if rate > 0 else cap
    return min(max(settings.wave_max_age_s, fill), cap)


def waves_per_day(size: int, per_s: dict[WaveKey, float], settings: Settings) -> float:
    """Waves a day the keys' rates make at this size: a wave opens on an order and holds the
    size or what arrives within its age limit (1 + rate x limit), whichever is less."""
    plan = WavePlan(size, per_s)
    return sum(DAY_S * rate / min(size, 1.0 + rate * age_limit_s(plan, key, settings))
               for key, rate in per_s.items() if rate > 0)


def _size_for(per_s: dict[WaveKey, float], settings: Settings) -> int:
    """The smallest size within [wave_size_min, wave_size] whose expected waves a day do not
    exceed the target (``wave_size`` when even that one does): with no key capped this is
    ceil(orders a day / target); keys capped by their promise make the others' waves larger."""
    assert settings.wave_daily_target is not None
    low, high = settings.wave_size_min, settings.wave_size
    while low < high:  # waves_per_day never grows with the size
        mid = (low + high) // 2
        if waves_per_day(mid, per_s, settings) <= settings.wave_daily_target:
            high = mid
        else:
            low = mid + 1
    return low


def wave_plan(uow: UnitOfWork, settings: Settings,
              placing: dict[WaveKey, int] | None = None) -> WavePlan:
    """The size and each key's rate, from the orders received in the last window; ``placing``:
    orders about to be placed, by key (they count for their key even before they are in a
    wave). Every order received in the window counts: orders not yet in a wave are spread over
    the keys in the measured proportions."""
    if settings.wave_daily_target is None:
        return WavePlan(settings.wave_size)
    window = settings.wave_rate_window_s
    cutoff = utcnow() - timedelta(seconds=window)
    key = (Wave.warehouse, Wave.carrier, Wave.service, Wave.zone, Wave.lane)
    counts: dict[WaveKey, int] = defaultdict(int)
    for warehouse, carrier, service, zone, lane, n in uow.session.execute(
            select(*key, func.count()).select_from(OrderRow)
            .join(Wave, Wave.id == OrderRow.wave_id)
            .where(OrderRow.received_at >= cutoff).group_by(*key)):
        counts[(warehouse, carrier, service, zone, lane)] += int(n)
    for wave_key, n in (placing or {}).items():
        counts[wave_key] += n
    seen = sum(counts.values())
    total = max(_orders_in_window(uow, settings), seen)
    per_s = {k: n * total / seen / window for k, n in counts.items()} if seen else {}
    if not per_s:
        return WavePlan(max(settings.wave_size_min, min(
            settings.wave_size, math.ceil(total * DAY_S / window / settings.wave_daily_target))))
    return WavePlan(_size_for(per_s, settings), per_s)


def wave_target_size(uow: UnitOfWork, settings: Settings) -> int:
    """The size waves close at now (``wave_size`` without a daily target)."""
    return wave_plan(uow, settings).size


def dispatch_deadline(order: OrderRow, lane: str, settings: Settings) -> datetime:
    """When the order's wave must have closed: its promised dispatch (the lane's promise or
    its SLA, the shorter) less the time picking and labels need."""
    hours = _dispatch_hours(settings.lanes_of(order.store), lane, settings)
    return order.paid_at + timedelta(hours=hours, seconds=-settings.wave_promise_margin_s)


def _open_waves(uow: UnitOfWork, keys: list[WaveKey], target: int,
                age_of: Callable[[WaveKey], float]) -> dict[WaveKey, Wave]:
    """The open wave of each key, locked: one SELECT for all, and the missing ones created in
    one INSERT (ON CONFLICT DO NOTHING on the open-wave index: another worker may open one
    first) and read back locked. Rows are locked in id order, by every worker the same."""
    session = uow.session
    columns = (Wave.warehouse, Wave.carrier, Wave.service, Wave.zone, Wave.lane)

    def locked(wanted: list[WaveKey]) -> dict[WaveKey, Wave]:
        return {(w.warehouse, w.carrier, w.service, w.zone, w.lane): w
                for w in session.execute(
                    select(Wave).where(any_row_of(session, columns, wanted),
                                       Wave.status == WaveStatus.OPEN)
                    .order_by(Wave.id).with_for_update()
                    .execution_options(populate_existing=True)).scalars()}

    found = locked(keys)
    missing = [k for k in keys if k not in found]
    if missing:
        now = utcnow()
        session.connection().execute(
            dialect_insert(session, Wave).on_conflict_do_nothing(
                index_elements=[c.key for c in columns], index_where=text("status = 'open'")),
            [{"warehouse": k[0], "carrier": k[1], "service": k[2], "zone": k[3], "lane": k[4],
              "status": WaveStatus.OPEN, "size": 0, "target_size": target, "opened_at": now,
              "close_by": now + timedelta(seconds=age_of(k))} for k in missing])
        found.update(locked(missing))
    return found


def assign_orders(uow: UnitOfWork, order_ids: list[int], settings: Settings,
                  sweep: Sweep | None = None) -> list[int]:
    """Put reserved orders (and, with ``sweep``, others waiting) into waves; return the ids of
    the waves that closed (on size, or on an order's promised dispatch)."""
    session = uow.session
    # Without the order JSON: intake sets the lane; only an order stored before lanes were
    # (lane NULL) has its JSON read, to work it out.
    orders = take(uow, State.RESERVED, order_ids, sweep, with_payload=False)
    if not orders:
        return []
    unlaned = [o.id for o in orders if o.lane is None]
    payloads: dict[int, dict[str, Any]] = {i: p for i, p in session.execute(
        select(OrderRow.id, OrderRow.payload).where(any_of(session, OrderRow.id, unlaned)))
    } if unlaned else {}
    countries = dict(session.execute(select(Warehouse.code, Warehouse.country)).all())
    groups: dict[WaveKey, list[OrderRow]] = defaultdict(list)
    for o in orders:
        assert o.warehouse is not None, "a reserved order has a warehouse"
        carrier, service = carrier_for(countries[o.warehouse], o.ship_country)
        lane = o.lane or lane_for(payloads[o.id], settings.lanes_of(o.store))
        zone = zone_of(countries[o.warehouse], o.ship_country)
        groups[(o.warehouse, carrier, service, zone, lane)].append(o)

    plan = wave_plan(uow, settings, {k: len(v) for k, v in groups.items()})
    closed: list[int] = []
    moves: list[Move] = []
    now = utcnow()
    keys = sorted(groups)

    def age_of(key: WaveKey) -> float:
        return age_limit_s(plan, key, settings)

    opened = _open_waves(uow, keys, plan.size, age_of)
    for key in keys:
        _, carrier, service, zone, lane = key
        pending = groups[key]
        while pending:
            wave = opened.pop(key, None)
            if wave is None:  # its wave closed on size in this batch: the next one
                session.flush()  # (the closed one leaves the open-wave index first)
                wave = _open_waves(uow, [key], plan.size, age_of)[key]
            size = wave.target_size or settings.wave_size
            room = max(size - wave.size, 1)
            joining, pending = pending[:room], pending[room:]
            wave.size += len(joining)
            # The wave, lane and carrier are written by the UPDATE that moves the orders: one
            # statement per wave (the values are the wave's), one row version per order.
            columns = {"wave_id": wave.id, "carrier": carrier, "lane": lane}
            for o in joining:
                moves.append(Move(o.id, State.RESERVED, State.IN_WAVE,
                                  {"wave_id": wave.id, "lane": lane, "carrier": carrier,
                                   "service": service, "zone": zone}, columns))
            if settings.wave_daily_target is not None:  # else it closes within max age
                due = min(dispatch_deadline(o, lane, settings) for o in joining)
                if wave.close_by is None or due < wave.close_by:
                    wave.close_by = due
            if wave.size >= size:
                wave.status, wave.closed_at, wave.close_reason = WaveStatus.CLOSED, now, "size"
                closed.append(wave.id)
            elif wave.close_by is not None and wave.close_by <= now:  # an order at its
                # promised dispatch less the margin: no more waiting
                wave.status, wave.closed_at, wave.close_reason = WaveStatus.CLOSED, now, "promise"
                closed.append(wave.id)
    session.flush()
    apply_transitions(session, moves, stage="sharding")
    return closed


def close_waves_older_than(uow: UnitOfWork, max_age_s: float) -> list[int]:
    """Close open waves older than ``max_age_s`` whatever their ``close_by``; return their
    ids (the end of a run, tests)."""
    now = utcnow()
    return list(uow.session.execute(
        update(Wave)
        .where(Wave.status == WaveStatus.OPEN, Wave.opened_at <= now - timedelta(seconds=max_age_s))
        .values(status=WaveStatus.CLOSED, closed_at=now, close_reason="age")
        .returning(Wave.id)
    ).scalars())


def close_due_waves(uow: UnitOfWork, settings: Settings, *, skip_locked: bool = False
                    ) -> list[int]:
    """Close open waves whose ``close_by`` has come (``wave_max_age_s`` after opening for a
    wave without one); return their ids. ``skip_locked``: leave a wave that another
    transaction holds (a sharding task filling it) to that one or the next sweep, so a stage
    that already holds wave locks never waits for more."""
    now = utcnow()
    due = or_(Wave.close_by <= now,
              and_(Wave.close_by.is_(None),
                   Wave.opened_at <= now - timedelta(seconds=settings.wave_max_age_s)))
    # The literal predicate lets PostgreSQL read the open waves through uq_waves_one_open.
    which: Any = and_(text(OPEN_WAVE), due)
    if skip_locked:
        which = Wave.id.in_(select(Wave.id).where(which)
                            .with_for_update(skip_locked=True).scalar_subquery())
    return list(uow.session.execute(
        update(Wave).where(which)
        .values(status=WaveStatus.CLOSED, closed_at=now, close_reason="age")
        .returning(Wave.id)
    ).scalars())


@stage_task(ASSIGN_WAVES)
def assign(task: Task, order_ids: list[int]) -> None:
    settings = get_settings()
    with retry_on_transient(task), unit_of_work(settings) as uow:
        closed = assign_orders(uow, parse_ids(order_ids), settings, batch_sweep(task, settings))
        # Waves come due between the beat's sweeps (a quarter of the age limit apart); under a
        # steady flow of orders the next sharding message closes them sooner.
        label_waves(uow, closed + close_due_waves(uow, settings, skip_locked=True))


@stage_task("orderfleet.sharding.close_aged_waves")
def close_aged_waves(task: Task) -> None:
    settings = get_settings()
    with retry_on_transient(task), unit_of_work(settings) as uow:
        label_waves(uow, close_due_waves(uow, settings))
