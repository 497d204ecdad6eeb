"""Non-core jobs against real servers (an aiosmtpd sink, the sandbox storefront over HTTP) and
the surge control's Redis side: once per (order, kind), parked in order, replayed once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from domain.clock import utcnow
from domain.db import unit_of_work
from domain.health_rules import evaluate
from domain.models import Coupon, NoncoreJob, OrderRow
from domain.noncore import (
    SENDING,
    UNCERTAIN,
    message_id,
    release_claims_of_lost_broker,
    run_jobs,
)
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
from sandbox.smtp import KeepMessages, SmtpSink
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
        assert first.done == ids and again.done == [] and again.already == ids, (kind, first)
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


def test_an_email_reads_back_whole_whatever_the_order_fields_hold(sinks, settings,
                                                                  tmp_path) -> None:
    import email
    from email import policy

    sink, store = sinks
    # Given a sender whose display name leaves ASCII, and an order whose number tries to start
    # a header of its own, from a store named outside ASCII
    s = _settings(settings, sink, store).model_copy(
        update={"smtp_from": "Boutique Zoë <orders@example.com>"})
    (order_id,) = submit_orders([native_order("N-1\r\nBcc: evil@example.com", store="café-zoë")],
                                settings=s).accepted
    # When its post-purchase e-mail goes to a real SMTP server (the sink keeps the raw bytes)
    raw: list[bytes] = []
    senders: list[str] = []

    class Keep(KeepMessages):
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            raw.append(envelope.content)
            senders.append(envelope.mail_from)
            return await super().handle_DATA(server, session, envelope)

    sink.controller.handler = Keep(tmp_path / "raw.jsonl")
    assert run_jobs(s, "post_purchase_email", [order_id]).done == [order_id]
    # Then it reads back as sent: one recipient, the number on one line, the store intact
    (data,) = raw
    msg = email.message_from_bytes(data, policy=policy.default)
    assert msg["To"] == "jo@example.com" and msg["Bcc"] is None
    assert msg["Subject"] == "Thank you for your order N-1  Bcc: evil@example.com"
    assert msg["Message-ID"] == message_id(order_id, "post_purchase_email")
    assert msg["X-Orderfleet-Job"] == f"{order_id}:post_purchase_email"
    assert "from café-zoë is packed" in msg.get_content()
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    # Then the sender's name is encoded on its own, its address readable, in the envelope too
    (sender,) = msg["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Boutique Zoë", "orders@example.com")
    assert senders == ["orders@example.com"]


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


class _KeepThenHangUp(KeepMessages):
    """Keeps the message, then drops the connection before answering: the client cannot know
    whether the message was taken (as when a mail server dies at that moment)."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        reply = await super().handle_DATA(server, session, envelope)
        server.transport.abort()
        return reply


class _RefuseRecipient(KeepMessages):
    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          options: list[str]) -> str:
        return "550 5.1.1 no such mailbox"


def _sink_with(handler: KeepMessages) -> SmtpSink:
    sink = SmtpSink(handler.out, port=free_port())
    sink.controller.handler = handler
    return sink.start()


def _outcomes(s: Any, kind: str = "post_purchase_email") -> dict[int, str]:
    with unit_of_work(s) as uow:
        return dict(uow.session.execute(select(NoncoreJob.order_id, NoncoreJob.outcome)
                                        .where(NoncoreJob.kind == kind)).all())


def test_an_email_the_server_may_have_taken_is_never_sent_again_by_itself(db, broker,
                                                                          settings, tmp_path
                                                                          ) -> None:
    from click.testing import CliRunner

    from workers.cli import main as cli

    # Given a mail server that keeps a message and hangs up before it says so,
    sink = _sink_with(_KeepThenHangUp(tmp_path / "mail.jsonl"))
    try:
        s = settings.model_copy(update={"smtp_port": sink.controller.port})
        ids = _orders(s, 2)
        # when the job runs, and runs again (a redelivery, a replay),
        first = run_jobs(s, "post_purchase_email", ids, claimer="task-1")
        again = run_jobs(s, "post_purchase_email", ids, claimer="task-1")
        # then each e-mail went out once and is marked uncertain, not re-sent.
        assert first.uncertain == ids and again.already == ids
        assert sorted(m["job"] for m in sink.messages()) == [
            f"{i}:post_purchase_email" for i in ids]
        assert _outcomes(s) == {i: UNCERTAIN for i in ids}
        with unit_of_work(s) as uow:  # the alert a person acts on
            found = evaluate(uow.session, s, utcnow(), workers_up=None)
        assert [f.message for f in found if f.rule == "OrderfleetEmailUncertain"] == [
            "2 e-mails may or may not have gone out (the connection broke while the mail "
            "server took them)"]
        listed = json.loads(CliRunner().invoke(cli, ["noncore", "list", "--json"]).output)
        assert [(j["order_id"], j["outcome"]) for j in listed] == [(i, UNCERTAIN) for i in ids]
        # A person counts one as sent (the server's log has it) and sends the other again,
        assert CliRunner().invoke(cli, ["noncore", "settle", "post_purchase_email",
                                        str(ids[0])]).exit_code == 0
        assert CliRunner().invoke(cli, ["noncore", "resend", "post_purchase_email",
                                        str(ids[1])]).exit_code == 0
        assert broker.llen("email_post_purchase") == 1  # the job, enqueued again
    finally:
        sink.stop()
    good = SmtpSink(tmp_path / "mail2.jsonl", port=free_port()).start()
    try:
        s = settings.model_copy(update={"smtp_port": good.controller.port})
        # which the next run sends.
        assert run_jobs(s, "post_purchase_email", ids).done == [ids[1]]
        assert [m["job"] for m in good.messages()] == [f"{ids[1]}:post_purchase_email"]
        assert _outcomes(s) == {ids[0]: "sent", ids[1]: "sent"}
    finally:
        good.stop()


