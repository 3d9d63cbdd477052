"""The refund request body at the edge (contract sections 1 and 6): every bad field is a 400
problem with per-field errors, before Directus or RideNDine are asked (the app's Directus URL
leads nowhere here, so a request that got further would answer 503)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from directus_client import DirectusClient
from tests.support.helpers import SERVICE_TOKEN

PROBLEM = "application/problem+json"
SERVICE = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
VALID: dict[str, Any] = {"order_id": "ord-1", "reason": "chef_rejected", "requested_by": "admin"}
ITEM: dict[str, Any] = {"external_id": "d1", "name": "Curry", "quantity": 1, "amount_cents": 900}


@pytest.fixture(autouse=True)
def unreachable_directus_fails_fast(app: Flask) -> None:
    """The app's Directus leads nowhere; without retries a request that gets that far fails
    at once (with 503) instead of after the client's backoff."""
    services = app.extensions["bridge.services"]
    services.directus = DirectusClient(services.settings.directus_url, "unused", retries=0)


def post(client: FlaskClient, body: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post("/ridendine/refunds", json=body, headers=headers or SERVICE)


def errors_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json()
    assert body["code"] == "validation_error"
    assert body["type"].endswith("/validation_error")
    assert isinstance(body["errors"], dict)
    return body["errors"]  # type: ignore[no-any-return]


def test_a_valid_body_gets_past_validation(client: FlaskClient) -> None:
    # The next step reads the order from Directus, which is unreachable here.
    response = post(client, VALID)
    assert response.status_code == 503
    assert response.get_json()["code"] == "directus_unavailable"


BAD_FIELDS: list[tuple[str, dict[str, Any]]] = [
    # order_id
    ("order_id", {"order_id": None}),
    ("order_id", {"order_id": True}),
    ("order_id", {"order_id": 1.5}),
    ("order_id", {"order_id": []}),
    ("order_id", {"order_id": {"_eq": "x"}}),
    ("order_id", {"order_id": ""}),
    ("order_id", {"order_id": "   "}),
    ("order_id", {"order_id": "x" * 256}),
    ("order_id", {"order_id": "x" * 10_240}),
    ("order_id", {"order_id": "a\u0000b"}),
    ("order_id", {"order_id": "a\nb"}),
    # amount_cents
    ("amount_cents", {"amount_cents": 0}),
    ("amount_cents", {"amount_cents": -100}),
    ("amount_cents", {"amount_cents": 12.5}),
    ("amount_cents", {"amount_cents": 100.0}),
    ("amount_cents", {"amount_cents": "100"}),
    ("amount_cents", {"amount_cents": True}),
    ("amount_cents", {"amount_cents": None}),
    ("amount_cents", {"amount_cents": 10**13}),
    ("amount_cents", {"amount_cents": 10**40}),
    # reason
    ("reason", {"reason": "refund_please"}),
    ("reason", {"reason": ""}),
    ("reason", {"reason": 1}),
    ("reason", {"reason": None}),
    # requested_by
    ("requested_by", {"requested_by": "chef"}),
    ("requested_by", {"requested_by": "ADMIN"}),
    ("requested_by", {"requested_by": 1}),
    # requested_by_user
    ("requested_by_user", {"requested_by_user": ""}),
    ("requested_by_user", {"requested_by_user": 5}),
    ("requested_by_user", {"requested_by_user": "u" * 256}),
    # reason_comments
    ("reason_comments", {"reason_comments": "c" * 501}),
    ("reason_comments", {"reason_comments": ["no"]}),
    # items
    ("items", {"items": []}),
    ("items", {"items": "curry"}),
    ("items", {"items": [{}]}),
    ("items", {"items": [{**ITEM, "quantity": 0}]}),
    ("items", {"items": [{**ITEM, "quantity": 1.5}]}),
    ("items", {"items": [{**ITEM, "amount_cents": -1}]}),
    ("items", {"items": [{**ITEM, "amount_cents": "900"}]}),
    ("items", {"items": [{**ITEM, "colour": "red"}]}),
    ("items", {"items": [{**ITEM, "amount_cents": 0}]}),
    ("items", {"items": [ITEM] * 101}),
    ("amount_cents", {"items": [ITEM], "amount_cents": 901}),
    # percent
    ("percent", {"percent": 0}),
    ("percent", {"percent": 101}),
    ("percent", {"percent": 50.5}),
    ("percent", {"percent": "50"}),
    ("percent", {"percent": True}),
    ("percent", {"percent": 50, "amount_cents": 100}),
    ("percent", {"percent": 50, "items": [ITEM]}),
    # unknown fields
    ("currency", {"currency": "EUR"}),
    ("status", {"status": "REFUNDED"}),
]


@pytest.mark.parametrize(
    ("field", "change"), BAD_FIELDS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_FIELDS)]
)
def test_each_bad_field_is_a_400_naming_it(
    client: FlaskClient, field: str, change: dict[str, Any]
) -> None:
    errors = errors_of(post(client, {**VALID, **change}))
    assert field in errors, errors
    assert json.dumps(errors)  # plain JSON: string keys, string messages


