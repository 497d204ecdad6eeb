"""What every stage task shares: the task decorator, id handling, and what is worth a retry.

Tasks are declared with Celery's ``shared_task``: importing a stage builds no Celery app and
reads no environment. The app (``workers.app``) lists the stage modules and binds their tasks
when a worker starts; it also installs how units of work send tasks (``domain.db``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import kombu.exceptions
import redis
from celery import Signature, Task, shared_task
from sqlalchemy.exc import InterfaceError, OperationalError

from config.settings import Settings
from domain.db import database_unavailable
from domain.lifecycle import Sweep
from domain.pipeline import FAST_LANE_QUEUE

P = ParamSpec("P")
R = TypeVar("R", covariant=True)

# Errors worth retrying: the database, Redis or the broker blinked, and every stage is safe to
# run again. Not IntegrityError, DataError or a CHECK violation: those are bugs or bad data
# and would fail the same way ten times.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,  # connection lost, server restarting, deadlock/serialisation failure
    InterfaceError,  # the driver's connection is closed
    redis.ConnectionError,
    redis.TimeoutError,
    kombu.exceptions.OperationalError,  # the broker connection (kombu wraps its transports')
    ConnectionError,  # the OS-level errors the two above are built on
    TimeoutError,
)

STAGE_TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "max_retries": 10,
}


def is_transient(exc: BaseException) -> bool:
    """True for an error that a later attempt may not meet (see ``TRANSIENT_ERRORS``).

    A DBAPI error of any class raised while SQLAlchemy found the connection dead counts too.
    """
    return isinstance(exc, TRANSIENT_ERRORS) or database_unavailable(exc)


def retry_countdown(attempt: int, cap_s: float = 60.0) -> float:
    """Exponential backoff for the ``attempt``-th retry (0-based): 1, 2, 4 ... ``cap_s``."""
    return float(min(2 ** max(attempt, 0), cap_s))


class StageTask(Protocol[P, R]):
    """A Celery task as the stages use it: callable, and sendable by name or object."""

    name: str

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Any: ...

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any: ...

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """An immutable signature (a link of a chain that ignores the previous result)."""
        ...


def stage_task(name: str, **options: Any
               ) -> Callable[[Callable[Concatenate[Any, P], R]], StageTask[P, R]]:
    """Declare a task ``orderfleet.<stage>.<verb>`` with the reliability options (late ack,
    re-queue when the worker is lost, no result). The function receives the task first."""

    def register(fn: Callable[Concatenate[Any, P], R]) -> StageTask[P, R]:
        task: StageTask[P, R] = shared_task(name=name, bind=True,
                                            **{**STAGE_TASK_OPTIONS, **options})(fn)
        return task

    return register


@contextmanager
def retry_on_transient(task: Task) -> Iterator[None]:
    """Retry the task (exponential backoff) when the block raises a transient error; anything
    else propagates at once. Celery gives up after the task's ``max_retries``."""
    try:
        yield
    except Exception as exc:
        if not is_transient(exc):
            raise
        raise task.retry(exc=exc, countdown=retry_countdown(task.request.retries)) from exc


_FAST_QUEUES = frozenset(FAST_LANE_QUEUE.values())


def batch_sweep(task: Task, settings: Settings) -> Sweep | None:
    """The room a stage message may fill with other orders waiting in its state
    (``settings.fill_batches``); a message on a fast-lane queue takes only fast-lane orders."""
    if not settings.fill_batches:
        return None
    queue = (task.request.delivery_info or {}).get("routing_key") or ""
    return Sweep(settings.batch_size, fast_only=queue in _FAST_QUEUES)


def parse_ids(order_ids: Iterable[Any]) -> list[int]:
    """Task arguments arrive as JSON: accept ints (or digit strings), refuse anything else."""
    out = []
    for raw in order_ids:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ValueError(f"order id must be an integer, got {raw!r}")
        out.append(int(raw))
    return out
