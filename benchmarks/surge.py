"""``orderfleet bench surge``: a Black-Friday step through a real fleet, with surge control on.

Baseline traffic for ``baseline_s`` seconds, then ``orders`` orders within ``surge_s`` seconds
(10% VIP), then quiet until every order is at rest and every parked non-core job was replayed.
The field's account is 12,000 orders arriving within minutes; a 2-core machine drains ~90
orders/s through the whole pipeline, so the default step is 3,000 orders (the report says
what was run). Times of the three-stage response are compressed (seconds, not hours).

Reported: time to drain, max queue depth, p50/p95 received-to-label for VIP and standard
orders of the surge, non-core jobs parked and replayed, orders lost, breaker transitions, the
scale advice's error, and a PNG over time (intake rate, queue depth, load %, breaker state).
"""

from __future__ import annotations

import statistics
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from domain.lifecycle import SETTLED, State, values
from workers.demo import wait_until
from workers.fleet import (
    BENCH_REDIS_DB,
    Fleet,
    free_port,
    reset_run_database,
    run_settings,
    use_settings,
)

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/orderfleet_bench_surge"
AT_REST = tuple(values(SETTLED | {State.LABELLED, State.IN_TRANSIT}))
# Surge control compressed into a benchmark's minutes (README "Surge control").
SURGE_SETTINGS: dict[str, Any] = {
    "surge_monitor_interval_s": 1.0,
    "surge_ewma_tau_s": 3.0,
    "surge_rate_window_s": 10.0,
    "surge_wait_target_s": 30.0,
    "surge_min_dwell_s": 10.0,
    "surge_baseline_tau_s": 60.0,
    "surge_stage2_after_s": 10.0,
    "surge_stage3_after_s": 25.0,
    "compensation_after_s": 60.0,
    "surge_replay_per_tick": 300,
    "wave_max_age_s": 2.0,
    "tracking_sweep_interval_s": 5.0,
    "sweep_interval_s": 10.0,
    "stage_deadline_s": 120.0,
}


def _percentile(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, round(p / 100 * (len(xs) - 1))))
    return round(xs[k], 2)


def _orders(n: int, seed: int, start_id: int, vip_share: float) -> list[dict[str, Any]]:
    from sandbox.synthetic import generate_labelled_orders

    out = []
    for i, (_kind, p) in enumerate(generate_labelled_orders(
            n, seed=seed, start_id=start_id, invalid_rate=0.0, high_value_rate=0.0,
            shopify_rate=0.0, risky_rate=0.0, paid_at=datetime.now(UTC))):
        # Exactly vip_share VIP orders: the generator's own VIP customers become standard ones.
        p["tags"] = [t for t in p.get("tags", []) if t.lower() != "vip"]
        if p.get("customer"):
            p["customer"]["tags"] = [t for t in p["customer"].get("tags", [])
                                     if t.lower() != "vip"]
        if (start_id + i) % round(1 / vip_share) == 0:
            p["tags"].append("vip")
        out.append(p)
    return out


class Sampler(threading.Thread):
    """Reads the published load, parked counts and intake once a second."""

    def __init__(self, settings: Any) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.samples: list[dict[str, Any]] = []
        self.submitted = 0
        self.stop_event = threading.Event()
        self.t0 = time.time()

    def run(self) -> None:
        from domain.surge import client, read_counts, read_load

        r = client(self.settings)
        last = 0
        while not self.stop_event.wait(1.0):
            load, counts = read_load(r), read_counts(r)
            now = time.time()
            self.samples.append({
                "t": now - self.t0, "intake": self.submitted - last,
                "backlog": load.get("backlog", 0), "backlog_orders": load.get(
                    "backlog_orders", 0), "load": load.get("load", 0.0),
                "utilisation": load.get("utilisation", 0.0),
                "breaker": load.get("breaker", "closed"), "stage": load.get("surge_stage", 0),
                "drain_rate": load.get("drain_rate", 0.0),
                "arrival_rate": load.get("arrival_rate", 0.0),
                "advice_slots": load.get("advice_slots"), "slots": load.get("slots", 0),
                "parked_waiting": counts["waiting"]})
            last = self.submitted
        r.close()


