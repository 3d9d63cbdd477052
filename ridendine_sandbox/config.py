"""The sandbox's configuration: fixed at start (keys, secrets, limits) and a `Behaviour` that
the control endpoints may change while it runs (scenario, delays, where webhooks go)."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

# Every scenario is described in docs/sandbox.md.
SCENARIOS = (
    "succeed",
    "fail",
    "duplicate",
    "out_of_order",
    "refunded_then_failed",
    "early",
    "late",
    "silent",
    "reject",
    "flaky",
)


class SandboxConfigError(Exception):
    """A sandbox setting is missing or invalid; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Behaviour:
    """What the sandbox does with the next accepted refund; changeable at run time, globally
    (PATCH /_sandbox/settings) or per order (POST /_sandbox/rules)."""

    scenario: str = "succeed"
    # Seconds between the answer to /refunds/create and the first webhook.
    delay_seconds: float = 1.0
    # The delay of the `late` scenario.
    late_delay_seconds: float = 30.0
    # Seconds between the two events of `out_of_order` and `refunded_then_failed`.
    gap_seconds: float = 0.5
    # `duplicate`: extra copies with the same webhook-id, and as many with new webhook-ids.
    duplicates: int = 1
    # `flaky`: how many calls per Idempotency-Key answer 503 before one succeeds.
    flaky_failures: int = 2
    # `reject`: the 4xx status and message of the refusal.
    reject_status: int = 422
    reject_message: str = "The refund was declined by RideNDine (sandbox scenario 'reject')."
    failure_reason: str = "expired_or_canceled_card"
    bridge_webhook_url: str | None = None

    def updated(self, changes: Mapping[str, Any]) -> Behaviour:
        return replace(self, **dict(changes))


BEHAVIOUR_FIELDS = tuple(f.name for f in fields(Behaviour))


@dataclass(frozen=True)
class SandboxConfig:
    """Everything the sandbox needs; `behaviour` is the starting (and reset) behaviour."""

    api_key: str
    webhook_secret: str | None = None
    webhook_bearer_token: str | None = None
    behaviour: Behaviour = field(default_factory=Behaviour)
    currency_code: str = "EUR"
    # Webhook deliveries: attempts per message (the first included), capped exponential backoff.
    max_attempts: int = 5
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 8.0
    delivery_timeout_seconds: float = 5.0
    delivery_workers: int = 4
    # `early`: how long /refunds/create waits for the webhook's first attempt before answering.
    early_wait_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not self.api_key:
            raise SandboxConfigError("api_key", "is required")
        if self.webhook_secret is not None:
            check_webhook_secret("webhook_secret", self.webhook_secret)
        if self.behaviour.scenario not in SCENARIOS:
            raise SandboxConfigError("scenario", f"must be one of {', '.join(SCENARIOS)}")
        if self.max_attempts < 1 or self.delivery_workers < 1:
            raise SandboxConfigError("max_attempts", "attempts and workers must be at least 1")


def check_webhook_secret(variable: str, secret: str) -> None:
    if not secret.startswith("whsec_"):
        raise SandboxConfigError(variable, "must start with 'whsec_'")
    try:
        decoded = base64.b64decode(secret[len("whsec_") :], validate=True)
    except (binascii.Error, ValueError):
        raise SandboxConfigError(variable, "must be 'whsec_' followed by base64") from None
    if len(decoded) < 16:
        raise SandboxConfigError(variable, "must decode to at least 16 bytes")


def check_url(variable: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SandboxConfigError(variable, f"must be an http(s) URL, got {value!r}")
    return value


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value.split(",")[0].strip() if name == "BRIDGE_WEBHOOK_SECRETS" else value
    return None


def _number(env: Mapping[str, str], name: str, default: float, *, whole: bool = False) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        raise SandboxConfigError(name, f"must be a number, got {raw!r}") from None
    if value < 0:
        raise SandboxConfigError(name, f"must not be negative, got {raw}")
    return value


def config_from_env(env: Mapping[str, str] | None = None, **behaviour: Any) -> SandboxConfig:
    """The configuration from environment variables (docs/sandbox.md), with `behaviour`
    overriding the starting behaviour (the command's options).

    The key and the secret fall back to the bridge's own variables, so that the sandbox started
    in the bridge's environment accepts the bridge's calls and signs what the bridge verifies.
    """
    env = os.environ if env is None else env
    api_key = _first(env, "RIDENDINE_SANDBOX_API_KEY", "BRIDGE_RIDENDINE_API_KEY")
    if not api_key:
        raise SandboxConfigError(
            "RIDENDINE_SANDBOX_API_KEY", "is required but not set (nor BRIDGE_RIDENDINE_API_KEY)"
        )
    secret = _first(env, "RIDENDINE_SANDBOX_WEBHOOK_SECRET", "BRIDGE_WEBHOOK_SECRETS")
    bearer = _first(env, "RIDENDINE_SANDBOX_WEBHOOK_BEARER_TOKEN", "BRIDGE_WEBHOOK_BEARER_TOKEN")
    if not secret and not bearer:
        raise SandboxConfigError(
            "RIDENDINE_SANDBOX_WEBHOOK_SECRET",
            "is required but not set (nor BRIDGE_WEBHOOK_SECRETS, nor a bearer token)",
        )
    if secret:
        check_webhook_secret("RIDENDINE_SANDBOX_WEBHOOK_SECRET", secret)
    start = Behaviour(
        late_delay_seconds=_number(env, "RIDENDINE_SANDBOX_LATE_DELAY_SECONDS", 30.0),
        gap_seconds=_number(env, "RIDENDINE_SANDBOX_GAP_SECONDS", 0.5),
        duplicates=_number(env, "RIDENDINE_SANDBOX_DUPLICATES", 1, whole=True),
        flaky_failures=_number(env, "RIDENDINE_SANDBOX_FLAKY_FAILURES", 2, whole=True),
    ).updated({k: v for k, v in behaviour.items() if v is not None})
    if start.bridge_webhook_url:
        check_url("--bridge-webhook-url", start.bridge_webhook_url)
    if start.scenario not in SCENARIOS:
        raise SandboxConfigError("--scenario", f"must be one of {', '.join(SCENARIOS)}")
    currency = env.get("RIDENDINE_SANDBOX_CURRENCY_CODE", "").strip().upper() or "EUR"
    return SandboxConfig(
        api_key=api_key,
        webhook_secret=secret,
        webhook_bearer_token=bearer,
        behaviour=start,
        currency_code=currency,
        max_attempts=max(1, _number(env, "RIDENDINE_SANDBOX_MAX_ATTEMPTS", 5, whole=True)),
        retry_base_seconds=_number(env, "RIDENDINE_SANDBOX_RETRY_BASE_SECONDS", 0.5),
        retry_max_seconds=_number(env, "RIDENDINE_SANDBOX_RETRY_MAX_SECONDS", 8.0),
        delivery_timeout_seconds=_number(env, "RIDENDINE_SANDBOX_DELIVERY_TIMEOUT_SECONDS", 5.0)
        or 5.0,
    )
