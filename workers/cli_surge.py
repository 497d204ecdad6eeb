"""Surge control on the command line: ``orderfleet load``, ``scale`` and ``bench surge``."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from workers.cli_settings import load_settings as _settings


def _redis() -> Any:
    from domain.surge import client

    return client(_settings())


def run_surge_demo(*, n_orders: int, workers: int, quiet: bool,
                   database_url: str | None = None) -> dict[str, Any]:
    """``orderfleet demo --surge``: a short spike through the demo's own fleet and data."""
    from benchmarks.surge import run_surge_bench
    from config.settings import Settings
    from workers.fleet import DEMO_REDIS_DB

    var = Settings().var_dir
    result = run_surge_bench(n_orders=min(n_orders, 1500), surge_s=15.0, baseline_s=10.0,
                             baseline_rate=2.0, workers=workers,
                             database_url=database_url or f"sqlite:///{var / 'demo-surge.db'}",
                             plot=var / "demo-surge.png", quiet=quiet, owner="demo",
                             redis_db=DEMO_REDIS_DB)
    result.pop("transitions", None)
    return result


@click.command("load")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--history", default=10, show_default=True, help="Breaker/stage changes shown.")
def load_command(as_json: bool, history: int) -> None:
    """Fleet load as the control loop last published it: load %, backlog, rates, breaker,
    surge stage, parked and replayed non-core jobs, and the latest transitions."""
    from domain.surge import read_counts, read_load, transitions

    r = _redis()
    snap, counts, trans = read_load(r), read_counts(r), transitions(r, history)
    if as_json:
        click.echo(json.dumps({"load": snap, "noncore": counts, "transitions": trans}))
        return
    if not snap:
        Console().print("no load published yet: is beat running (orderfleet.surge.tick)?")
        return
    table = Table(title="fleet load", show_header=False)
    age = time.time() - float(snap.get("updated_at") or 0)
    table.add_row("load (EWMA)", f"{100 * snap['load']:.0f}%  (raw {100 * snap['load_raw']:.0f}%)")
    table.add_row("busy worker slots", f"{100 * snap['utilisation']:.0f}% of {snap['slots']}")
    table.add_row("core backlog (messages)", f"{snap['backlog']} ({snap['queued']} queued, "
                  f"{snap['reserved']} reserved unacked)")
    table.add_row("orders in automated stages", str(snap["backlog_orders"]))
    table.add_row("oldest waiting order", f"{snap['oldest_wait_s']:.0f} s")
    table.add_row("arrival / drain rate", f"{snap['arrival_rate']:.2f} / "
                  f"{snap['drain_rate']:.2f} orders/s (baseline {snap['baseline_rate']:.2f})")
    table.add_row("non-core breaker", str(snap["breaker"]))
    table.add_row("surge stage", str(snap["surge_stage"]))
    table.add_row("non-core parked / replayed / waiting",
                  f"{counts['parked']} / {counts['replayed']} / {counts['waiting']}")
    table.add_row("updated", f"{age:.1f} s ago")
    out = Console()
    out.print(table)
    for t in trans:
        when = time.strftime("%H:%M:%S", time.gmtime(t["at"]))
        out.print(f"{when} {t['what']} {t['from']} -> {t['to']} (load {t['load']:.2f}): "
                  f"{t['reason']}")


@click.command("scale")
@click.option("--target-s", type=float, default=None,
              help="Drain the backlog within this time (default scale_target_drain_s).")
@click.option("--concurrency", default=2, show_default=True,
              help="Pool processes per worker (pod) you would add.")
@click.option("--json", "as_json", is_flag=True)
def scale_command(target_s: float | None, concurrency: int, as_json: bool) -> None:
    """Workers needed to drain the live backlog within a target time, from the live depth and
    the drain rate measured per busy slot (arrivals continuing at the measured rate)."""
    from domain.surge import read_load, slots_needed

    settings = _settings()
    snap = read_load(_redis())
    if not snap:
        raise click.ClickException("no load published yet: is beat running?")
    target = target_s or settings.scale_target_drain_s
    slots = slots_needed(int(snap["backlog_orders"]), float(snap["arrival_rate"]),
                         float(snap["drain_rate"]), int(snap["slots"]), target)
    per_slot = snap["drain_rate"] / snap["slots"] if snap["slots"] else None
    out = {
        "backlog_orders": snap["backlog_orders"],
        "arrival_rate": snap["arrival_rate"],
        "drain_rate": snap["drain_rate"],
        "slots_now": snap["slots"],
        "drain_rate_per_slot": round(per_slot, 3) if per_slot else None,
        "target_s": target,
        "slots_needed": slots,
        "workers_needed": math.ceil(slots / concurrency) if slots else None,
        "eta_now_s": (round(snap["backlog_orders"] / (snap["drain_rate"] - snap["arrival_rate"]),
                            1) if snap["drain_rate"] > snap["arrival_rate"] else None),
    }
    if as_json:
        click.echo(json.dumps(out))
        return
    if slots is None:
        click.echo("no drain measured yet: cannot advise (wait for the first labels)")
        return
    click.echo(f"backlog {out['backlog_orders']} orders, arrivals {out['arrival_rate']:.2f}/s, "
               f"drain {out['drain_rate']:.2f}/s on {out['slots_now']} slots")
    click.echo(f"to drain within {target:.0f}s: {slots} slots = {out['workers_needed']} workers "
               f"of {concurrency} processes")