def run_surge_bench(*, n_orders: int = 3000, surge_s: float = 30.0, baseline_s: float = 20.0,
                    baseline_rate: float = 2.0, vip_share: float = 0.1, workers: int = 2,
                    concurrency: int = 1, database_url: str | None = None,
                    plot: Path | None = None, quiet: bool = False, seed: int = 11,
                    owner: str = "bench", redis_db: int = BENCH_REDIS_DB,
                    timeout_s: float = 1800.0) -> dict[str, Any]:
    from domain.db import dispose_engines, unit_of_work
    from domain.models import OrderEvent, OrderRow
    from domain.stock import StockLevel, set_stock_levels
    from domain.surge import client, read_counts, transitions
    from sandbox.synthetic import generate_stock
    from tasks.intake import submit_orders

    console = Console(stderr=True, quiet=quiet)
    database_url = database_url or DEFAULT_DATABASE_URL
    settings = run_settings(owner, redis_db, database_url, carrier_url=f"http://127.0.0.1:"
                            f"{free_port()}", api_port=free_port(), smtp_port=free_port(),
                            marketing_url=f"http://127.0.0.1:{free_port()}",
                            var_dir=Path("var") / f"{owner}-surge", **SURGE_SETTINGS)
    settings = use_settings(settings)
    dispose_engines()
    reset_run_database(settings, owner)
    fleet = Fleet(settings, workers=workers, concurrency=concurrency,
                  carrier_time_scale=36_000.0, owner=owner, log_dir=settings.var_dir / "logs")
    sampler = Sampler(settings)
    next_id = 1
    baseline_ids: list[int] = []
    surge_ids: list[int] = []
    with fleet:
        with unit_of_work(settings) as uow:
            set_stock_levels(uow, [StockLevel.model_validate(r) for r in generate_stock(
                seed=seed, units_per_sku=max(200, n_orders))])
        sampler.start()
        console.print(f"baseline: {baseline_rate}/s for {baseline_s:.0f}s")
        t_base = time.time()
        while time.time() - t_base < baseline_s:
            n = max(1, round(baseline_rate))
            res = submit_orders(_orders(n, seed, next_id, vip_share), settings=settings)
            next_id += n
            baseline_ids += res.accepted
            sampler.submitted += len(res.accepted)
            time.sleep(max(0.0, 1.0 - (time.time() - t_base) % 1.0))
        console.print(f"surge: {n_orders} orders within {surge_s:.0f}s "
                      f"({vip_share:.0%} VIP)")
        t_surge = time.time()
        steps = max(1, int(surge_s))
        per_step = -(-n_orders // steps)
        for step in range(steps):
            n = min(per_step, n_orders - step * per_step)
            if n <= 0:
                break
            res = submit_orders(_orders(n, seed, next_id, vip_share), settings=settings)
            next_id += n
            surge_ids += res.accepted
            sampler.submitted += len(res.accepted)
            time.sleep(max(0.0, t_surge + step + 1 - time.time()))
        accepted = len(baseline_ids) + len(surge_ids)
        wait_until(settings, lambda c: sum(c.get(s, 0) for s in AT_REST), accepted,
                   label="orders at rest", quiet=quiet, timeout=timeout_s)
        r = client(settings)
        deadline = time.time() + timeout_s
        while time.time() < deadline:  # every parked job replayed, the breaker closed
            counts = read_counts(r)
            if r.hget("orderfleet:load", "breaker") == "closed" and counts["waiting"] == 0:
                break
            time.sleep(0.5)
        time.sleep(3.0)  # the last replayed jobs run (they are counted as replayed already)
        sampler.stop_event.set()
        sampler.join()
        counts, trans = read_counts(r), transitions(r, 500)
        r.close()
        with unit_of_work(settings) as uow:
            rows = uow.session.execute(
                select(OrderRow.id, OrderRow.fast_lane, OrderRow.received_at, OrderEvent.at)
                .join(OrderEvent, OrderEvent.order_id == OrderRow.id)
                .where(OrderEvent.to_state == State.LABELLED.value,
                       OrderRow.id.in_(surge_ids))).all()
            present = set(uow.session.scalars(select(OrderRow.id).where(
                OrderRow.id.in_(baseline_ids + surge_ids), OrderRow.state.in_(AT_REST))))
    vip = [(at - rec).total_seconds() for _i, fast, rec, at in rows if fast]
    std = [(at - rec).total_seconds() for _i, fast, rec, at in rows if not fast]
    last_label = max((at for *_x, at in rows), default=None)
    drain_s = round(last_label.timestamp() - t_surge, 1) if last_label else None
    samples = sampler.samples
    opened = [t for t in trans if t["what"] == "breaker" and t["to"] == "open"]
    closed = [t for t in trans if t["what"] == "breaker" and t["to"] == "closed"]
    replay_done = None
    if closed:
        after = [s for s in samples if s["t"] + sampler.t0 >= closed[-1]["at"]
                 and s["parked_waiting"] == 0]
        replay_done = round(after[0]["t"] + sampler.t0 - closed[-1]["at"], 1) if after else None
    # Scale advice vs what was then measured: the drain rate the advice assumed while the fleet
    # was saturated, against the surge's measured mean drain rate.
    saturated = [s["drain_rate"] for s in samples if s["utilisation"] >= 0.9 and s["drain_rate"]
                 and s["backlog_orders"] >= 100]
    measured_rate = len(rows) / drain_s if drain_s else None
    advised_rate = statistics.median(saturated) if saturated else None
    advice_error = (round(abs(advised_rate - measured_rate) / measured_rate, 3)
                    if advised_rate and measured_rate else None)
    result = {
        "orders": n_orders,
        "surge_s": surge_s,
        "baseline_orders": len(baseline_ids),
        "workers": workers,
        "concurrency": concurrency,
        "accepted": accepted,
        "drain_s": drain_s,
        "max_queue_depth": max((s["backlog"] for s in samples), default=0),
        "max_backlog_orders": max((s["backlog_orders"] for s in samples), default=0),
        "vip_orders": len(vip),
        "vip_p50_paid_to_label_s": _percentile(vip, 50),
        "vip_p95_paid_to_label_s": _percentile(vip, 95),
        "standard_p50_paid_to_label_s": _percentile(std, 50),
        "standard_p95_paid_to_label_s": _percentile(std, 95),
        "shed": counts["parked"],
        "replayed": counts["replayed"],
        "replay_done_after_close_s": replay_done,
        "orders_lost": accepted - len(present),
        "breaker_transitions": len(opened) + len(closed),
        "max_surge_stage": max((s["stage"] for s in samples), default=0),
        "transitions": trans,
        "advised_drain_rate": advised_rate,
        "measured_drain_rate": round(measured_rate, 2) if measured_rate else None,
        "scale_advice_error": advice_error,
    }
    if plot is not None:
        draw(samples, plot, t_surge - sampler.t0, result)
        result["plot"] = str(plot)
    if not quiet:
        table = Table(title="surge benchmark", show_header=False)
        for k, v in result.items():
            if k != "transitions":
                table.add_row(k, str(v))
        Console().print(table)
    return result


def draw(samples: list[dict[str, Any]], path: Path, surge_at: float,
         result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
    series = [
        ("intake (orders/s)", [s["intake"] for s in samples]),
        ("core backlog (orders)", [s["backlog_orders"] for s in samples]),
        ("load %", [100 * (s["load"] or 0) for s in samples]),
        ("parked non-core (messages)", [s["parked_waiting"] for s in samples]),
    ]
    for ax, (label, ys) in zip(axes, series, strict=True):
        ax.plot(t, ys, lw=1.2)
        ax.set_ylabel(label, fontsize=8)
        ax.axvline(surge_at, color="grey", ls=":", lw=1)
        ax.grid(alpha=0.3)
    depth = axes[1].twinx()
    depth.plot(t, [s["backlog"] for s in samples], color="grey", lw=0.8)
    depth.set_ylabel("queue depth (messages)", fontsize=8, color="grey")
    axes[2].axhline(80, color="red", ls="--", lw=0.8)
    axes[2].axhline(60, color="green", ls="--", lw=0.8)
    opened = [s["breaker"] == "open" for s in samples]
    axes[3].fill_between(t, 0, max([s["parked_waiting"] for s in samples] + [1]),
                         where=opened, color="orange", alpha=0.25, step="post",
                         label="breaker open")
    axes[3].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds")
    fig.suptitle(f"orderfleet surge: {result['orders']} orders in {result['surge_s']:.0f}s, "
                 f"drain {result['drain_s']}s, VIP p95 {result['vip_p95_paid_to_label_s']}s, "
                 f"standard p95 {result['standard_p95_paid_to_label_s']}s", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
