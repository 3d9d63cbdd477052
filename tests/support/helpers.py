"""Helpers shared by the tests: settings for the real servers, unique ids, env mapping."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import requests

from bridge.config import Settings
from bridge.ledger import ledger
from bridge.store.models import Refund, RefundStatus
from directus_client import DirectusClient

RIDENDINE_URL = "https://api.ridendine.example"
RIDENDINE_KEY = "rdn-test-key-0123456789"
SERVICE_TOKEN = "service-token-0123456789abcdef"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"webhook-secret-for-tests-32bytes").decode()
FLOW_SECRET = "flow-secret-0123456789abcdef"


def make_settings(directus_url: str, directus_token: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "directus_url": directus_url,
        "directus_token": directus_token,
        "ridendine_api_url": RIDENDINE_URL,
        "ridendine_api_key": RIDENDINE_KEY,
        "webhook_secrets": (WEBHOOK_SECRET,),
        "api_tokens": (SERVICE_TOKEN,),
        "flow_secret": FLOW_SECRET,
        "admin_emails": ("admins@example.com",),
        "directus_timeout_seconds": 5.0,
        "ridendine_timeout_seconds": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Settings, database_url: str | None = None) -> dict[str, str]:
    """The environment variables that give `settings` (for CLI and subprocess tests)."""
    env = {
        "BRIDGE_DIRECTUS_URL": settings.directus_url,
        "BRIDGE_DIRECTUS_TOKEN": settings.directus_token,
        "BRIDGE_RIDENDINE_API_URL": settings.ridendine_api_url,
        "BRIDGE_RIDENDINE_API_KEY": settings.ridendine_api_key,
        "BRIDGE_WEBHOOK_SECRETS": ",".join(settings.webhook_secrets),
        "BRIDGE_API_TOKENS": ",".join(settings.api_tokens),
        "BRIDGE_ADMIN_EMAILS": ",".join(settings.admin_emails),
    }
    if settings.flow_secret:
        env["BRIDGE_FLOW_SECRET"] = settings.flow_secret
    if database_url:
        env["BRIDGE_DATABASE_URL"] = database_url
    return env


def unique_id(prefix: str = "ord") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def random_token() -> str:
    return secrets.token_urlsafe(24)


def make_user(
    client: Any, *, role: str | None = None, admin: bool = False, email_notifications: bool = False
) -> dict[str, Any]:
    """A Directus user with a static token; `admin` gives it the admin policy's access.
    Directus e-mails a user each in-app notification only with `email_notifications` (off
    here, unlike Directus's default: tests count the bridge's own e-mails, and every admin
    gets an in-app notice of each refund that needs review).

    Returns {"id", "email", "token"}.
    """
    token = "user-" + secrets.token_hex(16)
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    values: dict[str, Any] = {
        "email": email,
        "token": token,
        "status": "active",
        "password": secrets.token_hex(12),
        "email_notifications": email_notifications,
    }
    if admin:
        values["role"] = admin_role_id(client)
    elif role:
        values["role"] = role
    created = client.create_system("users", values)
    return {"id": created["id"], "email": email, "token": token}


def admin_role_id(client: Any) -> str:
    roles = client.list_system("roles", filter={"name": {"_eq": "Administrator"}})
    return str(roles[0]["id"])


def make_order(
    client: Any,
    *,
    amount_paid_cents: int = 10_000,
    payment_status: str = "PAID",
    status: str = "DELIVERED",
    ridendine_order_id: str | None = "",
    customer: str | None = None,
    chef: str | None = None,
    currency: str = "EUR",
    order_id: str | None = None,
) -> dict[str, Any]:
    """An order in Directus's `orders` collection with a unique id."""
    order_id = order_id or unique_id("ord")
    values = {
        "id": order_id,
        "ridendine_order_id": (
            f"rdn-{order_id}" if ridendine_order_id == "" else ridendine_order_id
        ),
        "status": status,
        "payment_status": payment_status,
        "amount_paid_cents": amount_paid_cents,
        "currency": currency,
        "customer": customer,
        "chef": chef,
    }
    client.create_item("orders", values)
    return values


def count_requests(client: DirectusClient) -> Counter[str]:
    """Every request the client sends from now on, as "METHOD /path" (ids left out)."""
    counted: Counter[str] = Counter()
    send = client.session.send

    def counting(prepared: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        parts = urlsplit(prepared.url or "").path.split("/")
        path = "/".join(parts[:3]) if parts[1] in ("items", "flows") else "/".join(parts)
        counted[f"{prepared.method} {path}"] += 1
        return send(prepared, **kwargs)

    client.session.send = counting  # type: ignore[method-assign]
    return counted


def new_refund(order_id: str = "ord-1", amount: int = 1000, **values: object) -> Refund:
    """A PENDING refund with its first history line, not yet added to a session."""
    defaults: dict[str, object] = {
        "ridendine_order_id": "rdn-1",
        "currency": "EUR",
        "reason": "chef_rejected",
        "requested_by": "admin",
    }
    refund = Refund(
        order_id=order_id,
        amount_cents=amount,
        status=RefundStatus.PENDING,
        **{**defaults, **values},
    )
    ledger.record_created(refund)
    return refund
