"""How many pick waves a day makes: one hour of orders at a given daily rate, through
reservation and sharding on a real PostgreSQL, waves sized from the daily wave target.

Orders are generated (sandbox.synthetic), persisted by the intake (lanes set on arrival),
marked fraud-checked (the fraud stage is not what is measured), reserved and sharded in
messages of ``batch_size`` ids as the stages do, one minute's orders at a time; after each
minute every open wave is made a minute older and those past ``max_age_s`` are closed, as the
beat sweep would. Messages the stages would send are counted, not sent: no broker is needed.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from sqlalchemy import func, select, update

from config.settings import Settings
from domain.db import chunks, dispose_engines, unit_of_work, use_task_sender
from domain.lifecycle import State
from domain.models import OrderRow, Wave
from domain.stock import StockLevel, set_stock_levels
from sandbox.synthetic import generate_orders, generate_stock
from tasks.intake import persist_orders
from tasks.inventory import reserve_orders
from tasks.sharding import assign_orders, close_waves_older_than, wave_target_size
from workers.fleet import reset_run_database

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/orderfleet_bench_waves"


def run_wave_count(*, orders_per_day: int = 12_000, daily_target: int = 200, seed: int = 3,
                   max_age_s: float = 60.0,
                   database_url: str = DEFAULT_DATABASE_URL) -> dict[str, Any]:
    hour = orders_per_day // 24
    settings = Settings(database_url=database_url, wave_daily_target=daily_target,
                        wave_size=1000, wave_size_min=5, sku_auto_freeze=False)
    reset_run_database(settings, "bench")
    sent: Counter[str] = Counter()
    use_task_sender(lambda task, args, options: sent.update([task]))
    try:
        with unit_of_work(settings) as uow:
            set_stock_levels(uow, [StockLevel.model_validate(r)
                                   for r in generate_stock(seed=seed, units_per_sku=5000)])
        payloads = generate_orders(hour, seed=seed, invalid_rate=0.0, high_value_rate=0.0,
                                   risky_rate=0.0)
        with unit_of_work(settings) as uow:
            ids = persist_orders(uow, payloads, settings).accepted
            uow.session.execute(update(OrderRow).where(OrderRow.id.in_(ids))
                                .values(state=State.FRAUD_CHECKED.value))
        reserved: list[int] = []
        for part in chunks(ids, settings.batch_size):
            with unit_of_work(settings) as uow:
                reserved += reserve_orders(uow, part, settings).reserved
        with unit_of_work(settings) as uow:
            target = wave_target_size(uow, settings)
        per_minute = max(len(reserved) // 60, 1)
        for minute in chunks(reserved, per_minute):
            for part in chunks(minute, settings.batch_size):
                with unit_of_work(settings) as uow:
                    assign_orders(uow, part, settings)
            with unit_of_work(settings) as uow:
                uow.session.execute(update(Wave).where(Wave.status == "open")
                                    .values(opened_at=Wave.opened_at
                                            - func.make_interval(0, 0, 0, 0, 0, 1)))
                close_waves_older_than(uow, max_age_s)
        with unit_of_work(settings) as uow:
            close_waves_older_than(uow, 0.0)  # the end of the hour
            waves = uow.session.execute(select(Wave.size, Wave.close_reason, Wave.lane,
                                               Wave.zone)).all()
    finally:
        use_task_sender(None)
        dispose_engines()
    by_size = [w for w in waves if w.close_reason == "size"]
    return {
        "orders_per_day": orders_per_day, "max_age_s": max_age_s, "orders_in_the_hour": len(ids),
        "reserved": len(reserved), "daily_target": daily_target, "wave_size": target,
        "waves": len(waves), "closed_by_size": len(by_size),
        "closed_by_age": len(waves) - len(by_size),
        "mean_size": round(sum(w.size for w in waves) / max(len(waves), 1), 1),
        "waves_per_day_at_this_rate": len(waves) * 24,
        "full_waves_per_day": len(by_size) * 24,
        "by_lane": dict(Counter(w.lane for w in waves)),
        "by_zone": dict(Counter(w.zone for w in waves)),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--orders-per-day", type=int, default=12_000)
    p.add_argument("--daily-target", type=int, default=200)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--max-age-s", type=float, default=60.0)
    p.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    a = p.parse_args(argv)
    print(json.dumps(run_wave_count(orders_per_day=a.orders_per_day,
                                    daily_target=a.daily_target, seed=a.seed,
                                    max_age_s=a.max_age_s,
                                    database_url=a.database_url), indent=2))


if __name__ == "__main__":
    main()
