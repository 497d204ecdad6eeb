"""How many pick waves a day makes: a simulated day of orders at a given daily rate, through
reservation and sharding on a real PostgreSQL, waves sized and aged from the daily target.

Orders are generated (sandbox.synthetic), persisted by the intake (lanes set on arrival),
marked fraud-checked (the fraud stage is not what is measured), reserved and sharded in
messages of ``batch_size`` ids as the stages do, ``step_s`` of orders at a time, under a
simulated clock (``domain.clock.clock_at``): a day runs in a minute or two. Between arrivals the
beat's sweep (``close_due_waves``) runs every ``sweep_s`` simulated seconds. The day is preceded
by one rate window of the same orders, so the rate is measured from its first minute as it is
in a fleet that has been running; the waves counted are those opened during the day. Messages
the stages would send are counted, not sent: no broker is needed.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from config.settings import Settings
from domain.clock import clock_at
from domain.db import chunks, dispose_engines, unit_of_work, use_task_sender
from domain.lifecycle import State
from domain.models import OrderRow, Wave
from domain.stock import StockLevel, set_stock_levels
from sandbox.synthetic import generate_orders, generate_stock
from tasks.intake import persist_orders
from tasks.inventory import reserve_orders
from tasks.sharding import assign_orders, close_due_waves
from workers.fleet import reset_run_database

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/orderfleet_bench_waves"
# A fixed start: a simulated day is the same day on every run.
DAY_START = datetime(2026, 3, 2, tzinfo=UTC)


def simulate_day(settings: Settings, *, orders_per_day: int, seed: int = 3,
                 step_s: float = 300.0, sweep_s: float = 30.0, hours: float = 24.0,
                 start: datetime = DAY_START) -> dict[str, Any]:
    """Run ``hours`` of orders (after a warm-up of one rate window) into an empty, migrated
    database; waves opened from ``start`` on are counted (those still open at the end too)."""
    warmup = settings.wave_rate_window_s
    steps = math.ceil((warmup + hours * 3600.0) / step_s)
    per_step = orders_per_day * step_s / 86_400.0
    t0 = start - timedelta(seconds=warmup)
    with clock_at(t0), unit_of_work(settings) as uow:
        set_stock_levels(uow, [StockLevel.model_validate(r) for r in generate_stock(
            seed=seed, units_per_sku=orders_per_day * 2)])
    made = 0
    for step in range(steps):
        at = t0 + timedelta(seconds=step * step_s)
        n = round((step + 1) * per_step) - round(step * per_step)  # evenly, no drift
        if n:
            with clock_at(at):
                payloads = generate_orders(n, seed=seed * 100_003 + step, invalid_rate=0.0,
                                           high_value_rate=0.0, risky_rate=0.0,
                                           start_id=made + 1, paid_at=at)
                made += n
                with unit_of_work(settings) as uow:
                    ids = persist_orders(uow, payloads, settings).accepted
                    uow.session.execute(update(OrderRow).where(OrderRow.id.in_(ids))
                                        .values(state=State.FRAUD_CHECKED.value))
                for part in chunks(ids, settings.batch_size):
                    with unit_of_work(settings) as uow:
                        reserved = reserve_orders(uow, part, settings).reserved
                    with unit_of_work(settings) as uow:
                        assign_orders(uow, reserved, settings)
        sweeps = max(int(step_s // sweep_s), 1)
        for k in range(1, sweeps + 1):
            with clock_at(at + timedelta(seconds=k * step_s / sweeps)), \
                    unit_of_work(settings) as uow:
                close_due_waves(uow, settings)
    with unit_of_work(settings) as uow:
        waves = uow.session.execute(
            select(Wave.size, Wave.close_reason, Wave.lane, Wave.status, Wave.warehouse,
                   Wave.carrier, Wave.service, Wave.zone)
            .where(Wave.opened_at >= start)).all()
    sizes = [w.size for w in waves]
    return {
        "orders_per_day": orders_per_day, "daily_target": settings.wave_daily_target,
        "hours": hours, "orders": made,
        "waves": len(waves), "waves_per_day": round(len(waves) * 24.0 / hours),
        "closed_by": dict(Counter(w.close_reason or "still open" for w in waves)),
        "mean_size": round(sum(sizes) / max(len(sizes), 1), 1),
        "keys": len({(w.warehouse, w.carrier, w.service, w.zone, w.lane) for w in waves}),
        "by_lane": dict(Counter(w.lane for w in waves)),
    }


def run_wave_count(*, orders_per_day: int = 12_000, daily_target: int = 200, seed: int = 3,
                   max_age_s: float = 60.0, priority_max_age_s: float = 7200.0,
                   hours: float = 24.0,
                   database_url: str = DEFAULT_DATABASE_URL) -> dict[str, Any]:
    settings = Settings(database_url=database_url, wave_daily_target=daily_target,
                        wave_size=1000, wave_size_min=5, wave_max_age_s=max_age_s,
                        wave_priority_max_age_s=priority_max_age_s,
                        sku_auto_freeze=False)
    reset_run_database(settings, "bench")
    sent: Counter[str] = Counter()
    use_task_sender(lambda task, args, options: sent.update([task]))
    try:
        return {"max_age_s": max_age_s, "priority_max_age_s": priority_max_age_s,
                **simulate_day(settings, orders_per_day=orders_per_day, seed=seed, hours=hours)}
    finally:
        use_task_sender(None)
        dispose_engines()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--orders-per-day", type=int, default=12_000)
    p.add_argument("--daily-target", type=int, default=200)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--max-age-s", type=float, default=60.0)
    p.add_argument("--priority-max-age-s", type=float, default=7200.0)
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    a = p.parse_args(argv)
    print(json.dumps(run_wave_count(orders_per_day=a.orders_per_day,
                                    daily_target=a.daily_target, seed=a.seed,
                                    max_age_s=a.max_age_s,
                                    priority_max_age_s=a.priority_max_age_s, hours=a.hours,
                                    database_url=a.database_url), indent=2))


if __name__ == "__main__":
    main()
