"""Typed settings (pydantic-settings), read from ``ORDERFLEET_*`` environment variables.

Validated once at start: a malformed URL or threshold stops the process with a clear error.
There is no silent fallback (in particular never to Celery's eager mode).
"""

from __future__ import annotations

import re
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_VAR_DIR = Path.cwd() / "var"
# Store and shop names appear in URL paths and log lines: keep them plain.
_STORE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

# Indicative rates to USD, used only to compare an order's value with the review threshold.
# Stores set their own with ORDERFLEET_FX_RATES_TO_USD='{"EUR": "1.08", ...}'.
DEFAULT_FX_RATES_TO_USD: dict[str, Decimal] = {
    "USD": Decimal("1"),
    "EUR": Decimal("1.08"),
    "GBP": Decimal("1.27"),
    "CAD": Decimal("0.73"),
    "AUD": Decimal("0.66"),
    "NZD": Decimal("0.60"),
    "JPY": Decimal("0.0067"),
    "CHF": Decimal("1.13"),
    "SEK": Decimal("0.095"),
    "DKK": Decimal("0.145"),
    "NOK": Decimal("0.093"),
    "PLN": Decimal("0.25"),
    "MXN": Decimal("0.058"),
    "BRL": Decimal("0.19"),
    "SGD": Decimal("0.74"),
    "HKD": Decimal("0.128"),
    "CNY": Decimal("0.138"),
    "KRW": Decimal("0.00073"),
    "INR": Decimal("0.012"),
    "AED": Decimal("0.27"),
}


