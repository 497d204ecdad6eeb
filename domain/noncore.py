"""Non-core jobs: what a store does for an order besides fulfilling it, and may do later.

Post-purchase and review-request e-mails (SMTP), coupons (a ledger in the database) and a
marketing-list sync (an HTTP call to the storefront). Each is done at most once per
(order, kind): the ``noncore_jobs`` row is inserted in the transaction that carries the side
effect (the coupon row; for an e-mail or an HTTP call, the transaction commits only after the
SMTP server or storefront accepted it). A crash between acceptance and commit repeats the
call once; the e-mail's Message-ID and the sync's Idempotency-Key are fixed per (order, kind),
so the receiver can tell.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from sqlalchemy import update

from config.settings import Settings
from domain.clock import utcnow
from domain.db import UnitOfWork, insert_ignoring_conflicts, unit_of_work
from domain.http import RetryingClient
from domain.models import Coupon, NoncoreJob, OrderRow

log = logging.getLogger("orderfleet.noncore")

KINDS: tuple[str, ...] = ("post_purchase_email", "review_request_email", "coupon",
                          "marketing_sync", "delay_compensation")
_EMAIL_TEXT = {
    "post_purchase_email": (
        "Thank you for your order {order}",
        "Your order {order} from {store} is packed and labelled; it is on its way.\n"),
    "review_request_email": (
        "How was your order {order}?",
        "Your order {order} from {store} was delivered. Tell us how we did.\n"),
}
_COUPON_REASON = {"coupon": "loyalty", "delay_compensation": "delay_compensation"}


def message_id(order_id: int, kind: str) -> str:
    """The same Message-ID for every attempt at an order's e-mail of a kind."""
    return f"<order-{order_id}.{kind}@orderfleet>"


@dataclass
class JobOutcome:
    done: list[int] = field(default_factory=list)
    already: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)


class _Mailer:
    """One SMTP connection for a batch, opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None

    def send(self, msg: EmailMessage) -> None:
        s = self.settings
        if self._smtp is None:
            self._smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s)
            if s.smtp_starttls:
                self._smtp.starttls()
            if s.smtp_username and s.smtp_password:
                self._smtp.login(s.smtp_username, s.smtp_password.get_secret_value())
        self._smtp.send_message(msg)

    def close(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._smtp.quit()
            self._smtp = None


def run_jobs(settings: Settings, kind: str, order_ids: Sequence[int], *,
             replayed: bool = False) -> JobOutcome:
    """Do the ``kind`` job for each order not done yet, one transaction per order."""
    if kind not in KINDS:
        raise ValueError(f"unknown non-core job {kind!r}")
    out = JobOutcome()
    mailer = _Mailer(settings)
    http = (RetryingClient(settings.marketing_url, name="marketing",
                           timeout_s=settings.marketing_timeout_s, retry_max_s=10.0)
            if kind == "marketing_sync" else None)
    try:
        for order_id in sorted(set(order_ids)):
            with unit_of_work(settings) as uow:
                outcome = _one(uow, kind, order_id, replayed, mailer, http)
            if outcome is None:
                out.already.append(order_id)
            elif outcome.startswith("skipped"):
                out.skipped[order_id] = outcome
            else:
                out.done.append(order_id)
    finally:
        mailer.close()
        if http is not None:
            http.close()
    return out


def _one(uow: UnitOfWork, kind: str, order_id: int, replayed: bool, mailer: _Mailer,
         http: RetryingClient | None) -> str | None:
    session = uow.session
    claimed = insert_ignoring_conflicts(
        session, NoncoreJob, [{"order_id": order_id, "kind": kind, "done_at": utcnow(),
                               "outcome": "pending", "replayed": replayed}],
        ["order_id", "kind"], returning=[NoncoreJob.order_id])
    if not claimed:
        return None  # done before (or being done by another worker, which holds the row)
    order = session.get(OrderRow, order_id)
    if order is None:
        outcome = "skipped:no_order"
    elif kind in _EMAIL_TEXT:
        outcome = _email(uow.settings, kind, order, mailer)
    elif kind in _COUPON_REASON:
        outcome = _coupon(uow, kind, order)
    else:
        outcome = _marketing(order, http)
    session.execute(update(NoncoreJob).where(NoncoreJob.order_id == order_id,
                                             NoncoreJob.kind == kind).values(outcome=outcome))
    return outcome


def _email(settings: Settings, kind: str, order: OrderRow, mailer: _Mailer) -> str:
    to = ((order.payload.get("customer") or {}).get("email") or "").strip()
    if "@" not in to:
        return "skipped:no_email"
    subject, body = _EMAIL_TEXT[kind]
    msg = EmailMessage()
    msg["From"] = settings.smtp_from
    msg["To"] = to
    msg["Subject"] = subject.format(order=order.source_order_id)
    msg["Message-ID"] = message_id(order.id, kind)
    msg["X-Orderfleet-Job"] = f"{order.id}:{kind}"
    msg.set_content(body.format(order=order.source_order_id, store=order.store))
    mailer.send(msg)
    return "sent"


def _coupon(uow: UnitOfWork, kind: str, order: OrderRow) -> str:
    amount = (uow.settings.compensation_coupon_amount if kind == "delay_compensation"
              else uow.settings.coupon_amount)
    insert_ignoring_conflicts(uow.session, Coupon, [{
        "order_id": order.id, "reason": _COUPON_REASON[kind],
        "code": secrets.token_hex(6).upper(), "amount": amount, "currency": order.currency,
        "issued_at": utcnow()}], ["order_id", "reason"])
    return "issued"


def _marketing(order: OrderRow, http: RetryingClient | None) -> str:
    if http is None:
        raise ValueError("a marketing sync needs the storefront's HTTP client")
    customer: dict[str, Any] = order.payload.get("customer") or {}
    email = (customer.get("email") or "").strip()
    if "@" not in email:
        return "skipped:no_email"
    http.request("POST", f"/marketing/{order.store}/members",
                 json={"customer_id": customer.get("id"), "email": email,
                       "order_id": order.source_order_id, "tags": customer.get("tags", [])},
                 headers={"Idempotency-Key": f"{order.id}:marketing_sync"})
    return "synced"
