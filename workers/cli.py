"""The ``orderfleet`` command line."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def _settings() -> Any:
    from config.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        console.print(f"[red]invalid configuration:[/red]\n{exc}")
        sys.exit(2)


def _read_payloads(text: str) -> list[Any]:
    """A JSON object, a JSON array, or JSON lines."""
    stripped = text.strip()
    if not stripped:
        return []
    try:
        data = json.loads(stripped)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        out = []
        for n, line in enumerate(stripped.splitlines(), start=1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise click.ClickException(f"line {n}: not JSON ({exc.msg})") from None
        return out


class _Group(click.Group):
    """Turns an unmigrated database into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import OperationalError, ProgrammingError

        try:
            return super().invoke(ctx)
        except (OperationalError, ProgrammingError) as exc:
            text = str(exc.orig)
            if "no such table" in text or "does not exist" in text:
                raise click.ClickException(
                    "the database has no orderfleet schema yet: run `orderfleet db upgrade`"
                ) from None
            raise


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """orderfleet: an order-fulfilment worker fleet for independent online stores."""


# --- intake -----------------------------------------------------------------------------------
@main.command()
@click.argument("path")
@click.option("--store", help="Store name for payloads that do not carry one (Shopify bodies).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def submit(path: str, store: str | None, as_json: bool) -> None:
    """Submit paid orders from PATH (or - for stdin): JSON object, JSON array or JSONL.

    Exit status 1 when any payload was rejected (its reason is printed and stored).
    """
    from tasks.intake import submit_orders

    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    payloads = _read_payloads(text)
    result = submit_orders(payloads, settings=_settings(), store=store)
    summary = {
        "accepted": len(result.accepted),
        "duplicates": len(result.duplicates),
        "rejected": [{"index": r.index, "order_id": r.source_order_id, "errors": r.errors}
                     for r in result.rejected],
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"accepted {summary['accepted']}, duplicates {summary['duplicates']}, "
                   f"rejected {len(result.rejected)}")
        for r in result.rejected:
            click.echo(f"  rejected #{r.index} ({r.source_order_id or 'no id'}): {r.reason}",
                       err=True)
    sys.exit(1 if result.rejected else 0)


# --- ops views --------------------------------------------------------------------------------
@main.command()
@click.argument("order_id")
@click.option("--store", help="Disambiguate a store order id used by several stores.")
@click.option("--json", "as_json", is_flag=True)
def status(order_id: str, store: str | None, as_json: bool) -> None:
    """Show an order's state, verdict, shipment and event log (by store or internal id)."""
    from domain.db import unit_of_work
    from domain.status import order_status

    with unit_of_work(_settings()) as uow:
        info = order_status(uow.session, order_id, store=store)
    if info is None:
        console.print(f"[red]no order {order_id}[/red]")
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(info, default=str))
        return
    console.print(f"[bold]order {info['source_order_id']}[/bold] ({info['store']}, "
                  f"id {info['id']}): [bold]{info['state']}[/bold]")
    if info["fraud_score"] is not None:
        console.print(f"  fraud score {info['fraud_score']}: {', '.join(info['fraud_reasons'])}")
    if info["hold_reason"]:
        console.print(f"  held: {info['hold_reason']}")
    if info["shipment"]:
        sh = info["shipment"]
        console.print(f"  shipment {sh['carrier']}/{sh['service']} tracking "
                      f"{sh['tracking_number']} ({sh['status']})")
    table = Table("at", "stage", "from", "to", "detail")
    for ev in info["events"]:
        table.add_row(str(ev["at"]), ev["stage"], ev["from_state"] or "", ev["to_state"],
                      json.dumps(ev["detail"]) if ev["detail"] else "")
    Console().print(table)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def report(as_json: bool) -> None:
    """Counts by state, labels, reservations, rejects and stage latencies p50/p95."""
    from domain.db import unit_of_work
    from domain.report import build_report

    with unit_of_work(_settings()) as uow:
        rep = build_report(uow.session)
    if as_json:
        click.echo(json.dumps(rep))
        return
    from workers.demo import render_report

    render_report(rep, Console())


@main.command()
@click.option("--kind", default=None, help="Only alerts of this kind.")
@click.option("--json", "as_json", is_flag=True)
def alerts(kind: str | None, as_json: bool) -> None:
    """Open alerts: what a person must look at."""
    from domain.alerts import open_alerts
    from domain.db import unit_of_work

    with unit_of_work(_settings()) as uow:
        rows = [{"kind": a.kind, "key": a.key, "severity": a.severity, "message": a.message,
                 "raised_at": a.raised_at.isoformat(), "detail": a.detail}
                for a in open_alerts(uow.session, kind)]
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table("raised", "severity", "kind", "about", "message")
    for r in rows:
        table.add_row(r["raised_at"][:19], r["severity"], r["kind"], r["key"], r["message"])
    Console().print(table if rows else "no open alerts")


# --- stock ------------------------------------------------------------------------------------
@main.group()
def stock() -> None:
    """Stock levels per SKU and warehouse."""


