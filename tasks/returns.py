"""The returns lane's tasks, on the ``returns`` queue: return labels, settling, a sweep.

Thin tasks over ``domain.returns``: a flood of returns deepens only this queue, and a worker
pool can be given to it (or withheld) without touching the forward stages.
"""

from __future__ import annotations

import logging

from celery import Task

from config.settings import get_settings
from domain.carriers import CarrierUnavailable
from domain.carriers.shared import carrier_client
from domain.db import unit_of_work
from domain.models import ReturnStatus
from domain.returns import (
    ISSUE_RETURN_LABELS,
    RETURNS_QUEUE,
    SETTLE_RETURNS,
    issue_return_labels,
    settle_returns,
    stuck_returns,
)
from tasks.base import parse_ids, retry_countdown, retry_on_transient, stage_task

log = logging.getLogger(__name__)


@stage_task(ISSUE_RETURN_LABELS, max_retries=20)
def issue_labels(task: Task, return_ids: list[int]) -> None:
    settings = get_settings()
    try:
        with retry_on_transient(task):
            out = issue_return_labels(parse_ids(return_ids), settings,
                                      carrier_client(settings))
    except CarrierUnavailable as exc:
        raise task.retry(exc=exc, countdown=retry_countdown(task.request.retries)) from exc
    if out.failed:
        log.warning("return labels refused: %s", sorted(out.failed))


@stage_task(SETTLE_RETURNS)
def settle(task: Task, return_ids: list[int]) -> None:
    settings = get_settings()
    with retry_on_transient(task), unit_of_work(settings) as uow:
        settle_returns(uow, parse_ids(return_ids))


@stage_task("orderfleet.returns.sweep")
def sweep(task: Task) -> None:
    """Re-send returns whose label or settling message was lost."""
    settings = get_settings()
    with retry_on_transient(task), unit_of_work(settings) as uow:
        stuck = stuck_returns(uow, settings.stage_deadline_s)
        for status, task_name in ((ReturnStatus.REQUESTED, ISSUE_RETURN_LABELS),
                                  (ReturnStatus.RECEIVED, SETTLE_RETURNS)):
            for part in [stuck.get(status.value, [])[i:i + settings.batch_size]
                         for i in range(0, len(stuck.get(status.value, [])),
                                        settings.batch_size)]:
                uow.enqueue(task_name, part, queue=RETURNS_QUEUE)
    if stuck:
        log.warning("re-drove stuck returns: %s", {k: len(v) for k, v in stuck.items()})
