"""A circuit breaker per carrier, shared by every worker through Redis.

States, as in the classic pattern:

* **closed**: calls go through; every attempt's outcome is counted in a sliding window
  (``window_s``, in ten buckets). Once the window holds at least ``min_calls`` attempts and
  the share of failures reaches ``failure_rate``, the breaker opens.
* **open**: nothing is sent for ``open_s``; callers get ``retry_after_s`` and defer their work.
  Each re-opening after a failed probe doubles the pause, up to ``max_open_s``.
* **half-open**: when the pause is over, exactly one caller (whichever asks first, on any
  worker) gets a probe permit; everyone else keeps deferring. The probe's success closes the
  breaker, its failure opens it again. A probe that never reports (its worker died) expires
  after ``probe_lease_s`` and the next caller probes instead.

Every decision is one Lua script, so concurrent workers never disagree. Time is passed in by
the caller (an injectable clock), which keeps the logic testable without sleeping. Each state
change is appended to a capped log for ops and benchmarks.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
DEFAULT_PREFIX = "orderfleet:breaker"
_LOG_LENGTH = 200

# KEYS: state hash, window hash, log list, registry set. ARGV: name, now, probe lease, token.
_ACQUIRE = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st or st == 'closed' then return {'closed', 1, '0', ''} end
local now = tonumber(ARGV[2])
local function log(from, to, reason)
  redis.call('LPUSH', KEYS[3], cjson.encode({at=now, from=from, to=to, reason=reason}))
  redis.call('LTRIM', KEYS[3], 0, __LOG__ - 1)
end
if st == 'open' then
  local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
  if now < open_until then return {'open', 0, tostring(open_until - now), ''} end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_token', ARGV[4],
             'probe_until', tostring(now + tonumber(ARGV[3])))
  log('open', 'half_open', 'pause over; one probe allowed')
  return {'half_open', 1, '0', ARGV[4]}
end
local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
if now < probe_until then return {'half_open', 0, tostring(probe_until - now), ''} end
-- The probe never reported (its worker died): this caller probes instead.
redis.call('HSET', KEYS[1], 'probe_token', ARGV[4],
           'probe_until', tostring(now + tonumber(ARGV[3])))
return {'half_open', 1, '0', ARGV[4]}
""".replace("__LOG__", str(_LOG_LENGTH))

# KEYS as above. ARGV: name, now, ok (1/0), probe token, window_s, buckets, min_calls,
# failure_rate, open_s, max_open_s.
_RECORD = """
local now = tonumber(ARGV[2])
local ok = ARGV[3] == '1'
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'calls_total', 1)
if not ok then redis.call('HINCRBY', KEYS[1], 'failures_total', 1) end
local st = redis.call('HGET', KEYS[1], 'state') or 'closed'
local function log(from, to, reason)
  redis.call('LPUSH', KEYS[3], cjson.encode({at=now, from=from, to=to, reason=reason}))
  redis.call('LTRIM', KEYS[3], 0, __LOG__ - 1)
end
local function open(pause, reason, from)
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', tostring(now),
             'open_until', tostring(now + pause))
  redis.call('HINCRBY', KEYS[1], 'opened_total', 1)
  redis.call('HDEL', KEYS[1], 'probe_token', 'probe_until')
  redis.call('DEL', KEYS[2])
  log(from, 'open', reason)
end
if st == 'half_open' then
  if ARGV[4] == '' or ARGV[4] ~= redis.call('HGET', KEYS[1], 'probe_token') then
    return {st, 0, 0}  -- a straggler that started before the breaker opened: ignored
  end
  if ok then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'streak', 0, 'closed_at', tostring(now))
    redis.call('HDEL', KEYS[1], 'probe_token', 'probe_until', 'open_until')
    redis.call('DEL', KEYS[2])
    log('half_open', 'closed', 'probe succeeded')
    return {'closed', 0, 0}
  end
  local streak = redis.call('HINCRBY', KEYS[1], 'streak', 1)
  local pause = math.min(tonumber(ARGV[9]) * 2 ^ (streak - 1), tonumber(ARGV[10]))
  open(pause, 'probe failed', 'half_open')
  return {'open', 0, 0}
end
if st == 'open' then return {st, 0, 0} end
local window_s = tonumber(ARGV[5])
local bucket_s = window_s / tonumber(ARGV[6])
local bucket = math.floor(now / bucket_s)
redis.call('HINCRBY', KEYS[2], 'c' .. bucket, 1)
if not ok then redis.call('HINCRBY', KEYS[2], 'f' .. bucket, 1) end
redis.call('PEXPIRE', KEYS[2], math.ceil(window_s * 2000))
local oldest = bucket - tonumber(ARGV[6]) + 1
local calls, fails = 0, 0
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  local b = tonumber(string.sub(fields[i], 2))
  if b < oldest then
    redis.call('HDEL', KEYS[2], fields[i])
  elseif string.sub(fields[i], 1, 1) == 'c' then
    calls = calls + tonumber(fields[i + 1])
  else
    fails = fails + tonumber(fields[i + 1])
  end
end
if not ok and calls >= tonumber(ARGV[7]) and fails / calls >= tonumber(ARGV[8]) then
  redis.call('HSET', KEYS[1], 'streak', 1)
  open(tonumber(ARGV[9]), string.format('%d of %d calls failed in %gs', fails, calls,
       window_s), 'closed')
  return {'open', calls, fails}
end
return {'closed', calls, fails}
""".replace("__LOG__", str(_LOG_LENGTH))


