"""The Celery configuration in one place: queues, routes, reliability settings, beat schedule.

Every task is named ``orderfleet.<stage>.<verb>`` and routed here by name; a task that names a
queue not declared in ``QUEUES`` fails ``tests/unit/test_celery_queues.py``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kombu import Exchange, Queue

from config.settings import Settings

# One queue per lifecycle stage, plus one for housekeeping sweeps and one for the benchmark's
# no-op chain. Separate queues let ops scale a stage (KEDA on queue length) and see its depth.
QUEUES: tuple[str, ...] = (
    "fraud",
    "inventory",
    "sharding",
    "labels",
    "tracking",
    "sweeps",
    "bench",
    "pushback",
    "cancellation",
    # --- lanes and routing: custom-made waves' labels, the returns lane, model training ---
    "labels_custom",
    "returns",
    "routing",
)

TASK_ROUTES: dict[str, str] = {
    "orderfleet.fraud.check": "fraud",
    "orderfleet.fraud.review_overdue": "sweeps",
    "orderfleet.inventory.reserve": "inventory",
    "orderfleet.inventory.expire_reservations": "sweeps",
    "orderfleet.inventory.wake_backordered": "inventory",
    "orderfleet.sharding.assign": "sharding",
    "orderfleet.sharding.close_aged_waves": "sweeps",
    "orderfleet.labels.buy": "labels",
    "orderfleet.tracking.sweep": "tracking",
    "orderfleet.tracking.backfill": "tracking",
    "orderfleet.watchdog.sweep": "sweeps",
    "orderfleet.sweeps.redrive": "sweeps",
    "orderfleet.bench.noop": "bench",
    "orderfleet.pushback.send": "pushback",
    "orderfleet.pushback.sweep": "sweeps",
    "orderfleet.cancellation.void_labels": "cancellation",
    "orderfleet.cancellation.sweep": "sweeps",
    # --- lanes and routing ---
    "orderfleet.returns.issue_labels": "returns",
    "orderfleet.returns.settle": "returns",
    "orderfleet.returns.sweep": "sweeps",
    "orderfleet.routing.retrain": "routing",
}

TASK_MODULES: tuple[str, ...] = (
    "tasks.fraud",
    "tasks.inventory",
    "tasks.sharding",
    "tasks.labels",
    "tasks.tracking",
    "tasks.watchdog",
    "tasks.sweeps",
    "benchmarks.noop",
    "tasks.pushback",
    "tasks.cancellation",
    "tasks.returns",
    "tasks.routing",
)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Return the Celery settings for ``app.conf.update``."""
    exchange = Exchange("orderfleet", type="direct")
    return {
        "broker_url": settings.broker_url,
        # No result backend: every task is ignore_result; progress lives in the database.
        "result_backend": None,
        "task_ignore_result": True,
        # JSON only: pickle would let anyone who can write to the broker run code on workers.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # At-least-once: acknowledge after the task ran, re-queue when the pool child dies,
        # reserve one message at a time so a dying worker holds at most one per process.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_acks_on_failure_or_timeout": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # Above the longest task (task_time_limit_s) and any countdown we use.
            "visibility_timeout": settings.visibility_timeout_s,
        },
        "task_time_limit": settings.task_time_limit_s,
        "task_soft_time_limit": max(settings.task_time_limit_s - 30, 5),
        # Flower needs events; the sent event shows queued tasks too.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_queues": [Queue(name, exchange, routing_key=name) for name in QUEUES],
        "task_default_queue": "fraud",
        "task_default_exchange": "orderfleet",
        "task_default_routing_key": "fraud",
        "task_routes": {
            name: {"queue": queue, "routing_key": queue} for name, queue in TASK_ROUTES.items()
        },
        "task_create_missing_queues": False,
        "worker_hijack_root_logger": False,
        "beat_schedule": beat_schedule(settings),
        # One beat per fleet: RedBeat keeps the schedule in Redis behind a lock, so a second
        # beat started by mistake waits instead of sending every periodic task twice. The beat
        # wakes at least every 5 s to extend the lock; a beat that died frees it after 30 s.
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "redbeat_redis_url": settings.shared_redis,
        "redbeat_key_prefix": "orderfleet:redbeat",
        "redbeat_lock_timeout": 30,
        "beat_max_loop_interval": 5,
        "timezone": "UTC",
        "enable_utc": True,
    }


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Periodic sweeps: the sweeps, not the canvas, guarantee that every order progresses."""
    return {
        "redrive-stuck-orders": {
            "task": "orderfleet.sweeps.redrive",
            "schedule": timedelta(seconds=settings.sweep_interval_s),
        },
        "close-aged-waves": {
            "task": "orderfleet.sharding.close_aged_waves",
            "schedule": timedelta(seconds=max(min(settings.wave_max_age_s / 2, 10.0), 0.5)),
        },
        "expire-reservations": {
            "task": "orderfleet.inventory.expire_reservations",
            "schedule": timedelta(seconds=settings.reservation_sweep_interval_s),
        },
        "wake-backordered": {
            "task": "orderfleet.inventory.wake_backordered",
            "schedule": timedelta(seconds=settings.backorder_sweep_interval_s),
        },
        "tracking-sweep": {
            "task": "orderfleet.tracking.sweep",
            "schedule": timedelta(seconds=settings.tracking_sweep_interval_s),
        },
        "review-overdue": {
            "task": "orderfleet.fraud.review_overdue",
            "schedule": timedelta(seconds=settings.review_sweep_interval_s),
        },
        "pushback-sweep": {
            "task": "orderfleet.pushback.sweep",
            "schedule": timedelta(seconds=max(settings.sweep_interval_s, 5.0)),
        },
        "watchdog-sweep": {
            "task": "orderfleet.watchdog.sweep",
            "schedule": timedelta(seconds=settings.alert_sweep_interval_s),
        },
        "cancellation-sweep": {
            "task": "orderfleet.cancellation.sweep",
            "schedule": timedelta(seconds=max(settings.sweep_interval_s, 5.0)),
        },
        # --- lanes and routing ---
        "returns-sweep": {
            "task": "orderfleet.returns.sweep",
            "schedule": timedelta(seconds=max(settings.sweep_interval_s, 5.0)),
        },
        "routing-retrain": {
            "task": "orderfleet.routing.retrain",
            "schedule": timedelta(seconds=settings.routing_retrain_interval_s),
        },
    }
