"""Configuration from environment variables, read and checked once at start.

Every setting has one name (contract section 7 plus the project's own, documented in
docs/configuration.md). A missing or bad value raises ConfigError whose message names the
variable, so that the process stops with one line that says what to fix.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

DEFAULT_REASONS = ("chef_rejected", "customer_cancel")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
WEBHOOK_AUTH_MODES = ("signature", "bearer")


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class OrderFields:
    """Names of COOCO's `orders` fields beyond the four the contract fixes."""

    collection: str = "orders"
    amount_paid: str = "amount_paid_cents"
    currency: str = "currency"
    customer: str = "customer"
    chef: str = "chef"
    customer_email: str = "customer.email"
    chef_email: str = "chef.email"


@dataclass(frozen=True)
class Settings:
    directus_url: str
    directus_token: str
    ridendine_api_url: str
    ridendine_api_key: str
    webhook_secrets: tuple[str, ...]
    api_tokens: tuple[str, ...]
    database_url: str | None = None
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    pending_stale_seconds: int = 1800
    admin_emails: tuple[str, ...] = ()
    log_level: str = "INFO"
    # The project's own settings (docs/configuration.md).
    webhook_auth: str = "signature"
    webhook_bearer_token: str | None = None
    flow_secret: str | None = None
    refund_reasons: tuple[str, ...] = DEFAULT_REASONS
    cancelling_reasons: tuple[str, ...] = DEFAULT_REASONS
    default_currency: str = "EUR"
    order_fields: OrderFields = field(default_factory=OrderFields)
    directus_timeout_seconds: float = 10.0
    ridendine_timeout_seconds: float = 10.0
    trusted_proxies: int = 0
    # The worker (docs/worker.md).
    pending_review_seconds: int = 7200
    retention_days: int = 90
    worker_poll_seconds: float = 0.5
    worker_lease_seconds: int = 30
    worker_flow_calls: int = 4
    # The Directus Flows (docs/directus.md).
    public_url: str = "http://127.0.0.1:8080"
    flow_service_token: str | None = None
    # Observability (docs/observability.md).
    metrics_token: str | None = None
    worker_metrics_port: int = 0
    worker_metrics_addr: str = "127.0.0.1"
    report_order_date_field: str = "date_created"
    # The refund policy (contract section 1a, docs/refunds.md).
    approval_order_statuses: tuple[str, ...] = ("DELIVERED",)
    approval_above_cents: int | None = None
    approval_remind_seconds: int = 86400

    def as_flask_config(self) -> dict[str, Any]:
        return {"BRIDGE_SETTINGS": self}


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(name, "is required but not set")
    return value


