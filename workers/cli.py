"""The ``orderfleet`` command line."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TypedDict

import click
from rich.console import Console
from rich.table import Table

from workers.cli_perf import bench_options, bench_soak, bench_stages
from workers.cli_settings import load_settings as _settings

console = Console(stderr=True)


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
@click.option("--format", "fmt", type=click.Choice(["auto", "json", "csv"]), default="auto",
              show_default=True, help="json: object/array/JSONL; csv: the order feed whose "
              "columns domain/platforms.py documents; auto: by the file extension.")
def submit(path: str, store: str | None, as_json: bool, fmt: str) -> None:
    """Submit paid orders from PATH (or - for stdin): JSON object, JSON array, JSONL or CSV.

    Exit status 1 when any payload was rejected (its reason is printed and stored).
    """
    from domain.platforms import OrderFeedError
    from tasks.intake import submit_csv_feed, submit_orders

    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    if fmt == "csv" or (fmt == "auto" and path.lower().endswith(".csv")):
        try:
            result, row_errors = submit_csv_feed(text, settings=_settings(), store=store)
        except OrderFeedError as exc:
            raise click.ClickException(f"{path}: {exc}") from None
    else:
        result, row_errors = submit_orders(_read_payloads(text), settings=_settings(),
                                           store=store), []
    for e in row_errors:
        click.echo(f"  rejected row {e['row']} ({e['order_id'] or 'no id'}): {e['field']}: "
                   f"{e['message']}", err=True)
    summary = {
        "accepted": len(result.accepted),
        "duplicates": len(result.duplicates),
        "rejected": [{"index": r.index, "order_id": r.source_order_id, "errors": r.errors}
                     for r in result.rejected],
        "rejected_rows": [{k: v for k, v in e.items() if k != "raw"} for e in row_errors],
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"accepted {summary['accepted']}, duplicates {summary['duplicates']}, "
                   f"rejected {len(result.rejected)}"
                   + (f" (and {len(row_errors)} CSV rows)" if row_errors else ""))
        for r in result.rejected:
            click.echo(f"  rejected #{r.index} ({r.source_order_id or 'no id'}): {r.reason}",
                       err=True)
    sys.exit(1 if result.rejected or row_errors else 0)


# --- storefront intake, cancellation, returns -------------------------------------------------
@main.command()
@click.option("--host", default=None, help="Default: ORDERFLEET_API_HOST (127.0.0.1).")
@click.option("--port", type=int, default=None, help="Default: ORDERFLEET_API_PORT (8080).")
@click.option("--workers", default=1, show_default=True, help="uvicorn worker processes.")
@click.option("--access-log/--no-access-log", default=False, show_default=True)
def serve(host: str | None, port: int | None, workers: int, access_log: bool) -> None:
    """Run the HTTP intake service: Shopify/WooCommerce webhooks and POST /orders."""
    from workers.api import serve as run
    from workers.ops_auth import describe, with_ops_credentials

    settings, generated = with_ops_credentials(_settings(), export=True)
    if generated:
        console.print(f"order health page (/ops/health): {describe(settings)} (generated: set "
                      "ORDERFLEET_OPS_BASIC_AUTH=user:password to choose)", soft_wrap=True)
    run(settings, host or settings.api_host, port or settings.api_port, workers=workers,
        access_log=access_log)


def _order_ids(session: Any, order_ids: tuple[str, ...], store: str | None) -> list[int]:
    from domain.status import find_order

    ids = []
    for raw in order_ids:
        row = find_order(session, raw, store=store)
        if row is None:
            raise click.ClickException(f"no order {raw}")
        ids.append(row.id)
    return ids


@main.command()
@click.argument("order_ids", nargs=-1, required=True)
@click.option("--store", help="Disambiguate a store order id used by several stores.")
@click.option("--reason", default="cancelled by ops", show_default=True)
def cancel(order_ids: tuple[str, ...], store: str | None, reason: str) -> None:
    """Cancel orders wherever they are: release stock, void unused labels, never ship.

    An order already handed to the carrier becomes a return (receive it with
    ``orderfleet receive-return`` when the parcel is back: restock and refund notice).
    """
    from domain.cancellation import cancel_orders
    from domain.db import unit_of_work

    with unit_of_work(_settings()) as uow:
        out = cancel_orders(uow, _order_ids(uow.session, order_ids, store), reason, notify=True)
    click.echo(f"cancelled {len(out.cancelled)} (labels to void: {len(out.to_void)}), "
               f"{len(out.returns)} become returns, {len(out.unchanged)} already final"
               + (f"; split orders cancelled through their parts: {out.split}"
                  if out.split else ""))
    for order_id, state in out.unchanged.items():
        click.echo(f"  order {order_id} is {state}: nothing to cancel", err=True)


@main.command("receive-return")
@click.argument("order_ids", nargs=-1, required=True)
@click.option("--store", help="Disambiguate a store order id used by several stores.")
@click.option("--condition", type=click.Choice(["resellable", "damaged"]),
              default="resellable", show_default=True)
def receive_return(order_ids: tuple[str, ...], store: str | None, condition: str) -> None:
    """Returned parcels are back, by order: the returns lane's receive (``orderfleet returns
    receive``) for each order's return, opened now if it had none (cancelled after
    handover). Restock or write-off and the refund notice follow, once, on the returns queue.
    """
    from domain.db import unit_of_work
    from domain.returns import ReturnRefused, receive_order_return

    settings = _settings()
    with unit_of_work(settings) as uow:
        ids = _order_ids(uow.session, order_ids, store)
    received = 0
    for raw, order_id in zip(order_ids, ids, strict=True):
        try:
            with unit_of_work(settings) as uow:  # one order's failure rolls back only its own
                done = receive_order_return(uow, order_id, condition)
        except ReturnRefused as exc:
            click.echo(f"  order {raw}: {exc}", err=True)
            continue
        received += done
        if not done:
            click.echo(f"  order {raw} was received already", err=True)
    click.echo(f"{received} returns received ({condition}); settling follows on the returns "
               "queue")
    sys.exit(0 if received == len(ids) else 1)


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
    if info["parent_id"] is not None:
        console.print(f"  part {info['part_no']} of split order id {info['parent_id']}")
    for part in info["parts"]:
        console.print(f"  part {part['part_no']}: order {part['source_order_id']} (id "
                      f"{part['id']}) from {part['warehouse'] or '-'}: [bold]{part['state']}"
                      f"[/bold]" + (f", tracking {part['tracking_number']}"
                                   if part["tracking_number"] else ""))
    for dl in info["dead_letters"]:
        console.print(f"  [red]dead letter {dl['id']}[/red] ({dl['status']}): {dl['task']} "
                      f"{dl['reason']}: {dl['error']}")
    table = Table("at", "stage", "from", "to", "detail")
    for ev in info["events"]:
        table.add_row(str(ev["at"]), ev["stage"], ev["from_state"] or "", ev["to_state"],
                      json.dumps(ev["detail"]) if ev["detail"] else "")
    Console().print(table)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def report(as_json: bool) -> None:
    """Counts by state, labels, reservations, rejects, stage latencies p50/p95, and ops
    figures: cancellation rate, SLA attainment, handling-time variance against the baseline,
    delayed status updates, cost share of GMV, the exception heatmap."""
    from domain.db import unit_of_work
    from domain.report import build_report

    settings = _settings()
    with unit_of_work(settings) as uow:
        rep = build_report(uow.session, settings)
    if as_json:
        click.echo(json.dumps(rep))
        return
    from workers.demo import render_report

    render_report(rep, Console())


class AlertRow(TypedDict):
    """An open alert as ``orderfleet alerts`` shows it (and prints it with --json)."""

    kind: str
    key: str
    severity: str
    message: str
    raised_at: str  # ISO 8601
    detail: dict[str, Any] | None


@main.command()
@click.option("--kind", default=None, help="Only alerts of this kind.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--check/--no-check", default=True, show_default=True,
              help="First evaluate the alert rules (those of ops/prometheus/rules) against "
                   "the database and the workers, raising and resolving rule:* alerts.")
def alerts(kind: str | None, as_json: bool, check: bool) -> None:
    """Open alerts: what a person must look at."""
    from domain.alerts import open_alerts
    from domain.db import unit_of_work

    if check:
        from workers.cli_ops import check_health_rules

        firing, raised, resolved = check_health_rules(_settings())
        console.print(f"alert rules: {firing} firing ({raised} newly raised), "
                      f"{resolved} resolved")
    with unit_of_work(_settings()) as uow:
        rows = [AlertRow(kind=a.kind, key=a.key, severity=a.severity, message=a.message,
                         raised_at=a.raised_at.isoformat(), detail=a.detail)
                for a in open_alerts(uow.session, kind)]
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table("raised", "severity", "kind", "about", "message")
    for r in rows:
        table.add_row(r["raised_at"][:19], r["severity"], r["kind"], r["key"], r["message"])
    Console().print(table if rows else "no open alerts")


# --- review desk ------------------------------------------------------------------------------
@main.group()
def review() -> None:
    """The manual review desk: orders the fraud check held for a person."""


@review.command("list")
@click.option("--limit", default=100, show_default=True)
@click.option("--store", default=None, help="Only this store's orders.")
@click.option("--overdue", is_flag=True, help="Only orders waiting past review_overdue_s.")
@click.option("--json", "as_json", is_flag=True)
def review_list(limit: int, store: str | None, overdue: bool, as_json: bool) -> None:
    """Orders waiting for review, oldest first."""
    from domain.db import unit_of_work
    from domain.review import pending_reviews

    settings = _settings()
    with unit_of_work(settings) as uow:
        rows = pending_reviews(uow.session, settings, limit=limit, store=store,
                               overdue_only=overdue)
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table("id", "store / order", "waiting", "value", "score", "why held")
    for r in rows:
        waited = f"{r['waiting_s'] // 60} min" + (" [red]overdue[/red]" if r["overdue"] else "")
        table.add_row(str(r["id"]), f"{r['store']} / {r['source_order_id']}", waited,
                      f"{r['total']} {r['currency']}", str(r["fraud_score"]),
                      r["hold_reason"] or "")
    Console().print(table if rows else "no orders waiting for review")


@review.command("show")
@click.argument("order_id")
@click.option("--store", default=None, help="Disambiguate a store order id.")
@click.option("--json", "as_json", is_flag=True)
def review_show(order_id: str, store: str | None, as_json: bool) -> None:
    """One order with its verdict, addresses, payment, customer history and decisions."""
    from domain.db import unit_of_work
    from domain.review import review_detail

    settings = _settings()
    with unit_of_work(settings) as uow:
        info = review_detail(uow.session, settings, order_id, store)
    if info is None:
        raise click.ClickException(f"no order {order_id}")
    if as_json:
        click.echo(json.dumps(info, default=str))
        return
    out = Console()
    out.print(f"[bold]order {info['store']} / {info['source_order_id']}[/bold] (id {info['id']}):"
              f" [bold]{info['state']}[/bold], {info['total']} {info['currency']} "
              f"({info['total_usd']} USD), waiting {info['waiting_s'] // 60} min")
    out.print(f"held: {info['hold_reason'] or '-'}")
    out.print(f"fraud score {info['fraud_score']}:")
    for reason in info["fraud_reasons"]:
        out.print(f"  - {reason}")
    cust, hist = info["customer"], info["history"]
    out.print(f"customer {cust.get('id')} <{cust.get('email', '')}>, store count "
              f"{cust.get('order_count', 0)}; history: "
              + ("none" if hist is None else f"{hist['accepted_orders']} accepted orders, "
                 f"largest {hist['largest_usd']} USD"))
    for label in ("shipping_address", "billing_address"):
        a = info[label]
        if a:
            out.print(f"{label.replace('_', ' ')}: " + ", ".join(
                str(a[k]) for k in ("name", "line1", "line2", "city", "region", "postal_code",
                                    "country", "phone") if a.get(k)))
    pay, client = info["payment"] or {}, info["client"] or {}
    out.print(f"payment: {pay.get('gateway', '')} AVS {pay.get('avs_result') or '-'} CVV "
              f"{pay.get('cvv_result') or '-'} card {pay.get('card_bin', '')}…"
              f"{pay.get('card_last4', '')} attempts {pay.get('attempts', 1)}; "
              f"IP {client.get('browser_ip') or '-'}")
    for ln in info["lines"]:
        out.print(f"  {ln['quantity']} x {ln['sku']} @ {ln['unit_price']}")
    for d in info["decisions"]:
        out.print(f"decision: {d['decision']} by {d['decided_by']} at {d['decided_at']}: "
                  f"{d['reason']}")


def _review_decide(decision: str, order_id: str, by: str | None, reason: str,
                   store: str | None, as_json: bool) -> None:
    import getpass

    from domain.db import unit_of_work
    from domain.review import ReviewError, approve_order, cancel_order

    decide = approve_order if decision == "approve" else cancel_order
    who = by or getpass.getuser()
    try:
        with unit_of_work(_settings()) as uow:
            result = decide(uow, order_id, by=who, reason=reason, store=store)
    except ReviewError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    extra = f", {result.released_units} units released" if result.released_units else ""
    click.echo(f"order {result.order_id}: {result.decision}d by {result.decided_by} "
               f"-> {result.to_state}{extra}")


@review.command("approve")
@click.argument("order_id")
@click.option("--by", default=None, help="Who decides (default: the login name).")
@click.option("--reason", required=True, help="Why: kept with the decision.")
@click.option("--store", default=None, help="Disambiguate a store order id.")
@click.option("--json", "as_json", is_flag=True)
def review_approve(order_id: str, by: str | None, reason: str, store: str | None,
                   as_json: bool) -> None:
    """Approve a held order: it resumes at stock reservation."""
    _review_decide("approve", order_id, by, reason, store, as_json)


@review.command("cancel")
@click.argument("order_id")
@click.option("--by", default=None, help="Who decides (default: the login name).")
@click.option("--reason", required=True, help="Why: kept with the decision.")
@click.option("--store", default=None, help="Disambiguate a store order id.")
@click.option("--json", "as_json", is_flag=True)
def review_cancel(order_id: str, by: str | None, reason: str, store: str | None,
                  as_json: bool) -> None:
    """Cancel a held order and release any stock it holds."""
    _review_decide("cancel", order_id, by, reason, store, as_json)


@review.command("address")
@click.argument("order_id")
@click.argument("address_json")
@click.option("--by", default=None, help="Who corrects (default: the login name).")
@click.option("--store", default=None, help="Disambiguate a store order id.")
def review_address(order_id: str, address_json: str, by: str | None,
                   store: str | None) -> None:
    """Correct the shipping address (JSON: line1, city, country, ...) before approving."""
    import getpass

    from domain.db import unit_of_work
    from domain.review import ReviewError, correct_address

    try:
        address = json.loads(address_json)
        with unit_of_work(_settings()) as uow:
            out = correct_address(uow, order_id, address, by=by or getpass.getuser(),
                                  store=store)
    except ValueError as exc:
        raise click.ClickException(f"the address is not JSON: {exc}") from None
    except ReviewError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"order {out['order_id']}: shipping address corrected ({out['state']})")


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
        raise click.ClickException(f"{file}: {exc}") from None
    woken = wake_backordered(settings, result.skus)
    click.echo(f"set {result.rows} stock levels for {len(result.skus)} SKUs; "
               f"{woken} backordered orders retried")
    for r in result.refused:
        click.echo(f"  refused {r['sku']} at {r['warehouse']}: feed says {r['on_hand']} on "
                   f"hand, live orders hold {r['reserved']} (alert raised)", err=True)
    sys.exit(1 if result.refused else 0)


# --- SKUs -------------------------------------------------------------------------------------
@main.group()
def sku() -> None:
    """SKU health: reservation failure rate, freezes and the orders held for them."""


@sku.command("list")
@click.option("--frozen", "frozen_only", is_flag=True, help="Only frozen SKUs.")
@click.option("--json", "as_json", is_flag=True)
def sku_list(frozen_only: bool, as_json: bool) -> None:
    """Stock, recent failure rate, freeze and held orders per SKU."""
    from domain.db import unit_of_work
    from domain.sku_health import list_skus

    settings = _settings()
    with unit_of_work(settings) as uow:
        rows = list_skus(uow.session, frozen_only=frozen_only, settings=settings)
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table("sku", "on hand", "reserved", "available",
                  f"failed (last {settings.sku_freeze_window})", "frozen", "held orders")
    for r in rows:
        frozen = f"[red]yes[/red] {r['frozen_reason'] or ''}" if r["frozen"] else "no"
        table.add_row(r["sku"], str(r["on_hand"]), str(r["reserved"]), str(r["available"]),
                      f"{r['window_failures']} ({r['failure_rate']:.1%})", frozen,
                      str(r["held_orders"]))
    Console().print(table if rows else "no SKUs")


@sku.command("freeze")
@click.argument("sku_code", metavar="SKU")
@click.option("--reason", default="", help="Why (kept with the freeze and in the alert).")
def sku_freeze(sku_code: str, reason: str) -> None:
    """Freeze a SKU: its new orders are held until it is unfrozen."""
    from domain.db import unit_of_work
    from domain.sku_health import freeze_sku

    try:
        with unit_of_work(_settings()) as uow:
            changed = freeze_sku(uow.session, sku_code, reason)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"SKU {sku_code} frozen" if changed else f"SKU {sku_code} was frozen already")


@sku.command("unfreeze")
@click.argument("sku_code", metavar="SKU")
def sku_unfreeze(sku_code: str) -> None:
    """Unfreeze a SKU: clear its failure window and resume the orders held for it."""
    from domain.db import unit_of_work
    from domain.lifecycle import State
    from domain.pipeline import advance
    from domain.sku_health import unfreeze_sku
    from tasks.inventory import wake_backordered

    settings = _settings()
    try:
        with unit_of_work(settings) as uow:
            result = unfreeze_sku(uow.session, sku_code)
            advance(uow, State.FRAUD_CHECKED, result.resumed)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    woken = wake_backordered(settings, [sku_code])
    state = "unfrozen" if result.was_frozen else "was not frozen"
    click.echo(f"SKU {sku_code} {state}; {len(result.resumed)} held orders resumed, "
               f"{len(result.still_held)} still held for other frozen SKUs, "
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
@click.option("--queues", "-Q", default=None,
              help="Comma-separated queues, consumed in this order (default: all, control and "
                   "fast lanes first, non-core last).")
@click.option("--concurrency", "-c", default=2, show_default=True)
@click.option("--autoscale", default=None, is_flag=False, flag_value="settings",
              metavar="MAX,MIN", help="Grow the pool up to MAX under load, shrink to MIN when "
              "idle; without a value, ORDERFLEET_WORKER_AUTOSCALE (4,1).")
@click.option("--loglevel", default="info", show_default=True)
@click.option("--hostname", "-n", default=None, help="Node name (Celery's -n), e.g. w1@%h.")
def worker(queues: str | None, concurrency: int, autoscale: str | None, loglevel: str,
           hostname: str | None) -> None:
    """Run a Celery worker of the fleet."""
    from config.celery import WORKER_QUEUE_ORDER

    settings = _settings()
    if autoscale == "settings":
        autoscale = settings.worker_autoscale
    if autoscale is not None:
        high, sep, low = autoscale.partition(",")
        if not (high.isdigit() and (not sep or low.isdigit())) or (sep and int(low) > int(high)):
            raise click.BadParameter(f"{autoscale!r}: expected MAX,MIN", param_hint="--autoscale")
    pool = ["--autoscale", autoscale] if autoscale else ["-c", str(concurrency)]
    _exec_celery(["worker", "-Q", queues or ",".join(WORKER_QUEUE_ORDER), *pool,
                  "--loglevel", loglevel, *(["-n", hostname] if hostname else [])])


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
    """Run the Flower dashboard: basic auth always on, state kept in var_dir."""
    from workers.ops_auth import describe, flower_args, flower_env, with_ops_credentials

    settings, generated = with_ops_credentials(_settings())
    if generated:
        console.print(f"Flower: {describe(settings)} (generated: set "
                      "ORDERFLEET_OPS_BASIC_AUTH=user:password to choose)", soft_wrap=True)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(flower_env(settings))
    _exec_celery(["flower", *flower_args(settings, port, address)])


@main.command()
@click.option("--host", default=None, help="Default: ORDERFLEET_METRICS_HOST (127.0.0.1).")
@click.option("--port", type=int, default=None, help="Default: ORDERFLEET_METRICS_PORT (9808).")
def exporter(host: str | None, port: int | None) -> None:
    """Serve the fleet's Prometheus metrics (/metrics), read from PostgreSQL and Redis.

    Run one per fleet, whatever the number of workers; Prometheus scrapes it.
    """
    from workers.metrics import run_exporter

    settings = _settings()
    run_exporter(settings, host or settings.metrics_host, port or settings.metrics_port)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True)
@click.option("--time-scale", default=1.0, show_default=True,
              help="Carrier hours that pass per real hour (tracking progresses faster).")
@click.argument("options", nargs=-1, type=click.UNPROCESSED)
def carrier(host: str, port: int, time_scale: float, options: tuple[str, ...]) -> None:
    """Run the sandbox carrier HTTP server.

    Fault injection for the run: --latency-ms, --latency-jitter-ms, --error-rate,
    --rate-limit-rate, --retry-after-s, --timeout-rate, --lost-rate, --hang-s,
    --fault-carriers, --fault-seed (see `python -m sandbox.carrier --help`);
    change them live with `orderfleet carrier-faults`.
    """
    from sandbox.carrier import main as carrier_main

    carrier_main(["--host", host, "--port", str(port), "--time-scale", str(time_scale),
                  *options])


@main.command()
@click.argument("order_ids", nargs=-1, required=True)
@click.option("--store", help="Disambiguate store order ids used by several stores.")
def relabel(order_ids: tuple[str, ...], store: str | None) -> None:
    """Send label_failed orders through the label stage again (after fixing the cause)."""
    from domain.db import unit_of_work
    from tasks.labels import retry_failed_labels

    with unit_of_work(_settings()) as uow:
        moved = retry_failed_labels(uow, _order_ids(uow.session, order_ids, store))
    click.echo(f"{len(moved)} orders sent back to the label stage")
    if len(moved) < len(order_ids):
        console.print("[yellow]orders not in label_failed were left as they are[/yellow]")


@main.command("carrier-faults")
@click.option("--set", "settings_", multiple=True, metavar="NAME=VALUE",
              help="A fault setting, e.g. error_rate=0.3 or carriers=sbx-air (repeatable).")
@click.option("--clear", is_flag=True, help="Stop injecting faults.")
@click.option("--url", default=None, help="The sandbox carrier (default: carrier_url).")
def carrier_faults(settings_: tuple[str, ...], clear: bool, url: str | None) -> None:
    """Show or change the sandbox carrier's fault injection while it runs."""
    import httpx

    base = (url or _settings().carrier_url).rstrip("/")
    if clear:
        response = httpx.delete(f"{base}/v1/admin/faults", timeout=10)
    elif settings_:
        body: dict[str, Any] = {}
        for item in settings_:
            name, sep, value = item.partition("=")
            if not sep:
                raise click.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--set")
            if name == "carriers":
                body[name] = [c for c in value.split(",") if c]
            else:
                try:
                    body[name] = json.loads(value)
                except json.JSONDecodeError:
                    raise click.BadParameter(f"{name}: {value!r} is not a number",
                                             param_hint="--set") from None
        response = httpx.put(f"{base}/v1/admin/faults", json=body, timeout=10)
    else:
        response = httpx.get(f"{base}/v1/admin/faults", timeout=10)
    if response.status_code >= 400:
        raise click.ClickException(f"carrier refused: {response.json().get('error')}")
    click.echo(json.dumps(response.json()))


