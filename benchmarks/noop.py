"""The benchmark's baseline: a no-op chain of five tasks per order (the naive design)."""

from __future__ import annotations

import time

import redis
from celery import Task

from config.settings import get_settings
from tasks.base import stage_task

NOOP_DONE_KEY = "orderfleet:bench:noop_done"
_redis: redis.Redis | None = None


@stage_task("orderfleet.bench.noop")
def noop(task: Task, order_id: int, step: int, last: bool = False, hold_s: float = 0.0) -> None:
    """Does nothing (for ``hold_s`` seconds: a busy slot, to watch a pool scale); the last link
    of a chain counts the order as done."""
    global _redis
    if hold_s > 0:
        time.sleep(min(hold_s, 60.0))
    if last:
        if _redis is None:
            _redis = redis.Redis.from_url(get_settings().broker_url)
        _redis.incr(NOOP_DONE_KEY)
