"""The re-drive sweep on real Redis and PostgreSQL: it re-sends what no message carries, at once,
even while the stage's queue is deep; and a broker that lost its data is re-driven at once."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta

from sqlalchemy import select, update

from domain.clock import utcnow
from domain.db import unit_of_work
from domain.models import BrokerEpoch, NoncoreJob, OrderRow
from domain.pipeline import redriven
from domain.surge import client
from tasks.intake import submit_orders
from tasks.sweeps import (
    EPOCH_KEY,
    recover_lost_broker,
    redrive_stuck,
    remember_broker_epoch,
)
from tests.integration.helpers import native_order


def _ids_in(raw: bytes) -> list[int]:
    message = json.loads(raw)
    return list(json.loads(base64.b64decode(message["body"]))[0][0])


def _queued_ids(broker) -> list[list[int]]:
    return [_ids_in(m) for m in broker.lrange("fraud", 0, -1)]


def _age(settings, ids: list[int], seconds: float) -> None:
    with unit_of_work(settings) as uow:
        uow.session.execute(update(OrderRow).where(OrderRow.id.in_(ids))
                            .values(updated_at=utcnow() - timedelta(seconds=seconds)))


def _two_submissions(settings, broker) -> tuple[list[int], list[int]]:
    carried = submit_orders([native_order(f"A-{i}") for i in range(3)],
                            settings=settings).accepted
    lost = submit_orders([native_order(f"B-{i}") for i in range(3)], settings=settings).accepted
    # The second message is lost (as when a publish raced a broker failure).
    assert broker.llen("fraud") == 2
    broker.lrem("fraud", 1, broker.lrange("fraud", 0, 0)[0])
    assert sorted(_queued_ids(broker)[0]) == sorted(carried)
    _age(settings, carried + lost, 60)
    return carried, lost


def test_only_orders_no_message_carries_are_sent_again_while_the_queue_is_not_empty(
        db, broker, settings) -> None:
    from workers.app import app

    carried, lost = _two_submissions(settings, broker)

    counts = redrive_stuck(settings, app)

    assert counts["mode"] == "missing" and counts["received"] == 3
    assert sorted(map(sorted, _queued_ids(broker))) == sorted([sorted(carried), sorted(lost)])
    # ... and counted where ops (orderfleet_redriven_total) and the benchmarks read it
    assert redriven(client(settings)) == {"received": 3}
    redrive_stuck(settings, app)  # a second sweep finds the re-sent message: nothing more
    assert redriven(client(settings)) == {"received": 3}


def test_a_dry_run_names_the_missing_orders_and_sends_nothing(db, broker, settings) -> None:
    from workers.app import app

    _, lost = _two_submissions(settings, broker)

    counts = redrive_stuck(settings, app, dry_run=True)

    assert counts["ids"] == {"received": sorted(lost)}
    assert broker.llen("fraud") == 1
    assert redriven(client(settings)) == {}


def test_orders_changed_within_the_grace_period_are_left_alone(db, broker, settings) -> None:
    from workers.app import app

    ids = submit_orders([native_order("C-1")], settings=settings).accepted
    broker.delete("fraud")  # lost, but a moment ago: its commit may still be sending

    assert redrive_stuck(settings, app)["received"] == 0
    _age(settings, ids, 60)
    assert redrive_stuck(settings, app)["received"] == 1


def test_a_message_held_by_a_worker_that_died_counts_as_missing(db, broker, settings) -> None:
    from workers.app import app

    ids = submit_orders([native_order("D-1"), native_order("D-2")], settings=settings).accepted
    _age(settings, ids, 60)
    # Delivered to a worker that was then killed: the message waits in kombu's unacked hash
    # (until the visibility timeout) and no live worker holds it.
    raw = broker.rpop("fraud")
    entry = json.dumps([json.loads(raw), "orderfleet", "fraud"])
    broker.hset("unacked", "tag-1", entry)
    broker.zadd("unacked_index", {"tag-1": time.time()})
    assert redrive_stuck(settings, app)["received"] == 0  # young: perhaps still running

    broker.zadd("unacked_index", {"tag-1": time.time() - 60})
    counts = redrive_stuck(settings, app)

    assert counts["received"] == 2
    assert sorted(_queued_ids(broker)[0]) == sorted(ids)


def _fleet_has_checked(settings, app, broker) -> None:
    """The fleet's first epoch check on this broker: it sets the key and recovers nothing."""
    if not broker.exists(EPOCH_KEY):
        assert recover_lost_broker(settings, app) is None
    assert broker.exists(EPOCH_KEY)


