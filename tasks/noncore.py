"""Non-core jobs as tasks, each on its own queue (config.celery.NONCORE_QUEUES).

While the surge breaker is open a job is parked (kept in order in Redis, not run, not
dropped); the control loop (tasks.surge) replays parked jobs once it closes. The work itself and
its once-per-(order, kind) guarantee live in domain.noncore.
"""

from __future__ import annotations

import logging
import smtplib
from typing import Any

from celery import Task

from config.settings import get_settings
from domain.http import HttpUnavailable
from domain.noncore import MailDeferred, run_jobs
from domain.pipeline import (
    COMPENSATION_COUPON,
    ISSUE_COUPON,
    MARKETING_SYNC,
    POST_PURCHASE_EMAIL,
    REVIEW_REQUEST_EMAIL,
)
from domain.surge import breaker_open, client, park
from tasks.base import is_transient, parse_ids, retry_countdown, stage_task

log = logging.getLogger("orderfleet.noncore")
# A mail server or storefront that is down or slow now may answer later (a mail server that is
# not listening refuses the socket itself: ConnectionRefusedError, not an SMTP error).
_TRANSIENT = (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, MailDeferred,
              HttpUnavailable, ConnectionError, TimeoutError)


def _run(task: Task, kind: str, order_ids: list[Any], replay: bool) -> None:
    settings = get_settings()
    ids = parse_ids(order_ids)
    r = client(settings)
    try:
        if breaker_open(r):
            park(r, kind, ids)
            return
    finally:
        r.close()
    try:
        out = run_jobs(settings, kind, ids, replayed=replay, claimer=task.request.id)
    except Exception as exc:
        if not (is_transient(exc) or isinstance(exc, _TRANSIENT)):
            raise
        raise task.retry(exc=exc, countdown=retry_countdown(task.request.retries, 300)) from exc
    log.info("%s: %d done, %d done before, %d skipped, %d refused, %d uncertain%s", kind,
             len(out.done), len(out.already), len(out.skipped), len(out.failed),
             len(out.uncertain), " (replayed)" if replay else "")


@stage_task(POST_PURCHASE_EMAIL)
def post_purchase_email(task: Task, order_ids: list[Any], replay: bool = False) -> None:
    """E-mail the customer that the order is labelled and on its way."""
    _run(task, "post_purchase_email", order_ids, replay)


@stage_task(REVIEW_REQUEST_EMAIL)
def review_request_email(task: Task, order_ids: list[Any], replay: bool = False) -> None:
    """Ask the customer for a review once the parcel was delivered."""
    _run(task, "review_request_email", order_ids, replay)


@stage_task(ISSUE_COUPON)
def coupon(task: Task, order_ids: list[Any], replay: bool = False) -> None:
    """Issue a loyalty coupon per order into the coupon ledger."""
    _run(task, "coupon", order_ids, replay)


@stage_task(COMPENSATION_COUPON)
def compensation_coupon(task: Task, order_ids: list[Any], replay: bool = False) -> None:
    """Issue a delay-compensation coupon to orders that will miss their promise."""
    _run(task, "delay_compensation", order_ids, replay)


@stage_task(MARKETING_SYNC)
def marketing_sync(task: Task, order_ids: list[Any], replay: bool = False) -> None:
    """Add the customer to the store's marketing list (the storefront's API)."""
    _run(task, "marketing_sync", order_ids, replay)
