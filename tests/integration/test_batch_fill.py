"""A stage message with room in its batch takes other orders waiting in its state (Sweep), on
real PostgreSQL: newest first, never the fast lane's room for standard orders, never an order
another transaction holds, and a message's own orders that another transaction holds are sent
to the stage again rather than dropped."""

from __future__ import annotations

from sqlalchemy import select, update

from domain.db import unit_of_work
from domain.lifecycle import State, Sweep
from domain.models import OrderRow
from domain.pipeline import FRAUD_CHECK
from tasks.fraud import check_orders
from tasks.intake import submit_orders
from tasks.inventory import reserve_orders
from tasks.sharding import assign_orders
from tests.integration.helpers import native_order, put_stock


def one_by_one(settings, n: int, prefix: str = "o") -> list[int]:
    """n orders, each in an intake call (and a transaction) of its own: distinct updated_at."""
    ids: list[int] = []
    for i in range(n):
        ids += submit_orders([native_order(f"{prefix}{i}")], settings=settings).accepted
    return ids


def states(settings) -> dict[int, str]:
    with unit_of_work(settings) as uow:
        return {i: s for i, s in uow.session.execute(select(OrderRow.id, OrderRow.state))}


def test_each_stage_fills_its_batch_newest_first(db, broker, settings) -> None:
    put_stock(settings, [("TEE-M", "US-EAST", "US", 100)])
    ids = one_by_one(settings, 6)
    first = ids[:1]
    with unit_of_work(settings) as uow:
        approved = check_orders(uow, first, settings, sweep=Sweep(limit=4))
    # The message's own order, then the three newest: the oldest wait for their own messages.
    assert approved == sorted([ids[0], *ids[3:]])
    assert [states(settings)[i] for i in ids[1:3]] == ["received", "received"]
    with unit_of_work(settings) as uow:
        approved += check_orders(uow, ids[1:2], settings, sweep=Sweep(limit=10))
    assert sorted(approved) == ids

    with unit_of_work(settings) as uow:
        reserved = reserve_orders(uow, first, settings, Sweep(limit=10)).reserved
    assert sorted(reserved) == ids
    with unit_of_work(settings) as uow:
        assign_orders(uow, first, settings, Sweep(limit=10))
    assert set(states(settings).values()) == {State.IN_WAVE.value}


def test_without_a_sweep_a_stage_takes_only_its_messages_orders(db, broker, settings) -> None:
    ids = one_by_one(settings, 3)
    with unit_of_work(settings) as uow:
        assert check_orders(uow, ids[:1], settings) == ids[:1]
    assert [states(settings)[i] for i in ids] == ["fraud_checked", "received", "received"]


def test_a_fast_lane_message_takes_only_fast_lane_orders(db, broker, settings) -> None:
    ids = one_by_one(settings, 4)
    fast = [ids[0], ids[2]]
    with unit_of_work(settings) as uow:
        uow.session.execute(update(OrderRow).where(OrderRow.id.in_(fast)).values(fast_lane=True))
    with unit_of_work(settings) as uow:
        approved = check_orders(uow, ids[:1], settings, sweep=Sweep(limit=10, fast_only=True))
    assert approved == fast


def test_orders_another_transaction_holds_are_skipped_or_sent_again(db, broker,
                                                                     settings) -> None:
    ids = one_by_one(settings, 3)
    with unit_of_work(settings) as holder:
        # Another batch (or a duplicate delivery) holds the first two orders.
        holder.session.execute(select(OrderRow.id).where(OrderRow.id.in_(ids[:2]))
                               .with_for_update())
        with unit_of_work(settings) as uow:
            approved = check_orders(uow, ids[:1], settings, sweep=Sweep(limit=10))
            outbox = uow.outbox
    # Not waited for, not taken twice: the free order was swept up, the held one of this
    # message goes to the stage again after the commit (the other held one has a message).
    assert approved == ids[2:]
    assert (FRAUD_CHECK, (ids[:1],)) in outbox
    assert [states(settings)[i] for i in ids[:2]] == ["received", "received"]


def test_the_sqlite_demo_path_fills_batches_too(tmp_path, broker, settings) -> None:
    from domain.db import dispose_engines
    from domain.migrate import upgrade

    lite = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'demo.db'}"})
    upgrade(lite)
    try:
        put_stock(lite, [("TEE-M", "US-EAST", "US", 10)])
        ids = one_by_one(lite, 3)
        with unit_of_work(lite) as uow:
            assert check_orders(uow, ids[:1], lite, sweep=Sweep(limit=10)) == ids
        with unit_of_work(lite) as uow:
            assert sorted(reserve_orders(uow, ids[:1], lite, Sweep(limit=10)).reserved) == ids
        with unit_of_work(lite) as uow:
            assign_orders(uow, ids[:1], lite, Sweep(limit=10))
        assert set(states(lite).values()) == {State.IN_WAVE.value}
    finally:
        dispose_engines()
