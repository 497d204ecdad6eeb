"""What ops watch, on real PostgreSQL and Redis: the snapshot behind the metrics, the exporter's
families, the dashboard's queries, the health rules of ``orderfleet alerts``, the report and
the order-health page."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import update
from starlette.testclient import TestClient

from domain.alerts import open_alerts
from domain.carriers.shared import shared_breaker
from domain.clock import utcnow
from domain.db import unit_of_work
from domain.health_rules import apply_findings, evaluate
from domain.models import OrderEvent, OrderRow
from domain.observability import sla_attainment, snapshot
from domain.pipeline import REDRIVEN_KEY
from domain.report import build_report
from tasks.intake import submit_orders
from tests.integration.helpers import native_order
from workers.metrics import LOAD_KEY, NONCORE_COUNTS_KEY, registry_for

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "orderfleet.json"
RULES = ROOT / "ops" / "prometheus" / "rules" / "orderfleet.rules.yml"
METRIC_NAME = re.compile(r"\b((?:orderfleet|celery)_[a-z0-9_]+)\b")


def submit(settings, *ids: str, **over) -> list[int]:
    result = submit_orders([native_order(i, **over) for i in ids], settings=settings)
    return list(result.accepted)


def age(settings, order_id: int, *, minutes: float, paid_hours: float | None = None,
        state: str | None = None) -> None:
    """Make an order look as if it last moved ``minutes`` ago (and was paid earlier)."""
    then = utcnow() - timedelta(minutes=minutes)
    values: dict = {"updated_at": then, "received_at": then}
    if paid_hours is not None:
        values["paid_at"] = utcnow() - timedelta(hours=paid_hours)
    if state is not None:
        values["state"] = state
    with unit_of_work(settings) as uow:
        uow.session.execute(update(OrderRow).where(OrderRow.id == order_id).values(**values))


def add_event(settings, order_id: int, stage: str, to_state: str, *, hours_ago: float,
              from_state: str | None = None) -> None:
    with unit_of_work(settings) as uow:
        uow.session.add(OrderEvent(order_id=order_id, stage=stage, from_state=from_state,
                                   to_state=to_state,
                                   at=utcnow() - timedelta(hours=hours_ago)))


def scrape(settings) -> dict[str, dict[tuple, float]]:
    """The exporter's /metrics text, parsed: sample name -> {labels: value}."""
    text = generate_latest(registry_for(settings, ping_workers=False)).decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_status_lag_and_backlog_age_count_orders_that_stopped_moving(db, broker, settings):
    stuck, fresh = submit(settings, "lag-1", "lag-2")
    age(settings, stuck, minutes=20)

    with unit_of_work(settings) as uow:
        snap = snapshot(uow.session, settings, utcnow())

    assert snap.status_lagging == 1
    assert snap.status_lag_s >= 20 * 60
    assert snap.backlog_oldest_s >= 20 * 60
    assert snap.lag_by_state["received"][0] == 2


def test_sla_attainment_counts_late_labels_and_orders_past_their_promise(db, broker, settings):
    on_time, late, overdue, not_due = submit(settings, "sla-1", "sla-2", "sla-3", "sla-4")
    # Labelled an hour ago, paid 3 h before that: within the 48 h standard promise.
    age(settings, on_time, minutes=60, paid_hours=4, state="labelled")
    add_event(settings, on_time, "labels", "labelled", hours_ago=1)
    # Labelled an hour ago, 60 h after payment: late.
    age(settings, late, minutes=60, paid_hours=61, state="labelled")
    add_event(settings, late, "labels", "labelled", hours_ago=1)
    # Paid 50 h ago and still without a label: its promise ran out 2 h ago.
    age(settings, overdue, minutes=10, paid_hours=50)
    # Paid 10 h ago, no label yet: not due, not counted.
    age(settings, not_due, minutes=10, paid_hours=10)

    now = utcnow()
    with unit_of_work(settings) as uow:
        sla = sla_attainment(uow.session, settings, now - timedelta(days=1), now)

    assert (sla.on_time, sla.late) == (1, 2)
    assert sla.ratio == pytest.approx(1 / 3)


