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
    # --- recovery: a broker that lost its data ---
    "orderfleet.sweeps.broker_epoch": "sweeps",
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


# --- surge control: a control queue, fast lanes per core stage, non-core jobs ---------------
# Fast lanes (VIP and express orders, domain.fastlane) are separate queues that workers consume
# before the standard ones (kombu's 'priority' queue order): countable by KEDA, not Redis
# priority emulation. Non-core jobs each have their own queue, consumed last and parked by the
# breaker under load; the control loop (load monitor + breaker) has its own queue, consumed first.
CONTROL_QUEUE = "control"
CORE_STAGE_QUEUES: tuple[str, ...] = ("fraud", "inventory", "sharding", "labels")
FAST_LANE_QUEUES: dict[str, str] = {q: f"{q}_fast" for q in CORE_STAGE_QUEUES}
NONCORE_QUEUES: dict[str, str] = {
    "post_purchase_email": "email_post_purchase",
    "review_request_email": "email_review_request",
    "coupon": "coupons",
    "marketing_sync": "marketing_sync",
}
# The queues whose backlog is the order pipeline's (the load monitor's "core backlog").
CORE_QUEUES: tuple[str, ...] = (*CORE_STAGE_QUEUES, *FAST_LANE_QUEUES.values())
QUEUES = (*QUEUES, CONTROL_QUEUE, *FAST_LANE_QUEUES.values(), *NONCORE_QUEUES.values())
# What a worker of the whole fleet consumes, first to last: the control loop and the short
# housekeeping that keeps orders moving (wave closing, re-drive, voids), the fast lanes, push-back,
# the core stages downstream first (finish orders under way before starting new ones), tracking,
# and non-core jobs last.
WORKER_QUEUE_ORDER: tuple[str, ...] = (
    CONTROL_QUEUE, "sweeps", "cancellation",
    *(FAST_LANE_QUEUES[q] for q in reversed(CORE_STAGE_QUEUES)),
    "pushback",
    *reversed(CORE_STAGE_QUEUES),
    # lanes: custom-made waves' labels after the standard ones (a flood of them never delays
    # standard parcels), the returns lane after every forward stage, model training last
    "labels_custom", "returns",
    "tracking", "bench", "routing",
    *NONCORE_QUEUES.values(),
)
TASK_ROUTES.update({
    "orderfleet.surge.tick": CONTROL_QUEUE,
    "orderfleet.noncore.post_purchase_email": NONCORE_QUEUES["post_purchase_email"],
    "orderfleet.noncore.review_request_email": NONCORE_QUEUES["review_request_email"],
    "orderfleet.noncore.coupon": NONCORE_QUEUES["coupon"],
    "orderfleet.noncore.compensation_coupon": NONCORE_QUEUES["coupon"],
    "orderfleet.noncore.marketing_sync": NONCORE_QUEUES["marketing_sync"],
})
TASK_MODULES = (*TASK_MODULES, "tasks.surge", "tasks.noncore")


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
            # Queues are polled in the order a worker lists them (WORKER_QUEUE_ORDER).
            "queue_order_strategy": settings.queue_order_strategy,
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
    schedule: dict[str, dict[str, Any]] = {
        "redrive-stuck-orders": {
            "task": "orderfleet.sweeps.redrive",
            "schedule": timedelta(seconds=settings.sweep_interval_s),
        },
        # A wave closes at most a quarter of its age limit late (and at most 10 s): on short
        # limits that lateness is most of an order's wait for its label.
        "close-aged-waves": {
            "task": "orderfleet.sharding.close_aged_waves",
            "schedule": timedelta(seconds=max(min(settings.wave_max_age_s / 4, 10.0), 0.25)),
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
        # surge control: load monitor, non-core breaker, replay and the three-stage response
        "surge-tick": {
            "task": "orderfleet.surge.tick",
            "schedule": timedelta(seconds=settings.surge_monitor_interval_s),
            # A tick that waited longer than two intervals is stale: the next one is due.
            "options": {"expires": settings.surge_monitor_interval_s * 2},
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
    # --- recovery: notice a broker that restarted empty within seconds ---
    if settings.broker_epoch_check_s > 0:
        schedule["broker-epoch"] = {
            "task": "orderfleet.sweeps.broker_epoch",
            "schedule": timedelta(seconds=settings.broker_epoch_check_s),
            # A check older than two periods is stale: the next one is on its way.
            "options": {"expires": 2 * settings.broker_epoch_check_s},
        }
    return schedule
