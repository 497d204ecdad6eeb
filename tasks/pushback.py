"""Push-back: tell the store when a label is bought and when tracking changes.

Stages call :func:`domain.notifications.notify_store` inside their own unit of work: it
writes one notification per (order, event) (unique, so a re-run stage adds nothing) and sends
their ids to the ``pushback`` queue after the commit. The send task claims notifications with
a lease (a redelivered message cannot send one twice at once), calls the store outside any
transaction, and records the outcome. A beat sweep re-sends notifications whose message was
lost or whose worker died.

Channels: Shopify orders go to the shop's Admin API as fulfilments and fulfilment events;
other stores with a push-back URL get the generic signed webhook; a store with neither gets
its notifications marked ``skipped`` (visible, never silently dropped).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Task
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import aliased

from config.settings import Settings, get_settings
from domain.alerts import raise_alert
from domain.clock import utcnow
from domain.db import UnitOfWork, unit_of_work
from domain.models import NotificationStatus, OrderLine, OrderRow, Shipment, StoreNotification
from domain.notifications import WITHOUT_TRACKING
from domain.pipeline import SEND_NOTIFICATIONS
from domain.storefront import (
    SHOPIFY_EVENT_STATUS,
    ShopifyAdmin,
    SignedWebhook,
    StorefrontRejected,
    StorefrontUnavailable,
    TrackingInfo,
)
from tasks.base import parse_ids, retry_countdown, retry_on_transient, stage_task

log = logging.getLogger(__name__)

def lease_s(settings: Settings) -> float:
    """How long a claimed notification belongs to one worker: its longest possible send."""
    return 3 * (settings.pushback_retry_max_s + 2 * settings.pushback_timeout_s) + 30


@dataclass
class _Job:
    id: int
    order_id: int
    event: str
    channel: str
    source: str
    store: str
    source_order_id: str
    carrier: str | None
    tracking_number: str | None
    last_event_at: Any
    part_no: int | None = None  # a part of a split order: reported to the parent's order
    remote_id: str | None = None  # the order's Shopify fulfilment id, when one was recorded
    # A part's lines (sku, quantity): its fulfilment carries these only.
    lines: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class SendOutcome:
    sent: list[int] = field(default_factory=list)
    retry: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)


def claim_notifications(uow: UnitOfWork, ids: list[int], settings: Settings) -> list[_Job]:
    """Take the sendable notifications among ``ids`` (pending, or sending past the lease)."""
    session = uow.session
    now = utcnow()
    expired = now - timedelta(seconds=lease_s(settings))
    claimed = list(session.execute(
        update(StoreNotification)
        .where(StoreNotification.id.in_(ids),
               or_(StoreNotification.status == NotificationStatus.PENDING,
                   and_(StoreNotification.status == NotificationStatus.SENDING,
                        StoreNotification.claimed_at < expired)))
        .values(status=NotificationStatus.SENDING, claimed_at=now,
                attempts=StoreNotification.attempts + 1)
        .returning(StoreNotification.id)
    ).scalars())
    if not claimed:
        return []
    parent = aliased(OrderRow)
    rows = session.execute(
        select(StoreNotification.id, StoreNotification.order_id, StoreNotification.event,
               StoreNotification.channel, OrderRow.source, OrderRow.store,
               # A part of a split order reports to its parent's platform order.
               func.coalesce(parent.source_order_id, OrderRow.source_order_id),
               Shipment.carrier, Shipment.tracking_number, Shipment.last_event_at,
               OrderRow.part_no)
        .join(OrderRow, OrderRow.id == StoreNotification.order_id)
        .outerjoin(parent, parent.id == OrderRow.parent_id)
        .outerjoin(Shipment, Shipment.order_id == StoreNotification.order_id)
        .where(StoreNotification.id.in_(claimed))
        # label_bought before tracking news of the same order.
        .order_by(StoreNotification.order_id, StoreNotification.id)
    ).all()
    jobs = [_Job(*r) for r in rows]
    parts = {j.order_id for j in jobs if j.part_no is not None}
    lines: dict[int, list[tuple[str, int]]] = defaultdict(list)
    if parts:
        for order_id, sku, qty in session.execute(
                select(OrderLine.order_id, OrderLine.sku, OrderLine.quantity)
                .where(OrderLine.order_id.in_(sorted(parts)))
                .order_by(OrderLine.order_id, OrderLine.line_no)):
            lines[order_id].append((sku, qty))
    for j in jobs:
        j.lines = lines.get(j.order_id, [])
    remote = dict(session.execute(
        select(StoreNotification.order_id, StoreNotification.remote_id)
        .where(StoreNotification.order_id.in_({j.order_id for j in jobs}),
               StoreNotification.remote_id.is_not(None))
    ).all())
    for j in jobs:
        j.remote_id = remote.get(j.order_id)
    return jobs


class _Clients:
    """One adapter per store for the duration of a send batch."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._shopify: dict[str, ShopifyAdmin] = {}
        self._webhooks: dict[str, SignedWebhook] = {}

    def shopify(self, shop: str) -> ShopifyAdmin:
        s = self.settings
        if shop not in self._shopify:
            self._shopify[shop] = ShopifyAdmin(
                s.shopify_admin_url.format(shop=shop), s.shopify_admin_tokens[shop],
                s.shopify_api_version, timeout_s=s.pushback_timeout_s,
                retry_max_s=s.pushback_retry_max_s)
        return self._shopify[shop]

    def webhook(self, store: str) -> SignedWebhook:
        s = self.settings
        if store not in self._webhooks:
            self._webhooks[store] = SignedWebhook(
                s.store_webhook_urls[store], s.store_secrets[store],
                timeout_s=s.pushback_timeout_s, retry_max_s=s.pushback_retry_max_s)
        return self._webhooks[store]

    def close(self) -> None:
        for shopify in self._shopify.values():
            shopify.close()
        for webhook in self._webhooks.values():
            webhook.close()