@click.command("surge")
@click.option("--orders", "n_orders", default=3000, show_default=True,
              help="Orders in the step (the field's 12,000 scaled to a 2-core machine).")
@click.option("--surge-s", default=30.0, show_default=True, help="Seconds the step arrives in.")
@click.option("--baseline-s", default=20.0, show_default=True)
@click.option("--baseline-rate", default=2.0, show_default=True, help="Orders/s before.")
@click.option("--vip-share", default=0.1, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--concurrency", default=1, show_default=True)
@click.option("--database-url", default=None,
              help="A database named *bench* (wiped); default orderfleet_bench_surge.")
@click.option("--plot", type=click.Path(path_type=Path), default=Path("var/bench-surge.png"),
              show_default=True, help="PNG over time.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_surge(n_orders: int, surge_s: float, baseline_s: float, baseline_rate: float,
                vip_share: float, workers: int, concurrency: int, database_url: str | None,
                plot: Path, as_json: bool) -> None:
    """A Black-Friday step through a real fleet: drain time, VIP vs standard latency, shed and
    replayed non-core jobs, breaker transitions, scale advice error, and a PNG."""
    from benchmarks.surge import run_surge_bench

    result = run_surge_bench(n_orders=n_orders, surge_s=surge_s, baseline_s=baseline_s,
                             baseline_rate=baseline_rate, vip_share=vip_share, workers=workers,
                             concurrency=concurrency, database_url=database_url, plot=plot,
                             quiet=as_json)
    if as_json:
        click.echo(json.dumps(result))


@click.group("noncore")
def noncore_command() -> None:
    """Non-core jobs not settled: e-mails claimed, being sent, or uncertain (the mail server
    may have taken them when the connection broke; never re-sent without a person)."""


KIND = click.Choice(["post_purchase_email", "review_request_email"])


@noncore_command.command("list")
@click.option("--outcome", type=click.Choice(["claimed", "sending", "uncertain"]))
@click.option("--json", "as_json", is_flag=True)
def noncore_list(outcome: str | None, as_json: bool) -> None:
    """Jobs not settled yet, oldest first."""
    from domain.db import unit_of_work
    from domain.noncore import open_jobs

    with unit_of_work(_settings()) as uow:
        rows: list[dict[str, Any]] = [
            {"order_id": j.order_id, "kind": j.kind, "outcome": j.outcome,
             "since": j.done_at.isoformat(), "claimed_by": j.claimed_by}
            for j in open_jobs(uow, outcome)]
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table("order", "kind", "outcome", "since", "claimed by")
    for r in rows:
        table.add_row(str(r["order_id"]), r["kind"], r["outcome"], r["since"][:19],
                      r["claimed_by"] or "")
    Console().print(table if rows else "every non-core job is settled")


@noncore_command.command("resend")
@click.argument("kind", type=KIND)
@click.argument("order_ids", nargs=-1, type=int, required=True)
def noncore_resend(kind: str, order_ids: tuple[int, ...]) -> None:
    """Send uncertain e-mails again (the mail server's log shows they did not go out)."""
    from domain.db import unit_of_work
    from domain.noncore import release_uncertain
    from domain.pipeline import NONCORE_TASKS

    with unit_of_work(_settings()) as uow:
        released = release_uncertain(uow, kind, order_ids)
        if released:
            uow.enqueue(NONCORE_TASKS[kind], released)
    click.echo(f"{len(released)} e-mail(s) sent again: {released}")
    raise SystemExit(0 if len(released) == len(set(order_ids)) else 1)


@noncore_command.command("settle")
@click.argument("kind", type=KIND)
@click.argument("order_ids", nargs=-1, type=int, required=True)
def noncore_settle(kind: str, order_ids: tuple[int, ...]) -> None:
    """Count uncertain e-mails as sent (the mail server's log shows they went out)."""
    from domain.db import unit_of_work
    from domain.noncore import settle_uncertain

    with unit_of_work(_settings()) as uow:
        settled = settle_uncertain(uow, kind, order_ids)
    click.echo(f"{len(settled)} e-mail(s) counted as sent: {settled}")
    raise SystemExit(0 if len(settled) == len(set(order_ids)) else 1)
