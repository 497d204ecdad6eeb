"""The exceptions desk: deliveries held at the door, until a person replays or drops them.

An intake exception is a ``rejected_orders`` row: the body as received, the failing fields,
what the sender was answered. Its ``status`` is ``open`` until it is

* ``replayed``: corrected and turned into an order (:func:`tasks.intake.replay_exception`),
* ``superseded``: a later delivery of the same order became the order,
* ``dropped``: a person decided it is not an order to fulfil (who and why are kept).

:func:`raise_backlog_alerts` (beat, with the review desk's sweep) alerts when exceptions pile
up (``exceptions_alert_count``) or the oldest waits past ``exceptions_overdue_s``, and closes
a store's ``intake_held`` alert once nothing of that store is open. Personal data stays in the
rows; logs carry ids and counts only.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.settings import Settings
from domain.alerts import open_alerts, raise_alert, resolve_alert
from domain.clock import utcnow
from domain.models import RejectedOrder

log = logging.getLogger(__name__)

STATUSES = ("open", "replayed", "superseded", "dropped")
BACKLOG_ALERT = "intake_exceptions"
HELD_ALERT = "intake_held"  # raised per store at the door (tasks.intake.hold_at_door)


class ExceptionDeskError(Exception):
    """A desk action that cannot be taken; ``status`` is the matching HTTP status."""

    status = 400

    def __init__(self, message: str, *, status: int = 400,
                 errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.errors = errors or []


def _age_s(row: RejectedOrder, now: datetime) -> int:
    return max(0, int((now - row.received_at).total_seconds()))


def _summary(row: RejectedOrder, now: datetime) -> dict[str, Any]:
    return {"id": row.id, "status": row.status, "source": row.source, "store": row.store,
            "source_order_id": row.source_order_id, "topic": row.topic,
            "received_at": row.received_at.isoformat(), "waiting_s": _age_s(row, now),
            "http_status": row.http_status, "reason": row.reason, "order_id": row.order_id}


def list_exceptions(session: Session, *, status: str | None = "open", store: str | None = None,
                    limit: int = 100) -> list[dict[str, Any]]:
    """Exceptions, oldest first (``status=None``: every status)."""
    q = select(RejectedOrder)
    if status:
        q = q.where(RejectedOrder.status == status)
    if store:
        q = q.where(RejectedOrder.store == store)
    now = utcnow()
    rows = session.execute(q.order_by(RejectedOrder.received_at, RejectedOrder.id)
                           .limit(limit)).scalars()
    return [_summary(r, now) for r in rows]


def get_exception(session: Session, exception_id: int, *, lock: bool = False
                  ) -> RejectedOrder:
    q = select(RejectedOrder).where(RejectedOrder.id == exception_id)
    row = session.execute(q.with_for_update() if lock else q).scalar_one_or_none()
    if row is None:
        raise ExceptionDeskError(f"no exception {exception_id}", status=404)
    return row


def parsed_body(row: RejectedOrder) -> Any:
    """The kept body as JSON, or None when it is not (truncated, not JSON)."""
    try:
        return json.loads(row.raw)
    except ValueError:
        return None


def exception_detail(session: Session, exception_id: int) -> dict[str, Any]:
    """One exception with its failing fields, its body and how it was settled."""
    row = get_exception(session, exception_id)
    out = _summary(row, utcnow())
    body = parsed_body(row)
    out.update({"errors": row.errors, "body": body if body is not None else row.raw,
                "body_is_json": body is not None, "corrections": row.corrections,
                "resolved_at": row.resolved_at.isoformat() if row.resolved_at else None,
                "resolved_by": row.resolved_by, "resolution": row.resolution})
    return out


def _who(by: Any) -> str:
    if not isinstance(by, str) or not by.strip():
        raise ExceptionDeskError("by: is required (who decided)", status=422)
    return by.strip()[:255]


def require_open(row: RejectedOrder) -> None:
    if row.status != "open":
        raise ExceptionDeskError(f"exception {row.id} is {row.status}, not open", status=409)


def settle(row: RejectedOrder, status: str, by: str, resolution: str,
           order_id: int | None = None) -> None:
    row.status, row.resolved_by, row.resolution = status, by, resolution[:4000]
    row.resolved_at = utcnow()
    row.order_id = order_id


def drop_exception(session: Session, exception_id: int, *, by: Any, reason: Any
                   ) -> dict[str, Any]:
    """A person decided this is no order to fulfil: closed, kept, never replayed."""
    who = _who(by)
    if not isinstance(reason, str) or not reason.strip():
        raise ExceptionDeskError("reason: is required (why it is dropped)", status=422)
    row = get_exception(session, exception_id, lock=True)
    require_open(row)
    settle(row, "dropped", who, reason.strip())
    log.info("exceptions desk: %s dropped", row.id)
    return _summary(row, utcnow())


def exception_counts(session: Session) -> dict[str, Any]:
    """Counts by status and the oldest open one's age (for ``orderfleet report``)."""
    by_status = {s: 0 for s in STATUSES}
    for status, n in session.execute(select(RejectedOrder.status, func.count())
                                     .group_by(RejectedOrder.status)):
        by_status[status] = n
    oldest = session.execute(select(func.min(RejectedOrder.received_at))
                             .where(RejectedOrder.status == "open")).scalar_one()
    return {"by_status": by_status, "open": by_status["open"],
            "oldest_open_s": _age_s_at(oldest, utcnow()) if oldest else None}


def _age_s_at(at: datetime, now: datetime) -> int:
    if at.tzinfo is None:  # SQLite returns the aggregate naive
        at = at.replace(tzinfo=now.tzinfo)
    return max(0, int((now - at).total_seconds()))


def raise_backlog_alerts(session: Session, settings: Settings) -> list[str]:
    """Alert when exceptions pile up or wait too long; close what no longer holds.

    Returns the keys of the alerts newly raised.
    """
    counts = exception_counts(session)
    raised = []
    n, oldest = counts["open"], counts["oldest_open_s"]
    if n >= settings.exceptions_alert_count:
        if raise_alert(session, BACKLOG_ALERT, "backlog",
                       f"{n} deliveries are held at the door: see `orderfleet exceptions list`",
                       detail={"open": n}):
            raised.append("backlog")
    else:
        resolve_alert(session, BACKLOG_ALERT, "backlog")
    if oldest is not None and oldest > settings.exceptions_overdue_s:
        if raise_alert(session, BACKLOG_ALERT, "waiting",
                       f"the oldest held delivery has waited {oldest // 60} min for a person",
                       detail={"oldest_open_s": oldest}):
            raised.append("waiting")
    else:
        resolve_alert(session, BACKLOG_ALERT, "waiting")
    held = open_alerts(session, HELD_ALERT)
    if held:
        still = {f"{src}/{store}"[:255] for src, store in session.execute(
            select(RejectedOrder.source, RejectedOrder.store)
            .where(RejectedOrder.status == "open").distinct())}
        for alert in held:
            if alert.key not in still:
                resolve_alert(session, HELD_ALERT, alert.key)
    return raised