def test_the_exporter_exposes_queues_unacked_messages_surge_breakers_and_latency(
        db, broker, settings):
    (order_id,) = submit(settings, "m-1")  # its fraud check waits in the fraud queue
    add_event(settings, order_id, "fraud", "on_hold", hours_ago=0, from_state="received")
    # A message a worker holds under late ack: kombu keeps it in the "unacked" hash.
    broker.hset("unacked", "tag-1", json.dumps([{"body": "..."}, "orderfleet", "labels"]))
    broker.hset(LOAD_KEY, mapping={"load": "0.85", "utilisation": "0.9", "backlog": "420",
                                   "oldest_wait_s": "75", "arrival_rate": "12.5",
                                   "drain_rate": "9", "breaker": "open", "surge_stage": "1"})
    broker.hset(NONCORE_COUNTS_KEY, mapping={"parked": "12", "replayed": "5"})
    broker.hset(REDRIVEN_KEY, mapping={"received": "3", "waves": "1"})
    breaker = shared_breaker(settings)
    breaker.record("sbx-air", ok=False)
    breaker.record("sbx-air", ok=True)

    m = scrape(settings)

    assert m["celery_queue_length"][(("queue_name", "fraud"),)] == 1
    assert m["orderfleet_queue_unacked"][(("queue_name", "labels"),)] == 1
    assert m["orderfleet_orders"][(("state", "on_hold"),)] == 0  # the row says received
    assert m["orderfleet_orders"][(("state", "received"),)] == 1
    assert m["orderfleet_exceptions_total"][(("stage", "fraud"), ("state", "on_hold"))] == 1
    assert m["orderfleet_stage_latency_seconds_count"][(("stage", "fraud"),)] == 1
    assert m["orderfleet_fleet_load"][()] == 0.85
    assert m["orderfleet_surge_breaker_open"][()] == 1
    assert m["orderfleet_surge_stage"][()] == 1
    assert m["orderfleet_noncore_parked_total"][()] == 12
    assert m["orderfleet_noncore_replayed_total"][()] == 5
    assert m["orderfleet_redriven_total"] == {(("what", "received"),): 3, (("what", "waves"),): 1}
    assert m["orderfleet_carrier_calls_total"][(("carrier", "sbx-air"),)] == 2
    assert m["orderfleet_carrier_errors_total"][(("carrier", "sbx-air"),)] == 1
    assert m["orderfleet_carrier_breaker_state"][(("carrier", "sbx-air"), ("state", "closed"))] \
        == 1
    assert m["orderfleet_orders_received_total"][()] == 1


def test_holds_are_split_between_fraud_review_and_frozen_skus(db, broker, settings):
    from domain.models import SkuHold

    review, frozen, moving = submit(settings, "h-1", "h-2", "h-3")
    for order_id in (review, frozen):
        age(settings, order_id, minutes=5, state="on_hold")
    with unit_of_work(settings) as uow:
        uow.session.add(SkuHold(order_id=frozen, sku="TEE-M", held_at=utcnow()))

    m = scrape(settings)

    assert m["orderfleet_review_backlog"][(("reason", "fraud_review"),)] == 1
    assert m["orderfleet_review_backlog"][(("reason", "sku_frozen"),)] == 1
    assert m["orderfleet_review_oldest_seconds"][()] >= 5 * 60


def test_surge_gauges_are_absent_until_the_surge_controller_publishes(db, broker, settings):
    m = scrape(settings)
    assert "orderfleet_fleet_load" not in m
    assert "orderfleet_noncore_parked_total" not in m
    assert "celery_queue_length" in m


def exported_names(settings, broker) -> set[str]:
    """Every sample name the exporter produces when every source has something to say."""
    submit(settings, "d-1")
    broker.hset(LOAD_KEY, mapping={"load": "0.5", "utilisation": "0.5", "backlog": "1",
                                   "oldest_wait_s": "1", "arrival_rate": "1",
                                   "drain_rate": "1", "breaker": "closed", "surge_stage": "0"})
    broker.hset(NONCORE_COUNTS_KEY, mapping={"parked": "0", "replayed": "0"})
    shared_breaker(settings).record("sbx-post", ok=True)
    names = set(scrape(settings))
    # Families whose samples need data this test does not make (SKU failures, costs, SLA):
    # their names come from the collector's own description.
    text = generate_latest(registry_for(settings, ping_workers=False)).decode()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names | {"orderfleet_workers_up"}  # needs live workers: the e2e test scrapes it


def test_every_dashboard_panel_queries_metrics_the_fleet_exports(db, broker, settings):
    names = exported_names(settings, broker)
    dashboard = json.loads(DASHBOARD.read_text())
    queried = set()
    for panel in dashboard["panels"]:
        exprs = [t["expr"] for t in panel.get("targets", [])]
        assert exprs, f"panel {panel['title']!r} has no query"
        for expr in exprs:
            used = set(METRIC_NAME.findall(expr))
            assert used, f"panel {panel['title']!r} names no orderfleet/celery metric: {expr}"
            queried |= used
    assert queried <= names, f"not exported: {sorted(queried - names)}"