def _tracking(job: _Job) -> TrackingInfo:
    if not job.tracking_number or not job.carrier:
        raise StorefrontRejected(0, f"order {job.order_id} has no tracking number yet")
    return TrackingInfo.for_carrier(job.carrier, job.tracking_number)


def _send_one(job: _Job, clients: _Clients) -> tuple[str | None, dict[str, Any]]:
    """Deliver one notification; return (remote id, what was sent)."""
    tracking_status = job.event.partition(":")[2] or None
    if job.channel == "shopify":
        shop = clients.shopify(job.store)
        tracking = _tracking(job)
        # A part fulfils only its own lines of the parent's order; a whole order, all of it.
        fulfillment_id = job.remote_id or shop.ensure_fulfillment(
            job.source_order_id, tracking, line_items=job.lines if job.part_no else None)
        sent: dict[str, Any] = {"tracking_info": tracking.to_json(),
                                "fulfillment_id": fulfillment_id}
        if tracking_status:
            status = SHOPIFY_EVENT_STATUS.get(tracking_status)
            if status is None:
                return fulfillment_id, {**sent, "skipped": f"no Shopify status for "
                                                           f"{tracking_status}"}
            shop.add_event(job.source_order_id, fulfillment_id, status, job.last_event_at)
            sent["event_status"] = status
        return fulfillment_id, sent
    payload: dict[str, Any] = {
        "event": job.event.partition(":")[0],
        "store": job.store,
        "source": job.source,
        "order_id": job.source_order_id,
        "orderfleet_order_id": job.order_id,
        "occurred_at": utcnow().isoformat(),
    }
    if job.part_no is not None:
        # One shipment of a split order: the store's order, and the lines this parcel carries.
        payload["part"] = job.part_no
        payload["line_items"] = [{"sku": sku, "quantity": qty} for sku, qty in job.lines]
    if job.event not in WITHOUT_TRACKING:
        payload["tracking"] = {**_tracking(job).to_json(), "status": tracking_status}
    clients.webhook(job.store).send(f"{job.order_id}:{job.event}", payload["event"], payload)
    return None, payload