@stock.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def stock_import(file: Path) -> None:
    """Set stock levels from a CSV (sku,warehouse,on_hand[,country]) or JSON feed."""
    from domain.db import unit_of_work
    from domain.stock import StockFeedError, read_stock_file, set_stock_levels
    from tasks.inventory import wake_backordered

    settings = _settings()
    try:
        levels = read_stock_file(file)
        with unit_of_work(settings) as uow:
            result = set_stock_levels(uow, levels)
    except StockFeedError as exc:
        raise click.ClickException(str(exc)) from None
    woken = wake_backordered(settings, result.skus)
    click.echo(f"set {result.rows} stock levels for {len(result.skus)} SKUs; "
               f"{woken} backordered orders retried")


# --- database ---------------------------------------------------------------------------------
@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations up to the newest schema."""
    from domain.migrate import upgrade

    upgrade(_settings())
    click.echo("database is at the newest schema")


# --- processes --------------------------------------------------------------------------------
def _exec_celery(args: list[str]) -> None:
    _settings()  # validate before handing over
    os.execvp(sys.executable, [sys.executable, "-m", "celery", "-A", "workers.app", *args])


@main.command()
@click.option("--queues", "-Q", default=None, help="Comma-separated queues (default: all).")
@click.option("--concurrency", "-c", default=2, show_default=True)
@click.option("--loglevel", default="info", show_default=True)
def worker(queues: str | None, concurrency: int, loglevel: str) -> None:
    """Run a Celery worker of the fleet."""
    from config.celery import QUEUES

    _exec_celery(["worker", "-Q", queues or ",".join(QUEUES), "-c", str(concurrency),
                  "--loglevel", loglevel])


@main.command()
@click.option("--loglevel", default="info", show_default=True)
def beat(loglevel: str) -> None:
    """Run the beat scheduler (run exactly one per fleet)."""
    settings = _settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    _exec_celery(["beat", "-s", str(settings.var_dir / "beat-schedule"), "--loglevel", loglevel])


@main.command()
@click.option("--port", default=5555, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True)
def flower(port: int, address: str) -> None:
    """Run the Flower dashboard."""
    _exec_celery(["flower", f"--port={port}", f"--address={address}", "--max_tasks=10000"])


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True)
@click.option("--time-scale", default=1.0, show_default=True,
              help="Carrier hours that pass per real hour (tracking progresses faster).")
def carrier(host: str, port: int, time_scale: float) -> None:
    """Run the sandbox carrier HTTP server."""
    from workers.sandbox_carrier import serve

    serve(host, port, time_scale)


@main.command()
@click.option("--workers", default=2, show_default=True, help="Worker processes.")
@click.option("--concurrency", default=1, show_default=True, help="Pool size per worker.")
@click.option("--flower/--no-flower", default=True, show_default=True)
@click.option("--flower-port", default=5555, show_default=True)
@click.option("--carrier-time-scale", default=60.0, show_default=True)
def up(workers: int, concurrency: int, flower: bool, flower_port: int,
       carrier_time_scale: float) -> None:
    """Run the whole local fleet in the foreground until Ctrl-C or SIGTERM."""
    from workers.fleet import Fleet

    settings = _settings()
    fleet = Fleet(settings, workers=workers, concurrency=concurrency, flower=flower,
                  flower_port=flower_port, carrier_time_scale=carrier_time_scale)
    stop = {"now": False}

    def _stop(*_: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    fleet.start()
    console.print(f"[green]fleet up[/green]: {workers} workers, beat, sandbox carrier at "
                  f"{settings.carrier_url}" + (f", Flower at http://127.0.0.1:{flower_port}"
                                              if flower else ""))
    if fleet.started_redis:
        console.print(f"started Redis ({fleet.started_redis})")
    console.print(f"database: {settings.database_url}")
    console.print("submit orders from another shell: orderfleet submit orders.jsonl")
    try:
        while not stop["now"]:
            dead = [n for n, ok in fleet.alive().items() if not ok]
            if dead:
                console.print(f"[red]{', '.join(dead)} stopped; shutting the fleet down[/red]")
                break
            time.sleep(0.5)
    finally:
        console.print("stopping the fleet...")
        fleet.stop()


@main.command()
@click.option("--orders", "n_orders", default=2000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--flower/--no-flower", default=True, show_default=True)
@click.option("--keep-db", is_flag=True, help="Keep the demo database (default: start afresh).")
def demo(n_orders: int, seed: int, workers: int, as_json: bool, flower: bool,
         keep_db: bool) -> None:
    """Start a local fleet, push synthetic orders through it, and print a summary."""
    from workers.demo import run_demo

    summary = run_demo(n_orders=n_orders, seed=seed, workers=workers, flower=flower,
                       fresh_db=not keep_db, quiet=as_json)
    if as_json:
        click.echo(json.dumps(summary))


@main.command()
@click.option("--orders", "n_orders", default=5000, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--concurrency", default=1, show_default=True)
@click.option("--database-url", default=None,
              help="A database named *bench* (wiped); default var/bench.db (SQLite).")
@click.option("--json", "as_json", is_flag=True)
def bench(n_orders: int, workers: int, concurrency: int, database_url: str | None,
          as_json: bool) -> None:
    """Orders/s through the pipeline vs a no-op chain of five tasks, on one fleet."""
    from workers.bench import run_bench

    result = run_bench(n_orders=n_orders, workers=workers, concurrency=concurrency,
                       quiet=as_json, database_url=database_url)
    if as_json:
        click.echo(json.dumps(result))


if __name__ == "__main__":
    main()