def test_every_alert_rule_queries_metrics_the_fleet_exports(db, broker, settings):
    names = exported_names(settings, broker)
    doc = yaml.safe_load(RULES.read_text())
    used = {n for g in doc["groups"] for r in g["rules"] for n in METRIC_NAME.findall(r["expr"])}
    assert used and used <= names, f"not exported: {sorted(used - names)}"


def test_health_rules_raise_an_alert_once_and_resolve_it_when_the_order_moves(
        db, broker, settings):
    (order_id,) = submit(settings, "rule-1")
    age(settings, order_id, minutes=30)

    with unit_of_work(settings) as uow:
        findings = evaluate(uow.session, settings, utcnow(), workers_up=0)
        first = apply_findings(uow.session, findings)
    with unit_of_work(settings) as uow:
        again = apply_findings(uow.session, evaluate(uow.session, settings, utcnow(), 0))
        kinds = {a.kind for a in open_alerts(uow.session)}

    assert {f.rule for f in findings} == {"OrderfleetStatusLag", "OrderfleetWorkersDown"}
    assert first == (2, 0) and again == (0, 0)
    assert {"rule:OrderfleetStatusLag", "rule:OrderfleetWorkersDown"} <= kinds
    assert all(f.runbook for f in findings)

    age(settings, order_id, minutes=0)
    with unit_of_work(settings) as uow:
        cleared = apply_findings(uow.session, evaluate(uow.session, settings, utcnow(), 2))
        kinds = {a.kind for a in open_alerts(uow.session)}
    assert cleared == (0, 2)
    assert not {k for k in kinds if k.startswith("rule:")}


def test_report_grows_the_ops_figures(db, broker, settings):
    a, b, c, d = submit(settings, "r-1", "r-2", "r-3", "r-4")
    age(settings, a, minutes=5, state="cancelled")
    add_event(settings, b, "fraud", "on_hold", hours_ago=0, from_state="received")
    # Received 30 min ago and still in received: a delayed status update.
    age(settings, c, minutes=30)
    with unit_of_work(settings) as uow:
        uow.session.execute(update(OrderEvent).where(OrderEvent.order_id == c)
                            .values(at=utcnow() - timedelta(minutes=30)))

    with unit_of_work(settings) as uow:
        ops = build_report(uow.session, settings)["ops"]

    assert ops["cancellation_rate"] == 0.25
    assert sum(ops["exception_heatmap_7d"]["fraud"]) == 1
    assert ops["delayed_status_updates_7d"]["delayed"] >= 1
    assert ops["exceptions_per_order_24h"] is not None
    assert set(ops) >= {"sla_attainment_24h", "handling_time", "cost_share_of_gmv_7d"}


def test_the_order_health_page_needs_the_ops_credentials(db, broker, settings):
    from workers.api import create_app

    ops = settings.model_copy(update={"ops_basic_auth": SecretStr("ops:correct-horse")})
    submit(settings, "page-1")
    good = "Basic " + base64.b64encode(b"ops:correct-horse").decode()
    bad = "Basic " + base64.b64encode(b"ops:wrong-horse!").decode()
    with TestClient(create_app(ops)) as client:
        assert client.get("/ops/health").status_code == 401
        assert client.get("/ops/health", headers={"Authorization": bad}).status_code == 401
        page = client.get("/ops/health", headers={"Authorization": good})
        data = client.get("/ops/health.json", headers={"Authorization": good}).json()
    assert page.status_code == 200
    for panel in ("backlog", "sla", "lag", "inventory", "payment", "logistics", "exceptions"):
        assert f'id="{panel}"' in page.text
    assert page.text.count("<svg") == 4
    assert data["backlog_by_state"]["received"] == 1
    # The page never shows customer data.
    assert "jo@example.com" not in page.text and "Main St" not in page.text


def test_orderfleet_alerts_checks_the_rules_for_stores_without_prometheus(db, broker, settings):
    from click.testing import CliRunner

    from workers.cli import main as cli

    (order_id,) = submit(settings, "cli-1")
    age(settings, order_id, minutes=16)

    # No worker consumes this test's broker: the ping finds none.
    result = CliRunner().invoke(cli, ["alerts", "--json"])

    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    by_kind = {r["kind"]: r for r in rows}
    assert by_kind["rule:OrderfleetStatusLag"]["severity"] == "warning"
    assert "16 min" in by_kind["rule:OrderfleetStatusLag"]["message"]
    assert by_kind["rule:OrderfleetWorkersDown"]["severity"] == "critical"
    assert by_kind["rule:OrderfleetWorkersDown"]["detail"]["runbook"].startswith("Orders wait")