@pytest.mark.parametrize("missing", ["order_id", "reason", "requested_by"])
def test_required_fields(client: FlaskClient, missing: str) -> None:
    body = {key: value for key, value in VALID.items() if key != missing}
    assert missing in errors_of(post(client, body))


def test_all_errors_are_reported_at_once(client: FlaskClient) -> None:
    errors = errors_of(post(client, {"amount_cents": 1.5, "reason": "x", "extra": 1}))
    assert {"order_id", "amount_cents", "reason", "extra"} <= set(errors)


def test_item_errors_name_the_item_and_field(client: FlaskClient) -> None:
    errors = errors_of(post(client, {**VALID, "items": [ITEM, {**ITEM, "quantity": 0}]}))
    assert errors["items"] == {
        "1": {"quantity": ["Must be greater than or equal to 1 and less than or equal to 10000."]}
    }


@pytest.mark.parametrize(
    "raw",
    [b"{", b"", b"{'order_id': 1}", b'{"amount_cents": NaN}', b"[" * 20_000 + b"]" * 20_000],
    ids=["truncated", "empty", "single-quotes", "nan", "deep"],
)
def test_bad_json_is_400(client: FlaskClient, raw: bytes) -> None:
    response = client.post(
        "/ridendine/refunds", data=raw, headers={**SERVICE, "Content-Type": "application/json"}
    )
    assert "_schema" in errors_of(response)


@pytest.mark.parametrize("body", [[], [VALID], "text", 5, None, True])
def test_body_must_be_an_object(client: FlaskClient, body: Any) -> None:
    response = client.post(
        "/ridendine/refunds",
        data=json.dumps(body),
        headers={**SERVICE, "Content-Type": "application/json"},
    )
    assert "_schema" in errors_of(response)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/merge-patch+json"],
)
def test_body_must_be_application_json(client: FlaskClient, content_type: str | None) -> None:
    headers = dict(SERVICE)
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post("/ridendine/refunds", data=json.dumps(VALID), headers=headers)
    assert response.status_code == 415
    assert response.mimetype == PROBLEM
    assert response.get_json()["code"] == "unsupported_media_type"


def test_json_with_a_charset_is_fine(client: FlaskClient) -> None:
    response = client.post(
        "/ridendine/refunds",
        data=json.dumps(VALID).encode(),
        headers={**SERVICE, "Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 503  # got past validation to the (unreachable) Directus


@pytest.mark.parametrize("key", ["", "k" * 256, "   "], ids=["empty", "256", "blank"])
def test_bad_idempotency_key_is_400(client: FlaskClient, key: str) -> None:
    response = post(client, VALID, headers={**SERVICE, "Idempotency-Key": key})
    assert "Idempotency-Key" in errors_of(response)


def test_a_255_character_idempotency_key_is_fine(client: FlaskClient) -> None:
    response = post(client, VALID, headers={**SERVICE, "Idempotency-Key": "k" * 255})
    assert response.status_code == 503


def test_service_caller_saying_customer_may_only_cancel(client: FlaskClient) -> None:
    response = post(client, {**VALID, "requested_by": "customer"})
    assert response.status_code == 403
    assert response.get_json()["code"] == "forbidden"


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -1, 2**63, 1e308, "", "x" * 600, [], [None], {}, {"a": {"b": []}}],
)
def test_odd_values_in_any_field_never_answer_500(client: FlaskClient, value: Any) -> None:
    fields = [*VALID, "amount_cents", "requested_by_user", "reason_comments", "items", "percent"]
    for field in fields:
        response = post(client, {**VALID, field: value})
        assert response.status_code in (400, 403, 503), (field, value, response.status_code)
        assert response.mimetype == PROBLEM
        assert "Traceback" not in response.get_data(as_text=True)
