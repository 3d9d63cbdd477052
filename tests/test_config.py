"""Configuration: read once from the environment, every bad value named."""

from __future__ import annotations

import pytest

from bridge.config import ConfigError, load_settings
from tests.support.helpers import WEBHOOK_SECRET

VALID = {
    "BRIDGE_DIRECTUS_URL": "http://127.0.0.1:8055/",
    "BRIDGE_DIRECTUS_TOKEN": "directus-token",
    "BRIDGE_RIDENDINE_API_URL": "https://api.ridendine.example",
    "BRIDGE_RIDENDINE_API_KEY": "rdn-key",
    "BRIDGE_WEBHOOK_SECRETS": WEBHOOK_SECRET,
    "BRIDGE_API_TOKENS": "service-token-0123456789, second-service-token-0123",
}


def test_valid_environment_gives_settings_with_defaults() -> None:
    settings = load_settings(VALID)
    assert settings.directus_url == "http://127.0.0.1:8055"
    assert settings.api_tokens == ("service-token-0123456789", "second-service-token-0123")
    assert settings.pending_stale_seconds == 1800
    assert settings.log_level == "INFO"
    assert settings.database_url is None
    assert settings.stripe_api_key is None
    assert settings.admin_emails == ()
    assert settings.refund_reasons == ("chef_rejected", "customer_cancel")
    assert settings.cancelling_reasons == ("chef_rejected", "customer_cancel")


@pytest.mark.parametrize(
    "variable",
    [
        "BRIDGE_DIRECTUS_URL",
        "BRIDGE_DIRECTUS_TOKEN",
        "BRIDGE_RIDENDINE_API_URL",
        "BRIDGE_RIDENDINE_API_KEY",
        "BRIDGE_WEBHOOK_SECRETS",
        "BRIDGE_API_TOKENS",
    ],
)
def test_missing_required_variable_is_named(variable: str) -> None:
    env = {k: v for k, v in VALID.items() if k != variable}
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(variable)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BRIDGE_DIRECTUS_URL", "not a url"),
        ("BRIDGE_RIDENDINE_API_URL", "ftp://example.com"),
        ("BRIDGE_WEBHOOK_SECRETS", "plain-secret"),
        ("BRIDGE_WEBHOOK_SECRETS", "whsec_!!!notbase64"),
        ("BRIDGE_WEBHOOK_SECRETS", "whsec_c2hvcnQ="),
        ("BRIDGE_API_TOKENS", "short"),
        ("BRIDGE_PENDING_STALE_SECONDS", "soon"),
        ("BRIDGE_PENDING_STALE_SECONDS", "0"),
        ("BRIDGE_LOG_LEVEL", "LOUD"),
        ("BRIDGE_DATABASE_URL", "mysql://x"),
        ("BRIDGE_STRIPE_API_BASE", "stripe"),
        ("BRIDGE_WEBHOOK_AUTH", "none"),
        ("BRIDGE_DEFAULT_CURRENCY", "EURO"),
        ("BRIDGE_CANCELLING_REASONS", "not_a_reason"),
        ("BRIDGE_DIRECTUS_TIMEOUT_SECONDS", "-1"),
        ("BRIDGE_WORKER_FLOW_CALLS", "0"),
        ("BRIDGE_WORKER_FLOW_CALLS", "many"),
    ],
)
def test_bad_value_is_named(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**VALID, variable: value})
    assert caught.value.variable == variable


def test_bearer_webhook_auth_is_explicit_and_needs_its_token() -> None:
    env = {k: v for k, v in VALID.items() if k != "BRIDGE_WEBHOOK_SECRETS"}
    with pytest.raises(ConfigError) as caught:
        load_settings({**env, "BRIDGE_WEBHOOK_AUTH": "bearer"})
    assert caught.value.variable == "BRIDGE_WEBHOOK_BEARER_TOKEN"
    settings = load_settings(
        {**env, "BRIDGE_WEBHOOK_AUTH": "bearer", "BRIDGE_WEBHOOK_BEARER_TOKEN": "t" * 32}
    )
    assert settings.webhook_auth == "bearer"


def test_lists_and_extra_reasons() -> None:
    settings = load_settings(
        {
            **VALID,
            "BRIDGE_ADMIN_EMAILS": "a@example.com, b@example.com",
            "BRIDGE_REFUND_REASONS": "late_delivery",
            "BRIDGE_LOG_LEVEL": "debug",
            "BRIDGE_PENDING_STALE_SECONDS": "60",
            "BRIDGE_WORKER_FLOW_CALLS": "1",
        }
    )
    assert settings.worker_flow_calls == 1
    assert load_settings(VALID).worker_flow_calls == 4
    assert settings.admin_emails == ("a@example.com", "b@example.com")
    assert settings.refund_reasons == ("chef_rejected", "customer_cancel", "late_delivery")
    assert "late_delivery" not in settings.cancelling_reasons
    assert settings.log_level == "DEBUG"
    assert settings.pending_stale_seconds == 60


def test_the_refund_policy_settings() -> None:
    default = load_settings(VALID)
    assert default.approval_order_statuses == ("DELIVERED",)
    assert default.approval_above_cents is None
    assert default.approval_remind_seconds == 86400
    given = load_settings(
        {
            **VALID,
            "BRIDGE_APPROVAL_ORDER_STATUSES": "DELIVERED, PICKED_UP,DELIVERED",
            "BRIDGE_APPROVAL_ABOVE_CENTS": "2500",
            "BRIDGE_APPROVAL_REMIND_SECONDS": "3600",
        }
    )
    assert given.approval_order_statuses == ("DELIVERED", "PICKED_UP")
    assert (given.approval_above_cents, given.approval_remind_seconds) == (2500, 3600)
    none = load_settings({**VALID, "BRIDGE_APPROVAL_ORDER_STATUSES": "none"})
    assert none.approval_order_statuses == ()
    assert load_settings({**VALID, "BRIDGE_APPROVAL_ABOVE_CENTS": "0"}).approval_above_cents == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BRIDGE_APPROVAL_ABOVE_CENTS", "12.50"),
        ("BRIDGE_APPROVAL_ABOVE_CENTS", "-1"),
        ("BRIDGE_APPROVAL_REMIND_SECONDS", "10"),
        ("BRIDGE_APPROVAL_ORDER_STATUSES", "OK,\x07BAD"),
    ],
)
def test_bad_refund_policy_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({**VALID, name: value})
    assert raised.value.variable == name
