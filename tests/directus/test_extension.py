"""The `ridendine` extension loaded in the session's real Directus 11.3.5: COOCO's URLs reach
the bridge (here a receiver on the port Directus's BRIDGE_URL names) as the contract needs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import requests
from standardwebhooks import Webhook

from devstack.directus import DirectusServer
from devstack.sandbox import Receiver, ScriptedAnswer
from directus_client import DirectusClient
from tests.support.helpers import SERVICE_TOKEN, WEBHOOK_SECRET, make_user, unique_id

WEBHOOK_PATH = "/ridendine/webhooks/refund-status"


@pytest.fixture
def bridge(directus: DirectusServer, directus_bridge_port: int) -> Iterator[Receiver]:
    """A receiver where Directus's extension expects the bridge."""
    receiver = Receiver(directus_bridge_port).start()
    yield receiver
    receiver.stop()


def admin_id(directus: DirectusServer) -> str:
    me = requests.get(
        f"{directus.url}/users/me",
        headers={"Authorization": f"Bearer {directus.admin_token}"},
        timeout=5,
    )
    return str(me.json()["data"]["id"])


def test_a_refund_request_reaches_the_bridge_as_the_user(
    directus: DirectusServer, bridge: Receiver
) -> None:
    bridge.answer(
        ScriptedAnswer(
            202,
            b'{"refund": {"id": "rf_1", "status": "PENDING"}}',
            {"Content-Type": "application/json", "Location": "/ridendine/refunds/rf_1"},
        )
    )
    body = b'{"order_id": "ord-1", "reason": "chef_rejected",  "requested_by": "admin"}'
    key = unique_id("key")
    answer = requests.post(
        f"{directus.url}/ridendine/refunds",
        data=body,
        headers={
            "Authorization": f"Bearer {directus.admin_token}",
            "Content-Type": "application/json",
            "Idempotency-Key": key,
            "X-Directus-User-Id": "spoofed",
        },
        timeout=10,
    )
    assert answer.status_code == 202
    assert answer.headers["Location"] == "/ridendine/refunds/rf_1"
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {"refund": {"id": "rf_1", "status": "PENDING"}}
    (request,) = bridge.requests()
    assert (request.method, request.path) == ("POST", "/ridendine/refunds")
    assert request.headers["authorization"] == f"Bearer {SERVICE_TOKEN}"
    assert request.headers["x-directus-user-id"] == admin_id(directus)
    assert request.headers["idempotency-key"] == key
    assert request.headers["content-type"] == "application/json"
    assert request.body == body


@pytest.mark.parametrize(
    "path",
    [
        "/ridendine/refunds?order_id=ord+1",
        "/ridendine/refunds/rf_9",
        "/ridendine/refunds/rf_9?with=history",
        "/ridendine/refunds/stats?month=2020-01",
        "/ridendine/refunds/stats",
        "/ridendine/openapi.json",
    ],
)
def test_every_get_route_reaches_the_bridge_whole_as_the_user(
    directus: DirectusServer, directus_admin: DirectusClient, bridge: Receiver, path: str
) -> None:
    """Path and query string unchanged (`stats` is not taken for a refund id), with the
    caller's Directus user id."""
    user = make_user(directus_admin)
    answer = requests.get(
        f"{directus.url}{path}", headers={"Authorization": f"Bearer {user['token']}"}, timeout=10
    )
    assert answer.status_code == 200
    assert [(r.method, r.path, r.headers["x-directus-user-id"]) for r in bridge.requests()] == [
        ("GET", path, user["id"])
    ]
    assert bridge.requests()[0].headers["authorization"] == f"Bearer {SERVICE_TOKEN}"


