"""A sandbox shipping carrier: a real HTTP server that stands in for a carrier API.

It serves two carriers, ``sbx-post`` (economical, domestic-oriented) and ``sbx-air`` (express,
international), and behaves like a real carrier where it matters to the pipeline:

* label purchase is idempotent on ``idempotency_key`` (a replay returns the same label and is
  not charged again), so one label per shipment holds even when a worker retries;
* tracking progresses with time; ``time_scale`` speeds carrier time up so a demo or a test sees
  a parcel delivered in seconds instead of days;
* ``/v1/stats`` counts what was charged, so tests can prove exactly-one-label-per-shipment;
* faults are injected per run (flags) or live (``/v1/admin/faults``): latency, 5xx, 429 with
  Retry-After, timeouts, and labels charged whose answer is lost;
* it also speaks EasyPost's REST dialect (``/v2``: shipments, rates, buy, batches, trackers)
  and can push tracking changes to a webhook (``--webhook-url``).

State lives in memory (one process, guarded by a lock). Run it with
``python -m sandbox.carrier --port 8765 --time-scale 3600``, or in-process with
:class:`SandboxCarrierServer` (tests) or :func:`serve`.

The modules, in the order a request meets them: ``app`` (wiring), ``native`` (``/v1``),
``easypost`` (``/v2``), ``admin`` (the sandbox's own controls), ``faults`` (what goes wrong),
``books`` (labels, tracking timelines, counters), ``tariffs`` (carriers, services, prices,
label request validation), ``pusher`` (tracking webhooks), ``errors``, ``server`` (running it).
"""

from sandbox.carrier.app import create_app
from sandbox.carrier.books import CarrierState
from sandbox.carrier.faults import (
    FAULT_KINDS,
    OPERATIONS,
    FaultProfile,
    add_fault_arguments,
    faults_from_args,
)
from sandbox.carrier.pusher import TrackingPusher
from sandbox.carrier.server import SandboxCarrierServer, main, serve
from sandbox.carrier.tariffs import CARRIERS, SERVICES, quote

__all__ = [
    "CARRIERS",
    "FAULT_KINDS",
    "OPERATIONS",
    "SERVICES",
    "CarrierState",
    "FaultProfile",
    "SandboxCarrierServer",
    "TrackingPusher",
    "add_fault_arguments",
    "create_app",
    "faults_from_args",
    "main",
    "quote",
    "serve",
]
