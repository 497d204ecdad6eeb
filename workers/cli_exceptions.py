"""``orderfleet exceptions``: deliveries held at the door, listed, shown, replayed, dropped."""

from __future__ import annotations

import getpass
import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from workers.cli_settings import load_settings as _settings


@click.group()
def exceptions() -> None:
    """The exceptions desk: deliveries that could not become an order yet."""


@exceptions.command("list")
@click.option("--status", default="open", show_default=True,
              type=click.Choice(["open", "replayed", "superseded", "dropped", "all"]))
@click.option("--store", default=None, help="Only this store's exceptions.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def exceptions_list(status: str, store: str | None, limit: int, as_json: bool) -> None:
    """Exceptions, oldest first."""
    from domain.db import unit_of_work
    from domain.intake_exceptions import list_exceptions

    with unit_of_work(_settings()) as uow:
        rows = list_exceptions(uow.session, status=None if status == "all" else status,
                               store=store, limit=limit)
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table("id", "status", "source / store / order", "waiting", "why")
    for r in rows:
        table.add_row(str(r["id"]), r["status"],
                      f"{r['source']} / {r['store'] or '-'} / {r['source_order_id'] or '-'}",
                      f"{r['waiting_s'] // 60} min", r["reason"][:120])
    Console().print(table if rows else f"no {status} exceptions")


@exceptions.command("show")
@click.argument("exception_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def exceptions_show(exception_id: int, as_json: bool) -> None:
    """One exception: the failing fields and the body as received."""
    from domain.db import unit_of_work
    from domain.intake_exceptions import ExceptionDeskError, exception_detail

    try:
        with unit_of_work(_settings()) as uow:
            info = exception_detail(uow.session, exception_id)
    except ExceptionDeskError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(info, default=str))
        return
    out = Console()
    out.print(f"[bold]exception {info['id']}[/bold] ({info['status']}): {info['source']} "
              f"{info['topic'] or ''} for store {info['store']}, order "
              f"{info['source_order_id'] or '-'}, answered {info['http_status'] or '-'}")
    for e in info["errors"]:
        out.print(f"  - {e.get('field')}: {e.get('message')}")
    if info["resolution"]:
        out.print(f"settled by {info['resolved_by']} at {info['resolved_at']}: "
                  f"{info['resolution']} (order {info['order_id']})")
    body = info["body"]
    click.echo(json.dumps(body, indent=2, ensure_ascii=False) if info["body_is_json"] else body)


@exceptions.command("replay")
@click.argument("exception_id", type=int)
@click.option("--set", "fixes", multiple=True, metavar="FIELD=JSON",
              help="A correction in native field names, e.g. "
                   "shipping_address='{\"line1\": \"1 Main St\", \"city\": \"Austin\", "
                   "\"country\": \"US\"}' (repeatable; a value that is not JSON is a string).")
@click.option("--corrections", "corrections_json", default=None,
              help="All corrections as one JSON object.")
@click.option("--by", default=None, help="Who replays (default: the login name).")
@click.option("--json", "as_json", is_flag=True)
def exceptions_replay(exception_id: int, fixes: tuple[str, ...], corrections_json: str | None,
                      by: str | None, as_json: bool) -> None:
    """Make the held delivery an order, with corrections; the pipeline resumes after commit."""
    from domain.db import unit_of_work
    from domain.intake_exceptions import ExceptionDeskError
    from tasks.intake import replay_exception

    corrections: dict[str, Any] = {}
    if corrections_json:
        try:
            corrections = json.loads(corrections_json)
        except ValueError as exc:
            raise click.ClickException(f"--corrections is not JSON: {exc}") from None
    for fix in fixes:
        path, sep, raw = fix.partition("=")
        if not sep or not path:
            raise click.ClickException(f"--set {fix!r}: expected FIELD=VALUE")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        target = corrections
        *parents, leaf = path.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    settings = _settings()
    try:
        with unit_of_work(settings) as uow:
            result = replay_exception(uow, exception_id, settings, by=by or getpass.getuser(),
                                      corrections=corrections or None)
    except ExceptionDeskError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"exception {result['id']}: {result['status']} as order {result['order_id']}"
               + (" (on hold for review)" if result["on_hold"] else ""))


@exceptions.command("drop")
@click.argument("exception_id", type=int)
@click.option("--reason", required=True, help="Why it is not an order to fulfil.")
@click.option("--by", default=None, help="Who decides (default: the login name).")
def exceptions_drop(exception_id: int, reason: str, by: str | None) -> None:
    """Close an exception without an order (kept, with who and why)."""
    from domain.db import unit_of_work
    from domain.intake_exceptions import ExceptionDeskError, drop_exception

    try:
        with unit_of_work(_settings()) as uow:
            drop_exception(uow.session, exception_id, by=by or getpass.getuser(), reason=reason)
    except ExceptionDeskError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"exception {exception_id}: dropped")