class BreakerRow(TypedDict):
    """A carrier's breaker as ``orderfleet breakers`` shows it (and prints it with --json)."""

    carrier: str
    state: str
    opened_at: float | None
    open_until: float | None
    calls: int
    failures: int
    opened: int
    history: list[dict[str, Any]]  # state changes, oldest first: at, from, to, reason


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--history", default=10, show_default=True, help="State changes shown per carrier.")
def breakers(as_json: bool, history: int) -> None:
    """The carriers' circuit breakers (shared by every worker): state and recent changes."""
    from domain.carriers.shared import shared_breaker

    breaker = shared_breaker(_settings())
    rows: list[BreakerRow] = []
    for name in breaker.names():
        st = breaker.status(name)
        rows.append(BreakerRow(carrier=name, state=st.state, opened_at=st.opened_at,
                               open_until=st.open_until, calls=st.calls_total,
                               failures=st.failures_total, opened=st.opened_total,
                               history=breaker.transitions(name)[-history:]))
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table("carrier", "state", "calls", "failures", "opened", "last change")
    for r in rows:
        last = r["history"][-1] if r["history"] else None
        when = time.strftime("%H:%M:%S", time.gmtime(last["at"])) if last else ""
        table.add_row(r["carrier"], r["state"], str(r["calls"]), str(r["failures"]),
                      str(r["opened"]), f"{when} {last['reason']}" if last else "")
    Console().print(table if rows else "no carrier calls recorded yet")


