"""The fleet's Prometheus exporter: one process that reads PostgreSQL and Redis at each scrape.

Why one exporter process and not prometheus-client's multiprocess mode in every worker:

* the figures ops need (orders by state, SLA attainment, status lag, backlog age, per-SKU
  failure rates, cost share of GMV) are facts in PostgreSQL, true whichever worker process
  did the work; a counter kept in a worker's memory is lost with it, and under prefork
  multiprocess mode needs PROMETHEUS_MULTIPROC_DIR wiped at start and dead children's files
  removed (``mark_process_dead``), files that pile up with ``max_tasks_per_child``;
* queue depths, unacknowledged messages, breakers and the surge snapshot live in Redis, which
  no worker owns;
* workers stay free of an HTTP listener, and scaling them (KEDA) changes no scrape target.

Stage latency histograms and exception counters are tallied incrementally from the
append-only event log (only new events are read per scrape). Names follow celery-exporter's
vocabulary where one exists (``celery_queue_length``).

Run it with ``orderfleet exporter`` (started by ``orderfleet up``); scrape ``/metrics``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from config.celery import QUEUES
from config.settings import Settings
from domain.clock import utcnow
from domain.db import unit_of_work
from domain.observability import STAGE_LATENCY_BUCKETS, EventTally, snapshot

log = logging.getLogger(__name__)

# kombu's Redis transport keeps a queue's priority levels in extra lists named
# "<queue>\x06\x16<level>" (levels 3, 6, 9 by default; 0 is the plain list).
PRIORITY_SEP = "\x06\x16"
PRIORITY_LEVELS = (3, 6, 9)
UNACKED_HASH = "unacked"
# Published by the surge controller when it runs; exported only when present.
LOAD_KEY = "orderfleet:load"
NONCORE_COUNTS_KEY = "orderfleet:noncore:counts"
LOAD_GAUGES = {
    "load": ("orderfleet_fleet_load", "Fleet load (busy share of worker slots, smoothed)."),
    "utilisation": ("orderfleet_fleet_utilisation", "Share of worker slots busy."),
    "backlog": ("orderfleet_surge_backlog", "Messages waiting, as the surge controller saw."),
    "oldest_wait_s": ("orderfleet_surge_oldest_wait_seconds",
                      "Age of the oldest waiting message, as the surge controller saw."),
    "arrival_rate": ("orderfleet_arrival_rate", "Orders arriving per second."),
    "drain_rate": ("orderfleet_drain_rate", "Orders drained per second."),
    "surge_stage": ("orderfleet_surge_stage", "Surge response stage (0 = normal)."),
}
BREAKER_STATES = ("closed", "open", "half_open")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _number(v: Any) -> float | None:
    try:
        return float(_text(v))
    except ValueError:
        return None


class FleetCollector(Collector):
    """Computes every family at scrape time; one instance per exporter process."""

    def __init__(self, settings: Settings, *, ping_workers: bool = True) -> None:
        self.settings = settings
        self.ping_workers = ping_workers
        self.tally = EventTally()
        self._lock = threading.Lock()  # scrapes may overlap; the tally is not re-entrant
        self.broker = redis.Redis.from_url(settings.broker_url, socket_timeout=5)
        self.shared = redis.Redis.from_url(settings.shared_redis, socket_timeout=5)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            started = time.perf_counter()
            yield from self._database()
            yield from self._queues()
            yield from self._surge()
            yield from self._redrive()
            yield from self._breakers()
            if self.ping_workers:
                yield from self._workers()
            took = GaugeMetricFamily("orderfleet_exporter_scrape_duration_seconds",
                                     "Time this scrape took to compute.")
            took.add_metric([], time.perf_counter() - started)
            yield took

    # --- PostgreSQL ---------------------------------------------------------------------------
    def _database(self) -> Iterator[Metric]:
        s = self.settings
        with unit_of_work(s) as uow:
            self.tally.update(uow.session)
            snap = snapshot(uow.session, s, utcnow())
        orders = GaugeMetricFamily("orderfleet_orders", "Orders by lifecycle state.",
                                   labels=["state"])
        for state, n in snap.orders_by_state.items():
            orders.add_metric([state], n)
        yield orders
        received = CounterMetricFamily("orderfleet_orders_received",
                                       "Orders accepted at intake (ever).")
        received.add_metric([], snap.orders_total)
        yield received
        latency = HistogramMetricFamily(
            "orderfleet_stage_latency_seconds",
            "Seconds an order spent before each stage's transition.", labels=["stage"])
        for stage, h in sorted(self.tally.latency.items()):
            buckets = [(repr(float(b)), n) for b, n in zip(STAGE_LATENCY_BUCKETS, h.buckets,
                                                            strict=True)]
            buckets.append(("+Inf", h.count))
            latency.add_metric([stage], buckets, h.total_s)
        yield latency
        exceptions = CounterMetricFamily(
            "orderfleet_exceptions", "Orders that left the happy path, by stage and state.",
            labels=["stage", "state"])
        for (stage, state), n in sorted(self.tally.exceptions.items()):
            exceptions.add_metric([stage, state], n)
        yield exceptions
        rejected = CounterMetricFamily(
            "orderfleet_intake_rejections",
            "Payloads refused at the door (kept with reasons), by where they came from.",
            labels=["door"])
        rejected.add_metric(["orders"], snap.intake_rejections)
        rejected.add_metric(["tracking_push"], snap.tracking_push_rejections)
        yield rejected
        lag = GaugeMetricFamily(
            "orderfleet_status_lag_seconds",
            "Longest time an order in an automated stage has not changed state.")
        lag.add_metric([], snap.status_lag_s)
        yield lag
        lag_by_state = GaugeMetricFamily(
            "orderfleet_state_oldest_seconds",
            "Seconds since the longest-waiting order in a processing state last moved.",
            labels=["state"])
        for state, (_, seconds) in sorted(snap.lag_by_state.items()):
            lag_by_state.add_metric([state], seconds)
        yield lag_by_state
        lagging = GaugeMetricFamily(
            "orderfleet_orders_status_lagging",
            "Orders in an automated stage unchanged past the status-lag threshold.")
        lagging.add_metric([], snap.status_lagging)
        yield lagging
        backlog = GaugeMetricFamily(
            "orderfleet_backlog_oldest_seconds",
            "Age (since received) of the oldest order still in the pipeline.")
        backlog.add_metric([], snap.backlog_oldest_s)
        yield backlog
        sla = GaugeMetricFamily(
            "orderfleet_sla_attainment_ratio",
            "Share of orders labelled within their promised dispatch time (last 24 h).")
        if snap.sla_24h.ratio is not None:
            sla.add_metric([], snap.sla_24h.ratio)
        yield sla
        sla_orders = GaugeMetricFamily(
            "orderfleet_sla_orders", "Orders behind the SLA ratio (last 24 h).",
            labels=["outcome"])
        sla_orders.add_metric(["on_time"], snap.sla_24h.on_time)
        sla_orders.add_metric(["late"], snap.sla_24h.late)
        yield sla_orders
        silent = GaugeMetricFamily(
            "orderfleet_tracking_silent_shipments",
            "Open shipments whose tracking has been silent past the threshold (24 h).")
        silent.add_metric([], snap.tracking_silent)
        yield silent
        sku = GaugeMetricFamily(
            "orderfleet_sku_reservation_failure_ratio",
            "Failed share of a SKU's recent reservation attempts (SKUs with failures only).",
            labels=["sku"])
        for code, (failed, attempts) in sorted(snap.sku_failures.items()):
            sku.add_metric([code], failed / attempts)
        yield sku
        res = GaugeMetricFamily(
            "orderfleet_reservation_failure_ratio",
            "Failed share of all SKUs' recent reservation attempts.")
        if snap.reservation_attempts:
            res.add_metric([], snap.reservation_failures / snap.reservation_attempts)
        yield res
        holds = GaugeMetricFamily("orderfleet_review_backlog",
                                  "Orders on hold for a person, by why they are held.",
                                  labels=["reason"])
        holds.add_metric(["fraud_review"], snap.on_hold - snap.on_hold_for_sku)
        holds.add_metric(["sku_frozen"], snap.on_hold_for_sku)
        yield holds
        hold_age = GaugeMetricFamily("orderfleet_review_oldest_seconds",
                                     "How long the longest-held order has waited.")
        hold_age.add_metric([], snap.on_hold_oldest_s)
        yield hold_age
        cost = GaugeMetricFamily(
            "orderfleet_cost_share_of_gmv",
            "Label (and handling) cost as a share of the orders' value, last 7 days.")
        if snap.cost_7d.share is not None:
            cost.add_metric([], snap.cost_7d.share)
        yield cost
        exc = snap.exceptions
        rate = GaugeMetricFamily(
            "orderfleet_exception_ratio",
            "Exceptions per order received, in the last day and the day before.",
            labels=["period"])
        if exc.rate is not None:
            rate.add_metric(["last_day"], exc.rate)
        if exc.previous_rate is not None:
            rate.add_metric(["previous_day"], exc.previous_rate)
        yield rate
        uncertain = GaugeMetricFamily(
            "orderfleet_emails_uncertain",
            "E-mails the mail server may or may not have taken when the connection broke; "
            "never re-sent without a person.")
        uncertain.add_metric([], snap.emails_uncertain)
        yield uncertain

    # --- Redis --------------------------------------------------------------------------------
    def _queues(self) -> Iterator[Metric]:
        pipe = self.broker.pipeline(transaction=False)
        for q in QUEUES:
            pipe.llen(q)
            for level in PRIORITY_LEVELS:
                pipe.llen(f"{q}{PRIORITY_SEP}{level}")
        lengths = pipe.execute()
        per = 1 + len(PRIORITY_LEVELS)
        waiting = GaugeMetricFamily(
            "celery_queue_length",
            "Messages waiting in a queue (priority sub-lists included).", labels=["queue_name"])
        for i, q in enumerate(QUEUES):
            waiting.add_metric([q], sum(lengths[i * per:(i + 1) * per]))
        yield waiting
        unacked = GaugeMetricFamily(
            "orderfleet_queue_unacked",
            "Messages delivered to a worker and not yet acknowledged (late acks), per queue.",
            labels=["queue_name"])
        counts = dict.fromkeys(QUEUES, 0)
        for _, raw in self.broker.hscan_iter(UNACKED_HASH, count=500):
            try:
                routing_key = _text(json.loads(raw)[2])
            except (ValueError, IndexError, TypeError):
                continue
            counts[routing_key] = counts.get(routing_key, 0) + 1
        for q, n in sorted(counts.items()):
            unacked.add_metric([q], n)
        yield unacked

    def _surge(self) -> Iterator[Metric]:
        load = {_text(k): v for k, v in self.shared.hgetall(LOAD_KEY).items()}
        for field, (name, doc) in LOAD_GAUGES.items():
            g = GaugeMetricFamily(name, doc)
            value = _number(load[field]) if field in load else None
            if value is not None:
                g.add_metric([], value)
            yield g
        breaker = GaugeMetricFamily(
            "orderfleet_surge_breaker_open",
            "1 while the surge breaker sheds non-core jobs (load above its threshold).")
        if "breaker" in load:
            breaker.add_metric([], 1.0 if _text(load["breaker"]) == "open" else 0.0)
        yield breaker
        counts = {_text(k): v for k, v in self.shared.hgetall(NONCORE_COUNTS_KEY).items()}
        for field, doc in (("parked", "Non-core jobs parked while the fleet was overloaded."),
                           ("replayed", "Parked non-core jobs replayed afterwards.")):
            c = CounterMetricFamily(f"orderfleet_noncore_{field}", doc)
            value = _number(counts[field]) if field in counts else None
            if value is not None:
                c.add_metric([], value)
            yield c

    def _redrive(self) -> Iterator[Metric]:
        from domain.pipeline import redriven

        c = CounterMetricFamily(
            "orderfleet_redriven",
            "Orders (per state) and closed waves that the re-drive sweep sent again because "
            "no message carried them: messages lost on the way.", labels=["what"])
        for what, n in sorted(redriven(self.shared).items()):
            c.add_metric([what], n)
        yield c

    def _breakers(self) -> Iterator[Metric]:
        from domain.carriers.shared import shared_breaker

        breaker = shared_breaker(self.settings)
        state = GaugeMetricFamily("orderfleet_carrier_breaker_state",
                                  "A carrier's circuit breaker: 1 for its current state.",
                                  labels=["carrier", "state"])
        calls = CounterMetricFamily("orderfleet_carrier_calls", "Calls to a carrier.",
                                    labels=["carrier"])
        errors = CounterMetricFamily("orderfleet_carrier_errors",
                                     "Carrier calls that failed (errors, timeouts, 5xx).",
                                     labels=["carrier"])
        opened = CounterMetricFamily("orderfleet_carrier_breaker_opened",
                                     "Times a carrier's breaker opened.", labels=["carrier"])
        for name in breaker.names():
            st = breaker.status(name)
            for s in BREAKER_STATES:
                state.add_metric([name, s], 1.0 if st.state == s else 0.0)
            calls.add_metric([name], st.calls_total)
            errors.add_metric([name], st.failures_total)
            opened.add_metric([name], st.opened_total)
        yield from (state, calls, errors, opened)

    def _workers(self) -> Iterator[Metric]:
        from workers.app import app

        try:
            replies = app.control.ping(timeout=1.0) or []
        except Exception:  # the broker is down: no worker can be reached either
            log.exception("worker ping failed")
            replies = []
        up = GaugeMetricFamily("orderfleet_workers_up",
                               "Celery workers that answered a ping at this scrape.")
        up.add_metric([], len(replies))
        yield up


def registry_for(settings: Settings, *, ping_workers: bool = True) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(settings, ping_workers=ping_workers))
    return registry


def run_exporter(settings: Settings, host: str, port: int) -> None:
    """Serve /metrics until killed (SIGTERM ends the process: there is no state to save)."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server, thread = start_http_server(port, addr=host, registry=registry_for(settings))
    log.info("metrics at http://%s:%d/metrics", host, port)
    try:
        thread.join()
    finally:
        server.shutdown()


def main(argv: list[str] | None = None) -> None:
    import argparse

    from config.settings import get_settings

    parser = argparse.ArgumentParser(description="Run the orderfleet Prometheus exporter.")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    settings = get_settings()
    run_exporter(settings, args.host or settings.metrics_host, args.port or settings.metrics_port)


if __name__ == "__main__":
    main()