def send_notifications(ids: list[int], settings: Settings) -> SendOutcome:
    """Claim, deliver (no transaction open while calling the store), record."""
    with unit_of_work(settings) as uow:
        jobs = claim_notifications(uow, ids, settings)
    out = SendOutcome()
    results: dict[int, tuple[str | None, dict[str, Any]]] = {}
    remote_by_order: dict[int, str] = {}
    clients = _Clients(settings)
    try:
        for job in jobs:
            job.remote_id = job.remote_id or remote_by_order.get(job.order_id)
            try:
                results[job.id] = _send_one(job, clients)
            except StorefrontUnavailable as exc:
                out.retry[job.id] = str(exc)
                continue
            except StorefrontRejected as exc:
                out.failed[job.id] = str(exc)
                continue
            out.sent.append(job.id)
            remote_id = results[job.id][0]
            if remote_id:
                remote_by_order[job.order_id] = remote_id
    finally:
        clients.close()
    with unit_of_work(settings) as uow:
        _record(uow, jobs, out, results)
    return out


def _record(uow: UnitOfWork, jobs: list[_Job], out: SendOutcome,
            results: dict[int, tuple[str | None, dict[str, Any]]]) -> None:
    session = uow.session
    now = utcnow()
    sending = StoreNotification.status == NotificationStatus.SENDING
    for nid in out.sent:
        remote_id, payload = results[nid]
        session.execute(update(StoreNotification)
                        .where(StoreNotification.id == nid, sending)
                        .values(status=NotificationStatus.SENT, sent_at=now, remote_id=remote_id,
                                payload=payload, last_error=None))
    for nid, error in out.retry.items():
        session.execute(update(StoreNotification).where(StoreNotification.id == nid, sending)
                        .values(status=NotificationStatus.PENDING, last_error=error[:2000]))
    by_id = {j.id: j for j in jobs}
    failed_stores: dict[str, list[int]] = defaultdict(list)
    for nid, error in out.failed.items():
        session.execute(update(StoreNotification).where(StoreNotification.id == nid, sending)
                        .values(status=NotificationStatus.FAILED, last_error=error[:2000]))
        failed_stores[by_id[nid].store].append(by_id[nid].order_id)
    for store, order_ids in failed_stores.items():
        raise_alert(session, "pushback_failed", store,
                    f"store {store} refused push-back for {len(order_ids)} orders; see "
                    "store_notifications.last_error", detail={"order_ids": order_ids[:50]})
    if out.sent or out.failed:
        log.info("push-back: %d sent, %d to retry, %d failed", len(out.sent), len(out.retry),
                 len(out.failed))


def due_notifications(uow: UnitOfWork, settings: Settings, limit: int = 5000) -> list[int]:
    """Pending past the stage deadline (message lost) or sending past the lease (worker died)."""
    now = utcnow()
    return list(uow.session.execute(
        select(StoreNotification.id)
        .where(or_(and_(StoreNotification.status == NotificationStatus.PENDING,
                        StoreNotification.created_at
                        < now - timedelta(seconds=settings.stage_deadline_s)),
                   and_(StoreNotification.status == NotificationStatus.SENDING,
                        StoreNotification.claimed_at < now - timedelta(seconds=lease_s(settings)))))
        .order_by(StoreNotification.id).limit(limit)
    ).scalars())


@stage_task(SEND_NOTIFICATIONS, max_retries=25)
def send(task: Task, notification_ids: list[int]) -> None:
    settings = get_settings()
    with retry_on_transient(task):
        out = send_notifications(parse_ids(notification_ids), settings)
    if out.retry:
        # The store is down past the retry budget: only the ones not delivered go again later.
        exc = StorefrontUnavailable(next(iter(out.retry.values())))
        raise task.retry(args=[list(out.retry)], exc=exc,
                         countdown=retry_countdown(task.request.retries))


@stage_task("orderfleet.pushback.sweep")
def sweep(task: Task) -> None:
    settings = get_settings()
    with retry_on_transient(task), unit_of_work(settings) as uow:
        ids = due_notifications(uow, settings)
        uow.enqueue_chunks(SEND_NOTIFICATIONS, ids)
    if ids:
        log.warning("re-sending %d store notifications", len(ids))
