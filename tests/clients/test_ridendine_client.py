"""The RideNDine client (contract section 2), its HTTP mocked with `responses`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import responses

from bridge.refunds.ridendine import (
    RideNDineClient,
    RideNDineError,
    RideNDineRejectedError,
    RideNDineTimeoutError,
    RideNDineUnavailableError,
    error_message,
    parse_retry_after,
)

BASE = "https://partner.example/api/v1"
KEY = "rdn-secret-key-0123456789"
URL = f"{BASE}/refunds/create"


@pytest.fixture
def client() -> RideNDineClient:
    return RideNDineClient(BASE + "/", KEY, read_timeout=1.5)


def create(client: RideNDineClient, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "idempotency_key": "rf_abc",
        "ridendine_order_id": "rdn-1",
        "external_order_id": "ord-1",
        "amount_cents": 5000,
        "reason": "chef_rejected",
        "requested_by": "admin",
    }
    values.update(overrides)
    return client.create_refund(**values)


@responses.activate
def test_sends_exactly_the_partner_fields_and_headers(client: RideNDineClient) -> None:
    responses.add(responses.POST, URL, json={"refund_id": "re_123", "status": "PENDING"})

    accepted = create(client)

    assert accepted.refund_id == "re_123"
    assert accepted.status == 200
    (call,) = responses.calls
    assert json.loads(call.request.body) == {
        "ridendine_order_id": "rdn-1",
        "external_order_id": "ord-1",
        "amount_cents": 5000,
        "reason": "chef_rejected",
        "requested_by": "admin",
    }
    assert call.request.headers["Authorization"] == f"Bearer {KEY}"
    assert call.request.headers["Content-Type"] == "application/json"
    assert call.request.headers["Idempotency-Key"] == "rf_abc"
    assert call.request.url == URL  # the trailing slash of the base URL is not doubled


@responses.activate
@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [(201, {"refund_id": 42}, "42"), (202, {"accepted": True}, None), (200, None, None)],
)
def test_any_2xx_is_accepted_with_or_without_a_refund_id(
    client: RideNDineClient, status: int, body: Any, expected: str | None
) -> None:
    if body is None:
        responses.add(responses.POST, URL, status=status, body="")
    else:
        responses.add(responses.POST, URL, status=status, json=body)

    accepted = create(client)

    assert accepted.status == status
    assert accepted.refund_id == expected


@responses.activate
@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, {"message": "amount exceeds captured amount"}, "amount exceeds captured amount"),
        (422, {"error": {"message": "order not captured"}}, "order not captured"),
        (404, {"error": "unknown order"}, "unknown order"),
        (402, {"errors": [{"message": "card refunds disabled"}]}, "card refunds disabled"),
        (401, {"detail": "bad key"}, "bad key"),
        (400, None, "HTTP 400"),
    ],
)
def test_definite_4xx_is_rejected_with_the_partners_message(
    client: RideNDineClient, status: int, body: Any, message: str
) -> None:
    responses.add(responses.POST, URL, status=status, json=body)

    with pytest.raises(RideNDineRejectedError) as caught:
        create(client)

    assert caught.value.status == status
    assert caught.value.message == message
    assert caught.value.url == URL
    assert len(responses.calls) == 1


@responses.activate
@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 302])
def test_no_definite_answer_is_unavailable_and_never_retried_inside(
    client: RideNDineClient, status: int
) -> None:
    responses.add(
        responses.POST, URL, status=status, json={}, headers={"Location": "https://elsewhere/"}
    )

    with pytest.raises(RideNDineUnavailableError) as caught:
        create(client)

    assert not isinstance(caught.value, RideNDineRejectedError)
    assert caught.value.status == status
    assert len(responses.calls) == 1  # no retries, no redirect followed: the outbox retries


@responses.activate
def test_retry_after_is_read(client: RideNDineClient) -> None:
    responses.add(responses.POST, URL, status=429, headers={"Retry-After": "30"})

    with pytest.raises(RideNDineUnavailableError) as caught:
        create(client)

    assert caught.value.retry_after == 30.0


@responses.activate
def test_timeout_and_connection_errors(client: RideNDineClient) -> None:
    responses.add(responses.POST, URL, body=requests.exceptions.ReadTimeout("slow"))
    with pytest.raises(RideNDineTimeoutError) as timeout:
        create(client)
    assert timeout.value.status is None

    responses.replace(responses.POST, URL, body=requests.exceptions.ConnectionError("refused"))
    with pytest.raises(RideNDineUnavailableError) as unreachable:
        create(client)
    assert not isinstance(unreachable.value, RideNDineTimeoutError)
    assert isinstance(unreachable.value, RideNDineError)


def test_real_timeouts_are_the_clients_own() -> None:
    """A server that accepts but never answers: the read timeout ends the call."""
    import socket
    import time

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        client = RideNDineClient(f"http://127.0.0.1:{port}", KEY, read_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(RideNDineTimeoutError):
            create(client)
        assert time.monotonic() - started < 3
        client.close()


def test_the_key_is_not_in_repr_or_errors() -> None:
    client = RideNDineClient("http://127.0.0.1:9", KEY, connect_timeout=0.2)
    with pytest.raises(RideNDineUnavailableError) as caught:
        create(client)
    assert KEY not in repr(client)
    assert KEY not in str(caught.value)
    client.close()


def test_error_message_shapes() -> None:
    assert error_message({"message": "  two\n lines "}) == "two lines"
    assert error_message({"title": "Bad"}) == "Bad"
    assert error_message("plain text") == "plain text"
    assert error_message({"other": 1}) is None
    assert error_message(["x"]) is None
    assert error_message({"message": "x" * 2000}) == "x" * 500


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:01:00 GMT", now=now) == 60.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("99999999") == 6 * 3600.0
