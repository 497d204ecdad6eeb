"""A signal is one piece of evidence: points towards (or, negative, against) fraud, and why."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Signal:
    code: str  # stable identifier, e.g. "cvv_no_match" (what benchmarks and tests count)
    points: int  # added to the 0-100 score; negative for evidence of a genuine customer
    text: str  # what a reviewer reads; never personal data (no address, name or email)
    # A policy hold: the order needs a person whatever the score (a parcel the carrier cannot
    # deliver). It adds no points: it is not evidence of fraud.
    hold: bool = False

    def reason(self) -> str:
        """The text with its weight, as stored in ``orders.fraud_reasons``."""
        return f"{self.text} (hold)" if self.hold else f"{self.text} ({self.points:+d})"
