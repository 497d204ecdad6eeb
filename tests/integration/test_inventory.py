"""The inventory stage on real PostgreSQL and Redis: outcomes, freezes, lifecycle, stock feed.

Plain functions are called directly; the tasks they enqueue are read back from the real Redis
broker (nothing consumes them here).
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import create_engine, select, text, update

from benchmarks.inventory import place_orders
from domain.alerts import open_alerts
from domain.db import unit_of_work
from domain.lifecycle import State, transition
from domain.models import OrderEvent, OrderRow, Reservation, SkuHealth, SkuHold, Stock
from domain.reservations import consume_reservations, release_reservations, restock_orders
from domain.sku_health import freeze_sku, unfreeze_sku
from tasks.inventory import expire_stale_reservations, reserve_orders, wake_backordered
from tests.integration.helpers import put_stock
from tests.waiting import eventually
from workers.cli import main as cli

# At most 2 failures in the last 100 first attempts: the 3rd freezes the SKU.
STRICT = {"sku_freeze_window": 100, "sku_freeze_failure_rate": 0.02}


def queued(broker: Any, queue: str = "inventory") -> list[tuple[str, list[Any]]]:
    """(task name, args) of the messages waiting in a queue, oldest first."""
    out = []
    for raw in reversed(broker.lrange(queue, 0, -1)):
        msg = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(msg["body"]))
        out.append((msg["headers"]["task"], args))
    return out


def run(settings: Any, fn: Any, *args: Any) -> Any:
    with unit_of_work(settings) as uow:
        return fn(uow, *args)


def orders_in(settings: Any, tag: str, lines: list[list[tuple[str, int]]],
              country: str | list[str] = "US") -> list[int]:
    with unit_of_work(settings) as uow:
        return place_orders(uow, lines, tag=tag, country=country)


def states(settings: Any, ids: list[int]) -> dict[int, str]:
    with unit_of_work(settings) as uow:
        return dict(uow.session.execute(
            select(OrderRow.id, OrderRow.state).where(OrderRow.id.in_(ids))).all())


def stock(settings: Any, sku: str, wh: str = "US-EAST") -> tuple[int, int]:
    with unit_of_work(settings) as uow:
        row = uow.session.get_one(Stock, (sku, wh))
        return row.on_hand, row.reserved


def reservations(settings: Any, ids: list[int]) -> list[tuple[int, str, str, int, str]]:
    with unit_of_work(settings) as uow:
        return [(oid, sku, wh, qty, status) for oid, sku, wh, qty, status in uow.session.execute(
            select(Reservation.order_id, Reservation.sku, Reservation.warehouse,
                   Reservation.quantity, Reservation.status)
            .where(Reservation.order_id.in_(ids)).order_by(Reservation.id)).all()]


# --- outcomes ---------------------------------------------------------------------------------
def test_an_order_is_reserved_whole_or_not_at_all(db, broker, settings) -> None:
    # Given A in stock and B short
    put_stock(settings, [("A", "US-EAST", "US", 10), ("B", "US-EAST", "US", 2)])
    ids = orders_in(settings, "whole", [[("A", 1), ("B", 5)], [("A", 2), ("B", 2)]])
    # When both are reserved in one batch
    out = run(settings, reserve_orders, ids, settings)
    # Then the first waits for B, holding nothing; the second has both lines
    assert (out.backordered, out.reserved) == ([ids[0]], [ids[1]])
    assert reservations(settings, ids) == [(ids[1], "A", "US-EAST", 2, "active"),
                                           (ids[1], "B", "US-EAST", 2, "active")]
    assert stock(settings, "A") == (10, 2) and stock(settings, "B") == (2, 2)
    with unit_of_work(settings) as uow:
        detail = uow.session.execute(select(OrderEvent.detail).where(
            OrderEvent.order_id == ids[0])).scalar_one()
    assert detail == {"short_skus": ["B"]}


def test_all_lines_ship_from_one_warehouse_the_domestic_one_first(db, broker, settings) -> None:
    put_stock(settings, [("A", "US-EAST", "US", 5), ("A", "EU-DE", "DE", 5),
                         ("B", "EU-DE", "DE", 5)])
    ids = orders_in(settings, "wh", [[("A", 1)], [("A", 1), ("B", 1)], [("A", 1)]],
                    country=["US", "US", "DE"])
    run(settings, reserve_orders, ids, settings)
    with unit_of_work(settings) as uow:
        wh = dict(uow.session.execute(select(OrderRow.id, OrderRow.warehouse)
                                      .where(OrderRow.id.in_(ids))).all())
    # Only EU-DE has both A and B, so the US order with B ships from there whole.
    assert [wh[i] for i in ids] == ["US-EAST", "EU-DE", "EU-DE"]


def test_an_order_locked_by_another_transaction_is_reported_for_a_later_look(
        db, broker, settings) -> None:
    put_stock(settings, [("A", "US-EAST", "US", 5)])
    ids = orders_in(settings, "lock", [[("A", 1)], [("A", 1)]])
    engine = create_engine(settings.database_url, pool_size=1)
    with engine.connect() as other:
        other.execute(text("SELECT id FROM orders WHERE id = :i FOR UPDATE"), {"i": ids[0]})
        out = run(settings, reserve_orders, ids, settings)
        other.rollback()
    engine.dispose()
    assert (out.reserved, out.contended) == ([ids[1]], [ids[0]])


# --- auto-freeze ------------------------------------------------------------------------------
def test_failures_over_the_line_freeze_the_sku_hold_its_next_orders_and_raise_an_alert(
        db, broker, settings) -> None:
    strict = settings.model_copy(update=STRICT)
    put_stock(settings, [("HOT", "US-EAST", "US", 1), ("OK", "US-EAST", "US", 50)])
    ids = orders_in(settings, "frz", [[("HOT", 1)]] * 10 + [[("OK", 1)]])
    # When ten orders want the one unit of HOT
    out = run(settings, reserve_orders, ids, strict)
    # Then one is reserved, three fail (the third crosses the line), the rest are held
    assert out.reserved == [ids[0], ids[10]]
    assert out.backordered == ids[1:4]
    assert out.held == ids[4:10] and out.frozen_skus == ["HOT"]
    with unit_of_work(settings) as uow:
        s = uow.session
        health = s.get_one(SkuHealth, "HOT")
        assert (health.frozen, health.recent, health.attempts, health.failures) == (
            True, "0111", 4, 3)
        assert health.frozen_reason is not None
        assert "3 of its last 100" in health.frozen_reason
        held = s.execute(select(OrderRow.hold_reason).where(OrderRow.id.in_(ids[4:10]))
                         ).scalars().all()
        assert set(held) == {"frozen SKU HOT: waiting for `orderfleet sku unfreeze`"}
        assert sorted(s.execute(select(SkuHold.order_id)).scalars()) == ids[4:10]
        (alert,) = open_alerts(s, "sku_frozen")
        assert alert.key == "HOT" and "unfreeze HOT" in alert.message
    # ... and a new order for HOT is held too, an order of another SKU is not
    more = orders_in(settings, "frz2", [[("HOT", 1)], [("OK", 1)]])
    out = run(settings, reserve_orders, more, strict)
    assert (out.held, out.reserved) == ([more[0]], [more[1]])


def test_retries_of_backordered_orders_are_not_attempts(db, broker, settings) -> None:
    strict = settings.model_copy(update=STRICT)
    put_stock(settings, [("OUT", "US-EAST", "US", 0)])
    ids = orders_in(settings, "retry", [[("OUT", 1)]] * 2)
    run(settings, reserve_orders, ids, strict)
    for _ in range(5):  # woken again and again while stock stays out
        assert run(settings, reserve_orders, ids, strict).backordered == ids
    with unit_of_work(settings) as uow:
        health = uow.session.get_one(SkuHealth, "OUT")
        assert (health.recent, health.frozen) == ("11", False)


def test_auto_freeze_can_be_switched_off_but_the_window_is_still_kept(
        db, broker, settings) -> None:
    off = settings.model_copy(update={**STRICT, "sku_auto_freeze": False})
    put_stock(settings, [("OUT", "US-EAST", "US", 0)])
    ids = orders_in(settings, "off", [[("OUT", 1)]] * 5)
    assert run(settings, reserve_orders, ids, off).backordered == ids
    with unit_of_work(settings) as uow:
        health = uow.session.get_one(SkuHealth, "OUT")
        assert (health.recent, health.frozen) == ("11111", False)


def test_unfreeze_resumes_the_held_orders_which_then_reserve(db, broker, settings) -> None:
    strict = settings.model_copy(update=STRICT)
    put_stock(settings, [("HOT", "US-EAST", "US", 1)])
    ids = orders_in(settings, "unf", [[("HOT", 1)]] * 8)
    run(settings, reserve_orders, ids, strict)
    held = ids[4:]
    # Given stock arrived, when ops unfreeze HOT
    put_stock(settings, [("HOT", "US-EAST", "US", 20)])
    broker.delete("inventory")
    result = CliRunner().invoke(cli, ["sku", "unfreeze", "HOT"])
    assert result.exit_code == 0, result.output
    assert "4 held orders resumed" in result.output
    assert "3 backordered orders retried" in result.output
    # Then the held orders are back in fraud_checked and sent to the stage with the woken ones
    assert set(states(settings, held).values()) == {"fraud_checked"}
    sent = queued(broker)
    assert sent == [("orderfleet.inventory.reserve", [held]),
                    ("orderfleet.inventory.reserve", [ids[1:4]])]
    with unit_of_work(settings) as uow:
        health = uow.session.get_one(SkuHealth, "HOT")
        assert (health.frozen, health.recent) == (False, "")
        assert open_alerts(uow.session, "sku_frozen") == []
        assert uow.session.execute(select(SkuHold)).all() == []
    out = run(settings, reserve_orders, held + ids[1:4], strict)
    assert sorted(out.reserved) == sorted(held + ids[1:4])


def test_an_order_held_for_two_frozen_skus_waits_for_both(db, broker, settings) -> None:
    put_stock(settings, [("A", "US-EAST", "US", 5), ("B", "US-EAST", "US", 5)])
    with unit_of_work(settings) as uow:
        assert freeze_sku(uow.session, "A", "recount")
        assert freeze_sku(uow.session, "B", "")
        assert not freeze_sku(uow.session, "B", "again")
    (oid,) = orders_in(settings, "two", [[("A", 1), ("B", 1)]])
    assert run(settings, reserve_orders, [oid], settings).held == [oid]
    with unit_of_work(settings) as uow:
        result = unfreeze_sku(uow.session, "A")
        reason = uow.session.get_one(OrderRow, oid).hold_reason
    assert (result.resumed, result.still_held) == ([], [oid])
    assert reason == "frozen SKU B: waiting for `orderfleet sku unfreeze`"
    with unit_of_work(settings) as uow:
        assert unfreeze_sku(uow.session, "B").resumed == [oid]
    assert run(settings, reserve_orders, [oid], settings).reserved == [oid]


def test_an_order_approved_by_a_person_while_its_sku_is_frozen_is_held_again(
        db, broker, settings) -> None:
    put_stock(settings, [("A", "US-EAST", "US", 5)])
    with unit_of_work(settings) as uow:
        freeze_sku(uow.session, "A", "supplier recall")
    (oid,) = orders_in(settings, "again", [[("A", 1)]])
    run(settings, reserve_orders, [oid], settings)
    with unit_of_work(settings) as uow:  # the review desk approves it
        transition(uow.session, oid, State.FRAUD_CHECKED, stage="review")
    assert run(settings, reserve_orders, [oid], settings).held == [oid]
    assert stock(settings, "A") == (5, 0)


def test_an_unfreeze_committed_while_a_batch_runs_does_not_strand_its_orders(
        db, broker, settings) -> None:
    from concurrent.futures import ThreadPoolExecutor

    put_stock(settings, [("A", "US-EAST", "US", 5)])
    with unit_of_work(settings) as uow:
        freeze_sku(uow.session, "A", "recount")
    (oid,) = orders_in(settings, "race", [[("A", 1)]])
    engine = create_engine(settings.database_url, pool_size=2)

    def batch_waits_on_health_rows() -> bool:
        with engine.connect() as conn:  # a fresh transaction: pg_stat_activity is a snapshot
            return bool(conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query ILIKE '%FROM sku_health%'")).scalar())

    # (The person's connection closes first on the way out, so a failure cannot hang here.)
    with ThreadPoolExecutor(1) as pool, engine.connect() as person:
        # Given a person's unfreeze holding A's health row, not yet committed
        person.execute(text("UPDATE sku_health SET frozen = false WHERE sku = 'A'"))
        # When a batch that read A as frozen reaches the health rows
        batch = pool.submit(run, settings, reserve_orders, [oid], settings)
        eventually(batch_waits_on_health_rows, 30, "the batch to reach the health rows")
        person.commit()
        out = batch.result(30)
    engine.dispose()
    # Then the order is not held for a SKU that is no longer frozen: it is looked at again
    assert (out.held, out.contended) == ([], [oid])
    assert states(settings, [oid]) == {oid: "fraud_checked"}
    assert run(settings, reserve_orders, [oid], settings).reserved == [oid]


def test_sku_cli_freezes_lists_and_unfreezes(db, broker, settings) -> None:
    put_stock(settings, [("A", "US-EAST", "US", 5), ("A", "EU-DE", "DE", 3)])
    runner = CliRunner()
    assert runner.invoke(cli, ["sku", "freeze", "A", "--reason", "recount"]).exit_code == 0
    (oid,) = orders_in(settings, "cli", [[("A", 1)]])
    run(settings, reserve_orders, [oid], settings)
    result = runner.invoke(cli, ["sku", "list", "--frozen", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["sku"] == "A" and row["frozen"] and row["frozen_reason"] == "manual: recount"
    assert (row["on_hand"], row["reserved"], row["warehouses"], row["held_orders"]) == (8, 0, 2, 1)
    with unit_of_work(settings) as uow:
        (alert,) = open_alerts(uow.session, "sku_frozen")
        assert alert.severity == "info"
    assert "A" in runner.invoke(cli, ["sku", "list"]).output
    result = runner.invoke(cli, ["sku", "unfreeze", "A"])
    assert "SKU A unfrozen; 1 held orders resumed" in result.output
    assert json.loads(runner.invoke(cli, ["sku", "list", "--frozen", "--json"]).output) == []
    bad = runner.invoke(cli, ["sku", "freeze", "X" * 129])
    assert bad.exit_code == 1 and "sku must be 1-128 characters" in bad.output


# --- lifecycle of a reservation ---------------------------------------------------------------
def test_cancel_releases_once_and_wakes_orders_waiting_for_the_units(db, broker, settings) -> None:
    put_stock(settings, [("A", "US-EAST", "US", 2)])
    ids = orders_in(settings, "rel", [[("A", 2)], [("A", 1)]])
    run(settings, reserve_orders, ids, settings)
    assert states(settings, ids) == {ids[0]: "reserved", ids[1]: "backordered"}
    broker.delete("inventory")
    assert run(settings, release_reservations, [ids[0]], "cancelled") == 2
    assert run(settings, release_reservations, [ids[0]], "cancelled") == 0
    assert stock(settings, "A") == (2, 0)
    assert reservations(settings, [ids[0]]) == [(ids[0], "A", "US-EAST", 2, "released")]
    assert queued(broker) == [("orderfleet.inventory.wake_backordered", [["A"]])]
    assert wake_backordered(settings, ["A"]) == 1
    assert queued(broker)[-1] == ("orderfleet.inventory.reserve", [[ids[1]]])


def test_label_bought_ships_the_units_and_a_return_restocks_them_once(
        db, broker, settings) -> None:
    put_stock(settings, [("A", "US-EAST", "US", 5), ("B", "US-EAST", "US", 5)])
    (oid,) = orders_in(settings, "ship", [[("A", 2), ("B", 1)]])
    run(settings, reserve_orders, [oid], settings)
    assert run(settings, consume_reservations, [oid]) == 3
    assert run(settings, consume_reservations, [oid]) == 0
    assert stock(settings, "A") == (3, 0) and stock(settings, "B") == (4, 0)
    # When the parcel comes back (or its label is voided before hand-over)
    assert run(settings, restock_orders, [oid], "returned") == 3
    assert run(settings, restock_orders, [oid], "returned") == 0
    assert stock(settings, "A") == (5, 0) and stock(settings, "B") == (4 + 1, 0)
    assert {r[4] for r in reservations(settings, [oid])} == {"restocked"}
    # A restocked line can be reserved again (a voided label before hand-over).
    with unit_of_work(settings) as uow:
        uow.session.execute(update(OrderRow).where(OrderRow.id == oid)
                            .values(state=State.FRAUD_CHECKED.value))
    assert run(settings, reserve_orders, [oid], settings).reserved == [oid]
    assert stock(settings, "A") == (5, 2)


def test_a_reservation_past_its_ttl_is_released_and_the_reason_logged(
        db, broker, settings, caplog) -> None:
    put_stock(settings, [("A", "US-EAST", "US", 3)])
    ids = orders_in(settings, "ttl", [[("A", 3)], [("A", 1)]])
    run(settings, reserve_orders, ids, settings.model_copy(update={"reservation_ttl_s": -1}))
    assert states(settings, ids) == {ids[0]: "reserved", ids[1]: "backordered"}
    broker.delete("inventory")
    with caplog.at_level(logging.WARNING, logger="tasks.inventory"):
        assert run(settings, expire_stale_reservations, settings) == [ids[0]]
    assert "reservation expired: the order stayed in reserved for over" in caplog.text
    assert stock(settings, "A") == (3, 0)
    assert states(settings, [ids[0]]) == {ids[0]: "fraud_checked"}
    assert queued(broker) == [("orderfleet.inventory.wake_backordered", [["A"]])]
    assert run(settings, expire_stale_reservations, settings) == []


def test_an_order_that_progressed_does_not_expire(db, broker, settings) -> None:
    put_stock(settings, [("A", "US-EAST", "US", 3)])
    (oid,) = orders_in(settings, "prog", [[("A", 1)]])
    run(settings, reserve_orders, [oid], settings.model_copy(update={"reservation_ttl_s": -1}))
    with unit_of_work(settings) as uow:
        uow.session.execute(update(OrderRow).where(OrderRow.id == oid)
                            .values(state=State.IN_WAVE.value))
    assert run(settings, expire_stale_reservations, settings) == []
    assert stock(settings, "A") == (3, 1)


# --- stock feed -------------------------------------------------------------------------------
def test_stock_import_is_idempotent_and_wakes_only_the_orders_it_can_serve(
        db, broker, settings, tmp_path: Path) -> None:
    put_stock(settings, [("W", "US-EAST", "US", 0)])
    ids = orders_in(settings, "feed", [[("W", 1)]] * 5 + [[("W", 1), ("X", 1)]])
    run(settings, reserve_orders, ids, settings.model_copy(update={"sku_auto_freeze": False}))
    assert set(states(settings, ids).values()) == {"backordered"}
    feed = tmp_path / "levels.csv"
    feed.write_text("sku,warehouse,on_hand,country\nW,US-EAST,3,\nX,EU-DE,9,DE\n")
    broker.delete("inventory")
    runner = CliRunner()
    # When the feed arrives, twice
    first = runner.invoke(cli, ["stock", "import", str(feed)])
    second = runner.invoke(cli, ["stock", "import", str(feed)])
    # Then the levels are set once, and the three oldest orders (FIFO) are retried each time
    assert first.exit_code == 0, first.output
    assert "set 2 stock levels for 2 SKUs; 3 backordered orders retried" in first.output
    assert second.output == first.output
    assert stock(settings, "W") == (3, 0) and stock(settings, "X", "EU-DE") == (9, 0)
    assert queued(broker) == [("orderfleet.inventory.reserve", [ids[:3]])] * 2
    out = run(settings, reserve_orders, ids, settings)
    assert out.reserved == ids[:3]


def test_stock_import_refuses_a_level_below_what_orders_hold(
        db, broker, settings, tmp_path: Path) -> None:
    put_stock(settings, [("A", "US-EAST", "US", 5), ("B", "US-EAST", "US", 5)])
    (oid,) = orders_in(settings, "below", [[("A", 4)]])
    run(settings, reserve_orders, [oid], settings)
    feed = tmp_path / "levels.json"
    feed.write_text(json.dumps([{"sku": "A", "warehouse": "US-EAST", "on_hand": 2},
                                {"sku": "B", "warehouse": "US-EAST", "on_hand": 7}]))
    result = CliRunner().invoke(cli, ["stock", "import", str(feed)])
    assert result.exit_code == 1
    assert "refused A at US-EAST: feed says 2 on hand, live orders hold 4" in result.output
    assert stock(settings, "A") == (5, 4) and stock(settings, "B") == (7, 0)
    with unit_of_work(settings) as uow:
        (alert,) = open_alerts(uow.session, "stock_below_reserved")
    assert alert.key == "A@US-EAST" and alert.severity == "critical"


def test_stock_import_names_a_bad_row(db, settings, tmp_path: Path) -> None:
    feed = tmp_path / "bad.csv"
    feed.write_text("sku,warehouse,on_hand\nA,US-EAST,lots\n")
    result = CliRunner().invoke(cli, ["stock", "import", str(feed)])
    assert result.exit_code == 1
    assert "row 1: invalid on_hand" in result.output


def test_the_sqlite_demo_path_reserves_freezes_and_restocks(tmp_path: Path, settings) -> None:
    from domain.db import dispose_engines
    from domain.migrate import upgrade

    lite = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'demo.db'}",
                                       **STRICT})
    upgrade(lite)
    try:
        put_stock(lite, [("A", "US-EAST", "US", 2), ("B", "EU-DE", "DE", 5)])
        ids = orders_in(lite, "lite", [[("A", 1)]] * 6 + [[("B", 2)]], country="US")
        out = run(lite, reserve_orders, ids, lite)
        assert out.reserved == ids[:2] + [ids[6]]
        assert (out.backordered, out.held, out.frozen_skus) == (ids[2:5], [ids[5]], ["A"])
        assert stock(lite, "A") == (2, 2)
        assert run(lite, consume_reservations, [ids[0]]) == 1
        assert run(lite, restock_orders, [ids[0]], "returned") == 1
        assert run(lite, restock_orders, [ids[0]], "returned") == 0
        assert stock(lite, "A") == (2, 1)
        with unit_of_work(lite) as uow:
            assert unfreeze_sku(uow.session, "A").resumed == [ids[5]]
    finally:
        dispose_engines()
