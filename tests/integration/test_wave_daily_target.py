"""Waves sized and aged from the daily target, on real PostgreSQL under a simulated clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from benchmarks.waves import simulate_day
from domain.clock import clock_at
from domain.db import unit_of_work
from domain.lifecycle import State
from domain.models import OrderRow, Wave
from domain.observability import snapshot
from domain.routing import PRIORITY_LANES
from domain.surge import measure
from tasks.fraud import check_orders
from tasks.intake import submit_orders
from tasks.inventory import reserve_orders
from tasks.sharding import assign_orders, close_due_waves, dispatch_deadline
from tasks.watchdog import raise_status_lag
from tests.integration.helpers import native_order, put_stock

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def run(fn, settings, *args):
    with unit_of_work(settings) as uow:
        return fn(uow, *args)


def placed(settings, payloads, at: datetime) -> list[int]:
    """Submit, check, reserve and shard at ``at``: ids of the waves that closed at once."""
    with clock_at(at):
        ids = submit_orders(payloads, settings=settings).accepted
        run(check_orders, settings, ids, settings)
        ids = run(reserve_orders, settings, ids, settings).reserved
        closed: list[int] = run(assign_orders, settings, ids, settings)
        return closed


def open_waves(settings) -> dict[str, Wave]:
    with unit_of_work(settings) as uow:
        rows = list(uow.session.execute(select(Wave).where(Wave.status == "open")).scalars())
        uow.session.expunge_all()
    return {w.lane: w for w in rows}


def test_a_simulated_day_makes_about_the_target_and_express_waits_within_its_bound(
        db, broker, settings) -> None:
    day = settings.model_copy(update={
        "wave_daily_target": 200, "wave_size": 1000, "wave_size_min": 5,
        "wave_max_age_s": 60.0, "wave_priority_max_age_s": 7200.0, "sku_auto_freeze": False})
    sweep_s = 30.0
    out = simulate_day(day, orders_per_day=12_000, seed=3, sweep_s=sweep_s)
    # 200 +- 25%: the size and each key's age limit follow the measured rate.
    assert 150 <= out["waves"] <= 250, out
    with unit_of_work(day) as uow:
        s = uow.session
        # Every order of the simulation is in exactly one wave.
        assert s.execute(select(func.count()).select_from(OrderRow).where(
            OrderRow.state != State.IN_WAVE)).scalar_one() == 0
        assert s.execute(select(func.sum(Wave.size))).scalar_one() == out["orders"]
        waves = {w.id: w for w in s.execute(select(Wave)).scalars()}
        orders = list(s.execute(select(OrderRow)).scalars())
        # Open at the end of the day: they close at close_by.
        end: dict[int, datetime] = {}
        for w in waves.values():
            assert w.close_by is not None
            end[w.id] = w.closed_at or w.close_by
            if w.close_reason == "age":  # closed by the sweep when due, not before
                assert w.close_by <= end[w.id] <= w.close_by + timedelta(seconds=sweep_s)
            if w.lane in PRIORITY_LANES:  # never held past the express/VIP bound
                assert end[w.id] - w.opened_at <= timedelta(seconds=7200 + sweep_s), w.id
        for o in orders:  # no order's wave outlives its promised dispatch less the margin
            assert o.wave_id is not None
            due = dispatch_deadline(o, o.lane or "standard", day)
            assert end[o.wave_id] <= due + timedelta(seconds=sweep_s), o.id
        priority = [o for o in orders if o.lane in PRIORITY_LANES]
        assert len(priority) > 300  # the day had express and VIP orders to hold
    assert out["closed_by"].get("size", 0) > 0 and out["closed_by"].get("age", 0) > 0


def test_an_order_at_its_promised_dispatch_closes_its_wave_at_once(db, broker, settings) -> None:
    sized = settings.model_copy(update={"wave_daily_target": 200, "wave_size": 1000})
    put_stock(settings, [("TEE-M", "US-EAST", "US", 50)])
    # Paid 47 hours ago: the standard lane's 48-hour SLA less the 2-hour margin has passed.
    late = (T0 - timedelta(hours=47)).isoformat()
    (closed,) = placed(sized, [native_order("L-1", paid_at=late)], T0)
    with unit_of_work(settings) as uow:
        wave = uow.session.get_one(Wave, closed)
        assert (wave.status, wave.close_reason, wave.size) == ("closed", "promise", 1)


def test_a_wave_closes_at_its_age_limit_express_sooner_than_standard(db, broker, settings) -> None:
    sized = settings.model_copy(update={"wave_daily_target": 200, "wave_size": 1000,
                                        "wave_priority_max_age_s": 1800.0})
    put_stock(settings, [("TEE-M", "US-EAST", "US", 50)])
    paid = T0.isoformat()
    assert placed(sized, [native_order("S-1", paid_at=paid),
                          native_order("E-1", paid_at=paid, shipping_method="Express")],
                  T0) == []
    ws = open_waves(settings)
    # One order an hour per key fills a wave of 5 in 5 hours: express is capped at 30 min;
    # standard waits the 5 hours (far within its 48-hour SLA).
    assert ws["express"].close_by == T0 + timedelta(seconds=1800)
    assert ws["standard"].close_by == T0 + timedelta(hours=5)
    with clock_at(T0 + timedelta(seconds=1799)):
        assert run(close_due_waves, sized, sized) == []
    with clock_at(T0 + timedelta(seconds=1800)):
        assert run(close_due_waves, sized, sized) == [ws["express"].id]
    with clock_at(T0 + timedelta(hours=5)):
        assert run(close_due_waves, sized, sized) == [ws["standard"].id]


def test_without_a_target_a_wave_closes_after_the_max_age(db, broker, settings) -> None:
    put_stock(settings, [("TEE-M", "US-EAST", "US", 50)])
    placed(settings, [native_order("N-1")], T0)
    (w,) = open_waves(settings).values()
    assert w.close_by == T0 + timedelta(seconds=settings.wave_max_age_s)
    with clock_at(T0 + timedelta(seconds=settings.wave_max_age_s - 1)):
        assert run(close_due_waves, settings, settings) == []
    with clock_at(T0 + timedelta(seconds=settings.wave_max_age_s)):
        assert run(close_due_waves, settings, settings) == [w.id]


def test_orders_held_in_a_wave_until_it_is_due_are_not_lag_or_backlog(db, broker,
                                                                       settings) -> None:
    sized = settings.model_copy(update={"wave_daily_target": 200, "wave_size": 1000})
    put_stock(settings, [("TEE-M", "US-EAST", "US", 50)])
    placed(sized, [native_order("H-1", paid_at=T0.isoformat())], T0)
    (wave,) = open_waves(settings).values()
    assert wave.close_by is not None and wave.close_by - T0 >= timedelta(hours=2)

    def readings(at: datetime) -> tuple[float, int, float, int, list[int]]:
        with clock_at(at), unit_of_work(settings) as uow:
            snap = snapshot(uow.session, settings, at)
            m = measure(broker, uow.session, settings, slots=2, core_queues=["sharding"])
            alerted = raise_status_lag(uow, settings, at)
        return (snap.backlog_oldest_s, snap.status_lagging, m.oldest_wait_s, m.backlog_orders,
                alerted)

    # An hour on, the wave holds it by design: no lag, no backlog, no surge wait, no alert.
    assert readings(T0 + timedelta(hours=1)) == (0.0, 0, 0.0, 0, [])
    # Past its close_by and still open (the sweep is late): it counts again.
    late = wave.close_by + timedelta(minutes=20)
    oldest, lagging, wait, backlog, alerted = readings(late)
    assert oldest == wait == (late - T0).total_seconds() and (lagging, backlog) == (1, 1)
    with unit_of_work(settings) as uow:
        (order_id,) = uow.session.execute(select(OrderRow.id)).scalars().all()
    assert alerted == [order_id]


def test_a_stage_closing_due_waves_skips_one_another_transaction_holds(db, broker,
                                                                       settings) -> None:
    # Given two waves (two destination zones) past their age limit
    put_stock(settings, [("TEE-M", "US-EAST", "US", 50)])
    placed(settings, [native_order("Z-1"), native_order("Z-2", country="DE")], T0)
    with unit_of_work(settings) as uow:
        held, free = sorted(uow.session.execute(select(Wave.id)).scalars())
    due = T0 + timedelta(seconds=settings.wave_max_age_s)
    # When a sharding task closes due waves while another transaction holds the first one
    with clock_at(due), unit_of_work(settings) as holder:
        holder.session.execute(select(Wave).where(Wave.id == held).with_for_update()).one()
        with unit_of_work(settings) as uow:
            closed = close_due_waves(uow, settings, skip_locked=True)
        # Then it closed the other one without waiting for the lock
        assert closed == [free]
    # Then the held wave closes at the next chance (here the beat's sweep, which waits)
    with clock_at(due):
        assert run(close_due_waves, settings, settings) == [held]
    with unit_of_work(settings) as uow:
        assert set(uow.session.execute(select(Wave.status)).scalars()) == {"closed"}
