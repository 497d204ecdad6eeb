"""Tracking statuses from any carrier vocabulary land in the one fixed set."""

import pytest

from domain.carriers import TRACKING_STATUSES, UnknownTrackingStatus, normalize_status
from domain.carriers.statuses import to_easypost_status


@pytest.mark.parametrize(("raw", "detail", "expected"), [
    # ours, as the sandbox carrier sends them
    *[(s, None, s) for s in TRACKING_STATUSES],
    # AfterShip tags
    ("InfoReceived", None, "info_received"),
    ("InTransit", None, "in_transit"),
    ("OutForDelivery", None, "out_for_delivery"),
    ("AttemptFail", None, "failed_attempt"),
    ("AvailableForPickup", None, "out_for_delivery"),
    ("Exception", None, "exception"),
    ("Expired", None, "expired"),
    # EasyPost statuses and details
    ("pre_transit", "label_created", "info_received"),
    ("in_transit", "arrived_at_facility", "in_transit"),
    ("in_transit", "delivery_exception", "failed_attempt"),
    ("return_to_sender", "return", "exception"),
    ("failure", None, "exception"),
    ("cancelled", None, "exception"),
    ("unknown", "expired", "expired"),
    # other aggregators, odd spacing and case
    ("undelivered", None, "failed_attempt"),
    ("  In Transit ", None, "in_transit"),
    ("out-for-delivery", None, "out_for_delivery"),
])
def test_known_statuses_are_normalised(raw: str, detail: str | None, expected: str) -> None:
    assert normalize_status(raw, detail) == expected


@pytest.mark.parametrize("raw", ["unknown", "Pending", "notfound"])
def test_nothing_yet_is_none_not_a_status(raw: str) -> None:
    assert normalize_status(raw) is None


@pytest.mark.parametrize("raw", ["teleported", "", "   "])
def test_an_unknown_status_is_refused_with_its_value_named(raw: str) -> None:
    with pytest.raises(UnknownTrackingStatus) as refused:
        normalize_status(raw)
    assert str(refused.value).startswith("status: unknown tracking status")


def test_every_status_survives_the_easypost_round_trip() -> None:
    # The sandbox's EasyPost dialect speaks EasyPost's words; the adapter maps them back.
    for status in TRACKING_STATUSES:
        assert normalize_status(*to_easypost_status(status)) == status