@main.command()
@click.option("--workers", default=2, show_default=True, help="Worker processes.")
@click.option("--concurrency", default=1, show_default=True, help="Pool size per worker.")
@click.option("--flower/--no-flower", default=True, show_default=True)
@click.option("--flower-port", default=5555, show_default=True)
@click.option("--carrier-time-scale", default=60.0, show_default=True)
@click.option("--api/--no-api", default=True, show_default=True,
              help="Run the HTTP intake service (orderfleet serve) on ORDERFLEET_API_PORT.")
@click.option("--metrics/--no-metrics", default=True, show_default=True,
              help="Run the Prometheus exporter on ORDERFLEET_METRICS_PORT.")
def up(workers: int, concurrency: int, flower: bool, flower_port: int,
       carrier_time_scale: float, api: bool, metrics: bool) -> None:
    """Run the whole local fleet in the foreground until Ctrl-C or SIGTERM."""
    from workers.fleet import Fleet
    from workers.ops_auth import describe

    settings = _settings()
    fleet = Fleet(settings, workers=workers, concurrency=concurrency, flower=flower,
                  flower_port=flower_port, carrier_time_scale=carrier_time_scale, api=api,
                  exporter=metrics)
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
    if api:
        console.print(f"intake API at http://{settings.api_host}:{settings.api_port} "
                      "(POST /webhooks/shopify/{shop}, /webhooks/woocommerce/{store}, /orders)")
    if metrics:
        console.print(f"metrics at http://{settings.metrics_host}:{settings.metrics_port}/metrics")
    if flower or api:
        console.print(("Flower and " if flower else "") + "the order health page "
                      f"(/ops/health): {describe(fleet.settings)}"
                      + (" (generated: set ORDERFLEET_OPS_BASIC_AUTH=user:password to choose)"
                         if fleet.generated_ops_credentials else ""), soft_wrap=True)
    if "smtp" in fleet.procs:
        console.print(f"SMTP sink on port {settings.smtp_port} (non-core e-mails kept in "
                      f"{fleet.mail_file}); marketing list at {settings.marketing_url}")
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
@click.option("--database-url", default=None,
              help="A PostgreSQL database whose name contains 'demo' (wiped unless --keep-db); "
                   "default var/demo.db (SQLite).")
