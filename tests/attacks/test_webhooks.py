"""Attacks on the refund-status webhook: forged, replayed and tampered deliveries.

Each is refused with 401 problem+json, nothing is recorded, and the log says why (the answer
does not: one 401 for every cause). A genuine redelivery is recognised and changes nothing.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bridge import create_app
from bridge.config import Settings
from bridge.services import get_services
from tests.support import reliability
from tests.support.helpers import RIDENDINE_KEY, SERVICE_TOKEN, WEBHOOK_SECRET
from tests.support.webhook_helpers import WEBHOOK_URL, event_body, inbox_count, sign

OTHER_SECRET = "whsec_" + base64.b64encode(b"an-attacker-guessed-this-secret!").decode()
REFUSALS: list[str] = []


def body() -> bytes:
    return event_body("re_attack", "ord-attack", 5000, "REFUNDED")


def refused(client: FlaskClient, data: bytes, headers: dict[str, str], app: Flask) -> str:
    answer = client.post(WEBHOOK_URL, data=data, headers=headers)
    assert answer.status_code == 401, answer.get_data(as_text=True)
    assert answer.mimetype == "application/problem+json"
    problem = answer.get_json()
    assert problem["code"] == "not_authenticated"
    assert problem["detail"] == "The webhook could not be verified."
    with app.app_context():
        assert inbox_count(get_services()) == 0
    return answer.get_data(as_text=True)


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="bridge.webhooks.verify")
    return caplog


def _cause(caplog: pytest.LogCaptureFixture) -> str:
    (record,) = [r for r in caplog.records if r.name == "bridge.webhooks.verify"]
    caplog.clear()
    REFUSALS.append(record.getMessage())
    return record.getMessage()


def test_forged_with_another_secret(
    client: FlaskClient, app: Flask, logged: pytest.LogCaptureFixture
) -> None:
    data = body()
    refused(client, data, sign(data, secret=OTHER_SECRET), app)
    assert "rejected" in _cause(logged)


def test_forged_with_our_other_credentials_as_the_secret(
    client: FlaskClient, app: Flask, logged: pytest.LogCaptureFixture
) -> None:
    data = body()
    for credential in (SERVICE_TOKEN, RIDENDINE_KEY):
        secret = "whsec_" + base64.b64encode(credential.encode()).decode()
        refused(client, data, sign(data, secret=secret), app)
        _cause(logged)
    # A bearer token instead of a signature (the signature scheme is configured).
    refused(
        client,
        data,
        {"Authorization": f"Bearer {SERVICE_TOKEN}", "Content-Type": "application/json"},
        app,
    )
    assert "missing" in _cause(logged)
    # The secret itself as the signature.
    headers = sign(data)
    headers["webhook-signature"] = f"v1,{WEBHOOK_SECRET.removeprefix('whsec_')}"
    text = refused(client, data, headers, app)
    assert WEBHOOK_SECRET.removeprefix("whsec_") not in text
    _cause(logged)


def test_unsigned(client: FlaskClient, app: Flask, logged: pytest.LogCaptureFixture) -> None:
    data = body()
    refused(client, data, {"Content-Type": "application/json"}, app)
    assert "missing webhook-id" in _cause(logged)


@pytest.mark.parametrize(
    "change",
    [
        "amount",
        "status",
        "refund_id",
        "order",
        "whitespace",
        "extra field",
        "webhook-id",
        "timestamp",
        "signature bit",
    ],
)
def test_tampered(
    client: FlaskClient, app: Flask, logged: pytest.LogCaptureFixture, change: str
) -> None:
    original = body()
    headers = sign(original)
    payload = json.loads(original)
    tampered = original
    if change == "amount":
        payload["amount_cents"] = 500000
    elif change == "status":
        payload["status"] = "FAILED"
    elif change == "refund_id":
        payload["refund_id"] = "re_someone_else"
    elif change == "order":
        payload["external_order_id"] = "ord-victim"
    elif change == "extra field":
        payload["note"] = "x"
    if change in ("amount", "status", "refund_id", "order", "extra field"):
        tampered = json.dumps(payload).encode()
    elif change == "whitespace":
        tampered = original + b" "
    elif change == "webhook-id":
        headers["webhook-id"] = "msg_replaced"
    elif change == "timestamp":
        headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) + 1)
    else:
        scheme, signature = headers["webhook-signature"].split(",", 1)
        raw = bytearray(base64.b64decode(signature))
        raw[0] ^= 1
        headers["webhook-signature"] = f"{scheme},{base64.b64encode(bytes(raw)).decode()}"
    refused(client, tampered, headers, app)
    _cause(logged)


def test_replayed_within_the_window_is_a_duplicate_that_changes_nothing(
    client: FlaskClient, app: Flask
) -> None:
    data = body()
    headers = sign(data)
    first = client.post(WEBHOOK_URL, data=data, headers=headers)
    assert (first.status_code, first.get_json()) == (200, {"status": "accepted"})
    for _ in range(3):
        again = client.post(WEBHOOK_URL, data=data, headers=headers)
        assert (again.status_code, again.get_json()) == (200, {"status": "duplicate"})
    with app.app_context():
        assert inbox_count(get_services()) == 1


@pytest.mark.parametrize("age", [timedelta(minutes=6), timedelta(minutes=-6), timedelta(days=400)])
def test_replayed_outside_the_window(
    client: FlaskClient, app: Flask, logged: pytest.LogCaptureFixture, age: timedelta
) -> None:
    data = body()
    refused(client, data, sign(data, timestamp=datetime.now(UTC) - age), app)
    assert "timestamp" in _cause(logged).lower()


def test_a_replay_with_a_fresh_timestamp_needs_the_secret(
    client: FlaskClient, app: Flask, logged: pytest.LogCaptureFixture
) -> None:
    data = body()
    old = sign(data, timestamp=datetime.now(UTC) - timedelta(minutes=10))
    old["webhook-timestamp"] = str(int(datetime.now(UTC).timestamp()))
    refused(client, data, old, app)
    _cause(logged)


def test_malformed_signature_headers(
    client: FlaskClient, app: Flask, logged: pytest.LogCaptureFixture
) -> None:
    data = body()
    for signature in (
        "v1," + "A" * 5000,
        "v1,not base64!!",
        "garbage",
        "v1," + " v1," * 1000,
        "\u00e9\u00e9",
    ):
        headers = sign(data)
        headers["webhook-signature"] = signature
        refused(client, data, headers, app)
        _cause(logged)
    for webhook_id in ("x" * 300, "id with spaces"):
        headers = sign(data, webhook_id=webhook_id)
        refused(client, data, headers, app)
        _cause(logged)
    for timestamp in ("1.7e9", "-1", "9" * 40, "now"):
        headers = sign(data)
        headers["webhook-timestamp"] = timestamp
        refused(client, data, headers, app)
        _cause(logged)


def test_bearer_mode_refuses_every_other_credential(
    settings: Settings, database_url: str, logged: pytest.LogCaptureFixture
) -> None:
    bearer = "webhook-bearer-token-0123456789"
    app = create_app(
        {
            "BRIDGE_SETTINGS": replace(
                settings, webhook_auth="bearer", webhook_bearer_token=bearer
            ),
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )
    client = app.test_client()
    data = body()
    for token in (SERVICE_TOKEN, RIDENDINE_KEY, WEBHOOK_SECRET, bearer + "x", bearer[:-1]):
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        refused(client, data, headers, app)
        _cause(logged)
    # A valid signature is not a bearer token either.
    refused(client, data, sign(data), app)
    _cause(logged)
    good = client.post(
        WEBHOOK_URL,
        data=data,
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
    )
    assert good.status_code == 200
    reliability.record("test_attacks_webhooks", refused=len(REFUSALS))
