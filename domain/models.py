"""SQLAlchemy 2 tables. The database is the source of truth for every order's stage.

Idempotency lives in unique keys written in the same transaction as the state change:
an order per (source, store, source order id), a reservation per order line, a shipment and
its carrier idempotency key per order, a tracking event per (shipment, carrier event id).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite so autoincrement works there.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on PostgreSQL and SQLite alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use domain.clock.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ReservationStatus(StrEnum):
    ACTIVE = "active"  # units held for the order
    CONSUMED = "consumed"  # the label was bought: the units left the shelf
    RELEASED = "released"  # given back (cancelled, expired)
    RESTOCKED = "restocked"  # consumed units back on the shelf (voided label, return)


# Reservations that hold units (live): at most one per order line.
LIVE_RESERVATIONS = (ReservationStatus.ACTIVE, ReservationStatus.CONSUMED)


class WaveStatus(StrEnum):
    OPEN = "open"  # taking orders
    CLOSED = "closed"  # full or old enough: its labels are being bought
    LABELLED = "labelled"  # none of its orders waits for a label


class ShipmentStatus(StrEnum):
    PENDING = "pending"  # created before the purchase call; the label may or may not exist
    LABELLED = "labelled"
    IN_TRANSIT = "in_transit"
    DELIVERED = "delivered"
    VOID_PENDING = "void_pending"  # the order was cancelled: the label must be voided
    VOIDED = "voided"
    VOID_FAILED = "void_failed"  # the carrier refused the void: a person stops the parcel
    NO_LABEL = "cancelled"  # cancelled, and no label was ever bought
    RETURNED = "returned"


# Shipments whose parcel the carrier still moves: tracked and watched for silence.
OPEN_SHIPMENTS = (ShipmentStatus.LABELLED, ShipmentStatus.IN_TRANSIT)


class NotificationStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # claimed by a worker under a lease
    SENT = "sent"
    FAILED = "failed"  # the store refused it: an alert says so
    SKIPPED = "skipped"  # the store has no push-back channel (visible, never dropped silently)


class Base(DeclarativeBase):
    pass


class OrderRow(Base):
    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("source", "store", "source_order_id", name="uq_orders_source_id"),
        Index("ix_orders_state_updated", "state", "updated_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(32))
    store: Mapped[str] = mapped_column(String(255))
    source_order_id: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(32))
    paid_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Indexed: the measured order rate (wave sizes) counts recent arrivals.
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    currency: Mapped[str] = mapped_column(String(3))
    total: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    total_usd: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    customer_id: Mapped[str] = mapped_column(String(255))
    ship_country: Mapped[str] = mapped_column(String(2))
    weight_g: Mapped[int] = mapped_column(Integer)
    lane: Mapped[str | None] = mapped_column(String(32))
    warehouse: Mapped[str | None] = mapped_column(String(64))
    carrier: Mapped[str | None] = mapped_column(String(64))
    wave_id: Mapped[int | None] = mapped_column(ForeignKey("waves.id"), index=True)
    fraud_score: Mapped[int | None] = mapped_column(Integer)
    fraud_reasons: Mapped[list[str] | None] = mapped_column(Json)
    hold_reason: Mapped[str | None] = mapped_column(Text)
    # The validated order (addresses, payment, client details) as JSON: stages read it;
    # personal data stays in the database, never in task arguments or info logs.
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    # When the store last changed the order (X-Shopify-Triggered-At, WooCommerce
    # date_modified): a delivery older than this is stale and must not roll the order back.
    source_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # VIP or express (domain.fastlane): its stage messages go to the stages' fast-lane queues.
    fast_lane: Mapped[bool] = mapped_column(Boolean, server_default=text("false"), default=False)
    # A part of a split order (one per warehouse): its parent, in state split, and its number.
    # The parent's platform order is the one the store knows; a part reports to it.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True)
    part_no: Mapped[int | None] = mapped_column(Integer)


class OrderLine(Base):
    __tablename__ = "order_lines"
    __table_args__ = (
        UniqueConstraint("order_id", "line_no", name="uq_order_lines_no"),
        CheckConstraint("quantity > 0", name="ck_order_lines_quantity"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    line_no: Mapped[int] = mapped_column(Integer)
    sku: Mapped[str] = mapped_column(String(128), index=True)
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    weight_g: Mapped[int] = mapped_column(Integer)


# An order's first event (its arrival at intake; a split order's parts are not arrivals) and
# its labels: the surge tick and the wave planner count these over a recent window. Partial
# indexes on the append-only log hold one live entry per counted event, where a count over
# orders.received_at walks every row version the stages left behind.
ARRIVAL_EVENT = "stage = 'intake' AND from_state IS NULL"
LABEL_EVENT = "to_state = 'labelled'"


class OrderEvent(Base):
    """Append-only log of every state transition."""

    __tablename__ = "order_events"
    __table_args__ = (
        Index("ix_order_events_arrivals", "at", postgresql_where=text(ARRIVAL_EVENT),
              sqlite_where=text(ARRIVAL_EVENT)),
        Index("ix_order_events_labelled", "at", postgresql_where=text(LABEL_EVENT),
              sqlite_where=text(LABEL_EVENT)),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    stage: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any] | None] = mapped_column(Json)


class RejectedOrder(Base):
    """A payload that could not become an order, kept whole for ops (an intake exception)."""

    __tablename__ = "rejected_orders"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    source: Mapped[str] = mapped_column(String(32))
    store: Mapped[str | None] = mapped_column(String(255))
    source_order_id: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    errors: Mapped[list[dict[str, str]]] = mapped_column(Json)
    raw: Mapped[str] = mapped_column(Text)
    # The exceptions desk: open until a person replays (corrected) or drops it.
    status: Mapped[str] = mapped_column(String(16), server_default=text("'open'"), index=True)
    topic: Mapped[str | None] = mapped_column(String(64))
    http_status: Mapped[int | None] = mapped_column(Integer)  # what the sender was answered
    corrections: Mapped[dict[str, Any] | None] = mapped_column(Json)
    order_id: Mapped[int | None] = mapped_column(BigId)  # the order a replay created
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(255))
    resolution: Mapped[str | None] = mapped_column(Text)


class Warehouse(Base):
    __tablename__ = "warehouses"

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    country: Mapped[str] = mapped_column(String(2))


class Stock(Base):
    """Units per SKU per warehouse. The CHECK makes overselling impossible at the database."""

    __tablename__ = "stock"
    __table_args__ = (
        CheckConstraint("reserved >= 0", name="ck_stock_reserved_nonneg"),
        CheckConstraint("on_hand >= reserved", name="ck_stock_not_oversold"),
    )

    sku: Mapped[str] = mapped_column(String(128), primary_key=True)
    warehouse: Mapped[str] = mapped_column(ForeignKey("warehouses.code"), primary_key=True)
    on_hand: Mapped[int] = mapped_column(Integer)
    reserved: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Where the SKU sits in the warehouse (aisle-rack-shelf): pick lists walk bins in order.
    bin: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Reservation(Base):
    __tablename__ = "reservations"
    __table_args__ = (
        Index("ix_reservations_status_expires", "status", "expires_at"),
        # One live reservation per order line: a redelivered reserve task cannot reserve twice.
        # Released and restocked ones stay as history, so the order can be reserved again.
        Index(
            "uq_reservations_live_line",
            "order_line_id",
            unique=True,
            postgresql_where=text("status IN ('active', 'consumed')"),
            sqlite_where=text("status IN ('active', 'consumed')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_line_id: Mapped[int] = mapped_column(ForeignKey("order_lines.id", ondelete="CASCADE"))
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    sku: Mapped[str] = mapped_column(String(128))
    warehouse: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # ReservationStatus
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    close_reason: Mapped[str | None] = mapped_column(String(64))


class SkuHealth(Base):
    """Per SKU: the outcomes of its last reservation attempts, and whether it is frozen.

    ``recent`` holds one character per attempt, oldest first ('1' failed, '0' reserved), cut
    to the configured window; a frozen SKU's new orders are held for a person.
    """

    __tablename__ = "sku_health"

    sku: Mapped[str] = mapped_column(String(128), primary_key=True)
    recent: Mapped[str] = mapped_column(Text, server_default=text("''"))
    attempts: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    failures: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    frozen: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    frozen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    frozen_reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SkuHold(Base):
    """An order held because one of its SKUs is frozen; unfreezing the SKU resumes it."""

    __tablename__ = "sku_holds"

    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"),
                                          primary_key=True)
    sku: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)
    held_at: Mapped[datetime] = mapped_column(UTCDateTime)


# Waves taking orders (uq_waves_one_open indexes them: the due sweep reads only those), and
# waves whose labels are being bought (label routing sums their sizes per lane).
OPEN_WAVE = "status = 'open'"
CLOSED_WAVE = "status = 'closed'"


class Wave(Base):
    """A pick wave: orders of one warehouse, carrier service, destination zone and lane,
    picked and labelled together."""

    __tablename__ = "waves"
    __table_args__ = (
        Index("ix_waves_closed_lane", "lane", postgresql_where=text(CLOSED_WAVE),
              sqlite_where=text(CLOSED_WAVE)),
        # At most one open wave per (warehouse, carrier, service, zone, lane): concurrent
        # sharding tasks cannot each open their own.
        Index(
            "uq_waves_one_open",
            "warehouse",
            "carrier",
            "service",
            "zone",
            "lane",
            unique=True,
            postgresql_where=text(OPEN_WAVE),
            sqlite_where=text(OPEN_WAVE),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    warehouse: Mapped[str] = mapped_column(String(64))
    carrier: Mapped[str] = mapped_column(String(64))
    lane: Mapped[str] = mapped_column(String(32))
    service: Mapped[str] = mapped_column(String(64), server_default=text("''"))
    zone: Mapped[str] = mapped_column(String(16), server_default=text("''"))
    status: Mapped[str] = mapped_column(String(16))  # WaveStatus
    size: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # The size it closes at, derived from the daily wave target when it opened.
    target_size: Mapped[int | None] = mapped_column(Integer)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # When it closes if not full: its age limit from the daily target, brought forward to the
    # earliest promised dispatch of its orders (tasks.sharding). NULL: opened_at + max age.
    close_by: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    close_reason: Mapped[str | None] = mapped_column(String(16))
    # Label purchase attempts of the wave, and when the deferred next one is due: a message
    # arriving before then is a duplicate (the scheduled retry is on its way) and is dropped.
    label_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_label_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    label_error: Mapped[str | None] = mapped_column(Text)


class Shipment(Base):
    __tablename__ = "shipments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), unique=True)
    wave_id: Mapped[int | None] = mapped_column(ForeignKey("waves.id"), index=True)
    carrier: Mapped[str] = mapped_column(String(64))
    service: Mapped[str] = mapped_column(String(64))
    # Sent to the carrier with every label request: a retried purchase returns the same label.
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    label_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    tracking_number: Mapped[str | None] = mapped_column(String(128), unique=True)
    rate: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    rate_currency: Mapped[str | None] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(32), index=True)  # ShipmentStatus
    tracking_status: Mapped[str | None] = mapped_column(String(32))
    label_bought_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Purchase calls sent for this shipment: after one whose outcome is unknown (a timeout),
    # the label is looked up by its key before it is bought again.
    label_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Rate shopping: the promise the service was chosen for, and the carrier's estimate.
    promise_days: Mapped[int | None] = mapped_column(Integer)
    est_delivery_days: Mapped[int | None] = mapped_column(Integer)
    # Set when a person must look at the parcel (tracking silent 24 h, a carrier exception).
    flagged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    flag_reason: Mapped[str | None] = mapped_column(Text)
    # Which routing strategy chose the service (A/B arm) and the destination zone: the
    # recorded outcomes the learned strategy trains on and the routing report compares.
    routing_arm: Mapped[str | None] = mapped_column(String(16))
    zone: Mapped[str | None] = mapped_column(String(16))


class TrackingEvent(Base):
    __tablename__ = "tracking_events"
    __table_args__ = (
        UniqueConstraint("shipment_id", "carrier_event_id", name="uq_tracking_event"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    shipment_id: Mapped[int] = mapped_column(ForeignKey("shipments.id", ondelete="CASCADE"))
    carrier_event_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    location: Mapped[str | None] = mapped_column(String(255))
    message: Mapped[str | None] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Alert(Base):
    """Something a person must look at. Raised idempotently: one open alert per (kind, key)."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index(
            "uq_alerts_open",
            "kind",
            "key",
            unique=True,
            postgresql_where=text("resolved_at IS NULL"),
            sqlite_where=text("resolved_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))  # e.g. review_overdue, sku_frozen
    key: Mapped[str] = mapped_column(String(255))  # what it is about: an order id, a SKU
    severity: Mapped[str] = mapped_column(String(16))  # info | warning | critical
    message: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(Json)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """Every webhook accepted at the HTTP front door, once per store event id.

    The unique (source, store, event_id) key is written in the same transaction as the order
    change, so a redelivered webhook finds its row and does nothing.
    """

    __tablename__ = "webhook_inbox"
    __table_args__ = (
        UniqueConstraint("source", "store", "event_id", name="uq_webhook_inbox_event"),
        Index("ix_webhook_inbox_source_order", "source", "store", "source_order_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(32))  # shopify | woocommerce | native
    store: Mapped[str] = mapped_column(String(255))
    event_id: Mapped[str] = mapped_column(String(255))  # X-Shopify-Event-Id, Idempotency-Key...
    topic: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    triggered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    source_order_id: Mapped[str | None] = mapped_column(String(255))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id", ondelete="SET NULL"))
    # created | duplicate_order | cancelled | updated | stale | ignored | awaiting_order
    outcome: Mapped[str] = mapped_column(String(32))
    body_sha256: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(Json)


class StoreNotification(Base):
    """One message to the store about an order (label bought, a tracking status reached).

    Unique per (order, event), so a re-run stage cannot queue the same news twice.
    """

    __tablename__ = "store_notifications"
    __table_args__ = (
        UniqueConstraint("order_id", "event", name="uq_store_notifications_event"),
        Index("ix_store_notifications_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(64))  # label_bought | tracking:<status> | cancelled
    channel: Mapped[str] = mapped_column(String(32))  # shopify | webhook | none
    status: Mapped[str] = mapped_column(String(16))  # NotificationStatus
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    # The store's id for what we created (a Shopify fulfillment id), reused by later events.
    remote_id: Mapped[str | None] = mapped_column(String(128))
    # What was sent (tracking number, company, URL, status): no personal data.
    payload: Mapped[dict[str, Any] | None] = mapped_column(Json)


class ReviewDecision(Base):
    """A person's decision on an order held for review: who, when and why. Append-only."""

    __tablename__ = "review_decisions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    decision: Mapped[str] = mapped_column(String(16))  # approve | cancel
    decided_by: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # What the reviewer saw: the hold reason and score at the time, and how long it waited.
    hold_reason: Mapped[str | None] = mapped_column(Text)
    fraud_score: Mapped[int | None] = mapped_column(Integer)
    waited_s: Mapped[int] = mapped_column(Integer)


class CustomerProfile(Base):
    """A customer's accepted orders as the fraud stage has seen them (per store)."""

    __tablename__ = "fraud_customer_profiles"

    store: Mapped[str] = mapped_column(String(255), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    orders: Mapped[int] = mapped_column(Integer)
    total_usd: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    max_usd: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    first_order_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_order_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CustomerKey(Base):
    """A shipping address or card a customer's accepted orders used, by a hash (no raw data)."""

    __tablename__ = "fraud_customer_keys"

    store: Mapped[str] = mapped_column(String(255), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # address | card
    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    first_used_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RejectedTrackingPush(Base):
    """A carrier's tracking push that could not be used, kept whole for ops."""

    __tablename__ = "rejected_tracking_pushes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    reason: Mapped[str] = mapped_column(Text)
    errors: Mapped[list[dict[str, str]]] = mapped_column(Json)
    raw: Mapped[str] = mapped_column(Text)


# Outcomes of a non-core job that are not settled yet (see NoncoreJob).
NONCORE_OPEN_SQL = "outcome IN ('claimed', 'sending', 'uncertain')"


class NoncoreJob(Base):
    """A non-core job done for an order: one row per (order, kind), so it happens once.

    A coupon's row is written in the transaction of its side effect. An e-mail's row is claimed
    and committed before SMTP sees it (``claimed``), marked ``sending`` just before the message
    is handed over and ``sent`` once the server accepted it; one left ``sending`` by a dead
    worker is ``uncertain`` and waits for a person, never re-sent by itself."""

    __tablename__ = "noncore_jobs"
    __table_args__ = (Index("ix_noncore_jobs_open", "kind", "outcome",
                            postgresql_where=text(NONCORE_OPEN_SQL),
                            sqlite_where=text(NONCORE_OPEN_SQL)),)

    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"),
                                          primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    done_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # sent | issued | synced | skipped:... | failed:... | claimed | sending | uncertain
    outcome: Mapped[str] = mapped_column(String(32))
    replayed: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    claimed_by: Mapped[str | None] = mapped_column(String(64))  # the task (message) id


class Coupon(Base):
    """The coupon ledger: one coupon per (order, reason), its code unique."""

    __tablename__ = "coupons"
    __table_args__ = (UniqueConstraint("order_id", "reason", name="uq_coupons_order_reason"),
                      UniqueConstraint("code", name="uq_coupons_code"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    reason: Mapped[str] = mapped_column(String(32))  # loyalty | delay_compensation
    code: Mapped[str] = mapped_column(String(32))
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    currency: Mapped[str] = mapped_column(String(3))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReturnStatus(StrEnum):
    REQUESTED = "requested"  # the customer asked; a return label is to be issued
    LABEL_ISSUED = "label_issued"  # the customer has a prepaid label
    RECEIVED = "received"  # the parcel is back at the warehouse, inspected
    RESTOCKED = "restocked"  # resellable: units back on the shelf
    WRITTEN_OFF = "written_off"  # damaged or used: units written off
    # Both end states queue a refund_due notice to the store (store_notifications).


class ReturnRequest(Base):
    """The reverse flow of one order: request -> label -> received -> restock or write-off ->
    refund notice. One per order (unique): a repeated request finds the existing one."""

    __tablename__ = "returns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"),
                                          unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # ReturnStatus
    reason: Mapped[str] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The return label: its idempotency key is unique, so a retried purchase returns it.
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    carrier: Mapped[str | None] = mapped_column(String(64))
    label_id: Mapped[str | None] = mapped_column(String(128))
    tracking_number: Mapped[str | None] = mapped_column(String(128))
    label_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    condition: Mapped[str | None] = mapped_column(String(16))  # resellable | damaged
    refund_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    error: Mapped[str | None] = mapped_column(Text)


class RoutingModel(Base):
    """A learned routing model, trained from recorded outcomes (the latest one is used)."""

    __tablename__ = "routing_models"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    trained_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    rows: Mapped[int] = mapped_column(Integer)
    # scikit-learn estimators serialised with joblib; written and read only by the fleet.
    model: Mapped[bytes] = mapped_column(LargeBinary)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(Json)


def _table_of(entity: type[Base]) -> Table:
    """The entity's Core ``Table`` (declarative typing only promises a ``FromClause``)."""
    table = entity.__table__
    if not isinstance(table, Table):
        raise TypeError(f"{entity.__name__} is not mapped to a Table")
    return table


# Core tables, for statements that skip the ORM: executemany inserts and bulk updates.
orders_table = _table_of(OrderRow)
order_lines_table = _table_of(OrderLine)
order_events_table = _table_of(OrderEvent)
sku_health_table = _table_of(SkuHealth)
sku_holds_table = _table_of(SkuHold)
customer_profiles_table = _table_of(CustomerProfile)
customer_keys_table = _table_of(CustomerKey)
noncore_jobs_table = _table_of(NoncoreJob)


class BrokerEpoch(Base):
    """The epoch key this database last saw in each broker's Redis (``tasks.sweeps``). A Redis
    that lacks its key has lost its data only if the database saw one before; a database
    that never did is new with its broker (a fresh fleet, a test run), and nothing is lost."""

    __tablename__ = "broker_epochs"

    broker: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:port/db
    token: Mapped[str] = mapped_column(String(64))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeadLetterStatus(StrEnum):
    OPEN = "open"  # waiting for a person
    RETRIED = "retried"  # sent again (orderfleet dlq retry)
    DROPPED = "dropped"  # looked at and let go (orderfleet dlq drop)


class DeadLetter(Base):
    """A message no worker could complete: a task that failed for good, or a message that could
    not be decoded. Kept with its error until a person retries or drops it."""

    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_status_created", "status", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # failed (the task raised for good) | undecodable | unknown_task | invalid (refused content)
    reason: Mapped[str] = mapped_column(String(32))
    task: Mapped[str | None] = mapped_column(String(255))
    task_id: Mapped[str | None] = mapped_column(String(64))
    queue: Mapped[str | None] = mapped_column(String(64))
    # The task's JSON arguments (ids), so that a retry sends exactly the same message.
    args: Mapped[list[Any] | None] = mapped_column(Json)
    # The raw body of a message that could not be decoded (cut to 64 kB): never logged.
    raw: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str] = mapped_column(String(255))
    error: Mapped[str] = mapped_column(Text)
    retries: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    status: Mapped[str] = mapped_column(String(16))  # DeadLetterStatus
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_by: Mapped[str | None] = mapped_column(String(255))


class DeadLetterOrder(Base):
    """The orders a dead letter was about, so that an order's status shows why it stopped."""

    __tablename__ = "dead_letter_orders"

    dead_letter_id: Mapped[int] = mapped_column(
        ForeignKey("dead_letters.id", ondelete="CASCADE"), primary_key=True)
    order_id: Mapped[int] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE"), primary_key=True, index=True)
