"""The refund-status webhook's body (contract sections 3 and 6): 400/413/415 problem+json for
what is not the contract's shape, extra fields kept, the store down answered 503, and nothing
recorded for any rejected request."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text

from bridge import create_app
from bridge.services import Services
from bridge.store.models import InboxEvent
from tests.support.helpers import make_settings
from tests.support.webhook_helpers import WEBHOOK_URL, event_body, inbox_count, sign

PROBLEM = "application/problem+json"


def services_of(app: Flask) -> Services:
    services: Services = app.extensions["bridge.services"]
    return services


def valid() -> dict[str, Any]:
    return {
        "refund_id": "re_valid_1",
        "external_order_id": "ord-valid-1",
        "amount_cents": 5000,
        "status": "REFUNDED",
    }


def without(field: str) -> dict[str, Any]:
    return {k: v for k, v in valid().items() if k != field}


BAD_BODIES: dict[str, tuple[bytes, str]] = {
    "malformed JSON": (b'{"refund_id": "re_1", ', "_body"),
    "a JSON array": (b"[1, 2, 3]", "_body"),
    "a JSON string": (b'"REFUNDED"', "_body"),
    "NaN amount": (
        b'{"refund_id":"r","external_order_id":"o","amount_cents":NaN,"status":"FAILED"}',
        "_body",
    ),
    "a 5000-digit amount": (
        b'{"refund_id":"r","external_order_id":"o","status":"FAILED","amount_cents":'
        + b"9" * 5000
        + b"}",
        "_body",
    ),
    "a lone surrogate": (
        json.dumps({**valid(), "reason": "\ud800"}).encode(),
        "_body",
    ),
    "deeply nested extra": (
        b'{"refund_id":"r","external_order_id":"o","amount_cents":1,"status":"FAILED","x":'
        + b"[" * 20000
        + b"]" * 20000
        + b"}",
        "_body",
    ),
    "a string amount": (json.dumps({**valid(), "amount_cents": "5000"}).encode(), "amount_cents"),
    "a negative amount": (json.dumps({**valid(), "amount_cents": -5}).encode(), "amount_cents"),
    "a zero amount": (json.dumps({**valid(), "amount_cents": 0}).encode(), "amount_cents"),
    "a float amount": (json.dumps({**valid(), "amount_cents": 50.5}).encode(), "amount_cents"),
    "a whole float amount": (
        json.dumps({**valid(), "amount_cents": 50.0}).encode(),
        "amount_cents",
    ),
    "a boolean amount": (json.dumps({**valid(), "amount_cents": True}).encode(), "amount_cents"),
    "a huge amount": (json.dumps({**valid(), "amount_cents": 10**13}).encode(), "amount_cents"),
    "a null amount": (json.dumps({**valid(), "amount_cents": None}).encode(), "amount_cents"),
    "an unknown status": (json.dumps({**valid(), "status": "PENDING"}).encode(), "status"),
    "a lower-case status": (json.dumps({**valid(), "status": "refunded"}).encode(), "status"),
    "no refund_id": (json.dumps(without("refund_id")).encode(), "refund_id"),
    "no external_order_id": (
        json.dumps(without("external_order_id")).encode(),
        "external_order_id",
    ),
    "no amount": (json.dumps(without("amount_cents")).encode(), "amount_cents"),
    "no status": (json.dumps(without("status")).encode(), "status"),
    "an empty refund_id": (json.dumps({**valid(), "refund_id": ""}).encode(), "refund_id"),
    "a blank refund_id": (json.dumps({**valid(), "refund_id": "   "}).encode(), "refund_id"),
    "a numeric refund_id": (json.dumps({**valid(), "refund_id": 12}).encode(), "refund_id"),
    "a long order id": (
        json.dumps({**valid(), "external_order_id": "o" * 256}).encode(),
        "external_order_id",
    ),
    "a control character": (
        json.dumps({**valid(), "external_order_id": "ord\n1"}).encode(),
        "external_order_id",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_bodies_are_400_and_record_nothing(app: Flask, client: FlaskClient, case: str) -> None:
    data, field = BAD_BODIES[case]
    response = client.post(WEBHOOK_URL, data=data, headers=sign(data))
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    problem = response.get_json()
    assert problem["code"] == "validation_error"
    assert field in problem["errors"], problem
    assert "Traceback" not in response.get_data(as_text=True)
    assert inbox_count(services_of(app)) == 0


def test_a_body_not_utf8_is_400_in_bearer_mode(database_url: str) -> None:
    # In signature mode such a body cannot be signed (401, see test_webhook_auth.py).
    settings = make_settings(
        "http://127.0.0.1:9",
        "unused",
        webhook_auth="bearer",
        webhook_bearer_token="bearer-token-0123456789abcdef",
    )
    app = create_app(
        {"BRIDGE_SETTINGS": settings, "DATABASE_URL": database_url, "AUTO_MIGRATE": True}
    )
    response = app.test_client().post(
        WEBHOOK_URL,
        data=b'{"refund_id": "\xff"}',
        headers={
            "Authorization": "Bearer bearer-token-0123456789abcdef",
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 400
    assert response.get_json()["errors"] == {"_body": ["The body is not valid JSON."]}
    assert inbox_count(services_of(app)) == 0


def test_a_body_over_64_kib_is_413(app: Flask, client: FlaskClient) -> None:
    data = json.dumps({**valid(), "padding": "x" * (1024 * 1024)}).encode()
    response = client.post(WEBHOOK_URL, data=data, headers=sign(data))
    assert response.status_code == 413
    assert response.mimetype == PROBLEM
    assert response.get_json()["code"] == "payload_too_large"
    assert inbox_count(services_of(app)) == 0


def test_just_under_64_kib_is_accepted(app: Flask, client: FlaskClient) -> None:
    base = json.dumps({**valid(), "padding": ""}).encode()
    data = json.dumps({**valid(), "padding": "x" * (64 * 1024 - len(base))}).encode()
    assert len(data) == 64 * 1024
    assert client.post(WEBHOOK_URL, data=data, headers=sign(data)).status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_not_json_is_415(app: Flask, client: FlaskClient, content_type: str | None) -> None:
    data = event_body("re_ct", "ord-ct", 100)
    headers = sign(data)
    del headers["Content-Type"]
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post(WEBHOOK_URL, data=data, headers=headers)
    assert response.status_code == 415
    assert response.mimetype == PROBLEM
    assert response.get_json()["code"] == "unsupported_media_type"
    assert inbox_count(services_of(app)) == 0


def test_json_with_a_charset_is_json(app: Flask, client: FlaskClient) -> None:
    data = event_body("re_cs", "ord-cs", 100)
    headers = {**sign(data), "Content-Type": "application/json; charset=utf-8"}
    assert client.post(WEBHOOK_URL, data=data, headers=headers).status_code == 200


def test_extra_fields_are_accepted_and_kept(app: Flask, client: FlaskClient) -> None:
    payload = {
        **valid(),
        "status": "FAILED",
        "reason": "chef_rejected",
        "reason_comments": "chef closed early",
        "currency_code": "EUR",
        "failure_reason": "card expired",
        "amount_details": {"tax_cents": 100, "shipping_cents": None},
        "items": [{"external_id": "i1", "name": "Soup", "quantity": 1, "amount_cents": 5000}],
        "something_new": {"nested": [1, "two", {"three": 3.5}]},
    }
    data = json.dumps(payload).encode()
    response = client.post(WEBHOOK_URL, data=data, headers=sign(data))
    assert response.status_code == 200
    with services_of(app).store.session() as session:
        event = session.scalar(select(InboxEvent))
        assert event is not None
        assert event.payload == payload
        assert event.raw_body == data


def test_the_store_unable_to_record_is_503(app: Flask, client: FlaskClient) -> None:
    with services_of(app).store.engine.begin() as connection:
        connection.execute(text("DROP TABLE inbox_events"))
    data = event_body("re_503", "ord-503", 100)
    response = client.post(WEBHOOK_URL, data=data, headers=sign(data))
    assert response.status_code == 503
    assert response.mimetype == PROBLEM
    assert response.get_json()["code"] == "service_unavailable"
    assert "inbox_events" not in response.get_data(as_text=True)
