"""The surge control loop, run by beat every ``surge_monitor_interval_s`` on the control queue.

Each tick measures the fleet (domain.surge.measure), decides the breaker and the surge stage
(domain.surge.decide), publishes ``orderfleet:load``, and acts: stage 2 raises the running
workers' autoscale ceiling (and lowers it back when the surge is over), stage 3 queues
delay-compensation coupons, and a closed breaker replays parked non-core jobs in order, a
bounded number per tick and only while load stays below the close threshold.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from celery import Celery, Task
from sqlalchemy import func, select

from config.celery import CONTROL_QUEUE, CORE_QUEUES
from config.settings import Settings, get_settings
from domain.clock import utcnow
from domain.db import send_task, unit_of_work
from domain.lifecycle import PROCESSING, not_held_in_a_wave
from domain.models import OrderRow
from domain.pipeline import COMPENSATION_COUPON, NONCORE_TASKS
from domain.surge import (
    TICK_LOCK_KEY,
    Decision,
    announced_slots,
    client,
    decide,
    measure,
    publish,
    read_state,
    recover_replaying,
    replay,
    slots_needed,
)
from tasks.base import stage_task

log = logging.getLogger("orderfleet.surge")
SLOTS_KEY = "orderfleet:surge:slots"  # worker pool slots on core queues, cached briefly
COMPENSATED_KEY = "orderfleet:surge:compensated"  # orders already sent a compensation coupon
SLOTS_CACHE_S = 10


def fleet_slots(app: Celery, r: redis.Redis) -> tuple[int, bool]:
    """Pool processes (the autoscale maximum where set) of workers consuming a core queue, and
    whether those workers also run the control loop (its slot is then not the pipeline's):
    from the workers' heartbeat announcements, else (none announced) by asking them."""
    announced = announced_slots(r, CORE_QUEUES, CONTROL_QUEUE)
    if announced is not None:
        return announced
    cached = r.hmget(SLOTS_KEY, "slots", "shared")
    if cached[0] is not None:
        return int(cached[0]), cached[1] in ("1", b"1")
    inspect = app.control.inspect(timeout=1.0)
    stats: dict[str, Any] = inspect.stats() or {}
    queues: dict[str, Any] = inspect.active_queues() or {}
    slots, shared = 0, False
    for worker, st in stats.items():
        consumed = {q.get("name") for q in queues.get(worker, [])}
        if consumed & set(CORE_QUEUES):
            slots += int((st.get("pool") or {}).get("max-concurrency") or 0)
            shared = shared or CONTROL_QUEUE in consumed
    pipe = r.pipeline()
    pipe.hset(SLOTS_KEY, mapping={"slots": slots, "shared": int(shared)})
    pipe.expire(SLOTS_KEY, SLOTS_CACHE_S)
    pipe.execute()
    return slots, shared


def resend(kind: str, order_ids: list[int]) -> None:
    send_task(NONCORE_TASKS[kind], order_ids, True)


def run_tick(app: Celery, settings: Settings, r: redis.Redis) -> Decision:
    prev = read_state(r)
    slots, shared = fleet_slots(app, r)
    with unit_of_work(settings) as uow:
        m = measure(r, uow.session, settings, slots=slots, core_queues=CORE_QUEUES,
                    control_queues=(CONTROL_QUEUE,) if shared else ())
    d = decide(prev, m, settings)
    advice = slots_needed(m.backlog_orders, d.state.arrival_rate or 0.0,
                          m.drained / m.window_s, m.slots, settings.scale_target_drain_s)
    publish(r, d, m, advice)
    _act(app, settings, r, prev.stage, d)
    return d


def _act(app: Celery, settings: Settings, r: redis.Redis, prev_stage: int, d: Decision) -> None:
    st = d.state
    if prev_stage < 2 <= st.stage:
        app.control.autoscale(settings.surge_autoscale_max, _autoscale()[1])
        log.warning("surge stage 2: autoscale ceiling raised to %d", settings.surge_autoscale_max)
    elif prev_stage >= 2 > st.stage:
        app.control.autoscale(*_autoscale())
        log.warning("surge over: autoscale back to %s", settings.worker_autoscale)
    if st.stage >= 3:
        _compensate(settings, r)
    if prev_stage >= 1 and st.stage == 0:
        r.delete(COMPENSATED_KEY)
    if st.breaker == "closed" and (st.load or 0.0) < settings.surge_close_load:
        recovered = recover_replaying(r, resend)
        done = replay(r, settings.surge_replay_per_tick, resend)
        if done or recovered:
            log.info("replayed %d parked non-core order-jobs", done + recovered)


def _autoscale() -> tuple[int, int]:
    high, low = get_settings().worker_autoscale.split(",")
    return int(high), int(low)


def _compensate(settings: Settings, r: redis.Redis) -> None:
    """Orders still waiting past compensation_after_s get a delay-compensation coupon (queued:
    the breaker is open at stage 3, so it is parked and issued once the surge is over)."""
    from datetime import timedelta

    cutoff = utcnow() - timedelta(seconds=settings.compensation_after_s)
    with unit_of_work(settings) as uow:
        # A late part of a split order compensates its parent's order: one coupon per order.
        late = sorted(set(uow.session.scalars(
            select(func.coalesce(OrderRow.parent_id, OrderRow.id)).where(
                OrderRow.state.in_([s.value for s in PROCESSING]),
                OrderRow.received_at < cutoff, not_held_in_a_wave(utcnow())).limit(5000))))
    if not late:
        return
    pipe = r.pipeline()
    for order_id in late:
        pipe.sadd(COMPENSATED_KEY, order_id)
    new = [oid for oid, added in zip(late, pipe.execute(), strict=True) if added]
    if new:
        for i in range(0, len(new), settings.batch_size):
            send_task(COMPENSATION_COUPON, new[i : i + settings.batch_size])
        log.warning("surge stage 3: %d orders will miss their promise; compensation coupons "
                    "queued", len(new))


@stage_task("orderfleet.surge.tick", max_retries=0)
def tick(task: Task) -> None:
    """Measure load, move the breaker and the surge stage, replay parked jobs."""
    settings = get_settings()
    r = client(settings)
    lock_s = max(int(settings.surge_monitor_interval_s * 5), 10)
    if not r.set(TICK_LOCK_KEY, "1", nx=True, ex=lock_s):
        return  # another tick is still running: one control loop at a time
    try:
        d = run_tick(task.app, settings, r)
        log.debug("surge tick: %s", json.dumps({"load": d.state.load, "stage": d.state.stage}))
    finally:
        r.delete(TICK_LOCK_KEY)
        r.close()
