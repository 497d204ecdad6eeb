"""``orderfleet dlq``, ``orderfleet redrive`` and ``orderfleet chaos``: recovering lost and failed
work, and proving that nothing is lost or done twice when the fleet's processes fail."""

from __future__ import annotations

import getpass
import json
import sys

import click
from rich.console import Console
from rich.table import Table

from workers.cli_settings import load_settings as _settings

console = Console(stderr=True)


@click.group()
def dlq() -> None:
    """Dead letters: messages no worker could complete (failed for good, or unreadable)."""


@dlq.command("list")
@click.option("--all", "show_all", is_flag=True, help="Retried and dropped ones too.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def dlq_list(show_all: bool, limit: int, as_json: bool) -> None:
    """Open dead letters with their error and the orders they name."""
    from domain.db import unit_of_work
    from domain.deadletters import list_letters

    with unit_of_work(_settings()) as uow:
        rows = list_letters(uow.session, status=None if show_all else "open", limit=limit)
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table("id", "status", "reason", "task", "orders", "error", "at")
    for r in rows:
        orders = ", ".join(map(str, r["order_ids"][:5])) + (" ..." if len(r["order_ids"]) > 5
                                                           else "")
        table.add_row(str(r["id"]), r["status"], r["reason"], r["task"] or "", orders,
                      f"{r['error_type']}: {r['error']}"[:80], r["created_at"][:19])
    Console().print(table if rows else "no dead letters")


def _by() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "ops"


@dlq.command("retry")
@click.argument("ids", nargs=-1, type=int, required=True)
def dlq_retry(ids: tuple[int, ...]) -> None:
    """Send dead letters' messages again (after fixing the cause)."""
    from domain.db import unit_of_work
    from domain.deadletters import NotRetryable, retry

    try:
        with unit_of_work(_settings()) as uow:
            sent = retry(uow, ids, _by())
    except NotRetryable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{len(sent)} dead letters sent again: {sent}")
    sys.exit(0 if len(sent) == len(ids) else 1)


@dlq.command("drop")
@click.argument("ids", nargs=-1, type=int, required=True)
def dlq_drop(ids: tuple[int, ...]) -> None:
    """Close dead letters without sending them (kept as history)."""
    from domain.db import unit_of_work
    from domain.deadletters import drop

    with unit_of_work(_settings()) as uow:
        closed = drop(uow.session, ids, _by())
    click.echo(f"{len(closed)} dead letters dropped: {closed}")
    sys.exit(0 if len(closed) == len(ids) else 1)


@click.command()
@click.option("--dry-run", is_flag=True, help="Show what would be re-sent; send nothing.")
@click.option("--json", "as_json", is_flag=True)
def redrive(dry_run: bool, as_json: bool) -> None:
    """Re-send the stage task of every order (and wave) that no broker message carries."""
    from tasks.sweeps import redrive_stuck
    from workers.app import app

    counts = redrive_stuck(_settings(), app, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(counts))
        return
    verb = "would re-send" if dry_run else "re-sent"
    mode = counts.pop("mode")
    ids = counts.pop("ids", {})
    click.echo(f"{verb} ({mode} mode): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for name, some in ids.items():
        click.echo(f"  {name}: {' '.join(map(str, some[:50]))}{' ...' if len(some) > 50 else ''}")


@click.command()
@click.option("--scenario", "-s", "scenarios", multiple=True,
              help="Run only these scenarios (repeatable); default: all.")
@click.option("--orders", "n_orders", default=400, show_default=True,
              help="Orders streamed through each scenario.")
@click.option("--kills", default=50, show_default=True, help="kill -9 in the kill scenario.")
@click.option("--outage-s", default=60.0, show_default=True, help="Carrier outage length.")
@click.option("--workers", default=2, show_default=True)
@click.option("--concurrency", default=2, show_default=True)
@click.option("--short", is_flag=True, help="The short form CI runs: fewer orders and kills.")
@click.option("--port-base", default=None, type=int,
              help="First of the ports for its own Redis and PostgreSQL (default: free ports).")
@click.option("--set", "overrides", multiple=True, metavar="NAME=JSON",
              help="A fleet setting for the run, e.g. redrive_missing_after_s=0 (repeatable).")
@click.option("--json", "as_json", is_flag=True)
def chaos(scenarios: tuple[str, ...], n_orders: int, kills: int, outage_s: float, workers: int,
          concurrency: int, short: bool, port_base: int | None, overrides: tuple[str, ...],
          as_json: bool) -> None:
    """Break a supervised fleet on purpose and check that no order is lost or done twice.

    Starts its own redis-server and its own PostgreSQL cluster (initdb in a temporary
    directory), so that it may restart them; touches nothing of yours.
    """
    from benchmarks.chaos import SCENARIOS, ChaosOptions, run_chaos

    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise click.BadParameter(f"unknown {sorted(unknown)}; known: {', '.join(SCENARIOS)}",
                                 param_hint="--scenario")
    settings: dict[str, object] = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        try:
            settings[name] = json.loads(value) if sep else None
        except json.JSONDecodeError:
            settings[name] = value
    opts = ChaosOptions(orders=n_orders, kills=kills, outage_s=outage_s, workers=workers,
                        concurrency=concurrency, port_base=port_base, overrides=settings)
    if short:
        opts = opts.short()
    result = run_chaos(list(scenarios) or list(SCENARIOS), opts, quiet=as_json)
    if as_json:
        click.echo(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)
