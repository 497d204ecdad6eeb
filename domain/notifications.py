"""What the store is told about its orders, queued by the stages in their own transaction.

:func:`notify_store` writes one notification per (order, event) (unique, so a re-run stage adds
nothing) and hands their ids to the push-back stage (``tasks.pushback``) after the commit.
"""

from __future__ import annotations

from sqlalchemy import select

from config.settings import Settings
from domain.clock import utcnow
from domain.db import UnitOfWork, any_of, insert_ignoring_conflicts
from domain.models import NotificationStatus, OrderRow, Shipment, StoreNotification
from domain.pipeline import SEND_NOTIFICATIONS

EVENTS = ("label_bought", "tracking_changed", "cancelled", "refund_due")
# News without a parcel on its way: no tracking number is sent with them.
WITHOUT_TRACKING = ("cancelled", "refund_due")


def channel_for(source: str, store: str, settings: Settings) -> str:
    """shopify, webhook or none: where this order's news goes."""
    if source == "shopify" and store in settings.shopify_admin_tokens:
        return "shopify"
    if store in settings.store_webhook_urls:
        return "webhook"
    return "none"


def notify_store(uow: UnitOfWork, order_ids: list[int], event: str) -> list[int]:
    """Queue news for the stores of these orders, once per (order, event); returns new ids.

    ``event``: ``label_bought``, ``tracking_changed`` (recorded as ``tracking:<status>`` from
    the shipment's current tracking status, so each status reached is told once) or
    ``cancelled`` or ``refund_due`` (a return was settled: the store refunds the customer).
    """
    if event not in EVENTS:
        raise ValueError(f"event must be one of {EVENTS}, not {event!r}")
    ids = sorted(set(order_ids))
    if not ids:
        return []
    settings = uow.settings
    session = uow.session
    rows = session.execute(
        select(OrderRow.id, OrderRow.source, OrderRow.store, Shipment.tracking_status)
        .outerjoin(Shipment, Shipment.order_id == OrderRow.id)
        .where(any_of(session, OrderRow.id, ids))
    ).all()
    now = utcnow()
    new = []
    for order_id, source, store, tracking_status in rows:
        key = event
        if event == "tracking_changed":
            if not tracking_status or tracking_status == "unknown":
                continue
            key = f"tracking:{tracking_status}"
        channel = channel_for(source, store, settings)
        status = NotificationStatus.PENDING
        if channel == "none" or (channel == "shopify" and event in WITHOUT_TRACKING):
            # A Shopify order is cancelled and refunded in Shopify by the merchant.
            status = NotificationStatus.SKIPPED
        new.append({"order_id": order_id, "event": key, "channel": channel, "status": status,
                    "attempts": 0, "created_at": now})
    inserted = insert_ignoring_conflicts(
        session, StoreNotification, new, ["order_id", "event"],
        returning=[StoreNotification.id, StoreNotification.status])
    pending = [r.id for r in inserted if r.status == NotificationStatus.PENDING]
    uow.enqueue_chunks(SEND_NOTIFICATIONS, pending)
    return pending
