"""Pick waves, lane queues, pick lists and routing on real PostgreSQL, Redis and carrier."""

from __future__ import annotations

import base64
import csv
import io
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from benchmarks.routing_eval import evaluate, generate_history
from domain.clock import utcnow
from domain.db import unit_of_work
from domain.lifecycle import State
from domain.models import Alert, OrderRow, ReturnRequest, Shipment, Wave
from domain.picklist import pick_list, to_csv, to_pdf
from domain.returns import flag_high_return_skus
from domain.review import approve_order
from domain.route_learning import (
    LEARNED,
    RULES,
    compare_arms,
    latest_models,
    recorded_outcomes,
    retrain,
    store_model,
    train,
)
from domain.stock import StockLevel, set_stock_levels
from tasks.fraud import check_orders
from tasks.intake import submit_orders
from tasks.inventory import reserve_orders
from tasks.labels import buy_wave_labels
from tasks.sharding import assign_orders, close_waves_older_than
from tests.integration.helpers import native_order, put_stock


def run(fn, settings, *args):
    with unit_of_work(settings) as uow:
        return fn(uow, *args)


def reserved(settings, payloads):
    """Submit, check and reserve: ids of the orders now reserved."""
    ids = submit_orders(payloads, settings=settings).accepted
    run(check_orders, settings, ids, settings)
    return run(reserve_orders, settings, ids, settings).reserved


def stock(settings, *rows) -> None:
    put_stock(settings, [("TEE-M", "US-EAST", "US", 500), ("TEE-M", "EU-DE", "DE", 500),
                         *rows])


def waves(settings) -> list[Wave]:
    with unit_of_work(settings) as uow:
        out = list(uow.session.execute(select(Wave).order_by(Wave.id)).scalars())
        uow.session.expunge_all()
        return out


def test_waves_group_by_warehouse_carrier_service_zone_and_lane(db, broker, settings) -> None:
    stock(settings)
    ids = reserved(settings, [
        native_order("D-1"), native_order("D-2"),  # domestic standard
        native_order("R-1", country="CA"),  # regional
        native_order("I-1", country="JP"),  # international
        native_order("E-1", shipping_method="Express Shipping"),  # express lane
        native_order("C-1", lines=[{"sku": "TEE-M", "quantity": 1, "unit_price": "20.00",
                                    "weight_g": 250, "properties": {"Engraving": "A&M"}}]),
    ])
    assert len(ids) == 6
    run(assign_orders, settings, ids, settings)
    keys = sorted((w.warehouse, w.carrier, w.service, w.zone, w.lane, w.size)
                  for w in waves(settings))
    assert keys == [
        # Japan is international from both warehouses: the tie goes by code.
        ("EU-DE", "sbx-air", "express", "international", "standard", 1),
        ("US-EAST", "sbx-air", "express", "regional", "standard", 1),
        ("US-EAST", "sbx-post", "ground", "domestic", "custom", 1),
        ("US-EAST", "sbx-post", "ground", "domestic", "express", 1),
        ("US-EAST", "sbx-post", "ground", "domestic", "standard", 2),
    ]
    with unit_of_work(settings) as uow:  # the lane was known on arrival
        lanes = dict(uow.session.execute(select(OrderRow.source_order_id, OrderRow.lane)).all())
    assert lanes["E-1"] == "express" and lanes["C-1"] == "custom" and lanes["D-1"] == "standard"


def test_an_order_stored_before_lanes_gets_its_lane_from_its_own_json(db, broker,
                                                                      settings) -> None:
    stock(settings)
    ids = reserved(settings, [native_order("L-1", shipping_method="Express Shipping"),
                              native_order("L-2")])
    with unit_of_work(settings) as uow:  # rows written before intake set the lane
        uow.session.execute(update(OrderRow).values(lane=None))
    run(assign_orders, settings, ids, settings)
    with unit_of_work(settings) as uow:
        lanes = dict(uow.session.execute(select(OrderRow.source_order_id, OrderRow.lane)).all())
    assert lanes == {"L-1": "express", "L-2": "standard"}
    assert sorted(w.lane for w in waves(settings)) == ["express", "standard"]


def test_wave_size_comes_from_the_daily_target_and_the_measured_rate(db, broker,
                                                                     settings) -> None:
    # 25 orders in the last hour is 600 a day; at 200 waves a day a wave holds 3 orders.
    sized = settings.model_copy(update={"wave_daily_target": 200, "wave_rate_window_s": 3600.0,
                                        "wave_size": 1000, "wave_size_min": 2})
    stock(settings)
    paid = utcnow().isoformat()  # paid just now: far from its promised dispatch
    ids = reserved(settings, [native_order(f"S-{i}", paid_at=paid) for i in range(25)])
    closed = run(assign_orders, sized, ids, sized)
    ws = waves(settings)
    assert {w.target_size for w in ws} == {3}
    assert [w.size for w in ws] == [3] * 8 + [1]
    assert closed == [w.id for w in ws[:8]]
    assert all(w.close_reason == "size" for w in ws[:8]) and ws[8].status == "open"


