"""Non-core jobs: what a store does for an order besides fulfilling it, and may do later.

Post-purchase and review-request e-mails (SMTP), coupons (a ledger in the database) and a
marketing-list sync (an HTTP call to the storefront). Each is done at most once per
(order, kind), kept in one ``noncore_jobs`` row:

* a coupon's row is inserted in the transaction that issues it;
* a marketing sync's row commits (a batch's rows together) only after the storefront accepted
  the calls; a crash in between repeats them, each with a fixed Idempotency-Key, so the
  storefront can tell;
* an e-mail has no such key that mail servers honour, so its row is claimed and committed
  first (``claimed``, with the message id of the task that claimed it), marked ``sending``
  (committed) once the server accepted sender and recipient, and ``sent`` once it accepted the
  message (committed with the next e-mail's ``sending``: one transaction per e-mail).
  Anything that fails before ``sending`` certainly delivered nothing: the claim is given back
  and the job retried. A row left ``sending`` (the worker died, or the connection
  broke while the server was taking the message) may or may not have gone out: it becomes
  ``uncertain``, is never re-sent by itself, and waits for a person (``orderfleet noncore``),
  who can look in the mail server's log. A redelivered task reclaims its own claims at once;
  a claim whose task vanished is free again after the longest a task may run.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import smtplib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from email.header import Header
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import formataddr, parseaddr
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import DBAPIError
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from config.settings import Settings
from domain.clock import utcnow
from domain.db import (
    UnitOfWork,
    any_of,
    database_unavailable,
    get_engine,
    insert_ignoring_conflicts,
    unit_of_work,
)
from domain.http import RetryingClient
from domain.models import Coupon, NoncoreJob, OrderRow, noncore_jobs_table

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


# The states of an e-mail's row before it settles (see the module docstring).
CLAIMED, SENDING, UNCERTAIN = "claimed", "sending", "uncertain"
# What a run reports for an e-mail whose claim was given back before it was handed over.
RELEASED = "released"


@dataclass
class JobOutcome:
    done: list[int] = field(default_factory=list)
    already: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)  # refused for good (a 5xx answer)
    uncertain: list[int] = field(default_factory=list)


class MailDeferred(Exception):
    """The mail server cannot take the message now (a 4xx answer, or it went away before it
    had the message): nothing was delivered, and a later attempt may succeed."""


class _Mailer:
    """One SMTP connection for a batch, opened on first use; a message goes in two steps so
    the caller knows whether the server can have it (``envelope``) or may have it (``data``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None

    def envelope(self, msg: Mail) -> None:
        """Sender and recipient: nothing is delivered yet, whatever happens here."""
        s = self.settings
        if self._smtp is None:
            self._smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s)
            if s.smtp_starttls:
                self._smtp.starttls()
            if s.smtp_username and s.smtp_password:
                self._smtp.login(s.smtp_username, s.smtp_password.get_secret_value())
        self._smtp.ehlo_or_helo_if_needed()
        for code, reply in (self._smtp.mail(msg.sender), self._smtp.rcpt(msg.recipient)):
            if code not in (250, 251):
                self.close()
                raise smtplib.SMTPResponseException(code, reply)

    def data(self, msg: Mail) -> None:
        """The message itself; a refusal raises SMTPDataError (nothing delivered)."""
        if self._smtp is None:
            raise RuntimeError("data() before envelope()")
        self._smtp.data(msg.data)

    def abandon(self) -> None:
        """Drop the message whose envelope was given (RSET): nothing of it is delivered."""
        if self._smtp is not None:
            try:
                self._smtp.rset()
            except (smtplib.SMTPException, OSError):
                self.close()

    def close(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._smtp.quit()
            self._smtp = None


def run_jobs(settings: Settings, kind: str, order_ids: Sequence[int], *,
             replayed: bool = False, claimer: str | None = None) -> JobOutcome:
    """Do the ``kind`` job for each order not done yet.

    ``claimer`` is the id of the task message asking (a redelivery carries the same id and
    takes over what an earlier delivery claimed); a direct call gets an id of its own.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown non-core job {kind!r}")
    ids = sorted(set(order_ids))
    if kind in _EMAIL_TEXT:
        return _run_emails(settings, kind, ids, replayed, claimer or f"run-{uuid.uuid4()}")
    if kind in _COUPON_REASON:
        return _run_coupons(settings, kind, ids, replayed)
    return _run_marketing(settings, ids, replayed)


def _claim(uow: UnitOfWork, kind: str, ids: list[int], replayed: bool, outcome: str,
           claimer: str | None = None) -> list[int]:
    """Insert the job rows of ``ids`` that do not exist yet; the ids whose row this inserted."""
    rows = insert_ignoring_conflicts(
        uow.session, NoncoreJob,
        [{"order_id": i, "kind": kind, "done_at": utcnow(), "outcome": outcome,
          "replayed": replayed, "claimed_by": claimer} for i in ids],
        ["order_id", "kind"], returning=[NoncoreJob.order_id])
    return sorted(r.order_id for r in rows)


def _set_outcomes(uow: UnitOfWork, kind: str, outcomes: dict[int, str]) -> None:
    by_outcome: dict[str, list[int]] = {}
    for order_id, outcome in outcomes.items():
        by_outcome.setdefault(outcome, []).append(order_id)
    for outcome, ids in by_outcome.items():
        uow.session.execute(update(NoncoreJob).where(
            NoncoreJob.kind == kind, any_of(uow.session, NoncoreJob.order_id, ids))
            .values(outcome=outcome, done_at=utcnow()))


def _run_coupons(settings: Settings, kind: str, ids: list[int], replayed: bool) -> JobOutcome:
    """Every order's coupon and its job row in one transaction."""
    out = JobOutcome()
    with unit_of_work(settings) as uow:
        claimed = _claim(uow, kind, ids, replayed, "pending")
        orders = {o.id: o for o in uow.session.scalars(
            select(OrderRow).where(any_of(uow.session, OrderRow.id, claimed)))} if claimed else {}
        amount = (settings.compensation_coupon_amount if kind == "delay_compensation"
                  else settings.coupon_amount)
        insert_ignoring_conflicts(uow.session, Coupon, [{
            "order_id": o.id, "reason": _COUPON_REASON[kind],
            "code": secrets.token_hex(6).upper(), "amount": amount, "currency": o.currency,
            "issued_at": utcnow()} for o in orders.values()], ["order_id", "reason"])
        outcomes = {i: "issued" if i in orders else "skipped:no_order" for i in claimed}
        _set_outcomes(uow, kind, outcomes)
    _tally(out, ids, outcomes)
    return out


def _run_marketing(settings: Settings, ids: list[int], replayed: bool) -> JobOutcome:
    """One transaction for the batch, committed after the storefront accepted every call (a
    crash before the commit repeats calls the Idempotency-Key lets the storefront ignore)."""
    out = JobOutcome()
    http = RetryingClient(settings.marketing_url, name="marketing",
                          timeout_s=settings.marketing_timeout_s, retry_max_s=10.0)
    outcomes: dict[int, str] = {}
    try:
        with unit_of_work(settings) as uow:
            # Rows claimed here stay locked until the commit: a duplicate delivery waits.
            claimed = _claim(uow, "marketing_sync", ids, replayed, "pending")
            orders = {o.id: o for o in uow.session.scalars(select(OrderRow).where(
                any_of(uow.session, OrderRow.id, claimed)))} if claimed else {}
            for order_id in claimed:
                order = orders.get(order_id)
                outcomes[order_id] = ("skipped:no_order" if order is None
                                      else _marketing(order, http))
            _set_outcomes(uow, "marketing_sync", outcomes)
    finally:
        http.close()
    _tally(out, ids, outcomes)
    return out


def _tally(out: JobOutcome, ids: list[int], outcomes: dict[int, str]) -> None:
    for order_id in ids:
        outcome = outcomes.get(order_id)
        if outcome is None or outcome == RELEASED:
            out.already.append(order_id)
        elif outcome.startswith("skipped"):
            out.skipped[order_id] = outcome
        elif outcome.startswith("failed"):
            out.failed[order_id] = outcome
        elif outcome == UNCERTAIN:
            out.uncertain.append(order_id)
        else:
            out.done.append(order_id)


def _run_emails(settings: Settings, kind: str, ids: list[int], replayed: bool,
                claimer: str) -> JobOutcome:
    out = JobOutcome()
    outcomes: dict[int, str] = {}
    with unit_of_work(settings) as uow:
        claimed, orders, lost = _claim_emails(uow, kind, ids, replayed, claimer)
        for order_id in claimed:
            order = orders.get(order_id)
            if order is None:
                outcomes[order_id] = "skipped:no_order"
            elif "@" not in _recipient(order):
                outcomes[order_id] = "skipped:no_email"
        _set_outcomes(uow, kind, outcomes)
    outcomes.update(dict.fromkeys(lost, UNCERTAIN))
    mailer = _Mailer(settings)
    marks = _Marks(settings, kind, claimer)
    try:
        for order_id in claimed:
            if order_id not in outcomes:
                outcomes[order_id] = _send(settings, kind, orders[order_id], mailer, marks)
        marks.flush()
    except BaseException:
        with contextlib.suppress(DBAPIError):
            marks.flush()
        # What was not handed over is given back, so any later attempt may claim it.
        with contextlib.suppress(DBAPIError), unit_of_work(settings) as uow:
            uow.session.execute(delete(NoncoreJob).where(
                NoncoreJob.kind == kind, NoncoreJob.order_id.in_(claimed),
                NoncoreJob.claimed_by == claimer, NoncoreJob.outcome == CLAIMED))
        raise
    finally:
        mailer.close()
    _tally(out, ids, outcomes)
    return out


def _claim_emails(uow: UnitOfWork, kind: str, ids: list[int], replayed: bool, claimer: str
                  ) -> tuple[list[int], dict[int, OrderRow], list[int]]:
    """Claim the orders' e-mails (committed with the unit of work); what an earlier delivery of
    the same message (or a vanished one) left half done is taken over or marked uncertain."""
    session = uow.session
    fresh = _claim(uow, kind, ids, replayed, CLAIMED, claimer)
    stale = utcnow() - timedelta(seconds=uow.settings.task_time_limit_s + 60)
    earlier = (NoncoreJob.kind == kind, any_of(session, NoncoreJob.order_id, ids),
               or_(NoncoreJob.claimed_by == claimer, NoncoreJob.done_at < stale))
    taken = session.scalars(update(NoncoreJob).where(*earlier, NoncoreJob.outcome == CLAIMED)
                            .values(claimed_by=claimer, done_at=utcnow())
                            .returning(NoncoreJob.order_id)).all()
    lost = session.scalars(update(NoncoreJob).where(*earlier, NoncoreJob.outcome == SENDING)
                           .values(outcome=UNCERTAIN, done_at=utcnow())
                           .returning(NoncoreJob.order_id)).all()
    if lost:
        log.warning("%s: %d e-mail(s) were being handed to the mail server when their worker "
                    "stopped; marked uncertain, not re-sent (orderfleet noncore list)",
                    kind, len(lost))
    claimed = sorted({*fresh, *taken})
    orders = {o.id: o for o in session.scalars(
        select(OrderRow).where(any_of(session, OrderRow.id, claimed)))} if claimed else {}
    return claimed, orders, sorted(lost)


# Rows claimed by a task message (a direct call's claimer is ``run-...``; no broker involved).
_TASK_CLAIMS = (NoncoreJob.claimed_by.is_not(None), ~NoncoreJob.claimed_by.startswith("run-"))


def release_claims_of_lost_broker(uow: UnitOfWork) -> int:
    """Give back every e-mail claim of a task message: the broker lost its messages.

    A worker that loses its broker connection terminates its running late-ack tasks
    (``worker_cancel_long_running_tasks_on_connection_loss``); a broker that restarted empty
    lost their messages, so no redelivery takes those claims over, and the re-drive of lost
    jobs (``domain.pipeline.redrive_noncore``) skips orders that have a job row. A claimed row
    has handed nothing to the mail server (that would be ``sending``): it is deleted, and the
    re-drive sends the e-mail again. A task still running (one that started on the new broker)
    cannot send a released e-mail either: it hands a message over only after moving its own
    claim to ``sending`` (``_Marks.begin_sending``), and drops it when the claim is gone.
    Claims of direct calls (``run-...``, no broker) are kept. Returns how many were released.
    """
    return len(uow.session.scalars(delete(NoncoreJob).where(
        NoncoreJob.outcome == CLAIMED, *_TASK_CLAIMS).returning(NoncoreJob.order_id)).all())


def settle_sending_of_lost_broker(uow: UnitOfWork) -> int:
    """Mark ``uncertain`` every e-mail a task message had moved to ``sending``: the broker
    lost its messages, so no redelivery will find it, and the worker that lost the broker
    terminated its task, maybe before the server had the message, maybe after. Left
    ``sending``, nothing would ever settle it (the re-drive skips orders with a job row); as
    ``uncertain`` it waits for a person and is never re-sent. A task still running (started
    on the new broker) records ``sent`` over it once the server took the message. Direct calls
    (``run-...``) are kept. Returns how many were marked."""
    marked = uow.session.scalars(update(NoncoreJob).where(
        NoncoreJob.outcome == SENDING, *_TASK_CLAIMS)
        .values(outcome=UNCERTAIN, done_at=utcnow())
        .returning(NoncoreJob.order_id)).all()
    if marked:
        log.warning("%d e-mail(s) were being handed to the mail server when the broker was "
                    "lost; marked uncertain, not re-sent (orderfleet noncore list)", len(marked))
    return len(marked)


def _recipient(order: OrderRow) -> str:
    return str((order.payload.get("customer") or {}).get("email") or "").strip()


def _send(settings: Settings, kind: str, order: OrderRow, mailer: _Mailer, marks: _Marks
          ) -> str:
    """Hand one e-mail over; its outcome (committed unless it is ``claimed``, given back)."""
    msg = _message(settings, kind, order)
    try:
        mailer.envelope(msg)
    except smtplib.SMTPResponseException as exc:
        if exc.smtp_code >= 500:
            return marks.set(order.id, f"failed:smtp {exc.smtp_code}")
        raise MailDeferred(f"mail server answered {exc.smtp_code}") from exc
    except smtplib.SMTPServerDisconnected as exc:
        raise MailDeferred("mail server closed the connection") from exc
    if not marks.begin_sending(order.id):
        # The claim was given back meanwhile (a restarted broker's re-drive sends this e-mail
        # afresh): nothing was handed over, so nothing is.
        mailer.abandon()
        return RELEASED
    try:
        mailer.data(msg)
    except smtplib.SMTPDataError as exc:  # refused: the server does not have it
        if exc.smtp_code >= 500:
            return marks.set(order.id, f"failed:smtp {exc.smtp_code}")
        marks.set(order.id, CLAIMED)
        raise MailDeferred(f"mail server answered {exc.smtp_code}") from exc
    except Exception:
        # The server may have taken it before the connection broke: a person decides.
        mailer.close()
        log.warning("%s for order %d: connection lost while the mail server took the message; "
                    "marked uncertain, not re-sent", kind, order.id)
        return marks.set(order.id, UNCERTAIN)
    return marks.taken_by_server(order.id)


class _Marks:
    """Commits e-mails' outcomes, one transaction per e-mail: an e-mail the server took is
    recorded ``sent`` in the transaction that marks the next one ``sending`` (or at the end of
    the batch). Until then it is ``sending``: a crash in between leaves it uncertain, never
    re-sent. A database that is restarting is waited for (a minute at most), so that an
    e-mail the server took is not left looking half sent for a blip."""

    def __init__(self, settings: Settings, kind: str, claimer: str) -> None:
        self.settings, self.kind, self.claimer = settings, kind, claimer
        self._taken: int | None = None

    def taken_by_server(self, order_id: int) -> str:
        self._taken = order_id
        return "sent"

    def set(self, order_id: int, outcome: str) -> str:
        self._commit({order_id: outcome})
        return outcome

    def begin_sending(self, order_id: int) -> bool:
        """``claimed`` -> ``sending`` (committed) if the row is still this claimer's claim;
        False when it was given back (``release_claims_of_lost_broker``). The message goes to
        the server only after this returns True, so a claim given back is never sent twice."""
        return order_id in self._commit({}, begin_sending=order_id)

    def flush(self) -> None:
        self._commit({})

    def _commit(self, outcomes: dict[int, str], begin_sending: int | None = None
                ) -> list[int]:
        """Commit ``outcomes`` (and the e-mail the server took before), and, given
        ``begin_sending``, move that order's row from ``claimed`` to ``sending``; returns the
        orders so moved."""
        if self._taken is not None:
            outcomes = {self._taken: "sent", **outcomes}
        if not outcomes and begin_sending is None:
            return []
        # Core statements on a pooled connection: one transaction per e-mail, and an ORM
        # session with its bulk-update bookkeeping cost more than the SMTP exchange.
        jobs = noncore_jobs_table.c
        mine = (jobs.kind == self.kind, jobs.claimed_by == self.claimer)
        moved: list[int] = []
        for attempt in Retrying(retry=retry_if_exception(database_unavailable),
                                stop=stop_after_delay(60),
                                wait=wait_exponential(multiplier=0.2, max=5), reraise=True):
            with attempt, get_engine(self.settings).begin() as conn:
                for order_id, outcome in outcomes.items():
                    conn.execute(update(noncore_jobs_table).where(*mine, jobs.order_id == order_id)
                                 .values(outcome=outcome, done_at=utcnow()))
                if begin_sending is not None:
                    moved = list(conn.execute(update(noncore_jobs_table).where(
                        *mine, jobs.order_id == begin_sending, jobs.outcome == CLAIMED)
                        .values(outcome=SENDING, done_at=utcnow())
                        .returning(jobs.order_id)).scalars())
        self._taken = None
        return moved


@dataclass(frozen=True)
class Mail:
    """One e-mail as it goes to the server: the envelope and the message's bytes."""

    sender: str
    recipient: str
    data: bytes


# The message as SMTP wants it (CRLF lines). Built with the compat32 classes: the default
# policy's EmailMessage parsed every header it was given (0.43 ms an e-mail, as much CPU as a
# whole stage spends on an order); these only fold and encode, so what goes into a header is
# made safe here (``_header``).
_SMTP_LINES = compat32.clone(linesep="\r\n")


def _one_line(value: str) -> str:
    # A CR or LF in an order's field would start a header of its own.
    return " ".join(value.replace("\r", "\n").split("\n"))


def _header(value: str) -> str:
    """A text header on one line; outside ASCII, RFC 2047 encoded words (unfolded: these
    headers are short)."""
    line = _one_line(value)
    return line if line.isascii() else Header(line, "utf-8").encode(maxlinelen=0)


def _address(value: str) -> str:
    """An address header (``Name <addr>`` or ``addr``) on one line, only its display name
    encoded where it leaves ASCII: an encoded word over the whole value would hide the
    address from mail clients."""
    name, addr = parseaddr(_one_line(value))
    return formataddr((name, addr), charset="utf-8") if addr else _header(value)


def _message(settings: Settings, kind: str, order: OrderRow) -> Mail:
    subject, body = _EMAIL_TEXT[kind]
    recipient = _recipient(order)
    msg = MIMEText(body.format(order=order.source_order_id, store=order.store), "plain",
                   "utf-8")
    msg["From"] = _address(settings.smtp_from)
    msg["To"] = _address(recipient)
    msg["Subject"] = _header(subject.format(order=order.source_order_id))
    msg["Message-ID"] = message_id(order.id, kind)
    msg["X-Orderfleet-Job"] = f"{order.id}:{kind}"
    return Mail(settings.smtp_from, recipient, msg.as_bytes(policy=_SMTP_LINES))


def _marketing(order: OrderRow, http: RetryingClient) -> str:
    customer: dict[str, Any] = order.payload.get("customer") or {}
    email = (customer.get("email") or "").strip()
    if "@" not in email:
        return "skipped:no_email"
    http.request("POST", f"/marketing/{order.store}/members",
                 json={"customer_id": customer.get("id"), "email": email,
                       "order_id": order.source_order_id, "tags": customer.get("tags", [])},
                 headers={"Idempotency-Key": f"{order.id}:marketing_sync"})
    return "synced"


def open_jobs(uow: UnitOfWork, outcome: str | None = None) -> Iterator[NoncoreJob]:
    """Jobs not settled yet (claimed, sending, uncertain), oldest first."""
    stmt = select(NoncoreJob).where(NoncoreJob.outcome.in_(
        [outcome] if outcome else [CLAIMED, SENDING, UNCERTAIN]))
    yield from uow.session.scalars(stmt.order_by(NoncoreJob.done_at))


def release_uncertain(uow: UnitOfWork, kind: str, order_ids: Sequence[int]) -> list[int]:
    """A person decided these uncertain e-mails did not go out: their rows go, so the next
    run of the job sends them (the caller enqueues it after the commit)."""
    return sorted(uow.session.scalars(delete(NoncoreJob).where(
        NoncoreJob.kind == kind, NoncoreJob.order_id.in_(list(order_ids)),
        NoncoreJob.outcome == UNCERTAIN).returning(NoncoreJob.order_id)).all())


def settle_uncertain(uow: UnitOfWork, kind: str, order_ids: Sequence[int]) -> list[int]:
    """A person found these uncertain e-mails in the mail server's log: they count as sent."""
    return sorted(uow.session.scalars(update(NoncoreJob).where(
        NoncoreJob.kind == kind, NoncoreJob.order_id.in_(list(order_ids)),
        NoncoreJob.outcome == UNCERTAIN).values(outcome="sent", done_at=utcnow())
        .returning(NoncoreJob.order_id)).all())
