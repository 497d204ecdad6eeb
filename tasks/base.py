"""What every stage task shares: the task decorator's options and id handling."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from celery import Task

from workers.app import app

# Errors worth retrying: the database or broker blinked; the work itself is idempotent.
try:
    from sqlalchemy.exc import DBAPIError, OperationalError
    TRANSIENT_ERRORS: tuple[type[Exception], ...] = (OperationalError, DBAPIError, ConnectionError)
except ImportError:  # pragma: no cover
    TRANSIENT_ERRORS = (ConnectionError,)

STAGE_TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "max_retries": 10,
}


def stage_task(name: str, **options: Any) -> Any:
    """Register a stage task under ``orderfleet.<stage>.<verb>`` with the reliability options."""
    return app.task(name=name, bind=True, **{**STAGE_TASK_OPTIONS, **options})


def parse_ids(order_ids: Iterable[Any]) -> list[int]:
    """Task arguments arrive as JSON: accept ints (or digit strings), refuse anything else."""
    out = []
    for raw in order_ids:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ValueError(f"order id must be an integer, got {raw!r}")
        out.append(int(raw))
    return out


def chunks(ids: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(ids), size):
        yield list(ids[i : i + size])


def retry_backoff(task: Task, exc: Exception) -> Any:
    """Retry with exponential backoff (1, 2, 4 ... 60 s); Celery gives up after max_retries."""
    countdown = min(2 ** task.request.retries, 60)
    raise task.retry(exc=exc, countdown=countdown)