def test_a_webhook_reaches_the_bridge_byte_for_byte(
    directus: DirectusServer, bridge: Receiver
) -> None:
    event = (
        '{ "refund_id" : "re_x",\n\t"external_order_id":"ord-ü",  "amount_cents" :5000,'
        ' "status":"REFUNDED", "reason_comments": "Crème brûlée \u2013 ☕ \\u00e9 😀" }\n'
    )
    body = event.encode("utf-8")
    webhook_id = unique_id("msg")
    timestamp = datetime.now(tz=UTC)
    signature = Webhook(WEBHOOK_SECRET).sign(webhook_id, timestamp, event)
    headers = {
        "Content-Type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
    }
    answer = requests.post(f"{directus.url}{WEBHOOK_PATH}", data=body, headers=headers, timeout=10)
    assert answer.status_code == 200
    (request,) = bridge.requests()
    assert request.path == WEBHOOK_PATH
    assert request.body == body
    for name, value in headers.items():
        assert request.headers[name.lower()] == value
    verified = Webhook(WEBHOOK_SECRET).verify(request.body, request.headers)
    assert verified["reason_comments"] == "Crème brûlée \u2013 ☕ é 😀"
    assert "x-directus-user-id" not in request.headers
    assert "authorization" not in request.headers


def test_a_bearer_webhook_keeps_its_token(directus: DirectusServer, bridge: Receiver) -> None:
    """Bearer mode: Directus would refuse a token it does not know; the extension keeps it."""
    body = json.dumps({"refund_id": "re_1", "status": "FAILED"}).encode()
    answer = requests.post(
        f"{directus.url}{WEBHOOK_PATH}",
        data=body,
        headers={
            "Content-Type": "application/json",
            "Authorization": "Bearer partner-static-webhook-token",
        },
        timeout=10,
    )
    assert answer.status_code == 200
    (request,) = bridge.requests()
    assert request.headers["authorization"] == "Bearer partner-static-webhook-token"
    assert request.body == body


def test_the_bridges_answer_is_passed_through(directus: DirectusServer, bridge: Receiver) -> None:
    problem = b'{"type":"t","title":"Bad","status":401,"code":"not_authenticated"}'
    bridge.answer(ScriptedAnswer(401, problem, {"Content-Type": "application/problem+json"}))
    answer = requests.post(
        f"{directus.url}{WEBHOOK_PATH}",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 401
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.content == problem


def test_anonymous_refund_calls_get_401_without_reaching_the_bridge(
    directus: DirectusServer, bridge: Receiver
) -> None:
    for method, path in (
        ("POST", "/ridendine/refunds"),
        ("GET", "/ridendine/refunds?order_id=1"),
        ("GET", "/ridendine/refunds/rf_1"),
    ):
        answer = requests.request(
            method, f"{directus.url}{path}", json={} if method == "POST" else None, timeout=10
        )
        assert answer.status_code == 401
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert answer.json()["code"] == "not_authenticated"
    assert bridge.requests() == []


def test_a_bridge_that_is_down_gives_503_problem_json(directus: DirectusServer) -> None:
    started = time.monotonic()
    for path, headers in (
        ("/ridendine/refunds", {"Authorization": f"Bearer {directus.admin_token}"}),
        (WEBHOOK_PATH, {}),
    ):
        answer = requests.post(f"{directus.url}{path}", json={}, headers=headers, timeout=10)
        assert answer.status_code == 503
        assert answer.headers["Content-Type"] == "application/problem+json"
        problem = answer.json()
        assert problem["code"] == "bridge_unavailable"
        assert problem["status"] == 503
        assert "ECONNREFUSED" not in answer.text
    assert time.monotonic() - started < 5


def test_other_directus_routes_are_untouched(directus: DirectusServer) -> None:
    """The raw-body hook only takes /ridendine/* POSTs: Directus still parses its own JSON."""
    answer = requests.post(
        f"{directus.url}/utils/hash/generate",
        json={"string": "x"},
        headers={"Authorization": f"Bearer {directus.admin_token}"},
        timeout=10,
    )
    assert answer.status_code == 200
    assert answer.json()["data"].startswith("$argon2")
