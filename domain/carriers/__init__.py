"""Carrier adapters: one interface (``CarrierAdapter``), one adapter per carrier API.

* ``sandbox``: orderfleet's own sandbox carrier (``sandbox.carrier``);
* ``easypost``: an EasyPost-shaped REST API, so a store can plug a real account in.

``build_carrier(settings)`` returns the adapter the settings name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from domain.carriers.base import (
    FINAL_TRACKING_STATUSES,
    TRACKING_STATUSES,
    BatchResult,
    CarrierAdapter,
    CarrierCircuitOpen,
    CarrierError,
    CarrierRejected,
    CarrierUnavailable,
    Label,
    LabelRequest,
    Rate,
    Tracker,
    TrackingEvent,
)
from domain.carriers.easypost import EasyPostCarrier
from domain.carriers.sandbox import CarrierClient, SandboxCarrier
from domain.carriers.statuses import UnknownTrackingStatus, normalize_status

if TYPE_CHECKING:
    from config.settings import Settings
    from domain.breaker import CircuitBreaker

__all__ = [
    "FINAL_TRACKING_STATUSES",
    "TRACKING_STATUSES",
    "BatchResult",
    "CarrierAdapter",
    "CarrierCircuitOpen",
    "CarrierClient",
    "CarrierError",
    "CarrierRejected",
    "CarrierUnavailable",
    "EasyPostCarrier",
    "Label",
    "LabelRequest",
    "Rate",
    "SandboxCarrier",
    "Tracker",
    "TrackingEvent",
    "UnknownTrackingStatus",
    "build_carrier",
    "normalize_status",
]


def build_carrier(settings: Settings, breaker: CircuitBreaker | None = None) -> CarrierAdapter:
    """The adapter for ``settings.carrier_api`` at ``settings.carrier_url``."""
    if settings.carrier_api == "easypost":
        assert settings.carrier_api_key is not None  # the settings validator guarantees it
        return EasyPostCarrier(settings.carrier_url, settings.carrier_api_key.get_secret_value(),
                               timeout_s=settings.carrier_timeout_s,
                               retry_max_s=settings.carrier_retry_max_s, breaker=breaker)
    return SandboxCarrier(settings.carrier_url, timeout_s=settings.carrier_timeout_s,
                          retry_max_s=settings.carrier_retry_max_s, breaker=breaker)