def test_a_fleets_first_check_on_a_new_broker_takes_nothing_for_lost(db, broker,
                                                                       settings) -> None:
    from workers.app import app

    # Given a new broker (no epoch key) and a database that never saw one, with work under way:
    # an order waiting for fraud, and an e-mail at the mail server
    ids = sorted(submit_orders([native_order(f"F-{i}") for i in range(2)],
                               settings=settings).accepted)
    with unit_of_work(settings) as uow:
        uow.session.execute(update(OrderRow).where(OrderRow.id == ids[1])
                            .values(state="labelled", updated_at=utcnow()))
        uow.session.add(NoncoreJob(order_id=ids[1], kind="post_purchase_email",
                                   outcome="sending", claimed_by="task-1", done_at=utcnow()))
    queued = broker.llen("fraud")
    # When the fleet's first epoch check runs
    assert recover_lost_broker(settings, app) is None
    # Then nothing was re-sent or settled: the key is set and the database remembers it
    assert broker.llen("fraud") == queued and not broker.llen("email_post_purchase")
    with unit_of_work(settings) as uow:
        assert uow.session.scalar(select(NoncoreJob.outcome)) == "sending"
        seen = uow.session.scalar(select(BrokerEpoch.token))
    assert seen is not None and broker.get(EPOCH_KEY) in (seen, seen.encode())
    # ... and once that broker loses its data, the next check recovers
    broker.flushdb()
    counts = recover_lost_broker(settings, app)
    assert counts is not None and counts["received"] == 1 and counts["uncertain_emails"] == 1


def test_a_database_new_to_a_running_broker_learns_its_epoch(db, broker, settings) -> None:
    from workers.app import app

    # Given a broker that has its epoch key, and a database that never saw it (restored, new)
    broker.set(EPOCH_KEY, "epoch-of-another-database")
    assert recover_lost_broker(settings, app) is None
    with unit_of_work(settings) as uow:
        assert uow.session.scalar(select(BrokerEpoch.token)) == "epoch-of-another-database"
    # When the broker loses its data, the loss is noticed
    submit_orders([native_order("G-1")], settings=settings)
    broker.flushdb()
    counts = recover_lost_broker(settings, app)
    assert counts is not None and counts["received"] == 1


def test_a_broker_lost_before_beats_first_check_is_still_noticed(db, broker, settings) -> None:
    from workers.app import app

    # Given a new broker: a worker, starting, records its epoch before it takes a message
    remember_broker_epoch(settings)
    with unit_of_work(settings) as uow:
        assert uow.session.scalar(select(BrokerEpoch.token)) is not None
    assert broker.exists(EPOCH_KEY)
    # When the broker loses its data before beat has checked once, and a worker restarts
    submit_orders([native_order("W-1")], settings=settings)
    broker.flushdb()
    remember_broker_epoch(settings)
    # Then the loss is left for the check (no key set over it), which recovers it
    assert not broker.exists(EPOCH_KEY)
    counts = recover_lost_broker(settings, app)
    assert counts is not None and counts["received"] == 1


def test_a_broker_that_lost_its_data_is_redriven_at_once(db, broker, settings) -> None:
    from workers.app import app

    ids = submit_orders([native_order("E-1"), native_order("E-2")], settings=settings).accepted
    _fleet_has_checked(settings, app, broker)
    assert recover_lost_broker(settings, app) is None  # the epoch is there: nothing to do

    broker.flushdb()  # Redis restarted without persistence: messages and bindings are gone
    counts = recover_lost_broker(settings, app)

    assert counts is not None and counts["received"] == 2  # no grace, no stage deadline
    assert sorted(_queued_ids(broker)[0]) == sorted(ids)
    assert broker.exists(EPOCH_KEY)
    assert broker.smembers("_kombu.binding.orderfleet")  # queues declared again
    assert recover_lost_broker(settings, app) is None