@click.option("--loglevel", default="warning", show_default=True,
              help="The fleet's log level (logs in var/logs).")
@click.option("--surge", is_flag=True, help="Run a short Black-Friday spike with surge control "
              "(load, breaker, parked and replayed jobs, VIP first) instead.")
def demo(n_orders: int, seed: int, workers: int, as_json: bool, flower: bool,
         keep_db: bool, database_url: str | None, loglevel: str, surge: bool) -> None:
    """Start a local fleet, push synthetic orders through it, and print a summary.

    The demo keeps to its own data whatever ORDERFLEET_* says: Redis db 14 of the configured
    Redis server (refused unless empty or the demo's own) and its own database.
    """
    if surge:
        from workers.cli_surge import run_surge_demo

        summary = run_surge_demo(n_orders=n_orders, workers=workers, quiet=as_json,
                                 database_url=database_url)
        if as_json:
            click.echo(json.dumps(summary))
        return
    from workers.demo import run_demo

    summary = run_demo(n_orders=n_orders, seed=seed, workers=workers, flower=flower,
                       fresh_db=not keep_db, quiet=as_json, database_url=database_url,
                       loglevel=loglevel)
    if as_json:
        click.echo(json.dumps(summary))


@main.group(invoke_without_command=True)
@click.option("--orders", "n_orders", default=5000, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--concurrency", default=1, show_default=True)
@click.option("--database-url", default=None,
              help="A database named *bench* (wiped); default var/bench.db (SQLite).")
@click.option("--json", "as_json", is_flag=True)
@bench_options
@click.pass_context
def bench(ctx: click.Context, n_orders: int, workers: int, concurrency: int,
          database_url: str | None, as_json: bool, **more: Any) -> None:
    """Orders/s through the pipeline vs a no-op chain of five tasks, on one fleet; the Black
    Friday drain, latency against offered load and worker processes, worker memory.

    With a subcommand (``orderfleet bench fraud ...``) runs that benchmark instead.
    """
    if ctx.invoked_subcommand is not None:
        return
    from benchmarks.pipeline import run_bench

    result = run_bench(n_orders=n_orders, workers=workers, concurrency=concurrency,
                       quiet=as_json, database_url=database_url, **more)
    if as_json:
        click.echo(json.dumps(result))


@bench.command("webhooks")
@click.option("--orders", "n_orders", default=3000, show_default=True,
              help="Signed Shopify orders/paid webhooks to send.")
@click.option("--concurrency", default=32, show_default=True, help="Requests in flight.")
@click.option("--workers", default=2, show_default=True, help="Celery worker processes.")
@click.option("--database-url", default=None,
              help="A database named *bench* (wiped); default var/bench-webhooks.db (SQLite).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_webhooks(n_orders: int, concurrency: int, workers: int, database_url: str | None,
                   as_json: bool) -> None:
    """Webhooks/s accepted by `orderfleet serve`, with the fleet draining behind it."""
    from benchmarks.webhooks import run_webhook_bench

    result = run_webhook_bench(n_orders=n_orders, concurrency=concurrency, workers=workers,
                               quiet=as_json, database_url=database_url)
    if as_json:
        click.echo(json.dumps(result))


@bench.command("fraud")
@click.option("--seed", default=2, show_default=True,
              help="Stream seed (the rules were tuned on seed 1: report on others).")
@click.option("--orders", "n_orders", default=5000, show_default=True,
              help="Orders in the labelled stream (legitimate traffic plus fraud patterns).")
@click.option("--database-url", default=None,
              help="A database named *bench* (wiped); default var/bench-fraud.db (SQLite).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_fraud(seed: int, n_orders: int, database_url: str | None, as_json: bool) -> None:
    """Fraud stage accuracy (precision, recall, FPR per pattern) and CPU time per order."""
    from benchmarks.fraud import run_fraud_bench

    result = run_fraud_bench(seed=seed, n_orders=n_orders, database_url=database_url,
                             quiet=as_json)
    if as_json:
        click.echo(json.dumps(result))


@bench.command("carrier")
@click.option("--orders", "n_orders", default=300, show_default=True, help="Orders per phase.")
@click.option("--fault-rate", default=0.3, show_default=True,
              help="Share of carrier calls that fail in the faulty phase (mixed kinds).")
@click.option("--outage-s", default=10.0, show_default=True, help="Length of the sbx-air outage.")
@click.option("--workers", default=2, show_default=True, help="Celery worker processes.")
@click.option("--database-url", default=None,
              help="A database named *bench* (wiped); default orderfleet_bench_carrier on the "
                   "local PostgreSQL.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_carrier(n_orders: int, fault_rate: float, outage_s: float, workers: int,
                  database_url: str | None, as_json: bool) -> None:
    """Labels/s through a clean and a faulty carrier, and recovery from an outage."""
    from benchmarks.carrier import run_carrier_bench

    result = run_carrier_bench(n_orders=n_orders, fault_rate=fault_rate, outage_s=outage_s,
                               workers=workers, database_url=database_url, quiet=as_json)
    if as_json:
        click.echo(json.dumps(result))


@bench.command("inventory")
@click.option("--orders", "n_orders", default=5000, show_default=True,
              help="Orders reserved in each bulk run.")
@click.option("--single", "n_single", default=1000, show_default=True,
              help="Orders reserved one per transaction in the single run.")
@click.option("--processes", default=4, show_default=True,
              help="Concurrent processes in the concurrent runs.")
@click.option("--database-url", default=None,
              help="A database named *bench* (wiped); default orderfleet_bench_inventory "
                   "on the local PostgreSQL.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_inventory(n_orders: int, n_single: int, processes: int, database_url: str | None,
                    as_json: bool) -> None:
    """Reservations/s: one order per transaction, in bulk, and concurrently on a hot SKU."""
    from benchmarks.inventory import run_inventory_bench

    result = run_inventory_bench(n_orders=n_orders, n_single=n_single, processes=processes,
                                 database_url=database_url, quiet=as_json)
    if as_json:
        click.echo(json.dumps(result))


# --- reliability: dead letters, re-drive, chaos (workers/cli_reliability.py) --------------------
def _add_reliability_commands() -> None:
    from workers.cli_reliability import chaos, dlq, redrive

    for command in (dlq, redrive, chaos):
        main.add_command(command)


_add_reliability_commands()


@bench.command("fuzz")
@click.option("--inputs", "n_inputs", default=10_000, show_default=True,
              help="Requests to fire (signed and unsigned, every kind of bad input).")
@click.option("--concurrency", default=16, show_default=True, help="Requests in flight.")
@click.option("--seed", default=7, show_default=True)
@click.option("--database-url", default=None,
              help="A database named *bench* (wiped); default var/bench-fuzz.db (SQLite).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_fuzz(n_inputs: int, concurrency: int, seed: int, database_url: str | None,
               as_json: bool) -> None:
    """Bad input at a real `orderfleet serve`: response codes, 5xx, crashes, rows written."""
    from benchmarks.fuzz import run_fuzz_bench

    result = run_fuzz_bench(n_inputs=n_inputs, concurrency=concurrency, seed=seed,
                            database_url=database_url, quiet=as_json)
    if as_json:
        click.echo(json.dumps(result))
    if result["server_errors"] or result["connection_errors"] or \
            not result["server_alive_after"] or result["unsigned_rows_written"]:
        raise SystemExit(1)


from workers.cli_exceptions import exceptions  # noqa: E402 - the exceptions desk

main.add_command(exceptions)


# --- surge control (workers/cli_surge.py) ------------------------------------------------------
from workers.cli_surge import (  # noqa: E402
    bench_surge,
    load_command,
    noncore_command,
    scale_command,
)

main.add_command(load_command)
main.add_command(noncore_command)
main.add_command(scale_command)
bench.add_command(bench_surge)

bench.add_command(bench_stages)
bench.add_command(bench_soak)

# Pick waves, the returns lane and routing live in their own module.
from workers.cli_lanes import COMMANDS as _LANE_COMMANDS  # noqa: E402

for _command in _LANE_COMMANDS:
    main.add_command(_command)

if __name__ == "__main__":
    main()
