"""The Celery app. Workers start it with ``celery -A workers.app worker``.

This is the fleet's composition root: it validates the settings, binds the stage tasks
(``config.celery.TASK_MODULES``) and installs Celery's ``send_task`` as the way every unit of
work sends its tasks after commit. Any process that enqueues work imports this module first.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import redis
from celery import Celery
from celery.signals import (
    heartbeat_sent,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)
from sqlalchemy.exc import SQLAlchemyError

from config.celery import TASK_MODULES, celery_config
from config.settings import Settings, get_settings
from domain.db import dispose_engines, use_task_sender
from domain.pipeline import NONCORE_TASKS
from domain.surge import NoncoreGate, announce_worker, client, withdraw_worker
from workers import deadletters  # noqa: F401 - stores tasks that fail for good


def create_app() -> Celery:
    settings = get_settings()  # validated here: a bad setting stops the worker at start
    app = Celery("orderfleet", include=list(TASK_MODULES), set_as_current=True)
    app.conf.update(celery_config(settings))
    # What a worker cannot complete or read goes to the dead-letter store, not only to a log.
    app.conf.worker_consumer = "workers.deadletters:DeadLetterConsumer"

    gate = _noncore_gate(settings)

    def send(task: str, args: tuple[Any, ...], options: dict[str, Any]) -> None:
        # While the surge breaker is open a new non-core job is parked, not queued (a replay,
        # args (ids, True), is sent: the control loop replays only while it is closed).
        if gate is not None and task in gate.kinds and len(args) == 1 and gate.park(task, args[0]):
            return
        # By name: routed to the stage's queue by config.celery, no stage module imported.
        app.send_task(task, args=args, **options)

    use_task_sender(send)
    return app


def _noncore_gate(settings: Settings) -> NoncoreGate | None:
    if not settings.shared_redis.startswith(("redis://", "rediss://")):
        return None
    return NoncoreGate(settings, {task: kind for kind, task in NONCORE_TASKS.items()})


app = create_app()


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    # A prefork child must not share the parent's database connections.
    dispose_engines()
    logging.getLogger("orderfleet").setLevel(logging.INFO)


@worker_init.connect
def _remember_broker_epoch(**_: object) -> None:
    # Before the consumer starts: a broker lost before beat's first epoch check would
    # otherwise look new, and its lost non-core jobs would never be sent again.
    from tasks.sweeps import remember_broker_epoch

    try:
        remember_broker_epoch(get_settings())
    except (redis.RedisError, SQLAlchemyError) as exc:  # beat's check records it later
        log.warning("could not record the broker's epoch at start: %s", exc)
    finally:
        dispose_engines()  # the pool's children open their own; this process keeps none


@worker_init.connect
def _freeze_what_lives_forever(**_: object) -> None:
    # Before the pool forks: what the children inherit (modules, the app, settings) lives as
    # long as they do. Frozen, the cyclic collector's full passes no longer walk it all again
    # in every child (nor write to its pages, which stay shared with this process).
    gc.freeze()


# The running worker (its consumer), announced to the control loop on every event heartbeat.
_running: dict[str, Any] = {}
log = logging.getLogger("orderfleet.worker")


def _redis() -> redis.Redis:
    if "redis" not in _running:
        _running["redis"] = client(get_settings())
    r: redis.Redis = _running["redis"]
    return r


def _announce() -> None:
    consumer = _running.get("consumer")
    if consumer is None:
        return
    try:
        announce_worker(_redis(), consumer.hostname,
                        int(consumer.pool.info.get("max-concurrency") or 0),
                        [q.name for q in consumer.task_consumer.queues])
    except (redis.RedisError, AttributeError) as exc:  # the next heartbeat tries again
        log.warning("could not announce this worker's slots: %s", exc)


@worker_ready.connect
def _announce_when_ready(sender: Any, **_: object) -> None:
    _running["consumer"] = sender
    _announce()


@heartbeat_sent.connect
def _announce_on_heartbeat(**_: object) -> None:
    _announce()


@worker_shutdown.connect
def _withdraw(**_: object) -> None:
    consumer = _running.pop("consumer", None)
    if consumer is not None:
        try:
            withdraw_worker(_redis(), consumer.hostname)
        except redis.RedisError as exc:  # the announcement goes stale on its own
            log.warning("could not withdraw this worker's slots: %s", exc)