def test_a_lost_broker_sends_again_the_noncore_jobs_that_have_not_run(db, broker,
                                                                       settings) -> None:
    from workers.app import app

    # Given three labelled orders, one already mailed, and an old one labelled last week,
    ids = sorted(submit_orders([native_order(f"N-{i}") for i in range(4)],
                               settings=settings).accepted)
    with unit_of_work(settings) as uow:
        uow.session.execute(update(OrderRow).where(OrderRow.id.in_(ids))
                            .values(state="labelled", updated_at=utcnow()))
        uow.session.add(NoncoreJob(order_id=ids[0], kind="post_purchase_email",
                                   done_at=utcnow(), outcome="sent"))
    _age(settings, [ids[3]], 8 * 86_400)
    _fleet_has_checked(settings, app, broker)
    broker.flushdb()  # when the broker loses its messages (and the jobs it queued),
    counts = recover_lost_broker(settings, app)
    # then the jobs that have not run are sent again, for recent orders only.
    assert counts is not None
    assert counts["noncore"] == {"post_purchase_email": 2, "coupon": 3, "marketing_sync": 3}
    assert [_ids_in(m) for m in broker.lrange("email_post_purchase", 0, -1)] == [ids[1:3]]
    assert [_ids_in(m) for m in broker.lrange("coupons", 0, -1)] == [ids[:3]]


def test_a_restarted_broker_gives_back_the_email_claims_it_cut_off(db, broker,
                                                                      settings) -> None:
    from workers.app import app

    # Given five labelled orders whose post-purchase e-mails were claimed by tasks:
    ids = sorted(submit_orders([native_order(f"C-{i}") for i in range(5)],
                               settings=settings).accepted)
    rows = [(ids[0], "claimed", "task-cut-off"),  # its task was terminated, its message lost
            (ids[1], "claimed", "task-2"),  # the same: claimed a moment before the restart
            (ids[2], "sending", "task-cut-off"),  # may be at the mail server
            (ids[3], "claimed", "run-direct"),  # a direct call: no broker involved
            (ids[4], "sent", "task-done")]
    with unit_of_work(settings) as uow:
        uow.session.execute(update(OrderRow).where(OrderRow.id.in_(ids))
                            .values(state="labelled", updated_at=utcnow()))
        uow.session.add_all(NoncoreJob(order_id=i, kind="post_purchase_email", outcome=o,
                                       claimed_by=c, done_at=utcnow()) for i, o, c in rows)
    _fleet_has_checked(settings, app, broker)
    broker.flushdb()  # the messages of the claiming tasks are gone with the broker's data
    counts = recover_lost_broker(settings, app)
    # The task messages' claims are given back and their e-mails sent again; a possibly
    # delivered e-mail is marked uncertain (for a person, never re-sent: no message will ever
    # settle it now); a direct call's claim is kept.
    assert counts is not None and counts["released_claims"] == 2
    assert counts["uncertain_emails"] == 1
    assert counts["noncore"]["post_purchase_email"] == 2
    assert [_ids_in(m) for m in broker.lrange("email_post_purchase", 0, -1)] == [ids[:2]]
    with unit_of_work(settings) as uow:
        kept = dict(uow.session.execute(select(NoncoreJob.order_id, NoncoreJob.outcome)
                                        .where(NoncoreJob.kind == "post_purchase_email")).all())
    assert kept == {ids[2]: "uncertain", ids[3]: "claimed", ids[4]: "sent"}


def test_the_redrive_command_shows_then_sends(db, broker, settings) -> None:
    from click.testing import CliRunner

    from workers.cli import main

    _, lost = _two_submissions(settings, broker)
    runner = CliRunner()

    dry = runner.invoke(main, ["redrive", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["ids"] == {"received": sorted(lost)}
    assert broker.llen("fraud") == 1

    sent = runner.invoke(main, ["redrive"])
    assert sent.exit_code == 0, sent.output
    assert "re-sent (missing mode): received 3" in sent.output
    assert broker.llen("fraud") == 2
