"""Which orders take the fast lane: the one predicate every stage and the surge response use.

A fast-lane order's stage messages go to each core stage's ``<stage>_fast`` queue, which
workers consume before the standard queue (``config.celery.WORKER_QUEUE_ORDER``), so under a
backlog VIP and express orders overtake. Extend :func:`is_fast_lane` here (one place) when a new
lane deserves to jump the queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from domain.routing import PRIORITY_LANES

VIP_TAGS = frozenset({"vip"})
EXPRESS_TAGS = frozenset({"express", "expedited", "priority-dispatch"})
# "Express" means a dispatch promise of at most this many hours (FIELD-NOTES: the fast forward
# lane dispatches within 48 h).
EXPRESS_DISPATCH_HOURS = 48


def _tags(value: Any) -> set[str]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)):
        return set()
    return {str(t).strip().lower() for t in value if str(t).strip()}


def is_vip(payload: Mapping[str, Any]) -> bool:
    """A VIP customer (customer tag) or an order the store tagged VIP."""
    customer = payload.get("customer") or {}
    return bool((_tags(payload.get("tags")) | _tags(customer.get("tags"))) & VIP_TAGS)


def is_express(payload: Mapping[str, Any]) -> bool:
    """Express: tagged so by the store, or promised for dispatch within 48 hours."""
    if _tags(payload.get("tags")) & EXPRESS_TAGS:
        return True
    hours = payload.get("dispatch_promise_hours")
    return isinstance(hours, (int, float)) and not isinstance(hours, bool) and (
        0 < hours <= EXPRESS_DISPATCH_HOURS)


def is_fast_lane(payload: Mapping[str, Any], lane: str | None = None) -> bool:
    """True for an order that goes through the stages' fast lanes: VIP or express, by its tags
    and promise or by the lane the store's rules gave it (``domain.routing.lane_for``)."""
    return lane in PRIORITY_LANES or is_vip(payload) or is_express(payload)
