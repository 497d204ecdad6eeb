"""One clock for the whole project (timezone-aware UTC).

``clock_at`` sets the time for the code run inside it: a simulated day of orders can go through
the plain stage functions in seconds and see the hours pass (tests, benchmarks). Outside it,
``utcnow`` is the wall clock.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

_fixed: ContextVar[datetime | None] = ContextVar("orderfleet_clock", default=None)


def utcnow() -> datetime:
    return _fixed.get() or datetime.now(UTC)


@contextmanager
def clock_at(when: datetime) -> Iterator[datetime]:
    """Everything in this context sees ``when`` (timezone-aware) as now."""
    if when.tzinfo is None:
        raise ValueError("clock_at needs a timezone-aware time")
    token = _fixed.set(when)
    try:
        yield when
    finally:
        _fixed.reset(token)