def test_an_open_wave_closes_on_age(db, broker, settings) -> None:
    stock(settings)
    ids = reserved(settings, [native_order("A-1")])
    run(assign_orders, settings, ids, settings)
    assert run(close_waves_older_than, settings, 3600.0) == []  # young: stays open
    (closed,) = run(close_waves_older_than, settings, 0.0)
    (w,) = waves(settings)
    assert (w.id, w.status, w.close_reason) == (closed, "closed", "age")


def test_re_running_never_puts_an_order_in_two_waves(db, broker, settings) -> None:
    small = settings.model_copy(update={"wave_size": 4})
    stock(settings)
    ids = reserved(settings, [native_order(f"T-{i}") for i in range(30)])
    # The same ids delivered three times, two of them at once.
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: run(assign_orders, small, ids, small), range(2)))
    run(assign_orders, small, ids, small)
    with unit_of_work(settings) as uow:
        in_wave = uow.session.execute(select(func.count()).select_from(OrderRow).where(
            OrderRow.wave_id.is_not(None), OrderRow.state == State.IN_WAVE)).scalar_one()
        placed = uow.session.execute(select(func.count()).select_from(
            select(OrderRow.id).join(Wave, Wave.id == OrderRow.wave_id).subquery())).scalar_one()
    assert in_wave == placed == 30
    assert sum(w.size for w in waves(settings)) == 30


def test_an_order_held_for_review_is_routed_only_after_approval(db, broker, settings) -> None:
    stock(settings)
    (held,) = submit_orders([native_order("H-1", price="900.00")], settings=settings).accepted
    run(check_orders, settings, [held], settings)
    # A stray sharding or reservation message for the held order changes nothing.
    assert run(assign_orders, settings, [held], settings) == []
    assert run(reserve_orders, settings, [held], settings).reserved == []
    with unit_of_work(settings) as uow:
        row = uow.session.get_one(OrderRow, held)
        assert (row.state, row.wave_id, row.carrier) == ("on_hold", None, None)
    with unit_of_work(settings) as uow:
        approve_order(uow, "H-1", by="ana", reason="called the customer")
    assert run(reserve_orders, settings, [held], settings).reserved == [held]
    run(assign_orders, settings, [held], settings)
    with unit_of_work(settings) as uow:
        assert uow.session.get_one(OrderRow, held).state == State.IN_WAVE


def _closed_waves_with_engraved(settings, engraved_orders: int) -> list[int]:
    """Two standard waves (one per destination zone) and one custom-made wave of
    ``engraved_orders``, closed together."""
    stock(settings)
    engraved = [{"sku": "TEE-M", "quantity": 1, "unit_price": "20.00", "weight_g": 250,
                 "properties": {"Engraving": "J"}}]
    ids = reserved(settings, [native_order("N-1"), native_order("N-2", country="DE"),
                              *(native_order(f"K-{i}", lines=engraved)
                                for i in range(engraved_orders))])
    run(assign_orders, settings, ids, settings)
    closed: list[int] = run(close_waves_older_than, settings, 0.0)
    return closed


def _label_messages(broker, queue: str) -> list[list[int]]:
    return [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0]
            for m in broker.lrange(queue, 0, -1)]


def test_custom_made_waves_share_the_label_queue_until_they_flood_it(db, broker,
                                                                      settings) -> None:
    # Given a custom-made wave of two orders closed with two standard waves
    closed = _closed_waves_with_engraved(settings, 2)
    broker.delete("labels", "labels_custom")
    from domain.pipeline import label_waves
    # When their labels are sent with room for more custom-made orders waiting (cap 200)
    with unit_of_work(settings) as uow:
        label_waves(uow, closed)
    # Then all three go in one message on the standard queue: a steady share of custom-made
    # orders is not left to wait for a lull of the whole pipeline
    assert broker.llen("labels_custom") == 0
    assert [sorted(m) for m in _label_messages(broker, "labels")] == [sorted(closed)]


