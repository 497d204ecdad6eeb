"""The one way the tests wait for something to happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Short enough that a test moves on soon after the event, long enough that a check querying
# PostgreSQL or Redis costs the machine little.
POLL_INTERVAL_S = 0.05


def eventually(predicate: Callable[[], T], timeout: float, what: str,
               interval: float = POLL_INTERVAL_S) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    A falsy value or an AssertionError means "not yet"; any other exception fails at once.
    After ``timeout`` seconds, raise an AssertionError naming ``what`` was awaited and the
    last value (or assertion message) seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if value:
                return value
            last: object = value
        except AssertionError as not_yet:
            last = not_yet
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; "
                                 f"last seen: {last!r}")
        time.sleep(interval)
