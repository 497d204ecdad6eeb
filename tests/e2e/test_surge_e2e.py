"""Surge control on real worker processes: under a backlog the breaker opens, non-core jobs
park, VIP orders overtake standard ones, and every parked job is replayed exactly once."""

from __future__ import annotations

import statistics
from typing import Any

import pytest
from sqlalchemy import func, select

from config.celery import CONTROL_QUEUE, CORE_QUEUES
from domain.db import unit_of_work
from domain.lifecycle import LABELLED_OR_LATER, values
from domain.models import NoncoreJob, OrderEvent, OrderRow
from domain.surge import (
    WORKERS_KEY,
    announced_slots,
    client,
    read_counts,
    read_load,
    transitions,
)
from sandbox.smtp import read_messages
from tasks.intake import submit_orders
from tests.integration.helpers import native_order, put_stock
from tests.waiting import eventually
from workers.app import app as celery_app

pytestmark = pytest.mark.e2e

SURGE = {
    "surge_monitor_interval_s": 0.5,
    "surge_ewma_tau_s": 1.0,
    "surge_rate_window_s": 5.0,
    "surge_wait_target_s": 10.0,
    "surge_min_dwell_s": 3.0,
    "surge_replay_per_tick": 100,
}
AFTER_LABEL = ("post_purchase_email", "coupon", "marketing_sync")
FIRST_STAGE = ("fraud_fast", "fraud")  # re-added in this order: fast lane first


def order(ref: str, n: int, **over: Any) -> dict[str, Any]:
    """A distinct customer and address each, so the fraud check's velocity rules stay quiet."""
    return native_order(
        f"{ref}-{n}", customer={"id": f"c-{ref}-{n}", "email": f"{ref.lower()}{n}@example.com",
                                "order_count": 3},
        shipping_address={"line1": f"{n} {ref} Main St", "city": "Austin",
                          "postal_code": "78701", "country": "US"}, **over)


def test_breaker_parks_noncore_vip_overtakes_and_every_parked_job_replays_once(
        start_fleet, settings) -> None:
    # Given a fleet of two single-slot workers with surge control on a short clock
    fleet = start_fleet(**SURGE)
    s = fleet.settings
    put_stock(s, [("TEE-M", "US-EAST", "US", 10_000)])
    r = client(s)
    # (the load monitor runs: a backlog that drained before beat's first tick shows nothing)
    eventually(lambda: read_load(r).get("updated_at"), 60, "the load monitor's first tick")
    # ... and the first stage's consumers paused: a backlog builds however fast this machine
    # drains (idle, 820 orders can be labelled within seconds, before any tick sees them)
    for queue in FIRST_STAGE:
        assert len(celery_app.control.cancel_consumer(queue, reply=True, timeout=10)) == 2
    # When 800 standard orders arrive, and 20 VIP orders after them
    standard = submit_orders([order("S", i) for i in range(800)], settings=s).accepted
    vip = submit_orders([order("V", i, tags=["vip"]) for i in range(20)],
                        settings=s).accepted
    assert len(standard) == 800 and len(vip) == 20

    # Then the breaker opens under the backlog
    eventually(lambda: read_load(r).get("breaker") == "open", 60, "the breaker to open")
    # When the workers consume again (the fast lane first, as in a worker's queue order)
    for queue in FIRST_STAGE:
        assert len(celery_app.control.add_consumer(queue, reply=True, timeout=10)) == 2

    def labelled() -> int:
        with unit_of_work(s) as uow:
            return uow.session.scalar(select(func.count()).select_from(OrderRow).where(
                OrderRow.state.in_(values(LABELLED_OR_LATER)))) or 0

    eventually(lambda: labelled() == 820, 300, "every order to be labelled")
    # ... non-core jobs were parked, not run, while it was open
    assert read_counts(r)["parked"] > 0
    # ... VIP orders, submitted last, were labelled before most standard orders
    with unit_of_work(s) as uow:
        at = dict(uow.session.execute(select(OrderEvent.order_id, OrderEvent.at).where(
            OrderEvent.to_state == "labelled")).all())
    std_median = statistics.median(at[i].timestamp() for i in standard)
    assert max(at[i].timestamp() for i in vip) < std_median

    # When load falls, the breaker closes after its dwell and replays what was parked
    def all_replayed() -> dict[str, int] | None:
        counts = read_counts(r)
        with unit_of_work(s) as uow:
            done = dict(uow.session.execute(select(NoncoreJob.kind, func.count())
                                            .group_by(NoncoreJob.kind)).all())
            replayed_rows = uow.session.scalar(select(func.count()).select_from(NoncoreJob)
                                               .where(NoncoreJob.replayed.is_(True)))
        ok = (read_load(r).get("breaker") == "closed" and counts["waiting"] == 0
              and counts["parked"] == counts["replayed"] == replayed_rows
              and all(done.get(k) == 820 for k in AFTER_LABEL))
        return counts if ok else None

    counts = eventually(all_replayed, 300, "every parked job to be replayed and done")
    assert counts is not None
    # Then every parked job ran exactly once: one ledger row, one e-mail, one list member each
    mails = [m for m in read_messages(fleet.mail_file) if m["job"].endswith(":post_purchase_email")]
    assert len(mails) == len({m["message_id"] for m in mails}) == 820
    with unit_of_work(s) as uow:
        assert uow.session.scalar(select(func.count()).select_from(NoncoreJob).where(
            NoncoreJob.kind == "coupon", NoncoreJob.outcome == "issued")) == 820
    # ... and each transition was recorded with the load that caused it
    changes = [t for t in transitions(r, 100) if t["what"] == "breaker"]
    assert [t["to"] for t in changes[:2]] == ["open", "closed"]
    # (on the average: 820 orders are under the saturation rule's four batches per slot)
    assert changes[0]["load"] > 0.8 and changes[1]["load"] < 0.6
    assert changes[0]["backlog_orders"] < s.surge_saturated_batches * s.batch_size * 2
    assert counts["parked"] >= counts["parked:post_purchase_email"] > 0


def test_workers_announce_their_slots_and_the_control_loop_counts_them_without_asking(
        start_fleet, settings) -> None:
    from tasks.surge import SLOTS_KEY, fleet_slots

    # Given one worker process with two pool slots on every queue (the control queue too)
    fleet = start_fleet(workers=1, concurrency=2, beat=False)
    r = client(fleet.settings)
    r.delete(SLOTS_KEY)
    # Then its heartbeat announces it: two slots, core queues and the control queue
    assert eventually(lambda: announced_slots(r, CORE_QUEUES, CONTROL_QUEUE), 60,
                      "the worker's announcement") == (2, True)
    # Then the control loop counts them from the announcement: no broadcast, no cached reply
    assert fleet_slots(celery_app, r) == (2, True)
    assert not r.exists(SLOTS_KEY)
    # When the worker stops, its announcement goes with it
    fleet.stop()
    assert announced_slots(r, CORE_QUEUES, CONTROL_QUEUE) is None
    assert not r.hlen(WORKERS_KEY)
