"""Where a worker puts what it could not complete: the dead-letter store (``domain.deadletters``).

* A task that fails for good (Celery's ``task_failure``: an error that is not transient, or a
  transient one past ``max_retries``) is acknowledged by Celery and would be gone; it is stored
  with its task name, arguments (ids) and error, so ``orderfleet dlq retry`` can send it again.
* A message the worker cannot read (a body that does not decode, content we do not accept, a
  task name no module registers, no task header at all) is acknowledged or rejected by Celery's
  consumer with a log line; :class:`DeadLetterConsumer` stores it first, raw body included.

Storing is best effort: when the database itself is down the letter is logged and the
failure handled as Celery would have handled it anyway.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from celery.signals import task_failure
from celery.worker.consumer import Consumer

from domain.db import unit_of_work
from domain.deadletters import Letter, record

log = logging.getLogger(__name__)


def store(letter: Letter) -> int | None:
    try:
        with unit_of_work() as uow:
            return record(uow.session, letter)
    except Exception:  # the database is down or refused: say so, never mask the failure
        log.exception("could not store a dead letter for %s (%s)", letter.task or "a message",
                      letter.reason)
        return None


@task_failure.connect
def _task_failed(sender: Any = None, task_id: str | None = None,
                 exception: BaseException | None = None, args: Any = None,
                 **_: Any) -> None:
    task = sender
    name = getattr(task, "name", None)
    if name is None or not str(name).startswith("orderfleet."):
        return
    delivery = getattr(getattr(task, "request", None), "delivery_info", None) or {}
    store(Letter(reason="failed", task=name, task_id=task_id,
                 queue=delivery.get("routing_key"), args=list(args or []),
                 error_type=type(exception).__name__ if exception else "unknown",
                 error="".join(traceback.format_exception_only(exception)).strip()
                 if exception else ""))


def _raw(message: Any) -> str:
    body = getattr(message, "body", b"")
    if isinstance(body, bytes):
        return body.decode("utf-8", errors="replace")
    return str(body)


def _letter(message: Any, reason: str, exc: BaseException | None) -> Letter:
    headers = getattr(message, "headers", None)
    headers = headers if isinstance(headers, dict) else {}
    delivery = getattr(message, "delivery_info", None) or {}
    return Letter(reason=reason, task=headers.get("task"), task_id=headers.get("id"),
                  queue=delivery.get("routing_key"), raw=_raw(message),
                  error_type=type(exc).__name__ if exc else "NoTaskHeader",
                  error=str(exc) if exc else "a message without a task header")


class DeadLetterConsumer(Consumer):
    """Celery's consumer, storing every message it gives up on before it acks or rejects it."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        store(_letter(message, "undecodable", exc))
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        store(_letter(message, "undecodable", None))
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        store(_letter(message, "unknown_task", exc))
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        store(_letter(message, "invalid", exc))
        super().on_invalid_task(body, message, exc)
