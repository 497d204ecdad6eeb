"""Fault injection: what goes wrong at the sandbox carrier, and how a request draws it.

A profile is set per run (``python -m sandbox.carrier --error-rate ...``) or live
(``PUT /v1/admin/faults``): latency, 5xx, 429 with Retry-After, timeouts, and labels charged
whose answer is lost.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from sandbox.carrier.errors import BadRequest, json_error
from sandbox.carrier.tariffs import require_carrier

if TYPE_CHECKING:  # the books hold a FaultProfile: a run-time import would be circular
    from sandbox.carrier.books import CarrierState

FAULT_KINDS: tuple[str, ...] = ("error", "rate_limit", "timeout", "lost")
# What a request does, for faults aimed at one kind of call ("lose label purchases only").
OPERATIONS: tuple[str, ...] = ("labels", "lookup", "void", "tracking", "rates")


@dataclass(frozen=True)
class FaultProfile:
    """What goes wrong at this carrier, set per run (CLI flags) or live (``/v1/admin/faults``).

    Each API request draws at most one fault, with these probabilities:

    * ``error_rate``: a 500, 502 or 503 (nothing was done);
    * ``rate_limit_rate``: a 429 with ``Retry-After: retry_after_s`` (nothing was done);
    * ``timeout_rate``: no answer for ``hang_s`` seconds, then a 504 (nothing was done);
    * ``lost_rate``: the request is carried out (a label is charged), then the answer is held
      for ``hang_s`` seconds, past the client's timeout: "charged, but the response was lost".

    ``latency_ms`` (+ up to ``latency_jitter_ms``) delays every affected request. ``carriers``
    limits the faults to requests about those carriers, ``operations`` to those operations
    (``OPERATIONS``; empty: all). ``duration_s`` makes the profile lapse on its own (an outage
    of a set length). ``seed`` makes the draws repeatable.
    """

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    timeout_rate: float = 0.0
    lost_rate: float = 0.0
    hang_s: float = 30.0
    carriers: tuple[str, ...] = ()
    operations: tuple[str, ...] = ()
    duration_s: float | None = None
    seed: int | None = None

    @classmethod
    def from_json(cls, body: Any) -> FaultProfile:
        """Validate an admin request; a BadRequest names the faulty field."""
        if not isinstance(body, dict):
            raise BadRequest("faults: must be a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        for name in body:
            if name not in known:
                raise BadRequest(f"{name}: unknown fault setting, expected one of "
                                 f"{sorted(known)}")
        values: dict[str, Any] = {}
        for name in ("latency_ms", "latency_jitter_ms", "error_rate", "rate_limit_rate",
                     "retry_after_s", "timeout_rate", "lost_rate", "hang_s", "duration_s"):
            if name in body and body[name] is not None:
                v = body[name]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                    raise BadRequest(f"{name}: must be a non-negative number")
                values[name] = float(v)
        if "carriers" in body:
            carriers = body["carriers"]
            if not isinstance(carriers, list):
                raise BadRequest("carriers: must be a list of carrier codes")
            values["carriers"] = tuple(require_carrier(c) for c in carriers)
        if "operations" in body:
            ops = body["operations"]
            if not isinstance(ops, list) or any(op not in OPERATIONS for op in ops):
                raise BadRequest(f"operations: must be a list of {list(OPERATIONS)}")
            values["operations"] = tuple(ops)
        if body.get("seed") is not None:
            if isinstance(body["seed"], bool) or not isinstance(body["seed"], int):
                raise BadRequest("seed: must be an integer")
            values["seed"] = body["seed"]
        profile = cls(**values)
        profile.validate()
        return profile

    def validate(self) -> None:
        for name in ("error_rate", "rate_limit_rate", "timeout_rate", "lost_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise BadRequest(f"{name}: must be within 0..1")
        total = self.error_rate + self.rate_limit_rate + self.timeout_rate + self.lost_rate
        if total > 1.0 + 1e-9:
            raise BadRequest(f"error_rate + rate_limit_rate + timeout_rate + lost_rate: "
                             f"{total:.3f} exceeds 1")

    @property
    def fault_rate(self) -> float:
        return self.error_rate + self.rate_limit_rate + self.timeout_rate + self.lost_rate

    def draw(self, u: float) -> str | None:
        """The fault for a uniform draw ``u`` in [0, 1), or None."""
        edge = 0.0
        for kind, rate in (("error", self.error_rate), ("rate_limit", self.rate_limit_rate),
                           ("timeout", self.timeout_rate), ("lost", self.lost_rate)):
            edge += rate
            if u < edge:
                return kind
        return None

    def to_json(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["carriers"] = list(self.carriers)
        out["operations"] = list(self.operations)
        return out


_ERROR_STATUSES = (500, 502, 503)


async def inject(state: CarrierState, carriers: set[str],
                 operation: str) -> tuple[str | None, Response | None]:
    """Draw this request's fault. Returns (fault, early response): a response to send instead
    of doing the work (5xx, 429, timeout), or None to go on (a "lost" fault is applied by the
    caller after the work is done)."""
    with state.lock:
        state.stats.api_requests += 1
        profile = state.active_faults()
        if profile.carriers and not carriers & set(profile.carriers):
            return None, None
        if profile.operations and operation not in profile.operations:
            return None, None
        fault = profile.draw(state.fault_rng.random())
        jitter = state.fault_rng.random() * profile.latency_jitter_ms
        status = state.fault_rng.choice(_ERROR_STATUSES)
        if fault is not None:
            setattr(state.stats, f"faults_{fault}", getattr(state.stats, f"faults_{fault}") + 1)
    delay_s = (profile.latency_ms + jitter) / 1000.0
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    if fault == "error":
        return fault, json_error("injected fault: carrier error", status)
    if fault == "rate_limit":
        return fault, JSONResponse({"error": "rate limited, slow down"}, status_code=429,
                                   headers={"Retry-After": f"{profile.retry_after_s:g}"})
    if fault == "timeout":
        await asyncio.sleep(profile.hang_s)
        return fault, json_error("injected fault: gateway timeout", 504)
    return fault, None


async def deliver(state: CarrierState, fault: str | None, response: Response,
                  charged: int = 0) -> Response:
    """Send the response, or hold it past the client's timeout when the answer is "lost".

    ``charged``: labels this request charged, counted as ``lost_labels`` when lost.
    """
    if fault == "lost":
        with state.lock:
            hang_s = state.faults.hang_s
            state.stats.lost_labels += charged
        await asyncio.sleep(hang_s)
    return response


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """The fault-injection flags, shared by ``python -m sandbox.carrier`` and tools."""
    g = parser.add_argument_group("fault injection (all off by default)")
    g.add_argument("--latency-ms", type=float, default=0.0, help="delay every request")
    g.add_argument("--latency-jitter-ms", type=float, default=0.0, help="plus up to this much")
    g.add_argument("--error-rate", type=float, default=0.0, help="share answered 500/502/503")
    g.add_argument("--rate-limit-rate", type=float, default=0.0,
                   help="share answered 429 with Retry-After")
    g.add_argument("--retry-after-s", type=float, default=1.0, help="the 429s' Retry-After")
    g.add_argument("--timeout-rate", type=float, default=0.0,
                   help="share that hang for --hang-s, then 504 (not carried out)")
    g.add_argument("--lost-rate", type=float, default=0.0,
                   help="share carried out (charged) whose answer then hangs for --hang-s")
    g.add_argument("--hang-s", type=float, default=30.0,
                   help="how long timeouts and lost answers hang (above the client timeout)")
    g.add_argument("--fault-carriers", default="",
                   help="comma-separated carriers the faults apply to (default: all)")
    g.add_argument("--fault-operations", default="",
                   help=f"comma-separated operations the faults apply to, of {OPERATIONS} "
                        f"(default: all)")
    g.add_argument("--fault-seed", type=int, default=None, help="repeatable fault draws")


def faults_from_args(args: argparse.Namespace) -> FaultProfile:
    """Build (and validate) the fault profile the flags describe."""
    carriers = tuple(c.strip() for c in args.fault_carriers.split(",") if c.strip())
    operations = tuple(o.strip() for o in args.fault_operations.split(",") if o.strip())
    try:
        for c in carriers:
            require_carrier(c)
        if any(op not in OPERATIONS for op in operations):
            raise BadRequest(f"--fault-operations: must be of {list(OPERATIONS)}")
        profile = FaultProfile(
            latency_ms=args.latency_ms, latency_jitter_ms=args.latency_jitter_ms,
            error_rate=args.error_rate, rate_limit_rate=args.rate_limit_rate,
            retry_after_s=args.retry_after_s, timeout_rate=args.timeout_rate,
            lost_rate=args.lost_rate, hang_s=args.hang_s, carriers=carriers,
            operations=operations, seed=args.fault_seed)
        profile.validate()
    except BadRequest as exc:
        raise SystemExit(f"invalid fault setting: {exc.message}") from None
    return profile