def _url(env: Mapping[str, str], name: str, *, required: bool = True) -> str | None:
    value = env.get(name, "").strip()
    if not value:
        if required:
            raise ConfigError(name, "is required but not set")
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(name, f"must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, f"must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(name, f"must be greater than 0, got {raw}")
    return value


def _webhook_secrets(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    secrets = _list(env, name)
    for secret in secrets:
        if not secret.startswith("whsec_"):
            raise ConfigError(name, "each secret must start with 'whsec_'")
        try:
            decoded = base64.b64decode(secret[len("whsec_") :], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(name, "each secret must be 'whsec_' followed by base64") from None
        if len(decoded) < 16:
            raise ConfigError(name, "each secret must decode to at least 16 bytes")
    return secrets


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting from `env` (default: the process environment) and check it."""
    env = os.environ if env is None else env
    # Checked in the order of the contract's table, so the first missing one is named.
    directus_url = _url(env, "BRIDGE_DIRECTUS_URL") or ""
    directus_token = _required(env, "BRIDGE_DIRECTUS_TOKEN")
    ridendine_api_url = _url(env, "BRIDGE_RIDENDINE_API_URL") or ""
    ridendine_api_key = _required(env, "BRIDGE_RIDENDINE_API_KEY")

    webhook_auth = env.get("BRIDGE_WEBHOOK_AUTH", "signature").strip().lower() or "signature"
    if webhook_auth not in WEBHOOK_AUTH_MODES:
        raise ConfigError("BRIDGE_WEBHOOK_AUTH", f"must be one of {', '.join(WEBHOOK_AUTH_MODES)}")
    webhook_secrets = _webhook_secrets(env, "BRIDGE_WEBHOOK_SECRETS")
    webhook_bearer_token = env.get("BRIDGE_WEBHOOK_BEARER_TOKEN", "").strip() or None
    if webhook_auth == "signature" and not webhook_secrets:
        raise ConfigError("BRIDGE_WEBHOOK_SECRETS", "is required but not set")
    if webhook_auth == "bearer" and not webhook_bearer_token:
        raise ConfigError(
            "BRIDGE_WEBHOOK_BEARER_TOKEN", "is required when BRIDGE_WEBHOOK_AUTH=bearer"
        )

    api_tokens = _list(env, "BRIDGE_API_TOKENS")
    if not api_tokens:
        raise ConfigError("BRIDGE_API_TOKENS", "is required but not set")
    if any(len(token) < 16 for token in api_tokens):
        raise ConfigError("BRIDGE_API_TOKENS", "each token must be at least 16 characters")

    log_level = env.get("BRIDGE_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if log_level not in LOG_LEVELS:
        raise ConfigError("BRIDGE_LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}")

    database_url = env.get("BRIDGE_DATABASE_URL", "").strip() or None
    if database_url and not database_url.startswith(("sqlite", "postgresql")):
        raise ConfigError(
            "BRIDGE_DATABASE_URL", "must be a sqlite:/// or postgresql+psycopg:// URL"
        )

    reasons = _list(env, "BRIDGE_REFUND_REASONS")
    refund_reasons = tuple(dict.fromkeys((*DEFAULT_REASONS, *reasons)))
    cancelling = _list(env, "BRIDGE_CANCELLING_REASONS")
    unknown = [r for r in cancelling if r not in refund_reasons]
    if unknown:
        raise ConfigError(
            "BRIDGE_CANCELLING_REASONS", f"names unknown reasons: {', '.join(unknown)}"
        )
    cancelling_reasons = tuple(dict.fromkeys((*DEFAULT_REASONS, *cancelling)))

    currency = env.get("BRIDGE_DEFAULT_CURRENCY", "EUR").strip().upper() or "EUR"
    if len(currency) != 3 or not currency.isalpha():
        raise ConfigError("BRIDGE_DEFAULT_CURRENCY", "must be a three-letter ISO 4217 code")

    defaults = OrderFields()
    order_fields = OrderFields(
        collection=env.get("BRIDGE_ORDERS_COLLECTION", "").strip() or defaults.collection,
        amount_paid=env.get("BRIDGE_ORDER_AMOUNT_FIELD", "").strip() or defaults.amount_paid,
        currency=env.get("BRIDGE_ORDER_CURRENCY_FIELD", "").strip() or defaults.currency,
        customer=env.get("BRIDGE_ORDER_CUSTOMER_FIELD", "").strip() or defaults.customer,
        chef=env.get("BRIDGE_ORDER_CHEF_FIELD", "").strip() or defaults.chef,
        customer_email=env.get("BRIDGE_ORDER_CUSTOMER_EMAIL_FIELD", "").strip()
        or defaults.customer_email,
        chef_email=env.get("BRIDGE_ORDER_CHEF_EMAIL_FIELD", "").strip() or defaults.chef_email,
    )

    # Without Stripe, a refund PENDING this long is flagged for a person (docs/worker.md).
    pending_stale_seconds = _int(env, "BRIDGE_PENDING_STALE_SECONDS", 1800, minimum=1)
    pending_review_seconds = _int(
        env, "BRIDGE_PENDING_REVIEW_SECONDS", 4 * pending_stale_seconds, minimum=1
    )
    if pending_review_seconds < pending_stale_seconds:
        raise ConfigError(
            "BRIDGE_PENDING_REVIEW_SECONDS", "must be at least BRIDGE_PENDING_STALE_SECONDS"
        )

    approval_order_statuses, approval_above_cents = _approval_policy(env)

    return Settings(
        directus_url=directus_url,
        directus_token=directus_token,
        ridendine_api_url=ridendine_api_url,
        ridendine_api_key=ridendine_api_key,
        webhook_secrets=webhook_secrets,
        api_tokens=api_tokens,
        database_url=database_url,
        stripe_api_key=env.get("BRIDGE_STRIPE_API_KEY", "").strip() or None,
        stripe_api_base=_url(env, "BRIDGE_STRIPE_API_BASE", required=False),
        pending_stale_seconds=pending_stale_seconds,
        admin_emails=_list(env, "BRIDGE_ADMIN_EMAILS"),
        log_level=log_level,
        webhook_auth=webhook_auth,
        webhook_bearer_token=webhook_bearer_token,
        flow_secret=env.get("BRIDGE_FLOW_SECRET", "").strip() or None,
        refund_reasons=refund_reasons,
        cancelling_reasons=cancelling_reasons,
        default_currency=currency,
        order_fields=order_fields,
        directus_timeout_seconds=_float(env, "BRIDGE_DIRECTUS_TIMEOUT_SECONDS", 10.0),
        ridendine_timeout_seconds=_float(env, "BRIDGE_RIDENDINE_TIMEOUT_SECONDS", 10.0),
        trusted_proxies=_int(env, "BRIDGE_TRUSTED_PROXIES", 0),
        pending_review_seconds=pending_review_seconds,
        retention_days=_int(env, "BRIDGE_RETENTION_DAYS", 90, minimum=1),
        worker_poll_seconds=_float(env, "BRIDGE_WORKER_POLL_SECONDS", 0.5),
        worker_lease_seconds=_int(env, "BRIDGE_WORKER_LEASE_SECONDS", 30, minimum=5),
        worker_flow_calls=_int(env, "BRIDGE_WORKER_FLOW_CALLS", 4, minimum=1),
        public_url=_url(env, "BRIDGE_PUBLIC_URL", required=False) or "http://127.0.0.1:8080",
        flow_service_token=_flow_service_token(env, api_tokens),
        metrics_token=env.get("BRIDGE_METRICS_TOKEN", "").strip() or None,
        worker_metrics_port=_port(env, "BRIDGE_WORKER_METRICS_PORT"),
        worker_metrics_addr=env.get("BRIDGE_WORKER_METRICS_ADDR", "").strip() or "127.0.0.1",
        report_order_date_field=env.get("BRIDGE_REPORT_ORDER_DATE_FIELD", "").strip()
        or "date_created",
        approval_order_statuses=approval_order_statuses,
        approval_above_cents=approval_above_cents,
        approval_remind_seconds=_int(env, "BRIDGE_APPROVAL_REMIND_SECONDS", 86400, minimum=60),
    )


def _approval_policy(env: Mapping[str, str]) -> tuple[tuple[str, ...], int | None]:
    """BRIDGE_APPROVAL_ORDER_STATUSES (unset or empty: DELIVERED; `none`: no status waits) and
    BRIDGE_APPROVAL_ABOVE_CENTS (unset or empty: no amount limit)."""
    raw = env.get("BRIDGE_APPROVAL_ORDER_STATUSES", "").strip()
    if raw.lower() == "none":
        statuses: tuple[str, ...] = ()
    else:
        statuses = tuple(dict.fromkeys(_list(env, "BRIDGE_APPROVAL_ORDER_STATUSES"))) or (
            "DELIVERED",
        )
        bad = [s for s in statuses if len(s) > 64 or not s.isprintable()]
        if bad:
            raise ConfigError("BRIDGE_APPROVAL_ORDER_STATUSES", f"not an order status: {bad[0]!r}")
    above = (
        _int(env, "BRIDGE_APPROVAL_ABOVE_CENTS", 0)
        if env.get("BRIDGE_APPROVAL_ABOVE_CENTS", "").strip()
        else None
    )
    return statuses, above


def _port(env: Mapping[str, str], name: str) -> int:
    """A TCP port, or 0 for none."""
    port = _int(env, name, 0)
    if port > 65535:
        raise ConfigError(name, f"must be a TCP port (1 to 65535, or 0 for none), got {port}")
    return port


def _flow_service_token(env: Mapping[str, str], api_tokens: tuple[str, ...]) -> str | None:
    """The service token the "request refund" Flow calls the bridge with: one of
    BRIDGE_API_TOKENS (so the bridge accepts it), dedicated so that it can be revoked alone."""
    token = env.get("BRIDGE_FLOW_SERVICE_TOKEN", "").strip() or None
    if token is not None and token not in api_tokens:
        raise ConfigError("BRIDGE_FLOW_SERVICE_TOKEN", "must be one of BRIDGE_API_TOKENS")
    return token
