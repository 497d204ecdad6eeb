"""Tracking statuses, normalised to one fixed set whatever the carrier or aggregator says.

The set is AfterShip's delivery tags in snake_case (``TRACKING_STATUSES``). Carriers and
aggregators name the same things differently (EasyPost ``pre_transit``, AfterShip
``AttemptFail``, TrackingMore ``undelivered``); this module is the one table that maps them.
"""

from __future__ import annotations

import re

from domain.carriers.base import TRACKING_STATUSES


class UnknownTrackingStatus(ValueError):
    """A status no table here knows: refused with the value named, never guessed."""

    def __init__(self, value: str) -> None:
        super().__init__(f"status: unknown tracking status {value!r}")
        self.value = value


# Squashed spelling (lower case, no separators) -> normalised status; None: "nothing yet".
_SYNONYMS: dict[str, str | None] = {
    # ours and AfterShip's
    "inforeceived": "info_received",
    "intransit": "in_transit",
    "outfordelivery": "out_for_delivery",
    "failedattempt": "failed_attempt",
    "attemptfail": "failed_attempt",
    "delivered": "delivered",
    "exception": "exception",
    "expired": "expired",
    "availableforpickup": "out_for_delivery",  # AfterShip: "about to deliver, or ready to pick up"
    "pending": None,
    "unknown": None,
    # EasyPost
    "pretransit": "info_received",
    "returntosender": "exception",
    "failure": "exception",
    "cancelled": "exception",
    "canceled": "exception",
    "error": "exception",
    # TrackingMore / Shippo
    "transit": "in_transit",
    "pickup": "out_for_delivery",
    "undelivered": "failed_attempt",
    "notfound": None,
    "returned": "exception",
}

# EasyPost refines ``status`` with ``status_detail``; these details override the status.
_EASYPOST_DETAILS: dict[str, str] = {
    "delivery_exception": "failed_attempt",
    "delivery_attempted": "failed_attempt",
    "refused": "exception",
    "lost": "exception",
    "damaged": "exception",
    "expired": "expired",
}

_SQUASH = re.compile(r"[\s_\-]+")


def normalize_status(value: str, detail: str | None = None) -> str | None:
    """The normalised status of a carrier's ``value`` (and EasyPost-style ``detail``).

    Returns None when the carrier has nothing yet (``unknown``, ``pending``); raises
    UnknownTrackingStatus for a value no table knows.
    """
    if not isinstance(value, str) or not value.strip():
        raise UnknownTrackingStatus(str(value))
    if detail and detail.strip().lower() in _EASYPOST_DETAILS:
        return _EASYPOST_DETAILS[detail.strip().lower()]
    key = _SQUASH.sub("", value.strip().lower())
    if key not in _SYNONYMS:
        raise UnknownTrackingStatus(value)
    status = _SYNONYMS[key]
    assert status is None or status in TRACKING_STATUSES
    return status


def to_easypost_status(status: str) -> tuple[str, str]:
    """(status, status_detail) as EasyPost would report one of our statuses."""
    return {
        "info_received": ("pre_transit", "label_created"),
        "in_transit": ("in_transit", "in_transit"),
        "out_for_delivery": ("out_for_delivery", "out_for_delivery"),
        "failed_attempt": ("in_transit", "delivery_exception"),
        "delivered": ("delivered", "arrived_at_destination"),
        "exception": ("failure", "return"),
        "expired": ("unknown", "expired"),
    }[status]
