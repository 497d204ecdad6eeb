"""CLI for pick waves, the returns lane and routing: ``orderfleet waves|returns|routing``."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from workers.cli_settings import load_settings as _settings


# --- waves ------------------------------------------------------------------------------------
@click.group()
def waves() -> None:
    """Pick waves: list them, print a wave's pick list (CSV or PDF)."""


@waves.command("list")
@click.option("--status", "status_", type=click.Choice(["open", "closed", "labelled"]))
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def waves_list(status_: str | None, limit: int, as_json: bool) -> None:
    """Recent waves with their key (warehouse, carrier service, zone, lane) and size."""
    from sqlalchemy import select

    from domain.db import unit_of_work
    from domain.models import Wave

    with unit_of_work(_settings()) as uow:
        query = select(Wave).order_by(Wave.id.desc()).limit(limit)
        if status_:
            query = query.where(Wave.status == status_)
        rows = [{"id": w.id, "warehouse": w.warehouse, "carrier": w.carrier,
                 "service": w.service, "zone": w.zone, "lane": w.lane, "status": w.status,
                 "size": w.size, "target_size": w.target_size, "close_reason": w.close_reason}
                for w in uow.session.execute(query).scalars()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table(*rows[0].keys()) if rows else None
    for r in rows:
        assert table is not None
        table.add_row(*(str(v if v is not None else "") for v in r.values()))
    Console().print(table if table else "no waves")


@waves.command("picklist")
@click.argument("wave_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["csv", "pdf"]), default="csv",
              show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file (default: CSV to stdout; a PDF needs a file).")
def waves_picklist(wave_id: int, fmt: str, output: Path | None) -> None:
    """A wave's pick list sorted by bin location."""
    from domain.db import unit_of_work
    from domain.picklist import NoSuchWave, pick_list, to_csv, to_pdf

    try:
        with unit_of_work(_settings()) as uow:
            wave, rows = pick_list(uow.session, wave_id)
            data = to_csv(rows).encode() if fmt == "csv" else to_pdf(wave, rows)
    except NoSuchWave as exc:
        raise click.ClickException(str(exc)) from None
    if output is None:
        if fmt == "pdf":
            raise click.ClickException("give -o FILE for a PDF")
        click.echo(data.decode(), nl=False)
        return
    output.write_bytes(data)
    click.echo(f"wave {wave_id}: {len(rows)} pick lines written to {output}", err=True)


# --- returns ----------------------------------------------------------------------------------
@click.group()
def returns() -> None:
    """The returns lane: request, receive (restock or write off), list."""


@returns.command("request")
@click.argument("order_id")
@click.option("--store", help="Disambiguate a store order id used by several stores.")
@click.option("--reason", default="customer return", show_default=True)
def returns_request(order_id: str, store: str | None, reason: str) -> None:
    """Open a return for a delivered order; its return label is bought on the returns queue."""
    from domain.db import unit_of_work
    from domain.returns import ReturnRefused, request_return
    from domain.status import find_order

    try:
        with unit_of_work(_settings()) as uow:
            row = find_order(uow.session, order_id, store=store)
            if row is None:
                raise click.ClickException(f"no order {order_id}")
            oid = row.id
            return_id = request_return(uow, oid, reason)
    except ReturnRefused as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"return {return_id} opened for order {oid}")


@returns.command("receive")
@click.argument("return_id", type=int)
@click.option("--condition", type=click.Choice(["resellable", "damaged"]), required=True)
def returns_receive(return_id: int, condition: str) -> None:
    """The parcel is back and inspected: restock (resellable) or write off (damaged), then
    the store is told to refund."""
    from domain.db import unit_of_work
    from domain.returns import ReturnRefused, receive_return

    try:
        with unit_of_work(_settings()) as uow:
            changed = receive_return(uow, return_id, condition)
    except ReturnRefused as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"return {return_id} " + ("received" if changed else "was received already"))


@returns.command("list")
@click.option("--json", "as_json", is_flag=True)
def returns_list(as_json: bool) -> None:
    """Returns and where each stands."""
    from sqlalchemy import select

    from domain.db import unit_of_work
    from domain.models import ReturnRequest

    with unit_of_work(_settings()) as uow:
        rows = [{"id": r.id, "order_id": r.order_id, "status": r.status,
                 "tracking_number": r.tracking_number, "condition": r.condition,
                 "refund_usd": str(r.refund_usd) if r.refund_usd is not None else None,
                 "requested_at": r.requested_at.isoformat()}
                for r in uow.session.execute(select(ReturnRequest).order_by(ReturnRequest.id))
                .scalars()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table("id", "order", "status", "tracking", "condition", "refund USD", "requested")
    for r in rows:
        table.add_row(*(str(v or "") for v in r.values()))
    Console().print(table if rows else "no returns")


# --- routing ----------------------------------------------------------------------------------
@click.group()
def routing() -> None:
    """Routing strategies: the A/B report, retraining, an offline evaluation."""


def _fmt(i: object) -> str:
    v, lo, hi = (getattr(i, k) for k in ("value", "low", "high"))
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


@routing.command("report")
@click.option("--json", "as_json", is_flag=True)
def routing_report(as_json: bool) -> None:
    """Rules vs learned on recorded outcomes: cost per order, on-time and exception rates,
    each with a 95% confidence interval."""
    from domain.db import unit_of_work
    from domain.route_learning import compare_arms, recorded_outcomes

    with unit_of_work(_settings()) as uow:
        arms = compare_arms(recorded_outcomes(uow.session))
    if as_json:
        click.echo(json.dumps({a: asdict(r) for a, r in arms.items()}))
        return
    table = Table("strategy", "orders", "cost/order USD [95% CI]", "on-time [95% CI]",
                  "exceptions [95% CI]")
    for r in arms.values():
        table.add_row(r.arm, str(r.orders), _fmt(r.cost), _fmt(r.on_time), _fmt(r.exceptions))
    Console().print(table)


@routing.command("retrain")
def routing_retrain() -> None:
    """Train the learned strategy on the recorded outcomes now (beat does it on schedule)."""
    from domain.db import unit_of_work
    from domain.route_learning import retrain

    settings = _settings()
    with unit_of_work(settings) as uow:
        model_id, rows = retrain(uow.session, settings.routing_min_training_rows)
    if model_id is None:
        click.echo(f"not trained: {rows} outcomes, {settings.routing_min_training_rows} needed")
        sys.exit(1)
    click.echo(f"model {model_id} trained on {rows} outcomes")


@routing.command("evaluate")
@click.option("--history", default=6000, show_default=True, help="Generated past shipments.")
@click.option("--orders", default=4000, show_default=True, help="Generated new orders.")
@click.option("--seed", default=7, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def routing_evaluate(history: int, orders: int, seed: int, as_json: bool) -> None:
    """Offline evaluation on a generated history whose ground truth the strategies never see."""
    from benchmarks.routing_eval import evaluate, print_evaluation
    from config.settings import get_settings

    result = evaluate(history=history, orders=orders, seed=seed, settings=get_settings())
    if as_json:
        click.echo(json.dumps(result))
    else:
        print_evaluation(result)


COMMANDS = (waves, returns, routing)
