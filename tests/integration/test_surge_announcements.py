"""Workers' slot announcements as the control loop reads them (a real Redis)."""

from __future__ import annotations

from domain.surge import (
    ANNOUNCEMENT_TTL_S,
    WORKERS_KEY,
    announce_worker,
    announced_slots,
    withdraw_worker,
)

CORE = ("fraud", "labels")


def test_live_core_workers_count_stale_ones_are_dropped(redis_client) -> None:
    r = redis_client
    now = 1_000_000.0
    # No announcement at all: the caller must ask the workers
    assert announced_slots(r, CORE, "control", now=now) is None
    # Given a core worker with the control queue, a core-only one, a non-core one, a dead one
    announce_worker(r, "w1@a", 2, ["control", "fraud", "labels"], now=now - 1)
    announce_worker(r, "w2@b", 4, ["labels"], now=now)
    announce_worker(r, "mail@c", 8, ["email_post_purchase"], now=now)
    announce_worker(r, "gone@d", 16, ["fraud"], now=now - ANNOUNCEMENT_TTL_S - 1)
    r.hset(WORKERS_KEY, "garbled@e", "not json")
    # Then the live core workers' slots count, with the control loop sharing them
    assert announced_slots(r, CORE, "control", now=now) == (6, True)
    # Then the dead and the unreadable announcements are gone
    assert sorted(r.hkeys(WORKERS_KEY)) == [b"mail@c", b"w1@a", b"w2@b"]
    # When the worker running the control loop withdraws, the others remain, not shared
    withdraw_worker(r, "w1@a")
    assert announced_slots(r, CORE, "control", now=now) == (4, False)
    # Only a non-core worker alive: no core slot, but announcements do exist
    withdraw_worker(r, "w2@b")
    assert announced_slots(r, CORE, "control", now=now) == (0, False)