def test_a_flood_of_custom_made_waves_buys_its_labels_on_its_own_queue(db, broker,
                                                                       settings) -> None:
    # Given the same waves, with more custom-made orders waiting for labels than the cap (1)
    capped = settings.model_copy(update={"label_batch_orders": 1})
    closed = _closed_waves_with_engraved(capped, 2)
    broker.delete("labels", "labels_custom")
    from domain.pipeline import label_waves
    with unit_of_work(capped) as uow:
        custom_wave = uow.session.execute(select(Wave.id).where(Wave.lane == "custom")
                                          ).scalar_one()
        label_waves(uow, closed)
    # Then the custom-made wave goes on its own queue, the standard ones where they always go
    assert _label_messages(broker, "labels_custom") == [[custom_wave]]
    standard = _label_messages(broker, "labels")
    assert sorted(w for m in standard for w in m) == sorted(set(closed) - {custom_wave})
    messages = [json.loads(m) for m in broker.lrange("labels", 0, -1)]
    assert {m["headers"]["task"] for m in messages} == {"orderfleet.labels.buy"}


@pytest.mark.parametrize(("cap", "messages"), [(200, 1), (1, 2)])
def test_waves_closed_together_share_a_label_message_up_to_the_cap(
        db, broker, settings, cap: int, messages: int) -> None:
    # Given two standard waves (one per destination zone) closing together
    stock(settings)
    capped = settings.model_copy(update={"label_batch_orders": cap})
    ids = reserved(capped, [native_order("T-1"), native_order("T-2", country="DE")])
    run(assign_orders, capped, ids, capped)
    broker.delete("labels")
    closed = run(close_waves_older_than, capped, 0.0)
    assert len(closed) == 2
    from domain.pipeline import label_waves
    with unit_of_work(capped) as uow:
        label_waves(uow, closed)
    # then one message carries both, unless their orders together pass the cap (a wave is
    # never split, so a cap below a wave's size still sends that wave, alone)
    assert broker.llen("labels") == messages
    carried = [json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0]
               for raw in broker.lrange("labels", 0, -1)]
    assert sorted(w for ws in carried for w in ws) == sorted(closed)


def test_pick_list_walks_the_bins_in_order_as_csv_and_pdf(db, broker, settings) -> None:
    with unit_of_work(settings) as uow:
        set_stock_levels(uow, [
            StockLevel(sku="MUG", warehouse="US-EAST", country="US", on_hand=50, bin="B-1-2"),
            StockLevel(sku="TEE-M", warehouse="US-EAST", country="US", on_hand=50,
                       bin="A-2-10"),
            StockLevel(sku="CAP", warehouse="US-EAST", country="US", on_hand=50, bin="A-2-9"),
            StockLevel(sku="PIN", warehouse="US-EAST", country="US", on_hand=50)])
    lines = [{"sku": s, "quantity": q, "unit_price": "5.00", "weight_g": 100, "title": t}
             for s, q, t in (("MUG", 2, "Mug"), ("TEE-M", 1, "Tee"), ("PIN", 1, "Pin"))]
    ids = reserved(settings, [
        native_order("P-1", lines=lines, totals={"subtotal": "20.00", "total": "20.00"}),
        native_order("P-2", sku="CAP", quantity=3, price="5.00"),
        native_order("P-3", sku="MUG", quantity=1, price="5.00")])
    assert len(ids) == 3
    run(assign_orders, settings, ids, settings)
    (wave_id,) = run(close_waves_older_than, settings, 0.0)
    with unit_of_work(settings) as uow:
        wave, rows = pick_list(uow.session, wave_id)
        pdf = to_pdf(wave, rows)
        text = to_csv(rows)
    table = list(csv.DictReader(io.StringIO(text)))
    assert [(r["bin"], r["sku"], r["quantity"]) for r in table] == [
        ("A-2-9", "CAP", "3"), ("A-2-10", "TEE-M", "1"), ("B-1-2", "MUG", "3"), ("", "PIN", "1")]
    assert table[2]["orders"] == "acme/P-1 acme/P-3"
    assert pdf.startswith(b"%PDF-") and len(pdf) > 1000
    # The CLI writes the same CSV.
    from workers.cli import main
    out = CliRunner().invoke(main, ["waves", "picklist", str(wave_id)])
    assert out.exit_code == 0, out.output
    assert list(csv.reader(io.StringIO(out.output))) == list(csv.reader(io.StringIO(text)))


def test_learned_routing_beats_the_rules_on_a_generated_history(settings) -> None:
    # Hidden truth: the strategies see quotes and features only (benchmarks/routing_eval.py).
    result = evaluate(history=2500, orders=1500, seed=11, settings=settings)
    diff = result["learned_minus_rules"]
    assert diff["total_cost_per_order"]["high"] < 0  # cheaper, penalties included (95% CI)
    assert diff["cost_per_order"]["value"] < 0
    rules, learned = result["strategies"][RULES], result["strategies"][LEARNED]
    assert learned["on_time_rate"]["high"] > rules["on_time_rate"]["low"]  # not worse