class LaneRules(BaseModel):
    """How a store's orders are put in lanes, and each lane's dispatch promise (hours)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Lanes this store uses; an order whose lane is off goes to standard.
    lanes: tuple[str, ...] = ("standard", "express", "custom", "vip", "returns")
    # Custom-made: a line whose SKU starts with one of these prefixes or is flagged in
    # custom_skus, or has a property whose name contains one of these words, or an order tag.
    custom_skus: tuple[str, ...] = ()
    custom_sku_prefixes: tuple[str, ...] = ()
    custom_property_words: tuple[str, ...] = (
        "engraving", "monogram", "custom", "personalis", "personaliz")
    custom_tags: tuple[str, ...] = ("custom", "made-to-order")
    vip_tags: tuple[str, ...] = ("vip",)
    # Express: an order tag, or a shipping method containing one of these words.
    express_tags: tuple[str, ...] = ("express",)
    express_method_words: tuple[str, ...] = (
        "express", "next day", "next-day", "overnight", "priority", "2-day", "two-day")
    # Dispatch promise per lane, in hours; express is the lane promised within 48 h.
    promise_hours: dict[str, int] = Field(default_factory=lambda: {
        "standard": 72, "express": 48, "custom": 240, "vip": 48, "returns": 168})

    @model_validator(mode="after")
    def _express_fast(self) -> LaneRules:
        if "standard" not in self.lanes:
            raise ValueError("every store keeps the standard lane")
        if self.promise_hours.get("express", 48) > 48:
            raise ValueError("the express lane promises dispatch within 48 hours")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERFLEET_", extra="forbid")

    # --- services -------------------------------------------------------------------------
    broker_url: str = "redis://127.0.0.1:6379/0"
    # SQLite file is the embedded default for a laptop demo; PostgreSQL in production and CI.
    database_url: str = f"sqlite:///{DEFAULT_VAR_DIR / 'orderfleet.db'}"
    carrier_url: str = "http://127.0.0.1:8765"
    carrier_timeout_s: float = Field(10.0, gt=0)
    # Bounded retry budget for a carrier call before the task gives up and Celery retries later.
    carrier_retry_max_s: float = Field(30.0, gt=0)

    # --- throughput -----------------------------------------------------------------------
    # Orders carried by one stage message at most (a message is whatever one intake call or
    # one stage run produced, so at a low rate batches are small anyway). Each batch pays a
    # message, a transaction, its locks and a few set-wise statements: measured on the whole
    # fleet (orderfleet bench), 250 took 20-30% less CPU per order than 100, and 500 no less
    # than 250. A message of 250 ids is ~2.5 KB.
    batch_size: int = Field(250, ge=1, le=1000)
    # A stage message that brought fewer than batch_size orders fills its batch with other
    # orders waiting in the same state (domain.lifecycle.Sweep): under a steady trickle of
    # payments batches grow with the backlog instead of staying as small as one intake call.
    fill_batches: bool = True
    # Orders of the waves one label message carries at most (a wave is never split): waves
    # closed together are bought together, one carrier call and a few statements for all.
    label_batch_orders: int = Field(200, ge=1, le=1000)

    # --- fraud ----------------------------------------------------------------------------
    review_threshold_usd: Decimal = Field(Decimal("500"), gt=0)
    fraud_review_score: int = Field(40, ge=0, le=100)
    fraud_reject_score: int = Field(75, ge=0, le=100)
    # Velocity counters (card, email, IP, address) live in Redis so every worker shares them.
    # Unset means the broker's Redis; an amqp broker then needs this set explicitly.
    fraud_redis_url: str | None = None
    fraud_velocity_namespace: str = Field("orderfleet:fraud", pattern=r"^[A-Za-z0-9:_.-]+$")
    # Carriers that cannot deliver to a PO box (express couriers); the post can.
    fraud_po_box_refused_carriers: list[str] = Field(default_factory=lambda: ["sbx-air"])
    # An order held for review longer than this raises a review_overdue alert.
    review_overdue_s: float = Field(30 * 60, gt=0)
    review_sweep_interval_s: float = Field(60.0, gt=0)
    # Bearer token the review desk's HTTP API requires; unset leaves it open (local use only).
    review_api_token: str | None = Field(None, min_length=16)
    fx_rates_to_usd: dict[str, Decimal] = Field(
        default_factory=lambda: dict(DEFAULT_FX_RATES_TO_USD)
    )

    # --- inventory ------------------------------------------------------------------------
    # A reservation for an order that does not progress is released after this long.
    reservation_ttl_s: int = Field(30 * 60, ge=10)
    # How often beat releases expired reservations, and re-tries backordered orders that the
    # stock on hand can now serve (a safety net: stock imports and releases wake them at once).
    reservation_sweep_interval_s: float = Field(60.0, gt=0)
    backorder_sweep_interval_s: float = Field(300.0, gt=0)
    # Auto-freeze: a SKU whose reservations failed (not enough stock) for more than this
    # fraction of its last ``sku_freeze_window`` attempts is frozen; its new orders are held.
    sku_auto_freeze: bool = True
    sku_freeze_failure_rate: float = Field(0.01, gt=0, lt=1)
    sku_freeze_window: int = Field(200, ge=10, le=10_000)
    # When no single warehouse has every line but each SKU is whole in one of them, split the
    # order into one part per warehouse (off: it is backordered, the plan named in its event).
    split_shipments: bool = True

    # --- sharding (pick waves) ------------------------------------------------------------
    wave_size: int = Field(50, ge=1, le=1000)
    wave_max_age_s: float = Field(60.0, gt=0)

    # --- tracking -------------------------------------------------------------------------
    tracking_sweep_interval_s: float = Field(3600.0, gt=0)
    tracking_batch_size: int = Field(200, ge=1, le=1000)

    # --- carriers ----------------------------------------------------------------------------
    # Which carrier API carrier_url speaks: our sandbox carrier, or an EasyPost-shaped API
    # (https://api.easypost.com with a real account's key).
    carrier_api: Literal["sandbox", "easypost"] = "sandbox"
    carrier_api_key: SecretStr | None = None
    # Signs carrier tracking pushes (EasyPost's X-Hmac-Signature); unset accepts unsigned ones.
    carrier_webhook_secret: SecretStr | None = None
    # Warehouse code -> ship-from address (line1, city, region, postal_code, country, phone...)
    # printed on labels by carriers that need one (EasyPost).
    ship_from_addresses: dict[str, dict[str, str]] = Field(default_factory=dict)
    # Redis for state shared by every worker (circuit breakers, the beat lock). Unset means the
    # broker's Redis; an amqp broker then needs this set explicitly.
    shared_redis_url: str | None = None
    # Per-carrier circuit breaker: opens when failure_rate of at least min_calls attempts in
    # window_s failed; after open_s (doubling per failed probe, up to max_open_s) one worker
    # probes; a probe that has not reported after probe_lease_s is given to another worker.
    breaker_window_s: float = Field(60.0, gt=0)
    breaker_min_calls: int = Field(20, ge=1)
    breaker_failure_rate: float = Field(0.5, gt=0, le=1)
    breaker_open_s: float = Field(30.0, gt=0)
    breaker_max_open_s: float = Field(600.0, gt=0)
    breaker_probe_lease_s: float = Field(60.0, gt=0)
    # A wave whose labels could not be bought this long after it closed gives up: its orders go
    # to label_failed (visible, for a person). Until then label tasks are deferred, not failed.
    label_give_up_s: float = Field(6 * 3600.0, gt=0)
    # Longest pause between two attempts of a wave's label purchase.
    label_retry_max_countdown_s: float = Field(300.0, gt=0)
    # Rate shopping: the delivery promise in days per lane ("standard" covers lanes not
    # listed); the cheapest service whose estimate meets it wins.
    delivery_promise_days: dict[str, int] = Field(
        default_factory=lambda: {"standard": 5, "express": 2, "vip": 2, "custom": 10})
    # Shop across every carrier the API quotes, not only the wave's (a wave's parcels then
    # may leave with different carriers).
    rate_shop_across_carriers: bool = False
    # Alerts: tracking silent this long flags the shipment for a manual check; an order in an
    # automated processing state unchanged this long raises a status-lag alert.
    tracking_silent_alert_s: float = Field(24 * 3600.0, gt=0)
    status_lag_alert_s: float = Field(15 * 60.0, gt=0)
    alert_sweep_interval_s: float = Field(60.0, gt=0)

    # --- re-drive -------------------------------------------------------------------------
    # An order left in an automated stage longer than this is re-enqueued by the beat sweep.
    stage_deadline_s: float = Field(120.0, gt=0)
    sweep_interval_s: float = Field(15.0, gt=0)

    # --- recovery and dead letters ---------------------------------------------------------
    # A broker that lost its data (restarted empty) is noticed by a key it no longer holds;
    # beat checks it this often and re-drives every order in an automated stage at once.
    # 0: no check (the re-drive sweep alone).
    broker_epoch_check_s: float = Field(5.0, ge=0)
    # On Redis the sweep reads the queues and the unacknowledged messages: an order in no
    # message for this long is missing and re-sent at once, whatever else waits in its queue.
    # 0: wait for stage_deadline_s and an empty queue, as on a broker the sweep cannot read.
    redrive_missing_after_s: float = Field(10.0, ge=0)

    # --- Celery reliability -----------------------------------------------------------------
    # Must stay above the longest task including countdowns, or Redis redelivers a running task.
    visibility_timeout_s: int = Field(3600, ge=60)
    task_time_limit_s: int = Field(600, ge=10)

    # --- pick waves, lanes and routing ------------------------------------------------------
    # Waves per day the warehouse wants; a wave's size is the measured order rate (orders
    # received in the last wave_rate_window_s, per day) over this target, kept within
    # [wave_size_min, wave_size]. Unset: every wave closes at wave_size.
    wave_daily_target: int | None = Field(None, ge=1, le=100_000)
    wave_size_min: int = Field(5, ge=1, le=1000)
    wave_rate_window_s: float = Field(3600.0, gt=0)
    # With a target, a wave also stays open as long as its key takes to fill that size at the
    # measured rate (at least wave_max_age_s; express and VIP waves wait only that), but it
    # closes this long before the earliest promised dispatch of its orders (the lane's promise
    # or its SLA, whichever is shorter): time left to pick, pack and buy the labels.
    wave_promise_margin_s: float = Field(7200.0, ge=0)
    # With a target, the longest an express or VIP wave waits for company (at least
    # wave_max_age_s). Far within their 48 h / 24 h promises; shorter makes more waves: these
    # lanes' keys see few orders an hour, so at 60 s nearly every such order is a wave alone.
    wave_priority_max_age_s: float = Field(7200.0, gt=0)
    # Lanes per store: {"store": {"express_hours": 24, "custom_sku_prefixes": ["RING-"]}};
    # stores not listed follow lane_defaults.
    lane_defaults: LaneRules = Field(default_factory=lambda: LaneRules())
    store_lanes: dict[str, LaneRules] = Field(default_factory=dict)
    # Routing A/B: this share of orders (by a hash of the order id) is routed by the learned
    # strategy once a model exists; the rest by the rules.
    routing_learned_share: float = Field(0.5, ge=0, le=1)
    # What a late parcel costs the store (compensation, support) against label price, and an
    # exception (lost, damaged, returned to sender): the learned strategy weighs both.
    routing_late_penalty_usd: float = Field(15.0, ge=0)
    routing_exception_penalty_usd: float = Field(25.0, ge=0)
    routing_retrain_interval_s: float = Field(7 * 24 * 3600.0, gt=0)
    routing_min_training_rows: int = Field(200, ge=10)
    # SKUs returned more often than this (with at least sku_return_min_shipped shipped) are
    # flagged for a person.
    sku_return_rate_alert: float = Field(0.05, gt=0, lt=1)
    sku_return_min_shipped: int = Field(20, ge=1)

    var_dir: Path = DEFAULT_VAR_DIR

    # --- intake exceptions desk (deliveries held at the door) -------------------------------
    # Alert when this many exceptions are open at once, or the oldest has waited this long.
    exceptions_alert_count: int = Field(20, ge=1)
    exceptions_overdue_s: float = Field(30 * 60, gt=0)

    # --- storefront intake over HTTP (``orderfleet serve``) ----------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=1, le=65535)
    # Shopify order bodies run to a few hundred kB for very large orders; 2 MiB is ample.
    api_max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    # Accepted order ids are sent to the fraud stage in micro-batches: at most this long a wait.
    api_flush_interval_s: float = Field(0.05, gt=0, le=5)
    # Shop name (the {shop} in /webhooks/shopify/{shop}) -> the app's webhook signing secret.
    shopify_secrets: dict[str, str] = Field(default_factory=dict)
    # Shop name -> Admin API access token, for pushing fulfilments back. {shop} is replaced.
    shopify_admin_tokens: dict[str, str] = Field(default_factory=dict)
    shopify_admin_url: str = "https://{shop}.myshopify.com"
    shopify_api_version: str = Field("2025-01", pattern=r"^\d{4}-\d{2}$")
    # Store name (the {store} in /webhooks/woocommerce/{store}) -> webhook secret.
    woocommerce_secrets: dict[str, str] = Field(default_factory=dict)
    # Custom storefronts: store -> shared secret (Bearer token on POST /orders, and the key that
    # signs push-back webhooks), and store -> URL that receives the signed push-back webhooks.
    store_secrets: dict[str, str] = Field(default_factory=dict)
    store_webhook_urls: dict[str, str] = Field(default_factory=dict)
    pushback_timeout_s: float = Field(10.0, gt=0)
    pushback_retry_max_s: float = Field(20.0, gt=0)

    # --- observability: metrics exporter, alert thresholds, Flower and the health page ------
    # "user:password" for Flower's basic auth and the order-health page (/ops/health).
    # `up`, `demo` and `serve` generate and print one when unset; nothing runs without it.
    ops_basic_auth: SecretStr | None = None
    # The Prometheus exporter (`orderfleet exporter`): one process reading PostgreSQL and Redis.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9808, ge=1, le=65535)
    # Promised dispatch (paid -> label bought) per lane in hours ("standard" covers the rest):
    # SLA attainment is the share of orders labelled within it.
    sla_dispatch_hours: dict[str, float] = Field(
        default_factory=lambda: {"standard": 48.0, "vip": 24.0, "custom": 120.0})
    # Alert thresholds, the same in ops/prometheus/rules/orderfleet.rules.yml.
    sla_attainment_alert: float = Field(0.95, gt=0, le=1)
    backlog_age_alert_s: float = Field(3600.0, gt=0)
    cost_share_alert: float = Field(0.05, gt=0, lt=1)
    exception_rise_alert: float = Field(1.5, gt=1)
    # Handling cost per order beyond its label (picking, packing), when a store knows it.
    handling_cost_per_order_usd: Decimal | None = Field(None, ge=0)

    # --- surge control: load monitor, non-core breaker, three-stage response ----------------
    # Load (0..1+, README "Surge control"): max of the busy share of worker slots and the
    # oldest waiting order's age over surge_wait_target_s; smoothed by an EWMA (tau).
    surge_monitor_interval_s: float = Field(2.0, gt=0)
    surge_ewma_tau_s: float = Field(10.0, gt=0)
    surge_wait_target_s: float = Field(120.0, gt=0)
    surge_rate_window_s: float = Field(60.0, gt=0)
    # The breaker sheds non-core jobs above open, resumes below close after a minimum dwell.
    surge_open_load: float = Field(0.8, gt=0)
    surge_close_load: float = Field(0.6, ge=0)
    surge_min_dwell_s: float = Field(60.0, ge=0)
    # It also opens once the orders waiting in the automated stages have exceeded this many
    # full batches (batch_size) per slot on consecutive ticks this long: a burst sheds at once,
    # not after the average has caught up (some 16 s with the 10 s constant).
    surge_saturated_batches: int = Field(4, ge=1)
    surge_saturated_open_s: float = Field(1.5, ge=0)
    # Parked non-core order-jobs replayed per monitor tick once the breaker closed.
    surge_replay_per_tick: int = Field(200, ge=1)
    # Intake above baseline x this (4 = +300%) is a surge; stages 2 and 3 follow after these.
    surge_intake_ratio: float = Field(4.0, gt=1)
    surge_baseline_tau_s: float = Field(900.0, gt=0)
    surge_min_baseline_per_s: float = Field(0.05, gt=0)
    surge_stage2_after_s: float = Field(30 * 60.0, ge=0)
    surge_stage3_after_s: float = Field(2 * 3600.0, ge=0)
    # Stage 2 raises running workers' autoscale ceiling to this (app.control.autoscale).
    surge_autoscale_max: int = Field(8, ge=1)
    # `orderfleet worker --autoscale` without a value uses this MAX,MIN.
    worker_autoscale: str = Field("4,1", pattern=r"^\d+,\d+$")
    # `orderfleet scale` and the stage-2 advice: drain the backlog within this time.
    scale_target_drain_s: float = Field(600.0, gt=0)
    # Stage 3: orders waiting longer than this get a delay-compensation coupon.
    compensation_after_s: float = Field(4 * 3600.0, gt=0)
    # Non-core jobs: real SMTP (a local aiosmtpd sink in up/demo/tests), a coupon ledger and
    # a marketing-list sync over HTTP.
    noncore_jobs: bool = True
    # Orders per non-core message. Workers take non-core queues only when the core ones are
    # empty, but a message, once taken, holds its worker to the end: 250 e-mails (a transaction
    # each) kept a worker from the next core batch for most of a second.
    noncore_batch_size: int = Field(25, ge=1, le=1000)
    # A broker that lost its messages lost the queued and parked non-core jobs too: those of
    # orders that moved within this window and have none yet are sent again.
    noncore_redrive_window_s: float = Field(86_400.0, gt=0)
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(8025, ge=1, le=65535)
    smtp_from: str = "orders@orderfleet.local"
    smtp_timeout_s: float = Field(10.0, gt=0)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    marketing_url: str = "http://127.0.0.1:8766"
    marketing_timeout_s: float = Field(10.0, gt=0)
    coupon_amount: Decimal = Field(Decimal("5.00"), gt=0)
    compensation_coupon_amount: Decimal = Field(Decimal("10.00"), gt=0)
    # Worker queues consumed strictly in the order given (control, fast lanes, core stages
    # downstream first, non-core last): kombu's 'priority' cycle; 'round_robin' is Celery's.
    queue_order_strategy: Literal["priority", "round_robin"] = "priority"

    @field_validator("shopify_secrets", "shopify_admin_tokens", "woocommerce_secrets",
                     "store_secrets")
    @classmethod
    def _secrets(cls, v: dict[str, str]) -> dict[str, str]:
        for name, secret in v.items():
            if not _STORE_NAME.fullmatch(name):
                raise ValueError(f"store name {name!r} must match {_STORE_NAME.pattern}")
            if not isinstance(secret, str) or len(secret) < 8:
                raise ValueError(f"the secret of {name!r} must be a string of 8+ characters")
        return v

    @field_validator("store_webhook_urls")
    @classmethod
    def _webhook_urls(cls, v: dict[str, str]) -> dict[str, str]:
        for name, url in v.items():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"store_webhook_urls[{name!r}] must be an http(s) URL")
        return v

    @field_validator("shopify_admin_url")
    @classmethod
    def _admin_url(cls, v: str) -> str:
        if "{shop}" not in v or not v.startswith(("http://", "https://")):
            raise ValueError("shopify_admin_url must be an http(s) URL containing {shop}")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _webhooks_signed(self) -> Settings:
        unsigned = sorted(set(self.store_webhook_urls) - set(self.store_secrets))
        if unsigned:
            raise ValueError(f"store_webhook_urls for {', '.join(unsigned)} need a secret in "
                             "store_secrets to sign with")
        return self

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "amqp://", "amqps://", "pyamqp://")):
            raise ValueError("broker_url must be a redis:// or amqp:// URL")
        return v

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, v: str) -> str:
        if not v.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("database_url must be sqlite:///PATH or postgresql+psycopg://...")
        if v.startswith("postgresql://"):
            # psycopg 3 is the driver we ship; make the plain URL mean it.
            v = "postgresql+psycopg://" + v.removeprefix("postgresql://")
        return v

    @field_validator("fx_rates_to_usd")
    @classmethod
    def _usd_rate(cls, v: dict[str, Decimal]) -> dict[str, Decimal]:
        v = {k.upper(): rate for k, rate in v.items()}
        if any(rate <= 0 for rate in v.values()):
            raise ValueError("fx rates must be positive")
        v.setdefault("USD", Decimal("1"))
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.fraud_review_score > self.fraud_reject_score:
            raise ValueError("fraud_review_score must not exceed fraud_reject_score")
        if self.fraud_redis_url is None and not self.broker_url.startswith(("redis", "rediss")):
            raise ValueError("fraud_redis_url is required when the broker is not Redis")
        if self.fraud_redis_url is not None and not self.fraud_redis_url.startswith(
                ("redis://", "rediss://")):
            raise ValueError("fraud_redis_url must be a redis:// URL")
        if self.carrier_api == "easypost" and self.carrier_api_key is None:
            raise ValueError("carrier_api_key is required when carrier_api is easypost")
        if self.shared_redis_url is None and not self.broker_url.startswith(("redis", "rediss")):
            raise ValueError("shared_redis_url is required when the broker is not Redis")
        if self.shared_redis_url is not None and not self.shared_redis_url.startswith(
                ("redis://", "rediss://")):
            raise ValueError("shared_redis_url must be a redis:// URL")
        if self.breaker_max_open_s < self.breaker_open_s:
            raise ValueError("breaker_max_open_s must be at least breaker_open_s")
        if "standard" not in self.delivery_promise_days or any(
                d < 1 for d in self.delivery_promise_days.values()):
            raise ValueError("delivery_promise_days needs a 'standard' entry; days must be >= 1")
        if self.visibility_timeout_s <= self.task_time_limit_s + self.label_retry_max_countdown_s:
            # A deferred label task waits in a worker with its ETA: Redis must not redeliver it.
            raise ValueError("visibility_timeout_s must exceed task_time_limit_s + "
                             "label_retry_max_countdown_s")
        if self.ops_basic_auth is not None:
            user, sep, password = self.ops_basic_auth.get_secret_value().partition(":")
            if not sep or not user or len(password) < 8:
                raise ValueError("ops_basic_auth must be user:password with 8+ characters of "
                                 "password")
        if "standard" not in self.sla_dispatch_hours or any(
                h <= 0 for h in self.sla_dispatch_hours.values()):
            raise ValueError("sla_dispatch_hours needs a 'standard' entry; hours must be > 0")
        if self.wave_size_min > self.wave_size:
            raise ValueError("wave_size_min must not exceed wave_size")
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError("visibility_timeout_s must exceed task_time_limit_s")
        if self.surge_close_load >= self.surge_open_load:
            raise ValueError("surge_close_load must be below surge_open_load (hysteresis)")
        return self

    def lanes_of(self, store: str) -> LaneRules:
        """The lane rules of a store (its own, else the defaults)."""
        return self.store_lanes.get(store, self.lane_defaults)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def shared_redis(self) -> str:
        """The Redis URL of state shared by workers (the broker's unless set)."""
        return self.shared_redis_url or self.broker_url

    @property
    def fraud_redis(self) -> str:
        """The Redis URL of the fraud velocity counters (the broker's unless set)."""
        return self.fraud_redis_url or self.broker_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
