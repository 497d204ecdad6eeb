"""``make demo``: a local fleet, synthetic orders, a live progress view and a summary."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.settings import Settings
from domain.lifecycle import SETTLED, State
from workers.fleet import (
    DEMO_REDIS_DB,
    Fleet,
    reset_run_database,
    run_settings,
    stand_in_ports,
    use_settings,
)


def state_counts(settings: Settings) -> dict[str, int]:
    from domain.db import unit_of_work
    from domain.models import OrderRow

    with unit_of_work(settings) as uow:
        # The store's orders; a split one is settled once its parts are (until then it shows
        # as split_parts_on_the_way).
        counts = {s: int(n) for s, n in uow.session.execute(
            select(OrderRow.state, func.count()).where(OrderRow.parent_id.is_(None))
            .group_by(OrderRow.state)).all()}
        on_the_way = int(uow.session.execute(
            select(func.count(func.distinct(OrderRow.parent_id)))
            .where(OrderRow.parent_id.is_not(None),
                   OrderRow.state.not_in([s.value for s in SETTLED]))).scalar_one())
    if on_the_way:
        counts[State.SPLIT.value] -= on_the_way
        counts["split_parts_on_the_way"] = on_the_way
    return counts


def surge_line(settings: Settings) -> str:
    """Load %, breaker and parked/replayed non-core jobs, as the control loop published them."""
    import redis

    from domain.surge import client, read_counts, read_load

    r = client(settings)
    try:
        load, counts = read_load(r), read_counts(r)
    except redis.RedisError:
        return ""
    finally:
        r.close()
    if not load:
        return ""
    return (f"load {100 * (load.get('load') or 0):.0f}% breaker {load.get('breaker')} "
            f"stage {load.get('surge_stage')} parked {counts['parked']} "
            f"replayed {counts['replayed']} |")


def wait_until(settings: Settings, done: Any, total: int, *, label: str, quiet: bool,
               timeout: float) -> dict[str, int]:
    """Poll the database until ``done(counts)`` reaches ``total``, drawing a progress bar."""
    console = Console(stderr=True, quiet=quiet)
    deadline = time.monotonic() + timeout
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[states]}"),
                  console=console, transient=False) as progress:
        task = progress.add_task(label, total=total, states="")
        while True:
            counts = state_counts(settings)
            n = done(counts)
            shown = " ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v)
            shown = f"{surge_line(settings)} {shown}".strip()
            progress.update(task, completed=n, states=shown)
            if n >= total:
                return counts
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label}: {n}/{total} after {timeout}s ({shown})")
            time.sleep(0.5)


def run_demo(*, n_orders: int, seed: int, workers: int, flower: bool, fresh_db: bool,
             quiet: bool, database_url: str | None = None,
             loglevel: str = "warning") -> dict[str, Any]:
    from domain.db import dispose_engines, unit_of_work
    from domain.report import build_report
    from domain.stock import StockLevel, set_stock_levels
    from sandbox.synthetic import generate_labelled_orders, generate_stock
    from tasks.intake import submit_orders

    if database_url is None:
        db_path = Settings().var_dir / "demo.db"
        database_url = f"sqlite:///{db_path}"
        if fresh_db:
            for suffix in ("", "-wal", "-shm"):
                p = db_path.with_name(db_path.name + suffix)
                if p.exists():
                    p.unlink()
    # The demo's own Redis db and database, whatever ORDERFLEET_* points at.
    settings = run_settings(
        "demo", DEMO_REDIS_DB, database_url, **stand_in_ports(),
        # Short waves and frequent tracking sweeps so a few thousand orders finish in minutes.
        wave_max_age_s=2.0, tracking_sweep_interval_s=3.0, sweep_interval_s=10.0,
        stage_deadline_s=60.0)
    settings = use_settings(settings)
    dispose_engines()
    if fresh_db and not settings.is_sqlite:
        reset_run_database(settings, "demo")
    console = Console(stderr=True, quiet=quiet)

    # 3,600 carrier hours pass per real hour... times 10: a parcel is delivered in ~15 s.
    fleet = Fleet(settings, workers=workers, flower=flower, carrier_time_scale=12_000,
                  api=True, owner="demo", loglevel=loglevel)
    with fleet:
        if fleet.started_redis:
            console.print(f"started Redis: {fleet.started_redis}")
        console.print(f"fleet up: {workers} workers, beat, sandbox carrier, intake API at "
                      f"http://127.0.0.1:{settings.api_port}"
                      + (", Flower at http://127.0.0.1:5555" if flower else "")
                      + f"; database {settings.database_url}")
        from workers.ops_auth import describe

        console.print(f"order health at http://127.0.0.1:{settings.api_port}/ops/health"
                      + (" and Flower" if flower else "") + f": {describe(fleet.settings)}"
                      + (" (generated: set ORDERFLEET_OPS_BASIC_AUTH=user:password to choose)"
                         if fleet.generated_ops_credentials else ""), soft_wrap=True)
        stock_rows = generate_stock(seed=seed, units_per_sku=max(40, n_orders // 12))
        with unit_of_work(settings) as uow:
            set_stock_levels(uow, [StockLevel.model_validate(r) for r in stock_rows])
        labelled = generate_labelled_orders(n_orders, seed=seed)
        payloads = [p for _, p in labelled]
        t0 = time.time()
        accepted = rejected = 0
        reasons: dict[str, int] = {}
        for i in range(0, len(payloads), 500):
            res = submit_orders(payloads[i : i + 500], settings=settings)
            accepted += len(res.accepted)
            rejected += len(res.rejected)
            for r in res.rejected:
                key = r.errors[0]["field"] if r.errors else "?"
                reasons[key] = reasons.get(key, 0) + 1
        submit_s = time.time() - t0
        console.print(f"submitted {len(payloads)} orders in {submit_s:.1f}s: "
                      f"{accepted} accepted, {rejected} rejected at intake")
        wait_until(settings, lambda c: sum(c.get(s.value, 0) for s in SETTLED), accepted,
                   label="orders settled", quiet=quiet, timeout=max(300.0, n_orders * 0.3))
        with unit_of_work(settings) as uow:
            rep = build_report(uow.session)
            orders_per_s = _labelled_per_s(uow.session, t0)
    summary = {
        "submitted": len(payloads),
        "accepted": accepted,
        "rejected": rejected,
        "rejected_reasons": reasons,
        "by_state": {k: v for k, v in rep["by_state"].items() if v},
        "labels": rep["labels"],
        "orders_per_s": orders_per_s,
        "p50_paid_to_label_s": rep["p50_paid_to_label_s"],
        "p95_paid_to_label_s": rep["p95_paid_to_label_s"],
        "stage_latency_s": rep["stage_latency_s"],
        "reservations": rep["reservations"],
        "database": settings.database_url,
    }
    if not quiet:
        render_summary(summary, Console())
    return summary


def _labelled_per_s(session: Session, t0: float) -> float | None:
    from domain.models import OrderEvent

    n, last = session.execute(
        select(func.count(), func.max(OrderEvent.at)).where(
            OrderEvent.to_state == State.LABELLED.value)).one()
    if not n or last is None:
        return None
    return round(n / max(last.timestamp() - t0, 1e-6), 1)


def render_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(title="orderfleet demo", show_header=False)
    table.add_row("submitted", str(summary["submitted"]))
    table.add_row("accepted", str(summary["accepted"]))
    table.add_row("rejected at intake", str(summary["rejected"]))
    for field, n in sorted(summary["rejected_reasons"].items(), key=lambda kv: -kv[1]):
        table.add_row(f"  invalid {field}", str(n))
    for state, n in summary["by_state"].items():
        table.add_row(f"state {state}", str(n))
    table.add_row("labels bought", str(summary["labels"]))
    table.add_row("orders/s (paid -> labelled)", str(summary["orders_per_s"]))
    table.add_row("p50 paid -> label (s)", str(summary["p50_paid_to_label_s"]))
    table.add_row("p95 paid -> label (s)", str(summary["p95_paid_to_label_s"]))
    console.print(table)


def render_report(rep: dict[str, Any], console: Console) -> None:
    table = Table(title="orders by state")
    table.add_column("state")
    table.add_column("orders", justify="right")
    for state, n in rep["by_state"].items():
        table.add_row(state, str(n))
    console.print(table)
    console.print(f"labels bought: {rep['labels']}; reservations: {rep['reservations']}")
    console.print(f"rejected at intake: {rep['rejected_at_intake']}; "
                  f"rejected by fraud: {rep['rejected_by_fraud']}")
    exc = rep.get("intake_exceptions")
    if exc:
        oldest = exc["oldest_open_s"]
        console.print(f"intake exceptions: {exc['open']} open"
                      + (f" (oldest {oldest // 60} min)" if oldest is not None else "") + ", "
                      + ", ".join(f"{n} {s}" for s, n in exc["by_status"].items() if s != "open"))
    for reason, n in rep["rejected_reasons"].items():
        console.print(f"  {n:>5}  {reason}")
    lat = Table(title="stage latency (s)")
    for col in ("stage", "count", "p50", "p95"):
        lat.add_column(col)
    for stage, v in rep["stage_latency_s"].items():
        lat.add_row(stage, str(v["count"]), str(v["p50_s"]), str(v["p95_s"]))
    console.print(lat)
    console.print(f"paid -> label: p50 {rep['p50_paid_to_label_s']} s, "
                  f"p95 {rep['p95_paid_to_label_s']} s")
    render_ops(rep["ops"], console)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2%}"


def render_ops(ops: dict[str, Any], console: Console) -> None:
    """The figures ops review: rates, variance against the baseline, the exception heatmap."""
    ht, delayed = ops["handling_time"], ops["delayed_status_updates_7d"]
    figures = Table(title="ops figures", show_header=False)
    figures.add_row("cancellation rate", f"{_pct(ops['cancellation_rate'])} "
                    f"({ops['cancelled']} orders)")
    figures.add_row("SLA attainment 24 h / 7 d", f"{_pct(ops['sla_attainment_24h'])} / "
                    f"{_pct(ops['sla_attainment_7d'])} (7 d: {ops['sla_orders_7d']['on_time']} "
                    f"on time, {ops['sla_orders_7d']['late']} late)")
    figures.add_row("handling time (paid -> label), last 24 h",
                    f"mean {ht['current_mean_s']} s over {ht['orders']} orders; baseline "
                    f"{ht['baseline_mean_s']} s ({ht['baseline_orders']} orders); change "
                    f"{_pct(ht['change'])} (review above 20%); spread (CV) "
                    f"{_pct(ht['current_cv'])}")
    figures.add_row("delayed status updates (7 d)",
                    f"{_pct(delayed['share'])} ({delayed['delayed']} of {delayed['orders']})")
    figures.add_row("cost share of GMV (7 d)", f"{_pct(ops['cost_share_of_gmv_7d'])} "
                    f"({ops['cost_usd_7d']} of {ops['gmv_usd_7d']} USD)")
    figures.add_row("exceptions per order 24 h / previous",
                    f"{_pct(ops['exceptions_per_order_24h'])} / "
                    f"{_pct(ops['exceptions_per_order_previous_24h'])}")
    console.print(figures)
    heat = ops["exception_heatmap_7d"]
    if heat:
        grid = Table(title="exceptions by stage and hour (UTC, 7 days)")
        grid.add_column("stage")
        for h in range(24):
            grid.add_column(f"{h:02d}", justify="right")
        for stage, counts in heat.items():
            grid.add_row(stage, *(str(n) if n else "." for n in counts))
        console.print(grid)