def test_recorded_outcomes_train_the_model_that_routes_the_learned_arm(
        db, broker, settings, carrier) -> None:
    # Given a model trained on past outcomes and every order in the learned arm
    with unit_of_work(settings) as uow:
        store_model(uow.session, train(generate_history(800, seed=5,
                                                        promises=settings.delivery_promise_days)))
    learned = settings.model_copy(update={"routing_learned_share": 1.0})
    stock(settings)
    ids = reserved(settings, [native_order("L-1"), native_order("L-2", country="JP")])
    run(assign_orders, learned, ids, learned)
    for wave_id in run(close_waves_older_than, learned, 0.0):
        buy_wave_labels(wave_id, learned, carrier)
    with unit_of_work(settings) as uow:
        arms = uow.session.execute(select(Shipment.routing_arm, Shipment.zone)
                                   .order_by(Shipment.order_id)).all()
        assert latest_models(uow.session) is not None
    assert [tuple(a) for a in arms] == [(LEARNED, "domestic"), (LEARNED, "international")]
    # When the parcels arrive (one late), the outcomes are recorded, reported and retrained on
    with unit_of_work(settings) as uow:
        s = uow.session
        s.execute(update(Shipment).where(Shipment.order_id == ids[0]).values(
            delivered_at=Shipment.label_bought_at + func.make_interval(0, 0, 0, 1)))
        s.execute(update(Shipment).where(Shipment.order_id == ids[1]).values(
            delivered_at=Shipment.label_bought_at + func.make_interval(0, 0, 0, 30)))
        outcomes = recorded_outcomes(s)
        assert sorted(o.on_time for o in outcomes) == [False, True]
        report = compare_arms(outcomes)
        assert report[LEARNED].orders == 2 and report[RULES].orders == 0
        assert report[LEARNED].on_time.value == 0.5
        assert retrain(s, min_rows=10) == (None, 2)  # too few to retrain on
        model_id, rows = retrain(s, min_rows=2)
        assert model_id is not None and rows == 2
    from workers.cli import main
    out = CliRunner().invoke(main, ["routing", "report", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["learned"]["orders"] == 2


def test_skus_returned_more_than_five_percent_are_flagged(db, broker, settings) -> None:
    stock(settings, ("MUG", "US-EAST", "US", 500))
    tees = submit_orders([native_order(f"T-{i}") for i in range(40)],
                         settings=settings).accepted
    mugs = submit_orders([native_order(f"M-{i}", sku="MUG") for i in range(40)],
                         settings=settings).accepted
    with unit_of_work(settings) as uow:
        s = uow.session
        s.execute(update(OrderRow).values(state=State.DELIVERED.value))
        from domain.clock import utcnow
        now = utcnow()
        # 3 of 40 tees (7.5%) and 2 of 40 mugs (5%: not above the line) came back.
        for oid in tees[:3] + mugs[:2]:
            s.add(ReturnRequest(order_id=oid, status="requested", reason="too small",
                                requested_at=now, updated_at=now,
                                idempotency_key=f"k-{oid}"))
        s.flush()
        assert flag_high_return_skus(uow, 0.05, 20) == ["TEE-M"]
        assert flag_high_return_skus(uow, 0.05, 20) == ["TEE-M"]  # alert stays one
    with unit_of_work(settings) as uow:
        alerts = uow.session.execute(select(Alert.kind, Alert.key)).all()
    assert [tuple(a) for a in alerts] == [("sku_return_rate", "TEE-M")]


def test_an_order_no_single_warehouse_can_ship_says_which_split_would(db, broker,
                                                                      settings) -> None:
    # With splitting off (tests/integration/test_split_shipments.py has it on): backordered.
    settings = settings.model_copy(update={"split_shipments": False})
    put_stock(settings, [("TEE-M", "US-EAST", "US", 5), ("MUG", "EU-DE", "DE", 5)])
    lines = [{"sku": s, "quantity": 1, "unit_price": "10.00", "weight_g": 100}
             for s in ("TEE-M", "MUG")]
    (oid,) = submit_orders([native_order("SPLIT-1", lines=lines,
                                         totals={"subtotal": "20.00", "total": "20.00"})],
                           settings=settings).accepted
    run(check_orders, settings, [oid], settings)
    assert run(reserve_orders, settings, [oid], settings).backordered == [oid]
    from domain.models import OrderEvent
    with unit_of_work(settings) as uow:
        detail = uow.session.execute(select(OrderEvent.detail).where(
            OrderEvent.order_id == oid, OrderEvent.to_state == "backordered")).scalar_one()
    assert detail == {"short_skus": [], "plan": "split: no single warehouse has every line "
                                                "(MUG from EU-DE; TEE-M from US-EAST)"}