def test_a_redelivery_takes_over_its_own_claims_and_never_resends_a_half_sent_one(
        sinks, settings) -> None:
    sink, store = sinks
    s = _settings(settings, sink, store)
    ids = _orders(s, 3)
    # Given a worker that died holding three e-mails of message "task-1": one claimed only,
    # one being handed over, and one claimed by another message that is still running,
    with unit_of_work(s) as uow:
        for order_id, outcome, claimer in ((ids[0], "claimed", "task-1"),
                                           (ids[1], SENDING, "task-1"),
                                           (ids[2], "claimed", "task-2")):
            uow.session.add(NoncoreJob(order_id=order_id, kind="post_purchase_email",
                                       done_at=utcnow(), outcome=outcome, claimed_by=claimer))
    # when "task-1" is delivered again,
    out = run_jobs(s, "post_purchase_email", ids, claimer="task-1")
    # then it sends what it had only claimed, marks the half-sent one uncertain, and leaves
    # the other message's e-mail to it.
    assert (out.done, out.uncertain, out.already) == ([ids[0]], [ids[1]], [ids[2]])
    assert [m["job"] for m in sink.messages()] == [f"{ids[0]}:post_purchase_email"]
    assert _outcomes(s) == {ids[0]: "sent", ids[1]: UNCERTAIN, ids[2]: "claimed"}


class _ReleaseOnRcpt(KeepMessages):
    """While the first recipient is being accepted, the claims are given back (a restarted
    broker's recovery running at that moment)."""

    def __init__(self, out: Any, settings: Any) -> None:
        super().__init__(out)
        self.settings, self.released = settings, 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          options: list[str]) -> str:
        if not self.released:
            with unit_of_work(self.settings) as uow:
                self.released = release_claims_of_lost_broker(uow)
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_a_claim_given_back_before_its_message_is_handed_over_is_never_sent(
        db, broker, settings, tmp_path) -> None:
    handler = _ReleaseOnRcpt(tmp_path / "mail.jsonl", settings)
    sink = _sink_with(handler)
    try:
        s = settings.model_copy(update={"smtp_port": sink.controller.port})
        handler.settings = s
        ids = _orders(s, 2)
        # When both e-mails' claims are given back while the first one's envelope is sent,
        out = run_jobs(s, "post_purchase_email", ids, claimer="task-1")
        # then neither goes out (the first is dropped with RSET, the second never starts):
        # the re-drive that follows a release sends them afresh, once.
        assert handler.released == 2 and out.already == ids and out.done == []
        assert sink.messages() == [] and _outcomes(s) == {}
        again = run_jobs(s, "post_purchase_email", ids, claimer="task-2")
        assert again.done == ids
        assert sorted(m["job"] for m in sink.messages()) == [
            f"{i}:post_purchase_email" for i in ids]
    finally:
        sink.stop()


def test_a_recipient_the_server_refuses_is_recorded_and_not_retried(db, broker, settings,
                                                                    tmp_path) -> None:
    sink = _sink_with(_RefuseRecipient(tmp_path / "mail.jsonl"))
    try:
        s = settings.model_copy(update={"smtp_port": sink.controller.port})
        ids = _orders(s, 1)
        assert run_jobs(s, "post_purchase_email", ids).failed == {ids[0]: "failed:smtp 550"}
        assert run_jobs(s, "post_purchase_email", ids).already == ids
        assert sink.messages() == []
    finally:
        sink.stop()


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
        # held by a worker for a countdown (a retry in a minute): no slot busy with it yet
        "t4": json.dumps([{"headers": {"eta": (utcnow() + timedelta(minutes=1)).isoformat()}},
                          "orderfleet", "inventory"]),
        # ... one whose ETA has come is running
        "t5": json.dumps([{"headers": {"eta": (utcnow() - timedelta(seconds=1)).isoformat()}},
                          "orderfleet", "fraud"]),
    })
    with unit_of_work(settings) as uow:
        m = measure(r, uow.session, settings, slots=4,
                    core_queues=["fraud", "fraud_fast", "inventory", "labels_fast"])
        assert fast_lane_ids(uow.session, ids) == set(ids)
        assert uow.session.scalar(select(func.count()).select_from(OrderRow)) == 4
    assert (m.busy_core, m.queued_core, m.backlog_orders, m.arrivals) == (3, 4, 4, 4)
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