@dataclass(frozen=True)
class BreakerPolicy:
    window_s: float = 60.0
    min_calls: int = 20
    failure_rate: float = 0.5
    open_s: float = 30.0
    max_open_s: float = 600.0
    probe_lease_s: float = 30.0
    buckets: int = 10

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and self.open_s > 0 and self.probe_lease_s > 0):
            raise ValueError("breaker window_s, open_s and probe_lease_s must be positive")
        if not 0 < self.failure_rate <= 1:
            raise ValueError("breaker failure_rate must be within (0, 1]")
        if self.min_calls < 1 or self.buckets < 1:
            raise ValueError("breaker min_calls and buckets must be at least 1")
        if self.max_open_s < self.open_s:
            raise ValueError("breaker max_open_s must be at least open_s")


@dataclass(frozen=True)
class Permit:
    """The answer to "may I call?". A probe permit carries the token its outcome must quote."""

    name: str
    state: str
    allowed: bool
    retry_after_s: float = 0.0
    probe_token: str = ""

    @property
    def is_probe(self) -> bool:
        return bool(self.probe_token)


@dataclass(frozen=True)
class BreakerStatus:
    name: str
    state: str
    opened_at: float | None
    open_until: float | None
    calls_total: int
    failures_total: int
    opened_total: int


class CircuitBreaker:
    """Per-name breakers (one per carrier) whose state lives in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        policy: BreakerPolicy | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.policy = policy or BreakerPolicy()
        self.prefix = prefix
        self.clock = clock
        self._acquire = client.register_script(_ACQUIRE)
        self._record = client.register_script(_RECORD)

    def _keys(self, name: str) -> list[str]:
        base = f"{self.prefix}:{name}"
        return [base, f"{base}:window", f"{base}:log", f"{self.prefix}:names"]

    def acquire(self, name: str) -> Permit:
        """May a call to ``name`` go out now? (In half-open state, only one caller may.)"""
        token = uuid.uuid4().hex
        state, allowed, retry_after, probe = self._acquire(
            keys=self._keys(name), args=[name, repr(self.clock()), self.policy.probe_lease_s,
                                         token])
        return Permit(name=name, state=_s(state), allowed=bool(int(allowed)),
                      retry_after_s=float(retry_after), probe_token=_s(probe))

    def record(self, permit: Permit | str, ok: bool) -> str:
        """Report one attempt's outcome; returns the breaker's state afterwards."""
        name, token = (permit, "") if isinstance(permit, str) else (permit.name,
                                                                     permit.probe_token)
        p = self.policy
        state, _calls, _fails = self._record(
            keys=self._keys(name),
            args=[name, repr(self.clock()), 1 if ok else 0, token, p.window_s, p.buckets,
                  p.min_calls, p.failure_rate, p.open_s, p.max_open_s])
        return _s(state)

    def status(self, name: str) -> BreakerStatus:
        raw = {_s(k): _s(v) for k, v in self.client.hgetall(self._keys(name)[0]).items()}
        state = raw.get("state", CLOSED)
        return BreakerStatus(
            name=name,
            state=state,
            opened_at=float(raw["opened_at"]) if "opened_at" in raw else None,
            open_until=float(raw["open_until"]) if state != CLOSED and "open_until" in raw
            else None,
            calls_total=int(raw.get("calls_total", 0)),
            failures_total=int(raw.get("failures_total", 0)),
            opened_total=int(raw.get("opened_total", 0)),
        )

    def transitions(self, name: str, limit: int = _LOG_LENGTH) -> list[dict[str, Any]]:
        """State changes, oldest first: ``{"at", "from", "to", "reason"}``."""
        raw = self.client.lrange(self._keys(name)[2], 0, limit - 1)
        return [json.loads(item) for item in reversed(raw)]

    def names(self) -> list[str]:
        return sorted(_s(n) for n in self.client.smembers(self._keys("x")[3]))

    def reset(self, name: str) -> None:
        """Forget a breaker's state and history (ops, tests)."""
        keys = self._keys(name)
        self.client.delete(*keys[:3])
        self.client.srem(keys[3], name)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
