"""The refund-status webhook's authenticity (contract section 3): Standard Webhooks signatures,
rotation, the 5-minute window, every malformed header a 401, and the explicit bearer mode.
Nothing is recorded for a request that is not authentic."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from bridge import create_app
from bridge.config import Settings
from bridge.services import Services
from bridge.store.models import InboxEvent
from tests.support.helpers import WEBHOOK_SECRET, make_settings
from tests.support.webhook_helpers import WEBHOOK_URL, event_body, inbox_count, sign

OTHER_SECRET = "whsec_" + base64.b64encode(b"another-secret-for-the-rotation!").decode()
BEARER = "bearer-token-for-the-webhook-0123456789"


def services_of(app: Flask) -> Services:
    services: Services = app.extensions["bridge.services"]
    return services


def body() -> bytes:
    return event_body("re_auth_1", "ord-auth-1", 5000, "REFUNDED")


def assert_401(response: object) -> None:
    assert response.status_code == 401  # type: ignore[attr-defined]
    assert response.mimetype == "application/problem+json"  # type: ignore[attr-defined]
    problem = response.get_json()  # type: ignore[attr-defined]
    assert problem["code"] == "not_authenticated"
    text = response.get_data(as_text=True)  # type: ignore[attr-defined]
    assert WEBHOOK_SECRET not in text and "whsec_" not in text


def test_a_good_signature_is_accepted(app: Flask, client: FlaskClient) -> None:
    data = body()
    response = client.post(WEBHOOK_URL, data=data, headers=sign(data))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"status": "accepted"}
    assert inbox_count(services_of(app)) == 1


def _bad_requests() -> dict[str, tuple[bytes, dict[str, str]]]:
    data = body()
    now = datetime.now(UTC)
    good = sign(data, webhook_id="msg_fixed")
    cases: dict[str, tuple[bytes, dict[str, str]]] = {
        "wrong secret": (data, sign(data, secret=OTHER_SECRET)),
        "old timestamp": (data, sign(data, timestamp=now - timedelta(minutes=6))),
        "future timestamp": (data, sign(data, timestamp=now + timedelta(minutes=6))),
        "tampered body": (data.replace(b"5000", b"9000"), good),
        "signature of another id": (data, {**good, "webhook-id": "msg_other"}),
        "no comma in signature": (data, {**good, "webhook-signature": "v1" + "A" * 44}),
        "bad base64": (data, {**good, "webhook-signature": "v1,%%%not-base64%%%"}),
        "two commas": (data, {**good, "webhook-signature": "v1,abc,def"}),
        "empty signature": (data, {**good, "webhook-signature": " "}),
        "unknown version only": (data, {**good, "webhook-signature": "v2,abcd"}),
        "timestamp not a number": (data, {**good, "webhook-timestamp": "yesterday"}),
        "timestamp as a float": (
            data,
            {**good, "webhook-timestamp": good["webhook-timestamp"] + ".0"},
        ),
        "timestamp huge": (data, {**good, "webhook-timestamp": "9" * 40}),
        "webhook-id with spaces": (data, {**good, "webhook-id": "msg with spaces"}),
        "webhook-id too long": (data, {**good, "webhook-id": "m" * 256}),
        "signature header too long": (
            data,
            {**good, "webhook-signature": " ".join([good["webhook-signature"]] * 200)},
        ),
    }
    for header in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        cases[f"missing {header}"] = (data, {k: v for k, v in good.items() if k != header})
    not_utf8 = b'{"refund_id": "\xff\xfe", "amount_cents": 1}'
    cases["body not UTF-8"] = (not_utf8, {**good})
    return cases


@pytest.mark.parametrize("case", sorted(_bad_requests()))
def test_bad_requests_are_401_and_record_nothing(
    app: Flask, client: FlaskClient, case: str
) -> None:
    data, headers = _bad_requests()[case]
    response = client.post(WEBHOOK_URL, data=data, headers=headers)
    assert_401(response)
    assert inbox_count(services_of(app)) == 0


def test_a_malformed_entry_does_not_hide_a_good_one(app: Flask, client: FlaskClient) -> None:
    data = body()
    headers = sign(data)
    headers["webhook-signature"] = "garbage v1,%%% " + headers["webhook-signature"]
    response = client.post(WEBHOOK_URL, data=data, headers=headers)
    assert response.status_code == 200
    assert inbox_count(services_of(app)) == 1


def rotation_app(database_url: str, secrets: tuple[str, ...]) -> Flask:
    settings = make_settings("http://127.0.0.1:9", "unused", webhook_secrets=secrets)
    return create_app(
        {"BRIDGE_SETTINGS": settings, "DATABASE_URL": database_url, "AUTO_MIGRATE": True}
    )


def test_rotation_accepts_either_secret(database_url: str) -> None:
    app = rotation_app(database_url, (WEBHOOK_SECRET, OTHER_SECRET))
    client = app.test_client()
    old = event_body("re_rot_old", "ord-rot", 100)
    new = event_body("re_rot_new", "ord-rot", 200)
    third = "whsec_" + base64.b64encode(b"a-third-secret-nobody-configured").decode()
    stranger = event_body("re_rot_3", "ord-rot", 300)
    assert client.post(WEBHOOK_URL, data=old, headers=sign(old)).status_code == 200
    assert (
        client.post(WEBHOOK_URL, data=new, headers=sign(new, secret=OTHER_SECRET)).status_code
        == 200
    )
    assert_401(client.post(WEBHOOK_URL, data=stranger, headers=sign(stranger, secret=third)))
    assert inbox_count(services_of(app)) == 2


def test_rotation_sender_may_send_both_signatures(database_url: str) -> None:
    app = rotation_app(database_url, (OTHER_SECRET,))
    data = body()
    headers = sign(data, webhook_id="msg_both")
    with_new = sign(data, webhook_id="msg_both", secret=OTHER_SECRET)
    headers["webhook-signature"] += " " + with_new["webhook-signature"]
    response = app.test_client().post(WEBHOOK_URL, data=data, headers=headers)
    assert response.status_code == 200


@pytest.fixture
def bearer_app(database_url: str) -> Flask:
    settings: Settings = make_settings(
        "http://127.0.0.1:9",
        "unused",
        webhook_auth="bearer",
        webhook_bearer_token=BEARER,
        webhook_secrets=(),
    )
    return create_app(
        {"BRIDGE_SETTINGS": settings, "DATABASE_URL": database_url, "AUTO_MIGRATE": True}
    )


def test_bearer_mode_accepts_the_token(bearer_app: Flask) -> None:
    client = bearer_app.test_client()
    data = body()
    headers = {"Authorization": f"Bearer {BEARER}", "Content-Type": "application/json"}
    first = client.post(WEBHOOK_URL, data=data, headers=headers)
    assert first.status_code == 200 and first.get_json() == {"status": "accepted"}
    # Without a webhook-id the body's digest is the delivery id: a redelivery is a duplicate.
    again = client.post(WEBHOOK_URL, data=data, headers=headers)
    assert again.get_json() == {"status": "duplicate"}
    assert inbox_count(services_of(bearer_app)) == 1


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong-token", f"Basic {BEARER}", f"Bearer {BEARER}x"],
)
def test_bearer_mode_refuses_anything_else(bearer_app: Flask, authorization: str | None) -> None:
    data = body()
    headers = sign(data)  # a valid signature is not what this deployment asked for
    if authorization is not None:
        headers["Authorization"] = authorization
    response = bearer_app.test_client().post(WEBHOOK_URL, data=data, headers=headers)
    assert_401(response)
    assert inbox_count(services_of(bearer_app)) == 0


def test_verification_comes_before_the_content_type(app: Flask, client: FlaskClient) -> None:
    data = body()
    headers = {**sign(data, secret=OTHER_SECRET), "Content-Type": "text/plain"}
    assert_401(client.post(WEBHOOK_URL, data=data, headers=headers))


def test_the_inbox_keeps_no_secret(app: Flask, client: FlaskClient) -> None:
    data = body()
    headers = {**sign(data), "Authorization": "Bearer should-not-be-kept", "Cookie": "a=b"}
    assert client.post(WEBHOOK_URL, data=data, headers=headers).status_code == 200
    with services_of(app).store.session() as session:
        event = session.scalar(select(InboxEvent))
        assert event is not None
        assert set(event.headers) <= {
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "content-type",
            "content-length",
            "user-agent",
            "x-request-id",
        }
        assert "should-not-be-kept" not in str(event.headers)
        assert event.raw_body == data
