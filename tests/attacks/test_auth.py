"""Attacks on who may do what: tokens of the wrong kind, a customer probing other customers'
orders and refunds, and path tricks in ids. Against the real Directus, through a recording
proxy, so that what reaches Directus can be checked too."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from flask.testing import FlaskClient

from bridge import create_app
from devstack.directus import DirectusServer
from devstack.sandbox import SandboxProcess
from directus_client import DirectusClient
from tests.support import reliability
from tests.support.fault_proxy import FaultProxy
from tests.support.helpers import (
    FLOW_SECRET,
    RIDENDINE_KEY,
    SERVICE_TOKEN,
    WEBHOOK_SECRET,
    make_order,
    make_settings,
    make_user,
)

METRICS_TOKEN = "metrics-token-for-attacks-0123"
REFUNDS = "/ridendine/refunds"


@dataclass
class World:
    client: FlaskClient
    proxy: FaultProxy
    admin: dict[str, Any]
    alice: dict[str, Any]
    bob: dict[str, Any]
    alice_order: str
    bob_order: str
    bob_refund: str
    alice_refund: str
    directus_token: str


def auth(token: str, acting_for: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if acting_for:
        headers["X-Directus-User-Id"] = acting_for
    return headers


@pytest.fixture(scope="module")
def world(
    cooco_directus: DirectusServer,
    directus_admin: DirectusClient,
    ridendine_sandbox: SandboxProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    folder: Path = tmp_path_factory.mktemp("attacks-auth")
    proxy = FaultProxy("127.0.0.1", cooco_directus.port).start()
    app = create_app(
        {
            "BRIDGE_SETTINGS": make_settings(
                proxy.url,
                cooco_directus.admin_token,
                ridendine_api_url=ridendine_sandbox.url,
                metrics_token=METRICS_TOKEN,
            ),
            "DATABASE_URL": f"sqlite:///{folder / 'bridge.sqlite3'}",
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )
    client = app.test_client()
    alice, bob = make_user(directus_admin), make_user(directus_admin)
    admin = make_user(directus_admin, admin=True)
    alice_order = make_order(directus_admin, customer=alice["id"])["id"]
    bob_order = make_order(directus_admin, customer=bob["id"])["id"]
    refunds = {}
    for who, order_id in (("alice", alice_order), ("bob", bob_order)):
        answer = client.post(
            REFUNDS,
            json={"order_id": order_id, "reason": "customer_cancel", "amount_cents": 100},
            headers=auth((alice if who == "alice" else bob)["token"]),
        )
        assert answer.status_code == 202, answer.get_data(as_text=True)
        refunds[who] = answer.get_json()["refund"]["id"]
    yield World(
        client,
        proxy,
        admin,
        alice,
        bob,
        alice_order,
        bob_order,
        refunds["bob"],
        refunds["alice"],
        cooco_directus.admin_token,
    )
    proxy.stop()
    reliability.record(
        "test_attacks_auth", path_tricks=len(TRICKS), directus_requests=len(proxy.requests)
    )


def problem(answer: Any, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert answer.mimetype == "application/problem+json"
    body: dict[str, Any] = answer.get_json()
    assert body["code"] == code
    return body


# -- tokens of the wrong kind ------------------------------------------------------------------


@pytest.mark.parametrize(
    "credential",
    [
        WEBHOOK_SECRET,
        WEBHOOK_SECRET.removeprefix("whsec_"),
        RIDENDINE_KEY,
        FLOW_SECRET,
        METRICS_TOKEN,
        SERVICE_TOKEN + "x",
        SERVICE_TOKEN.upper(),
        " ".join([SERVICE_TOKEN, SERVICE_TOKEN]),
    ],
    ids=[
        "webhook secret",
        "webhook secret bytes",
        "ridendine key",
        "flow secret",
        "metrics token",
        "service token plus a char",
        "service token upper case",
        "two tokens",
    ],
)
def test_other_credentials_are_not_api_tokens(world: World, credential: str) -> None:
    body = {"order_id": world.alice_order, "reason": "chef_rejected", "requested_by": "admin"}
    text = problem(
        world.client.post(REFUNDS, json=body, headers=auth(credential)), 401, "not_authenticated"
    )
    problem(
        world.client.get(f"{REFUNDS}/{world.bob_refund}", headers=auth(credential)),
        401,
        "not_authenticated",
    )
    problem(
        world.client.get(f"{REFUNDS}/stats", headers=auth(credential)), 401, "not_authenticated"
    )
    assert credential not in str(text)


@pytest.mark.parametrize("scheme", ["Basic", "Token", "bearer:", ""])
def test_only_the_bearer_scheme(world: World, scheme: str) -> None:
    answer = world.client.get(
        f"{REFUNDS}/{world.bob_refund}", headers={"Authorization": f"{scheme} {SERVICE_TOKEN}"}
    )
    body = problem(answer, 401, "not_authenticated")
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert SERVICE_TOKEN not in str(body)


def test_a_customer_token_is_not_a_service_token(world: World) -> None:
    # The body's requested_by is derived from the account, never trusted.
    body = {"order_id": world.alice_order, "reason": "chef_rejected", "requested_by": "admin"}
    problem(
        world.client.post(REFUNDS, json=body, headers=auth(world.alice["token"])), 403, "forbidden"
    )
    # Nor may a user token act for someone else.
    problem(
        world.client.get(
            f"{REFUNDS}/{world.bob_refund}", headers=auth(world.alice["token"], world.bob["id"])
        ),
        403,
        "forbidden",
    )
    problem(
        world.client.get(f"{REFUNDS}/stats", headers=auth(world.alice["token"])), 403, "forbidden"
    )
    # Acting for a user that does not exist, or is no uuid, is refused.
    for acting in ("00000000-0000-4000-8000-000000000000", "admin", "../users/me"):
        problem(
            world.client.get(
                f"{REFUNDS}/{world.alice_refund}", headers=auth(SERVICE_TOKEN, acting)
            ),
            401,
            "not_authenticated",
        )


def test_the_metrics_token_is_its_own(world: World) -> None:
    for token in (SERVICE_TOKEN, world.admin["token"], world.directus_token, RIDENDINE_KEY):
        problem(world.client.get("/metrics", headers=auth(token)), 401, "not_authenticated")
    assert world.client.get("/metrics", headers=auth(METRICS_TOKEN)).status_code == 200


def test_api_tokens_do_not_sign_webhooks(world: World) -> None:
    from tests.support.webhook_helpers import WEBHOOK_URL, event_body

    data = event_body("re_x", world.alice_order, 100, "REFUNDED")
    for token in (SERVICE_TOKEN, world.admin["token"], world.directus_token):
        answer = world.client.post(
            WEBHOOK_URL, data=data, headers={**auth(token), "Content-Type": "application/json"}
        )
        problem(answer, 401, "not_authenticated")


# -- a customer probing others -------------------------------------------------------------------


def test_a_customer_sees_nothing_of_others(world: World) -> None:
    alice = auth(world.alice["token"])
    missing_refund = problem(
        world.client.get(f"{REFUNDS}/rf_000000000000000000000000", headers=alice),
        404,
        "refund_not_found",
    )
    others_refund = problem(
        world.client.get(f"{REFUNDS}/{world.bob_refund}", headers=alice), 404, "refund_not_found"
    )
    # The same answer as for a refund that does not exist (only the id echoed differs).
    assert {k: v for k, v in others_refund.items() if k not in ("detail", "request_id")} == {
        k: v for k, v in missing_refund.items() if k not in ("detail", "request_id")
    }
    assert world.bob["id"] not in str(others_refund) and world.bob_order not in str(others_refund)

    missing_order = problem(
        world.client.get(REFUNDS, query_string={"order_id": "ord-nope"}, headers=alice),
        404,
        "order_not_found",
    )
    others_order = problem(
        world.client.get(REFUNDS, query_string={"order_id": world.bob_order}, headers=alice),
        404,
        "order_not_found",
    )
    assert others_order.keys() == missing_order.keys()

    # Acting for Alice through the service (the Directus extension's way) changes nothing.
    acting = auth(SERVICE_TOKEN, world.alice["id"])
    problem(
        world.client.get(f"{REFUNDS}/{world.bob_refund}", headers=acting), 404, "refund_not_found"
    )

    # Her own are hers.
    own = world.client.get(REFUNDS, query_string={"order_id": world.alice_order}, headers=alice)
    assert [r["id"] for r in own.get_json()["refunds"]] == [world.alice_refund]
    assert world.client.get(f"{REFUNDS}/{world.alice_refund}", headers=alice).status_code == 200


def test_a_customer_cannot_refund_others_orders(world: World) -> None:
    alice = auth(world.alice["token"])
    attempts = [
        {"order_id": world.bob_order, "reason": "customer_cancel"},
        {
            "order_id": world.bob_order,
            "reason": "customer_cancel",
            "requested_by_user": world.bob["id"],
        },
        {
            "order_id": world.alice_order,
            "reason": "customer_cancel",
            "requested_by_user": world.bob["id"],
        },
        {"order_id": world.alice_order, "reason": "chef_rejected"},
        {"order_id": world.alice_order, "reason": "customer_cancel", "requested_by": "admin"},
    ]
    for body in attempts:
        problem(world.client.post(REFUNDS, json=body, headers=alice), 403, "forbidden")
    # The order of Bob kept its one refund.
    bobs = world.client.get(
        REFUNDS, query_string={"order_id": world.bob_order}, headers=auth(SERVICE_TOKEN)
    )
    assert [r["id"] for r in bobs.get_json()["refunds"]] == [world.bob_refund]


# -- path tricks in ids --------------------------------------------------------------------------

TRICKS = [
    "..",
    "../..",
    "%2e%2e",
    "..%2F..%2Fusers%2Fme",
    "%252e%252e%252f",
    "rf_%00",
    "rf_\u202e",
    "orders/1",
    "1?fields=*",
    "1#x",
    "*",
    "\\..\\..",
    "x" * 5000,
    "%",
    "\u00e9\u0301",
]


@pytest.mark.parametrize("trick", TRICKS, ids=range(len(TRICKS)))
def test_path_tricks_in_refund_ids(world: World, trick: str) -> None:
    before = len(world.proxy.requests)
    answer = world.client.get(
        f"{REFUNDS}/{quote(trick, safe='%/?#*.')}", headers=auth(SERVICE_TOKEN)
    )
    assert answer.status_code in (404, 405), answer.get_data(as_text=True)
    assert answer.mimetype == "application/problem+json"
    # A service caller's refund lookup is the ledger's alone: Directus is not asked.
    assert world.proxy.requests[before:] == []


@pytest.mark.parametrize("trick", TRICKS, ids=range(len(TRICKS)))
def test_path_tricks_in_order_ids(world: World, trick: str) -> None:
    before = len(world.proxy.requests)
    body = {"order_id": trick, "reason": "customer_cancel"}
    answer = world.client.post(REFUNDS, json=body, headers=auth(world.alice["token"]))
    assert answer.status_code in (400, 404), answer.get_data(as_text=True)
    listed = world.client.get(
        REFUNDS, query_string={"order_id": trick}, headers=auth(world.alice["token"])
    )
    assert listed.status_code in (400, 404), listed.get_data(as_text=True)
    seen = world.proxy.requests[before:]
    if answer.status_code == 404:  # the order was looked for (the proxy saw it)
        assert any(line.startswith("GET /items/orders?") for line in seen), seen
    # Whatever reached Directus asked for orders by a filter, never a path made of the id.
    for line in seen:
        _method, target = line.split(" ", 1)
        path = unquote(target.split("?", 1)[0])
        assert path in ("/items/orders", "/users/me") or path.startswith("/users/"), line
        assert ".." not in path, line
