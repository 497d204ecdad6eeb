"""Non-core jobs against real servers (an aiosmtpd sink, the sandbox storefront over HTTP) and
the surge control's Redis side: once per (order, kind), parked in order, replayed once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from domain.db import unit_of_work
from domain.models import Coupon, NoncoreJob, OrderRow
from domain.noncore import message_id, run_jobs
from domain.pipeline import fast_lane_ids
from domain.surge import (
    COUNTS_KEY,
    PARKED_KEY,
    REPLAYING_KEY,
    UNACKED_KEY,
    client,
    measure,
    park,
    read_counts,
    recover_replaying,
    replay,
)
from sandbox.smtp import SmtpSink
from sandbox.storefront import SandboxStorefrontServer
from tasks.intake import submit_orders
from tests.integration.helpers import native_order
from workers.fleet import free_port


@pytest.fixture
def sinks(db, broker, tmp_path) -> Iterator[tuple[SmtpSink, SandboxStorefrontServer]]:
    sink = SmtpSink(tmp_path / "mail.jsonl", port=free_port()).start()
    with SandboxStorefrontServer() as store:
        yield sink, store
    sink.stop()


def _settings(settings: Any, sink: SmtpSink, store: SandboxStorefrontServer) -> Any:
    return settings.model_copy(update={"smtp_port": sink.controller.port,
                                       "marketing_url": store.url})


def _orders(settings: Any, n: int, **over: Any) -> list[int]:
    res = submit_orders([native_order(f"NC-{i}", **over) for i in range(n)], settings=settings)
    return sorted(res.accepted)


def test_each_kind_is_done_once_per_order_however_often_it_runs(sinks, settings) -> None:
    sink, store = sinks
    s = _settings(settings, sink, store)
    ids = _orders(s, 3)
    # When every kind runs twice (a redelivery), and once more as a replay,
    for kind in ("post_purchase_email", "review_request_email", "coupon", "marketing_sync"):
        first = run_jobs(s, kind, ids)
        again = run_jobs(s, kind, ids, replayed=True)
        # then the second run finds everything done.
        assert first.done == ids and again.done == [] and again.already == ids
    mails = sink.messages()
    assert len(mails) == 6
    assert {m["message_id"] for m in mails} == {
        message_id(i, k) for i in ids for k in ("post_purchase_email", "review_request_email")}
    assert all(m["to"] == ["jo@example.com"] for m in mails)
    with unit_of_work(s) as uow:
        assert uow.session.scalar(select(func.count()).select_from(NoncoreJob)) == 12
        coupons = uow.session.scalars(select(Coupon)).all()
    assert sorted(c.order_id for c in coupons) == ids and len({c.code for c in coupons}) == 3
    members = store.state.marketing["acme"]
    assert sorted(members) == [f"{i}:marketing_sync" for i in ids]


def test_an_order_without_an_email_is_skipped_and_recorded(sinks, settings) -> None:
    sink, store = sinks
    s = _settings(settings, sink, store)
    ids = _orders(s, 1, customer={"id": "guest-1", "email": ""})
    out = run_jobs(s, "post_purchase_email", ids)
    assert out.skipped == {ids[0]: "skipped:no_email"} and sink.messages() == []
    with unit_of_work(s) as uow:
        assert uow.session.get_one(NoncoreJob, (ids[0], "post_purchase_email")).outcome == (
            "skipped:no_email")


def test_a_mail_server_that_is_down_leaves_the_job_undone(db, broker, settings) -> None:
    s = settings.model_copy(update={"smtp_port": free_port()})
    ids = _orders(s, 1)
    with pytest.raises(ConnectionRefusedError):
        run_jobs(s, "post_purchase_email", ids)
    with unit_of_work(s) as uow:  # rolled back: a retry will send it
        assert uow.session.scalar(select(func.count()).select_from(NoncoreJob)) == 0


def test_parked_jobs_are_replayed_in_order_within_the_budget(redis_client, settings) -> None:
    r = client(settings)
    for n, kind in enumerate(["coupon", "post_purchase_email", "marketing_sync"]):
        park(r, kind, [10 * n + 1, 10 * n + 2])
    sent: list[tuple[str, list[int]]] = []
    assert replay(r, 3, lambda kind, ids: sent.append((kind, ids))) == 4
    assert sent == [("coupon", [1, 2]), ("post_purchase_email", [11, 12])]
    assert replay(r, 100, lambda kind, ids: sent.append((kind, ids))) == 2
    assert sent[-1] == ("marketing_sync", [21, 22])
    counts = read_counts(r)
    assert counts["parked"] == counts["replayed"] == 6 and counts["waiting"] == 0
    assert counts["parked:coupon"] == 2 and counts["replayed:marketing_sync"] == 2


def test_a_replay_that_crashed_after_taking_a_job_sends_it_on_recovery(redis_client,
                                                                       settings) -> None:
    r = client(settings)
    park(r, "coupon", [7])
    r.lmove(PARKED_KEY, REPLAYING_KEY, "LEFT", "RIGHT")  # taken, then the process died
    sent: list[Any] = []
    assert recover_replaying(r, lambda kind, ids: sent.append((kind, ids))) == 1
    assert sent == [("coupon", [7])] and r.llen(REPLAYING_KEY) == 0
    assert int(r.hget(COUNTS_KEY, "replayed") or 0) == 1


def test_measure_reads_unacked_core_messages_lists_and_waiting_orders(db, redis_client,
                                                                      settings) -> None:
    # Given four VIP orders (the intake sent them in one message on the fraud fast lane),
    ids = _orders(settings, 4, tags=["vip"])
    r = client(settings)
    assert (r.llen("fraud_fast"), r.llen("fraud")) == (1, 0)
    r.rpush("fraud", "m1", "m2")
    r.rpush("fraud_fast", "m3")
    r.hset(UNACKED_KEY, mapping={
        "t1": json.dumps([{}, "orderfleet", "inventory"]),
        "t2": json.dumps([{}, "orderfleet", "labels_fast"]),
        "t3": json.dumps([{}, "orderfleet", "email_post_purchase"]),  # not core
    })
    with unit_of_work(settings) as uow:
        m = measure(r, uow.session, settings, slots=4,
                    core_queues=["fraud", "fraud_fast", "inventory", "labels_fast"])
        assert fast_lane_ids(uow.session, ids) == set(ids)
        assert uow.session.scalar(select(func.count()).select_from(OrderRow)) == 4
    assert (m.busy_core, m.queued_core, m.backlog_orders, m.arrivals) == (2, 4, 4, 4)
    assert m.oldest_wait_s >= 0


def test_a_tick_publishes_load_that_load_and_scale_show(db, redis_client, settings) -> None:
    from click.testing import CliRunner

    from tasks.surge import SLOTS_KEY, run_tick
    from workers.app import app
    from workers.cli import main as cli

    # Given 30 orders waiting, two busy core slots of two (the slot count as last inspected)
    _orders(settings, 30)
    r = client(settings)
    r.hset(SLOTS_KEY, mapping={"slots": 2, "shared": 0})
    r.hset(UNACKED_KEY, mapping={f"t{i}": json.dumps([{}, "orderfleet", "fraud"])
                                 for i in range(2)})
    # When the control loop ticks (with next to no smoothing, so that one tick tells)
    d = run_tick(app, settings.model_copy(update={"surge_ewma_tau_s": 0.001}), r)
    # Then the published load shows a saturated fleet and the breaker open
    assert d.state.breaker == "open" and d.utilisation == 1.0
    shown = json.loads(CliRunner().invoke(cli, ["load", "--json"]).output)
    assert shown["load"]["breaker"] == "open" and shown["load"]["backlog_orders"] == 30
    assert shown["load"]["backlog"] == 3  # the intake's fraud message plus two reserved
    assert shown["transitions"][-1]["to"] == "open"
    # ... and scale advises nothing before a drain was measured
    advice = json.loads(CliRunner().invoke(cli, ["scale", "--json"]).output)
    assert advice["slots_needed"] is None and advice["backlog_orders"] == 30
