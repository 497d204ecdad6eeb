"""Re-drive: the database, not the message, guarantees that every order progresses.

A message can be lost (a chain's next task, a broker restart); this beat sweep finds orders
in an automated stage that no message carries and sends their stage task again. Every stage is
idempotent, so a re-drive of an order that was merely slow costs nothing.

On Redis the sweep reads what the broker holds: the queues and the messages delivered but not
yet acknowledged (``unacked``, where a worker's running and countdown tasks wait; those of a
worker that was killed stay there until the visibility timeout, so live workers are asked which
they hold). An order in none of them for ``redrive_missing_after_s`` is missing and re-sent at
once, even while its stage's queue is deep. On a broker it cannot read (RabbitMQ) it waits for
``stage_deadline_s`` and an empty queue, so that a surge is not doubled.

A Redis that restarted empty lost every message at once. It also lost the epoch key that this
module keeps there (and the database remembers, ``broker_epochs``), which the epoch check
notices within ``broker_epoch_check_s`` (beat task ``orderfleet.sweeps.broker_epoch``): it
declares the queues again and re-drives every order that no message carries, without waiting,
and the non-core jobs (e-mails, coupons, marketing sync) of recently moved orders that have none.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import redis
from celery import Celery, Task
from sqlalchemy import select

from config.celery import FAST_LANE_QUEUES, TASK_ROUTES
from config.settings import Settings, get_settings
from domain.clock import utcnow
from domain.db import UnitOfWork, dialect_insert, unit_of_work
from domain.lifecycle import State, values
from domain.models import BrokerEpoch, OrderRow, Wave, WaveStatus
from domain.noncore import release_claims_of_lost_broker, settle_sending_of_lost_broker
from domain.pipeline import (
    BUY_LABELS,
    LANE_LABEL_QUEUES,
    STAGE_FOR_STATE,
    advance,
    count_redriven,
    label_waves,
    redrive_noncore,
)
from domain.surge import client
from tasks.base import is_transient, retry_on_transient, stage_task

log = logging.getLogger(__name__)

MAX_PER_SWEEP = 20_000
# Present while the broker's Redis keeps its data; gone after a restart without persistence.
EPOCH_KEY = "orderfleet:broker:epoch"
# kombu's Redis transport keeps priorities in sub-lists "<queue>\x06\x16<step>" and messages
# delivered to a worker but not acknowledged in this hash.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED_HASH, UNACKED_INDEX = "unacked", "unacked_index"  # tag -> message, tag -> delivered at
# Reading more queued messages than this costs more than a blind re-drive would save.
MAX_MESSAGES_READ = 100_000


@dataclass
class InFlight:
    """The ids that the broker's messages carry, per task name."""

    ids: dict[str, set[int]] = field(default_factory=dict)

    def carries(self, task: str) -> set[int]:
        return self.ids.get(task, set())


