"""Authentication of the refund endpoints: service tokens, Directus user tokens, and the
extension acting for a user (X-Directus-User-Id)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from bridge import create_app
from bridge.errors import Forbidden, NotAuthenticated
from bridge.services import Services, get_services
from bridge.web.auth import Caller, authenticate, bearer_token, is_service_token
from devstack.directus import DirectusServer
from directus_client import DirectusClient
from tests.support.helpers import SERVICE_TOKEN, make_settings, make_user

PROBLEM = "application/problem+json"


# -- without Directus ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "Token abc", "Bearer a b"]
)
def test_malformed_authorization_is_not_authenticated(header: str | None) -> None:
    with pytest.raises(NotAuthenticated):
        bearer_token(header)


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer abc") == "abc"
    assert bearer_token("BEARER  abc ") == "abc"


def test_service_tokens_are_compared_with_every_configured_one() -> None:
    tokens = ("first-token-0123456789", "second-token-0123456789")
    assert is_service_token("second-token-0123456789", tokens)
    assert not is_service_token("second-token-012345678", tokens)
    assert not is_service_token("second-token-0123456789x", tokens)
    assert not is_service_token("", tokens)
    assert not is_service_token("ünïcode", tokens)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"Authorization": f"Basic {SERVICE_TOKEN}"}],
    ids=["none", "empty", "basic"],
)
def test_refund_endpoints_without_a_bearer_token_are_401(
    client: FlaskClient, headers: dict[str, str]
) -> None:
    for response in (
        client.post("/ridendine/refunds", json={"order_id": "x"}, headers=headers),
        client.get("/ridendine/refunds/rf_1", headers=headers),
        client.get("/ridendine/refunds?order_id=x", headers=headers),
    ):
        assert response.status_code == 401
        assert response.mimetype == PROBLEM
        assert response.get_json()["code"] == "not_authenticated"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_directus_down_while_checking_a_user_token_is_503(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    token = "user-token-that-only-directus-knows"
    with caplog.at_level(logging.DEBUG):
        response = client.get("/ridendine/refunds?order_id=x", headers=bearer(token))

    assert response.status_code == 503
    assert response.get_json()["code"] == "directus_unavailable"
    assert token not in response.get_data(as_text=True)
    assert token not in caplog.text


def test_service_token_is_a_caller_of_its_own(app: Flask) -> None:
    with app.app_context():
        caller = authenticate(get_services(), f"Bearer {SERVICE_TOKEN}")
    assert caller.kind == "service"
    assert caller.user is None
    assert caller.role is None
    assert SERVICE_TOKEN not in caller.scope


# -- with the real Directus -----------------------------------------------------------------------


@pytest.fixture
def services(directus: DirectusServer, database_url: str) -> Iterator[Services]:
    app = create_app(
        {
            "BRIDGE_SETTINGS": make_settings(directus.url, directus.admin_token),
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )
    with app.app_context():
        services = get_services()
        yield services
        services.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def count_calls(services: Services) -> list[str]:
    seen: list[str] = []

    def record(response: requests.Response, **_: Any) -> None:
        seen.append(response.request.path_url)

    services.directus.session.hooks["response"].append(record)
    return seen


def test_customer_token_is_a_customer(services: Services, directus_admin: DirectusClient) -> None:
    user = make_user(directus_admin)

    caller = authenticate(services, f"Bearer {user['token']}")

    assert caller == Caller(kind="user", scope=f"user:{user['id']}", user=caller.user)
    assert caller.user is not None
    assert caller.user.id == user["id"]
    assert caller.user.email == user["email"]
    assert caller.role == "customer"
    assert caller.is_customer


def test_admin_token_is_an_admin(services: Services, directus_admin: DirectusClient) -> None:
    user = make_user(directus_admin, admin=True)

    caller = authenticate(services, f"Bearer {user['token']}")

    assert caller.role == "admin"
    assert not caller.is_customer


def test_a_token_directus_rejects_is_401(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    token = "not-a-token-directus-knows-" + uuid.uuid4().hex
    with caplog.at_level(logging.DEBUG), pytest.raises(NotAuthenticated):
        authenticate(services, f"Bearer {token}")
    assert token not in caplog.text


def test_a_suspended_users_token_is_401(services: Services, directus_admin: DirectusClient) -> None:
    user = make_user(directus_admin)
    directus_admin.update_system("users", user["id"], {"status": "suspended"})

    with pytest.raises(NotAuthenticated):
        authenticate(services, f"Bearer {user['token']}")


def test_user_lookups_are_cached_briefly(
    services: Services, directus_admin: DirectusClient
) -> None:
    user = make_user(directus_admin)
    authenticate(services, f"Bearer {user['token']}")
    seen = count_calls(services)

    again = authenticate(services, f"Bearer {user['token']}")

    assert again.user is not None and again.user.id == user["id"]
    assert seen == []  # neither /users/me nor the lookups were asked again


def test_service_token_acting_for_a_user(
    services: Services, directus_admin: DirectusClient
) -> None:
    customer = make_user(directus_admin)
    admin = make_user(directus_admin, admin=True)

    as_customer = authenticate(services, f"Bearer {SERVICE_TOKEN}", customer["id"])
    as_admin = authenticate(services, f"Bearer {SERVICE_TOKEN}", admin["id"].upper())

    assert as_customer.kind == "service"
    assert as_customer.role == "customer"
    assert as_customer.user is not None and as_customer.user.id == customer["id"]
    assert as_admin.role == "admin"
    assert as_customer.scope != as_admin.scope


@pytest.mark.parametrize("acting", ["not-a-uuid", str(uuid.uuid4())], ids=["bad", "unknown"])
def test_acting_for_an_unknown_user_is_401(services: Services, acting: str) -> None:
    with pytest.raises(NotAuthenticated):
        authenticate(services, f"Bearer {SERVICE_TOKEN}", acting)


def test_a_user_token_cannot_act_for_someone_else(
    services: Services, directus_admin: DirectusClient
) -> None:
    user = make_user(directus_admin)
    other = make_user(directus_admin)

    with pytest.raises(Forbidden):
        authenticate(services, f"Bearer {user['token']}", other["id"])
    assert authenticate(services, f"Bearer {user['token']}", user["id"]).role == "customer"
