"""Surge control: fleet load, the non-core breaker, parking and replay, the three-stage response.

Everything here is plain Python over Redis and the database; ``tasks.surge`` runs it from a beat
task every ``surge_monitor_interval_s`` and does what needs Celery (worker slots, autoscale).

Load (README, "Surge control"), each tick::

    utilisation = core messages reserved by workers (kombu's ``unacked`` hash, core queues only)
                  / (worker pool slots - slots running this control loop)
    wait        = age of the oldest order waiting in an automated stage / surge_wait_target_s
    load_raw    = max(utilisation, wait)
    load        = EWMA(load_raw), alpha = 1 - exp(-dt / surge_ewma_tau_s)

The breaker opens when ``load > surge_open_load`` (or a surge reached stage 1), or when the fleet
has been saturated (a backlog of ``surge_saturated_batches`` full batches per slot) on
consecutive ticks for ``surge_saturated_open_s``; it closes when ``load < surge_close_load``
after at least ``surge_min_dwell_s`` open and no surge stage is on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.settings import Settings
from domain.lifecycle import PROCESSING, arrivals_since, labels_since, not_held_in_a_wave
from domain.models import OrderRow

log = logging.getLogger("orderfleet.surge")

LOAD_KEY = "orderfleet:load"  # the published snapshot (hash)
COUNTS_KEY = "orderfleet:noncore:counts"  # parked / replayed, in total and per kind (hash)
PARKED_KEY = "orderfleet:noncore:parked"  # parked jobs, oldest first (list of JSON)
REPLAYING_KEY = "orderfleet:noncore:replaying"  # taken from PARKED_KEY, not yet re-sent
TRANSITIONS_KEY = "orderfleet:surge:transitions"  # breaker and stage changes (list of JSON)
STATE_KEY = "orderfleet:surge:state"  # the control loop's memory between ticks (hash)
TICK_LOCK_KEY = "orderfleet:surge:tick-lock"
KEPT_TRANSITIONS = 500
UNACKED_KEY = "unacked"  # kombu's Redis transport: delivery tag -> [message, exchange, rk]


def client(settings: Settings) -> redis.Redis:
    """The Redis holding shared state (the broker's unless shared_redis_url is set)."""
    return redis.Redis.from_url(settings.shared_redis, socket_timeout=5,
                                socket_connect_timeout=2, decode_responses=True)


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """One tick's raw readings."""

    at: float
    slots: int  # pool processes of workers on core queues, less those running the control loop
    busy_core: int  # core-queue messages reserved by workers and not yet acknowledged
    queued_core: int  # core-queue messages waiting in the lists
    backlog_orders: int  # orders in an automated stage (received .. in_wave; not held in a wave)
    oldest_wait_s: float  # age of the oldest of them (0 with none)
    arrivals: int  # orders received in the last window_s
    drained: int  # orders labelled in the last window_s
    window_s: float


# Each worker announces its pool size and queues on its event heartbeat (workers.app), so the
# control loop counts the fleet's slots without a broadcast: an inspect with no reply count
# to wait for waits out its whole timeout, and two of them held a pool slot for two seconds.
WORKERS_KEY = "orderfleet:surge:workers"  # worker hostname -> JSON {slots, queues, at}
ANNOUNCEMENT_TTL_S = 10.0  # heartbeats come every 2 s: one older than this is a dead worker


def announce_worker(r: redis.Redis, hostname: str, slots: int, queues: Iterable[str],
                    now: float | None = None) -> None:
    r.hset(WORKERS_KEY, hostname, json.dumps(
        {"slots": slots, "queues": sorted(queues), "at": time.time() if now is None else now}))


def withdraw_worker(r: redis.Redis, hostname: str) -> None:
    r.hdel(WORKERS_KEY, hostname)


def announced_slots(r: redis.Redis, core_queues: Iterable[str], control_queue: str,
                    now: float | None = None) -> tuple[int, bool] | None:
    """(pool slots of the live workers consuming a core queue, whether one of those also runs
    the control loop) from the workers' announcements; None when no live worker announced
    itself (workers without heartbeats: ask them instead). Stale announcements are dropped."""
    now = time.time() if now is None else now
    core = set(core_queues)
    slots, shared, live, stale = 0, False, 0, []
    for hostname, raw in r.hgetall(WORKERS_KEY).items():
        try:
            worker = json.loads(raw)
            at, queues, size = float(worker["at"]), set(worker["queues"]), int(worker["slots"])
        except (ValueError, KeyError, TypeError):
            stale.append(hostname)
            continue
        if now - at > ANNOUNCEMENT_TTL_S:
            stale.append(hostname)
            continue
        live += 1
        if queues & core:
            slots += size
            shared = shared or control_queue in queues
    if stale:
        r.hdel(WORKERS_KEY, *stale)
    return (slots, shared) if live else None


def unacked_by_queue(r: redis.Redis, now: float | None = None) -> dict[str, int]:
    """Reserved-but-unacknowledged messages per queue (routing key = queue name here), less
    those a worker holds for a countdown still to come: a retry or a deferral waiting for its
    ETA occupies no pool slot (a worker holds any number of them), and counted as busy they
    had the load at 1.0 with the fleet half idle."""
    now = time.time() if now is None else now
    counts: dict[str, int] = {}
    for _tag, raw in r.hscan_iter(UNACKED_KEY, count=500):
        try:
            message, _exchange, routing_key = json.loads(raw)
            eta = (message.get("headers") or {}).get("eta")
            if eta and datetime.fromisoformat(eta).timestamp() > now:
                continue
        except (ValueError, TypeError, AttributeError):
            continue
        counts[routing_key] = counts.get(routing_key, 0) + 1
    return counts


def queue_lengths(r: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    names = list(queues)
    pipe = r.pipeline(transaction=False)
    for q in names:
        pipe.llen(q)
    return dict(zip(names, (int(n) for n in pipe.execute()), strict=True))


def measure(r: redis.Redis, session: Session, settings: Settings, *, slots: int,
            core_queues: Sequence[str], control_queues: Sequence[str] = ("control",),
            now: float | None = None) -> Measurement:
    now = time.time() if now is None else now
    unacked = unacked_by_queue(r, now)
    lengths = queue_lengths(r, core_queues)
    from domain.clock import utcnow

    waiting = [s.value for s in PROCESSING]
    count, oldest = session.execute(
        select(func.count(), func.min(OrderRow.received_at))
        .where(OrderRow.state.in_(waiting), not_held_in_a_wave(utcnow()))).one()

    since = utcnow() - timedelta(seconds=settings.surge_rate_window_s)
    arrivals = arrivals_since(session, since)
    drained = labels_since(session, since)
    oldest_wait = max((utcnow() - oldest).total_seconds(), 0.0) if oldest else 0.0
    # The tick itself holds a slot while it measures: that slot is not the fleet's to give.
    control = sum(unacked.get(q, 0) for q in control_queues)
    return Measurement(at=now, slots=max(slots - control, 0),
                       busy_core=sum(unacked.get(q, 0) for q in core_queues),
                       queued_core=sum(lengths.values()), backlog_orders=int(count or 0),
                       oldest_wait_s=oldest_wait, arrivals=int(arrivals), drained=int(drained),
                       window_s=settings.surge_rate_window_s)


def raw_load(m: Measurement, settings: Settings) -> tuple[float, float]:
    """(load before smoothing, utilisation) of one measurement."""
    utilisation = min(m.busy_core / m.slots, 1.0) if m.slots > 0 else (
        1.0 if m.busy_core or m.queued_core else 0.0)
    wait = m.oldest_wait_s / settings.surge_wait_target_s
    return max(utilisation, wait), utilisation


def saturated(m: Measurement, settings: Settings) -> bool:
    """More orders waiting in the automated stages than ``surge_saturated_batches`` full
    batches per slot: work the fleet cannot take for a while. Busy slots and queued messages
    say little here (a stage sends a message per small batch and holds countdown messages, so
    both run high at half load); a burst's backlog is thousands of orders, a fleet that keeps
    up holds about a second of its intake."""
    threshold = settings.surge_saturated_batches * settings.batch_size * m.slots
    return m.slots > 0 and m.backlog_orders >= threshold


def ewma(previous: float | None, value: float, dt: float, tau: float) -> float:
    """Exponentially weighted moving average for irregular ticks (time constant ``tau``)."""
    if previous is None:
        return value
    alpha = 1.0 - math.exp(-max(dt, 0.0) / tau)
    return previous + alpha * (value - previous)


# --------------------------------------------------------------------------------------------
# Deciding: breaker (hysteresis + dwell) and the three-stage response
# --------------------------------------------------------------------------------------------
@dataclass
class ControlState:
    """What the control loop remembers between ticks (kept in Redis, STATE_KEY)."""

    load: float | None = None
    arrival_rate: float | None = None
    baseline: float | None = None
    breaker: str = "closed"  # "open" | "closed"
    breaker_since: float = 0.0
    stage: int = 0  # 0 none, 1 shed non-core, 2 scale out, 3 VIP first + compensation
    surge_since: float = 0.0
    at: float | None = None
    learning_since: float | None = None  # first tick: no surge before a full rate window
    saturated_since: float | None = None  # first of the consecutive saturated ticks

    @classmethod
    def from_redis(cls, raw: dict[str, str]) -> ControlState:
        def num(name: str) -> float | None:
            return float(raw[name]) if raw.get(name) not in (None, "") else None

        return cls(load=num("load"), arrival_rate=num("arrival_rate"), baseline=num("baseline"),
                   breaker=raw.get("breaker", "closed"),
                   breaker_since=num("breaker_since") or 0.0, stage=int(raw.get("stage", 0)),
                   surge_since=num("surge_since") or 0.0, at=num("at"),
                   learning_since=num("learning_since"),
                   saturated_since=num("saturated_since"))

    def to_redis(self) -> dict[str, str]:
        return {k: ("" if v is None else str(v)) for k, v in asdict(self).items()}


@dataclass
class Decision:
    state: ControlState
    raw_load: float
    utilisation: float
    transitions: list[dict[str, Any]] = field(default_factory=list)


def decide(prev: ControlState, m: Measurement, settings: Settings) -> Decision:
    """The next control state from the previous one and a measurement (no I/O)."""
    raw, utilisation = raw_load(m, settings)
    dt = m.at - prev.at if prev.at is not None else 0.0
    st = ControlState(**asdict(prev))
    st.at = m.at
    # The first tick starts the average from idle: one busy instant at start opens nothing.
    st.load = (ewma(0.0, raw, settings.surge_monitor_interval_s, settings.surge_ewma_tau_s)
               if prev.load is None else ewma(prev.load, raw, dt, settings.surge_ewma_tau_s))
    arrival = m.arrivals / m.window_s
    st.arrival_rate = ewma(prev.arrival_rate, arrival, dt, settings.surge_ewma_tau_s)
    out = Decision(st, raw, utilisation)

    def note(kind: str, frm: Any, to: Any, reason: str) -> None:
        # With the measurement behind it, unrounded: a load of 0.80004 opened the breaker and
        # must not read as 0.8; a breaker opened by a saturating backlog shows that backlog.
        out.transitions.append({"at": m.at, "what": kind, "from": frm, "to": to,
                                "load": st.load or 0.0,
                                "backlog_orders": m.backlog_orders, "slots": m.slots,
                                "reason": reason})

    # --- the three-stage response to an intake jump over baseline ---------------------------
    if st.learning_since is None:
        st.learning_since = m.at
    baseline = max(st.baseline if st.baseline is not None else arrival,
                   settings.surge_min_baseline_per_s)
    ratio = st.arrival_rate / baseline
    # A baseline learnt over less than one rate window says nothing yet (a fleet just started).
    learnt = m.at - st.learning_since >= m.window_s
    surging = learnt and ratio >= settings.surge_intake_ratio
    if st.stage == 0:
        # A jump the fleet absorbs (load below the close threshold) is traffic, not a surge.
        if surging and st.load >= settings.surge_close_load:
            st.stage, st.surge_since = 1, m.at
            note("stage", 0, 1, f"intake {st.arrival_rate:.2f}/s is {ratio:.1f}x the baseline "
                 f"{baseline:.2f}/s: shed non-core jobs, pause low-priority sweeps")
        else:  # the baseline learns only outside a surge
            st.baseline = ewma(st.baseline, arrival, dt, settings.surge_baseline_tau_s)
    elif surging or st.load >= settings.surge_close_load:
        elapsed = m.at - st.surge_since
        if st.stage < 2 and elapsed >= settings.surge_stage2_after_s:
            st.stage = 2
            note("stage", 1, 2, f"surge for {elapsed:.0f}s: raise the autoscale ceiling, "
                 "emit scale advice")
        if st.stage < 3 and elapsed >= settings.surge_stage3_after_s:
            st.stage = 3
            note("stage", 2, 3, f"surge for {elapsed:.0f}s: VIP and express first, queue "
                 "delay-compensation coupons")
    else:
        note("stage", st.stage, 0, f"intake {ratio:.1f}x baseline and load {st.load:.2f} below "
             f"{settings.surge_close_load}: surge over, every stage reverted")
        st.stage, st.surge_since = 0, 0.0

    # --- the non-core breaker: hysteresis and a minimum dwell -------------------------------
    # The average (10 s) reaches the open threshold some 16 s into a saturating burst: a sale's
    # first seconds would spend a fifth of the fleet's CPU on e-mails while orders queue.
    # Saturation held over consecutive ticks opens the breaker at once.
    if not saturated(m, settings):
        st.saturated_since = None
    elif st.saturated_since is None:
        st.saturated_since = m.at
    saturated_s = m.at - st.saturated_since if st.saturated_since is not None else None
    burst = saturated_s is not None and saturated_s >= settings.surge_saturated_open_s
    if st.breaker == "closed" and (st.load > settings.surge_open_load or st.stage >= 1 or burst):
        st.breaker, st.breaker_since = "open", m.at
        why = (f"load {st.load:.2f} above {settings.surge_open_load}"
               if st.load > settings.surge_open_load else f"surge stage {st.stage}"
               if st.stage >= 1 else f"{m.backlog_orders} orders waiting, over "
               f"{settings.surge_saturated_batches} batches per slot for {saturated_s:.1f}s")
        note("breaker", "closed", "open", why + ": non-core jobs are parked")
    elif (st.breaker == "open" and st.stage == 0 and st.load < settings.surge_close_load
          and m.at - st.breaker_since >= settings.surge_min_dwell_s):
        st.breaker, st.breaker_since = "closed", m.at
        note("breaker", "open", "closed", f"load {st.load:.2f} below "
             f"{settings.surge_close_load} after {settings.surge_min_dwell_s:.0f}s dwell: "
             "replaying parked jobs")
    return out


# --------------------------------------------------------------------------------------------
# Publishing and reading
# --------------------------------------------------------------------------------------------
def snapshot(d: Decision, m: Measurement, advice_slots: int | None) -> dict[str, str]:
    """The fields of ``orderfleet:load`` (other readers rely on these names)."""
    st = d.state
    fields: dict[str, Any] = {
        "load": round(st.load or 0.0, 4),
        "load_raw": round(d.raw_load, 4),
        "utilisation": round(d.utilisation, 4),
        "backlog": m.queued_core + m.busy_core,
        "queued": m.queued_core,
        "reserved": m.busy_core,
        "backlog_orders": m.backlog_orders,
        "oldest_wait_s": round(m.oldest_wait_s, 2),
        "arrival_rate": round(st.arrival_rate or 0.0, 3),
        "baseline_rate": round(st.baseline or 0.0, 3),
        "drain_rate": round(m.drained / m.window_s, 3),
        "slots": m.slots,
        "breaker": st.breaker,
        "surge_stage": st.stage,
        "advice_slots": "" if advice_slots is None else advice_slots,
        "updated_at": round(m.at, 3),
    }
    return {k: str(v) for k, v in fields.items()}


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _hash(r: redis.Redis, key: str) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in r.hgetall(key).items()}


def publish(r: redis.Redis, d: Decision, m: Measurement, advice_slots: int | None) -> None:
    pipe = r.pipeline()
    load: dict[Any, Any] = snapshot(d, m, advice_slots)
    state: dict[Any, Any] = d.state.to_redis()
    pipe.hset(LOAD_KEY, mapping=load)
    pipe.hset(STATE_KEY, mapping=state)
    for t in d.transitions:
        pipe.rpush(TRANSITIONS_KEY, json.dumps(t))
        pipe.hincrby(COUNTS_KEY, f"transitions:{t['what']}", 1)
    pipe.ltrim(TRANSITIONS_KEY, -KEPT_TRANSITIONS, -1)
    pipe.execute()
    for t in d.transitions:
        log.warning("surge %s %s -> %s (load %.2f): %s", t["what"], t["from"], t["to"],
                    t["load"], t["reason"])


def read_state(r: redis.Redis) -> ControlState:
    return ControlState.from_redis(_hash(r, STATE_KEY))


def read_load(r: redis.Redis) -> dict[str, Any]:
    """The published load snapshot (numbers as numbers); empty before the first tick."""
    out: dict[str, Any] = {}
    for k, v in _hash(r, LOAD_KEY).items():
        if k == "breaker":
            out[k] = v
        elif v == "":
            out[k] = None
        else:
            out[k] = int(v) if k in ("backlog", "queued", "reserved", "backlog_orders", "slots",
                                     "surge_stage", "advice_slots") else float(v)
    return out


def read_counts(r: redis.Redis) -> dict[str, int]:
    counts = {k: int(v) for k, v in _hash(r, COUNTS_KEY).items()}
    counts.setdefault("parked", 0)
    counts.setdefault("replayed", 0)
    counts["waiting"] = int(r.llen(PARKED_KEY)) + int(r.llen(REPLAYING_KEY))
    return counts


def transitions(r: redis.Redis, last: int = 20) -> list[dict[str, Any]]:
    return [json.loads(t) for t in r.lrange(TRANSITIONS_KEY, -last, -1)]


def breaker_open(r: redis.Redis) -> bool:
    return r.hget(LOAD_KEY, "breaker") == "open"


def surge_stage(r: redis.Redis) -> int:
    raw = r.hget(LOAD_KEY, "surge_stage")
    return int(raw) if raw else 0


def low_priority_paused(settings: Settings) -> bool:
    """Low-priority sweeps (tracking) wait while a surge is at stage 1 or above."""
    r = client(settings)
    try:
        return surge_stage(r) >= 1
    finally:
        r.close()


# --------------------------------------------------------------------------------------------
# Parking and replay of non-core jobs
# --------------------------------------------------------------------------------------------
def park(r: redis.Redis, kind: str, order_ids: Sequence[int]) -> None:
    """Keep a non-core job for later, after the ones parked before it (never dropped)."""
    pipe = r.pipeline()
    pipe.rpush(PARKED_KEY, json.dumps({"kind": kind, "ids": list(order_ids),
                                       "parked_at": time.time()}))
    pipe.hincrby(COUNTS_KEY, "parked", len(order_ids))
    pipe.hincrby(COUNTS_KEY, f"parked:{kind}", len(order_ids))
    pipe.execute()


class NoncoreGate:
    """Parks a new non-core job instead of queueing it while the breaker is open (one Redis
    read per job sent; the client is made per process, as prefork children need their own)."""

    def __init__(self, settings: Settings, kinds: dict[str, str]) -> None:
        self.settings = settings
        self.kinds = kinds  # task name -> job kind
        self._client: redis.Redis | None = None
        self._pid = 0

    def park(self, task: str, order_ids: Sequence[int]) -> bool:
        """True when the job was parked (the breaker is open)."""
        import os

        if self._client is None or self._pid != os.getpid():
            self._client, self._pid = client(self.settings), os.getpid()
        if not breaker_open(self._client):
            return False
        park(self._client, self.kinds[task], [int(i) for i in order_ids])
        return True


Resend = Callable[[str, list[int]], None]


def replay(r: redis.Redis, budget: int, resend: Resend) -> int:
    """Re-send parked jobs in the order they were parked, up to ``budget`` order-jobs; returns
    how many. Each job moves to a side list first, so a crash between taking and re-sending
    leaves it there for :func:`recover_replaying` instead of losing it."""
    done = 0
    while done < budget:
        raw = r.lmove(PARKED_KEY, REPLAYING_KEY, "LEFT", "RIGHT")
        if raw is None:
            break
        done += _resend(r, _text(raw), resend)
    return done


def recover_replaying(r: redis.Redis, resend: Resend) -> int:
    """Re-send jobs a crashed replay had taken (the ledger makes a duplicate harmless)."""
    done = 0
    for raw in r.lrange(REPLAYING_KEY, 0, -1):
        done += _resend(r, _text(raw), resend)
    return done


def _resend(r: redis.Redis, raw: str, resend: Resend) -> int:
    job = json.loads(raw)
    resend(job["kind"], job["ids"])
    pipe = r.pipeline()
    pipe.lrem(REPLAYING_KEY, 1, raw)
    pipe.hincrby(COUNTS_KEY, "replayed", len(job["ids"]))
    pipe.hincrby(COUNTS_KEY, f"replayed:{job['kind']}", len(job["ids"]))
    pipe.execute()
    return len(job["ids"])


# --------------------------------------------------------------------------------------------
# Scale advice
# --------------------------------------------------------------------------------------------
def slots_needed(backlog_orders: int, arrival_rate: float, drain_rate: float, busy_slots: int,
                 target_s: float) -> int | None:
    """Worker slots that drain ``backlog_orders`` within ``target_s`` while orders keep
    arriving, at the drain rate per busy slot measured now; None before any drain was seen."""
    if drain_rate <= 0 or busy_slots <= 0:
        return None
    per_slot = drain_rate / busy_slots
    return max(1, math.ceil((arrival_rate + backlog_orders / target_s) / per_slot))
