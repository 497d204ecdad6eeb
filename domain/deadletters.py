"""Dead letters: what no worker could complete, kept for a person with its error.

A task that failed for good (an error that is not transient, or retries exhausted) and a
message that could not be decoded are both stored here instead of vanishing with the ack.
The orders a dead letter names show it in their status; an alert is open while any dead letter
is; ``orderfleet dlq retry`` sends the same message again and ``dlq drop`` closes it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from domain.alerts import raise_alert, resolve_alert
from domain.clock import utcnow
from domain.db import UnitOfWork, insert_ignoring_conflicts
from domain.models import DeadLetter, DeadLetterOrder, DeadLetterStatus, OrderRow
from domain.pipeline import ASSIGN_WAVES, BUY_LABELS, FRAUD_CHECK, RESERVE, VOID_LABELS

log = logging.getLogger(__name__)

ALERT_KIND, ALERT_KEY = "dead_letters", "open"
RAW_LIMIT = 64 * 1024
ERROR_LIMIT = 4000
# Tasks whose first argument is a list of order ids, and those whose first argument is a wave
# (others take notification or shipment ids, which name no order directly).
ORDER_TASKS = frozenset({FRAUD_CHECK, RESERVE, ASSIGN_WAVES, VOID_LABELS})
WAVE_TASKS = frozenset({BUY_LABELS})


@dataclass(frozen=True)
class Letter:
    """What is known of a message that could not be completed."""

    reason: str  # failed | undecodable | unknown_task | invalid
    error_type: str
    error: str
    task: str | None = None
    task_id: str | None = None
    queue: str | None = None
    args: list[Any] | None = None
    raw: str | None = None


def order_ids_of(session: Session, task: str | None, args: Sequence[Any] | None) -> list[int]:
    """The orders a task's arguments name: a list of order ids, or the orders of waves (a
    list of wave ids, or one from a message sent before waves were carried together)."""
    if not args:
        return []
    first = args[0]
    ids = sorted({i for i in (first if isinstance(first, list) else [first])
                  if isinstance(i, int) and not isinstance(i, bool)})
    if task in WAVE_TASKS and ids:
        return sorted(session.execute(select(OrderRow.id).where(OrderRow.wave_id.in_(ids)))
                      .scalars())
    if task in ORDER_TASKS and isinstance(first, list):
        return ids
    return []


def record(session: Session, letter: Letter) -> int:
    """Store a dead letter, link its orders (those that exist), and open the alert."""
    row = DeadLetter(
        reason=letter.reason, task=letter.task, task_id=letter.task_id, queue=letter.queue,
        args=letter.args, raw=None if letter.raw is None else letter.raw[:RAW_LIMIT],
        error_type=letter.error_type[:255], error=letter.error[:ERROR_LIMIT],
        status=DeadLetterStatus.OPEN, created_at=utcnow())
    session.add(row)
    session.flush()
    ids = order_ids_of(session, letter.task, letter.args)
    if ids:
        known = session.execute(select(OrderRow.id).where(OrderRow.id.in_(ids))).scalars()
        insert_ignoring_conflicts(session, DeadLetterOrder,
                                  [{"dead_letter_id": row.id, "order_id": i} for i in known],
                                  ["dead_letter_id", "order_id"])
    count = open_count(session)
    raise_alert(session, ALERT_KIND, ALERT_KEY,
                "messages no worker could complete are waiting in the dead-letter store: "
                "see `orderfleet dlq list`", severity="critical", detail={"first": row.id})
    # The error names the failure; arguments are ids; the raw body is never logged.
    log.error("dead letter %d: %s %s failed for good (%s); %d open", row.id, letter.reason,
              letter.task or "(no task)", letter.error_type, count)
    return row.id


def open_count(session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(DeadLetter)
                               .where(DeadLetter.status == DeadLetterStatus.OPEN)).scalar_one())


def list_letters(session: Session, *, status: str | None = DeadLetterStatus.OPEN,
                 limit: int = 100) -> list[dict[str, Any]]:
    stmt = select(DeadLetter).order_by(DeadLetter.id).limit(limit)
    if status is not None:
        stmt = stmt.where(DeadLetter.status == status)
    letters = session.execute(stmt).scalars().all()
    orders: dict[int, list[int]] = {}
    if letters:
        for dl_id, order_id in session.execute(
                select(DeadLetterOrder.dead_letter_id, DeadLetterOrder.order_id)
                .where(DeadLetterOrder.dead_letter_id.in_([d.id for d in letters]))
                .order_by(DeadLetterOrder.order_id)):
            orders.setdefault(dl_id, []).append(order_id)
    return [as_dict(d, orders.get(d.id, [])) for d in letters]


def as_dict(d: DeadLetter, order_ids: list[int]) -> dict[str, Any]:
    return {"id": d.id, "reason": d.reason, "task": d.task, "task_id": d.task_id,
            "queue": d.queue, "args": d.args, "error_type": d.error_type, "error": d.error,
            "status": d.status, "retries": d.retries, "created_at": d.created_at.isoformat(),
            "closed_at": d.closed_at.isoformat() if d.closed_at else None,
            "closed_by": d.closed_by, "order_ids": order_ids,
            "raw_bytes": None if d.raw is None else len(d.raw)}


def for_order(session: Session, order_id: int) -> list[dict[str, Any]]:
    """The dead letters that name an order (newest first): why it stopped moving."""
    letters = session.execute(
        select(DeadLetter).join(DeadLetterOrder, DeadLetterOrder.dead_letter_id == DeadLetter.id)
        .where(DeadLetterOrder.order_id == order_id).order_by(DeadLetter.id.desc())
    ).scalars().all()
    return [{"id": d.id, "status": d.status, "task": d.task, "reason": d.reason,
             "error": f"{d.error_type}: {d.error}", "at": d.created_at.isoformat()}
            for d in letters]


class NotRetryable(ValueError):
    pass


def retry(uow: UnitOfWork, ids: Sequence[int], by: str) -> list[int]:
    """Send open dead letters' messages again (after the commit); returns the ids sent.

    A message that could not be decoded has no task and arguments to send: NotRetryable.
    """
    session = uow.session
    letters = session.execute(
        select(DeadLetter).where(DeadLetter.id.in_(ids),
                                 DeadLetter.status == DeadLetterStatus.OPEN)
        .with_for_update()).scalars().all()
    for d in letters:
        if d.task is None or d.args is None or d.reason != "failed":
            raise NotRetryable(f"dead letter {d.id} ({d.reason}) has no task to send again: "
                               "drop it once its sender is fixed")
    for d in letters:
        assert d.task is not None and d.args is not None  # checked above
        uow.enqueue(d.task, *d.args)
        d.status, d.closed_at, d.closed_by = DeadLetterStatus.RETRIED, utcnow(), by
        d.retries += 1
    _resolve_if_clear(session)
    return [d.id for d in letters]


def drop(session: Session, ids: Sequence[int], by: str) -> list[int]:
    """Close open dead letters without sending anything; returns the ids closed."""
    rows = session.execute(
        update(DeadLetter).where(DeadLetter.id.in_(ids),
                                 DeadLetter.status == DeadLetterStatus.OPEN)
        .values(status=DeadLetterStatus.DROPPED, closed_at=utcnow(), closed_by=by)
        .returning(DeadLetter.id)).scalars().all()
    _resolve_if_clear(session)
    return sorted(rows)


def _resolve_if_clear(session: Session) -> None:
    session.flush()
    if open_count(session) == 0:
        resolve_alert(session, ALERT_KIND, ALERT_KEY)
