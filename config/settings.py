"""Typed settings (pydantic-settings), read from ``ORDERFLEET_*`` environment variables.

Validated once at start: a malformed URL or threshold stops the process with a clear error.
There is no silent fallback (in particular never to Celery's eager mode).
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_VAR_DIR = Path.cwd() / "var"

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
    # Orders carried by one stage message. 100 keeps a message small (ids only) while the
    # per-message broker overhead (~1 ms) is spread over many orders.
    batch_size: int = Field(100, ge=1, le=1000)

    # --- fraud ----------------------------------------------------------------------------
    review_threshold_usd: Decimal = Field(Decimal("500"), gt=0)
    fraud_review_score: int = Field(40, ge=0, le=100)
    fraud_reject_score: int = Field(75, ge=0, le=100)
    fx_rates_to_usd: dict[str, Decimal] = Field(
        default_factory=lambda: dict(DEFAULT_FX_RATES_TO_USD)
    )

    # --- inventory ------------------------------------------------------------------------
    # A reservation for an order that does not progress is released after this long.
    reservation_ttl_s: int = Field(30 * 60, ge=10)

    # --- sharding (pick waves) ------------------------------------------------------------
    wave_size: int = Field(50, ge=1, le=1000)
    wave_max_age_s: float = Field(60.0, gt=0)

    # --- tracking -------------------------------------------------------------------------
    tracking_sweep_interval_s: float = Field(3600.0, gt=0)
    tracking_batch_size: int = Field(200, ge=1, le=1000)

    # --- re-drive -------------------------------------------------------------------------
    # An order left in an automated stage longer than this is re-enqueued by the beat sweep.
    stage_deadline_s: float = Field(120.0, gt=0)
    sweep_interval_s: float = Field(15.0, gt=0)

    # --- Celery reliability -----------------------------------------------------------------
    # Must stay above the longest task including countdowns, or Redis redelivers a running task.
    visibility_timeout_s: int = Field(3600, ge=60)
    task_time_limit_s: int = Field(600, ge=10)

    var_dir: Path = DEFAULT_VAR_DIR

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
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError("visibility_timeout_s must exceed task_time_limit_s")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
