"""Is a refund-status webhook really from RideNDine? (contract section 3)

Standard Webhooks, by the `standardwebhooks` reference implementation: an HMAC-SHA256 over
`"{webhook-id}.{webhook-timestamp}.{raw body}"`, checked against every configured secret (several
during a rotation), constant-time, with timestamps accepted within 5 minutes either way. The
library raises all sorts of exceptions on malformed input (bad base64, a signature entry without
a comma, a body that is not UTF-8, a timestamp that is not a number); here every one of them is
the same `WebhookAuthError`, answered 401 `not_authenticated` with nothing recorded.

A deployment whose partner cannot sign may set BRIDGE_WEBHOOK_AUTH=bearer: then the request must
carry `Authorization: Bearer <BRIDGE_WEBHOOK_BEARER_TOKEN>` (compared in constant time) instead.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Mapping
from functools import lru_cache

from standardwebhooks.webhooks import Webhook

from bridge.config import Settings
from bridge.errors import NotAuthenticated

log = logging.getLogger(__name__)

# What the store can hold and what a sane sender sends.
MAX_WEBHOOK_ID = 255
MAX_SIGNATURE_HEADER = 4096
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_WEBHOOK_ID = re.compile(r"^[\x21-\x7e]{1,255}$")


class WebhookAuthError(NotAuthenticated):
    """The webhook could not be verified (one answer for every cause; the log says which)."""

    def __init__(self, cause: str) -> None:
        super().__init__("The webhook could not be verified.")
        self.cause = cause


@lru_cache(maxsize=8)
def _webhooks(secrets: tuple[str, ...]) -> tuple[Webhook, ...]:
    return tuple(Webhook(secret) for secret in secrets)


def verify_signature(raw_body: bytes, headers: Mapping[str, str], secrets: tuple[str, ...]) -> str:
    """Check the Standard Webhooks signature; return the webhook id."""
    webhook_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signature = headers.get("webhook-signature", "")
    if not (webhook_id and timestamp and signature):
        raise WebhookAuthError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not _WEBHOOK_ID.match(webhook_id):
        raise WebhookAuthError("webhook-id is not a printable token of at most 255 characters")
    # Whole seconds only: the library would accept "1.7e9" and sign the floored value.
    if not _TIMESTAMP.match(timestamp):
        raise WebhookAuthError("webhook-timestamp is not whole Unix seconds")
    if len(signature) > MAX_SIGNATURE_HEADER:
        raise WebhookAuthError("webhook-signature is too long")
    # Keep the well-formed "version,signature" entries: one malformed entry must not hide a
    # good one (the library stops at the first entry it cannot split).
    entries = [entry for entry in signature.split(" ") if entry.count(",") == 1]
    if not entries:
        raise WebhookAuthError("webhook-signature has no 'v1,<base64>' entry")
    try:
        raw_body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookAuthError("the body is not UTF-8") from None
    checked = {
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": " ".join(entries),
    }
    last_cause = "no secret matched"
    for webhook in _webhooks(secrets):
        try:
            webhook.verify(raw_body, checked, json_parse=False)
        except Exception as exc:  # noqa: BLE001 - every failure is the same 401
            last_cause = f"{type(exc).__name__}: {exc}"
            continue
        return webhook_id
    raise WebhookAuthError(last_cause)


def verify_bearer(raw_body: bytes, headers: Mapping[str, str], token: str) -> str:
    """Check `Authorization: Bearer <token>`; return the webhook id (the `webhook-id` header
    when the partner sends one, else a digest of the body, so a byte-identical redelivery is
    recognised)."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise WebhookAuthError("no bearer token")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise WebhookAuthError("wrong bearer token")
    webhook_id = headers.get("webhook-id", "")
    if webhook_id and _WEBHOOK_ID.match(webhook_id):
        return webhook_id
    return "sha256:" + hashlib.sha256(raw_body).hexdigest()


def verify_request(settings: Settings, raw_body: bytes, headers: Mapping[str, str]) -> str:
    """Verify by the configured scheme; return the webhook id or raise WebhookAuthError."""
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        if settings.webhook_auth == "bearer":
            return verify_bearer(raw_body, lowered, settings.webhook_bearer_token or "")
        return verify_signature(raw_body, lowered, settings.webhook_secrets)
    except WebhookAuthError as exc:
        # The cause is for the log only (it never names a secret); the answer is one 401.
        log.warning("refund-status webhook rejected: %s", exc.cause)
        raise