def _ids_of(raw: bytes | str) -> tuple[str, list[int]] | None:
    """(task name, ids) of one kombu message on Redis; None for one we cannot read."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # an unacked entry: [message, exchange, routing key]
            message = message[0]
        task = message["headers"]["task"]
        body: Any = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    if not args:
        return task, []
    first = args[0]
    if isinstance(first, list):
        return task, [int(i) for i in first if isinstance(i, int)]
    if isinstance(first, int) and not isinstance(first, bool):
        return task, [first]  # a wave id
    return task, []


def _task_id(raw: bytes | str) -> str | None:
    try:
        entry = json.loads(raw)
        return str(entry[0]["headers"]["id"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def in_flight(app: Celery, queues: list[str], grace_s: float) -> InFlight | None:
    """Ids in the messages that will still be worked on; None when the broker is not Redis or
    holds too many messages to read.

    Queued messages count. A delivered, unacknowledged message counts while it is younger than
    ``grace_s`` or a live worker says it holds it (running, reserved, or waiting for its ETA);
    one whose worker was killed (-9, OOM) would wait for the visibility timeout (an hour)
    before Redis delivers it again, so its orders count as missing.
    """
    with app.connection_for_read() as conn:
        if conn.transport.driver_type != "redis":
            return None
        client = conn.default_channel.client
        keys = [q if step == 0 else f"{q}{PRIORITY_SEP}{step}"
                for q in queues for step in PRIORITY_STEPS]
        if sum(int(client.llen(k)) for k in keys) + int(client.hlen(UNACKED_HASH)) \
                > MAX_MESSAGES_READ:
            return None
        raws: list[bytes] = [m for k in keys for m in client.lrange(k, 0, -1)]
        unacked: dict[bytes, bytes] = client.hgetall(UNACKED_HASH)
        delivered = dict(client.zrange(UNACKED_INDEX, 0, -1, withscores=True))
    now = time.time()
    old = {tag: raw for tag, raw in unacked.items()
           if now - float(delivered.get(tag, 0.0)) > grace_s}
    raws.extend(raw for tag, raw in unacked.items() if tag not in old)
    if old:
        ids = [i for i in map(_task_id, old.values()) if i]
        replies = (app.control.inspect(timeout=1.0).query_task(*ids) or {}) if ids else {}
        held = {task_id for tasks in replies.values() for task_id in tasks}
        raws.extend(raw for raw in old.values() if _task_id(raw) in held)
    out = InFlight()
    for raw in raws:
        found = _ids_of(raw)
        if found:
            out.ids.setdefault(found[0], set()).update(found[1])
    return out


def stuck_orders(uow: UnitOfWork, settings: Settings,
                 older_than_s: float | None = None) -> dict[State, list[int]]:
    """Orders in an automated stage unchanged for ``older_than_s`` (the stage deadline)."""
    wait = settings.stage_deadline_s if older_than_s is None else older_than_s
    cutoff = utcnow() - timedelta(seconds=wait)
    rows = uow.session.execute(
        select(OrderRow.state, OrderRow.id)
        .where(OrderRow.state.in_(values(STAGE_FOR_STATE)), OrderRow.updated_at <= cutoff)
        .order_by(OrderRow.id).limit(MAX_PER_SWEEP)
    ).all()
    out: dict[State, list[int]] = {}
    for state, order_id in rows:
        out.setdefault(State(state), []).append(order_id)
    return out


def stuck_waves(uow: UnitOfWork, settings: Settings, older_than_s: float | None = None
                ) -> list[int]:
    """Closed waves whose label call has not completed for ``older_than_s``."""
    wait = settings.stage_deadline_s if older_than_s is None else older_than_s
    cutoff = utcnow() - timedelta(seconds=wait)
    return list(uow.session.execute(
        select(Wave.id).where(Wave.status == WaveStatus.CLOSED, Wave.closed_at <= cutoff)
        .order_by(Wave.id).limit(MAX_PER_SWEEP)
    ).scalars())


def queue_depths(app: Celery, names: list[str]) -> dict[str, int]:
    """Messages waiting in each queue, on Redis or RabbitMQ."""
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        if conn.transport.driver_type == "redis":
            # An empty queue is a missing key on Redis, which a passive declare reports as 404.
            return {name: int(channel.client.llen(name)) for name in names}
        return {name: channel.queue_declare(name, passive=True).message_count for name in names}


def redrive_stuck(settings: Settings, app: Celery, *, dry_run: bool = False,
                  broker_lost: bool = False) -> dict[str, Any]:
    """Re-send the stage task of every order (and closed wave) that no message carries.

    ``broker_lost``: the broker lost its messages, so nothing waits for a grace period.
    Returns counts per state (and ``waves``), ``mode``, and with ``dry_run`` the ids only.
    """
    queue_of = {state: TASK_ROUTES[task] for state, task in STAGE_FOR_STATE.items()}
    # Label messages wait on the standard queue or a lane's own; any stage's on its fast lane.
    labels_queues = {TASK_ROUTES[BUY_LABELS], *LANE_LABEL_QUEUES.values()}
    queues = sorted({*queue_of.values(), *labels_queues, *FAST_LANE_QUEUES.values()})
    grace = 0.0 if broker_lost else settings.redrive_missing_after_s
    flight = in_flight(app, queues, grace) if settings.redrive_missing_after_s > 0 else None
    counts: dict[str, Any] = {}
    plan: dict[str, list[int]] = {state.value: [] for state in STAGE_FOR_STATE}
    with unit_of_work(settings) as uow:
        if flight is not None:
            counts["mode"] = "missing"
            for state, ids in stuck_orders(uow, settings, grace).items():
                carried = flight.carries(STAGE_FOR_STATE[state])
                plan[state.value] = [i for i in ids if i not in carried]
            carried_waves = flight.carries(BUY_LABELS)
            plan["waves"] = [w for w in stuck_waves(uow, settings, grace)
                             if w not in carried_waves]
        else:
            # During a surge orders wait in a deep queue for longer than the deadline: they are
            # not lost, and re-sending them would only deepen the queue.
            counts["mode"] = "deadline"
            depths = queue_depths(app, queues)
            for state, ids in stuck_orders(uow, settings).items():
                if not depths[queue_of[state]]:
                    plan[state.value] = ids
            plan["waves"] = ([] if any(depths[q] for q in labels_queues)
                             else stuck_waves(uow, settings))
        for name, ids in plan.items():
            counts[name] = len(ids)
            if dry_run or not ids:
                continue
            if name == "waves":
                label_waves(uow, ids)
            else:
                advance(uow, State(name), ids)
    log.info("re-drive sweep (%s): %s", counts["mode"], counts)
    if dry_run:
        counts["ids"] = {k: v for k, v in plan.items() if v}
    elif any(v for k, v in counts.items() if k != "mode"):
        log.warning("re-drove work no message carried: %s",
                    {k: v for k, v in counts.items() if v})
        try:
            count_redriven(client(settings), {k: v for k, v in counts.items() if k != "mode"})
        except redis.RedisError as exc:  # the messages went out; only the tally is short
            log.warning("re-drive not counted: %s", exc)
    return counts


def declare_queues(app: Celery) -> None:
    """Declare every queue and its binding (a Redis that restarted empty lost the bindings:
    messages sent before a worker re-declares them would go nowhere)."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in app.amqp.queues.values():
            queue(channel).declare()


