"""Alerts for ops: raised by stages and sweeps, listed by ``orderfleet alerts``.

An alert is open until resolved; raising the same (kind, key) again while it is open does
nothing, so a sweep that finds the same problem every minute raises it once.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from domain.clock import utcnow
from domain.db import dialect_insert
from domain.models import Alert

log = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "critical")


def raise_alert(session: Session, kind: str, key: str, message: str, *,
                severity: str = "warning", detail: dict[str, Any] | None = None) -> bool:
    """Open an alert unless one is open for (kind, key). Returns True when newly raised."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}")
    row = {"kind": kind, "key": key, "severity": severity, "message": message,
           "detail": detail, "raised_at": utcnow()}
    stmt = dialect_insert(session, Alert).values(row).on_conflict_do_nothing(
        index_elements=["kind", "key"], index_where=Alert.resolved_at.is_(None))
    new = session.execute(stmt.returning(Alert.id)).first() is not None
    if new:
        log.warning("alert %s/%s: %s", kind, key, message)
    return new


def resolve_alert(session: Session, kind: str, key: str) -> bool:
    """Close the open alert for (kind, key), if any."""
    res = session.execute(
        update(Alert).where(Alert.kind == kind, Alert.key == key, Alert.resolved_at.is_(None))
        .values(resolved_at=utcnow()).returning(Alert.id)
    ).first()
    return res is not None


def open_alerts(session: Session, kind: str | None = None) -> list[Alert]:
    q = select(Alert).where(Alert.resolved_at.is_(None))
    if kind:
        q = q.where(Alert.kind == kind)
    return list(session.execute(q.order_by(Alert.raised_at)).scalars())