def broker_identity(url: str) -> str:
    """``host:port/db`` of a Redis URL: the broker an epoch belongs to, without credentials."""
    parts = urlparse(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}/{parts.path.lstrip('/') or 0}"


def _record_epoch(settings: Settings, broker: str, token: str) -> None:
    with unit_of_work(settings) as uow:
        values = {"broker": broker, "token": token, "seen_at": utcnow()}
        uow.session.execute(dialect_insert(uow.session, BrokerEpoch).values(values)
                            .on_conflict_do_update(index_elements=["broker"], set_=values))


def _check_epoch(settings: Settings, *, claim_loss: bool) -> bool:
    """Compare the broker's epoch key with the one the database last saw; True when the key
    is gone after the database saw one (the broker lost its data) and this call set it again.
    Without ``claim_loss`` a gone key the database knew is left gone, for the check that
    recovers."""
    broker = broker_identity(settings.broker_url)
    broker_redis = redis.Redis.from_url(settings.broker_url, socket_timeout=5)
    try:
        with unit_of_work(settings) as uow:
            seen = uow.session.scalar(select(BrokerEpoch.token)
                                      .where(BrokerEpoch.broker == broker))
        raw = broker_redis.get(EPOCH_KEY)
        current = raw.decode() if isinstance(raw, bytes) else raw
        if current is not None:
            if current != seen:  # a database new to this broker: remember its epoch
                _record_epoch(settings, broker, current)
            return False
        if seen is not None and not claim_loss:
            return False
        token = secrets.token_hex(8)
        if not broker_redis.set(EPOCH_KEY, token, nx=True):
            return False  # another check set it a moment ago: that one decides
        _record_epoch(settings, broker, token)
        return seen is not None
    finally:
        broker_redis.close()


def broker_epoch_lost(settings: Settings) -> bool:
    """True when the broker's Redis has lost its data: its epoch key is gone, and this
    database saw one there before. The key is set again either way.

    Redis alone cannot tell a restart without persistence from a broker this fleet has never
    used (a new deployment, a test or benchmark run that emptied its db): both lack the key.
    Taking the second for the first re-sent every recent non-core job and marked e-mails
    being sent ``uncertain`` in a healthy fleet's first seconds. The database remembers the
    key it last saw (``broker_epochs``); where it has none, nothing was lost.
    """
    return _check_epoch(settings, claim_loss=True)


def remember_broker_epoch(settings: Settings) -> None:
    """At a worker's start, before it takes a message: make sure the database knows the
    broker's epoch, so that a broker lost in the fleet's first seconds (before beat's first
    check) is still noticed. A key already gone that the database knew stays gone: the
    check recovers that loss."""
    if settings.broker_url.startswith(("redis://", "rediss://")):
        _check_epoch(settings, claim_loss=False)


def recover_lost_broker(settings: Settings, app: Celery) -> dict[str, Any] | None:
    """If the broker lost its data: declare the queues and re-drive at once. None otherwise."""
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return None
    if not broker_epoch_lost(settings):
        return None
    declare_queues(app)
    counts = redrive_stuck(settings, app, broker_lost=True)
    with unit_of_work(settings) as uow:
        # E-mail claims of the tasks the lost messages carried first, so that those are sent.
        counts["released_claims"] = release_claims_of_lost_broker(uow)
        counts["uncertain_emails"] = settle_sending_of_lost_broker(uow)
        counts["noncore"] = redrive_noncore(uow, settings.noncore_redrive_window_s)
    log.warning("the broker holds no epoch key (restarted empty?): queues declared, re-drove "
                "%s", {k: v for k, v in counts.items() if v})
    return counts


@stage_task("orderfleet.sweeps.redrive")
def redrive(task: Task) -> None:
    with retry_on_transient(task):
        redrive_stuck(get_settings(), task.app)


@stage_task("orderfleet.sweeps.broker_epoch", max_retries=0)
def broker_epoch(task: Task) -> None:
    # No retries, and a blip is no dead letter: beat sends the next check within seconds.
    try:
        recover_lost_broker(get_settings(), task.app)
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning("broker epoch check skipped: %s", type(exc).__name__)
