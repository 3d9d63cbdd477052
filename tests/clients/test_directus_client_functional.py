"""The Directus client against the real Directus 11.3.5 of the test session."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from devstack.directus import DirectusServer
from devstack.net import free_port
from directus_client import (
    DirectusClient,
    DirectusUnavailableError,
    ForbiddenError,
    InvalidCredentialsError,
    InvalidQueryError,
    NotFoundError,
    RecordNotUniqueError,
)
from tests.support.helpers import make_order, make_user, unique_id


def limited_user(
    admin: DirectusClient, grants: Mapping[str, Sequence[str]], *, app_access: bool = False
) -> str:
    """A user whose only policy grants `grants` ({collection: [actions]}); its token."""
    policy = admin.create_system(
        "policies",
        {"name": unique_id("policy"), "icon": "badge", "app_access": app_access},
    )
    for collection, actions in grants.items():
        for action in actions:
            admin.create_system(
                "permissions",
                {
                    "policy": policy["id"],
                    "collection": collection,
                    "action": action,
                    "fields": ["*"],
                },
            )
    token = "limited-" + secrets.token_hex(16)
    admin.create_system(
        "users",
        {
            "email": f"{unique_id('limited')}@example.com",
            "token": token,
            "status": "active",
            "policies": {"create": [{"policy": policy["id"]}]},
        },
    )
    return token


@pytest.fixture
def admin(cooco_directus: DirectusServer, directus_admin: DirectusClient) -> DirectusClient:
    return directus_admin


def test_get_item_and_a_missing_one(admin: DirectusClient) -> None:
    order = make_order(admin, amount_paid_cents=1234)
    loaded = admin.get_item("orders", order["id"], fields=["id", "amount_paid_cents"])
    assert loaded == {"id": order["id"], "amount_paid_cents": 1234}
    with pytest.raises(NotFoundError):
        admin.get_item("orders", unique_id("missing"))


def test_get_item_the_token_may_not_read_stays_forbidden(admin: DirectusClient) -> None:
    order = make_order(admin)
    token = limited_user(admin, {"refunds": ["read"]})
    with pytest.raises(ForbiddenError) as caught:
        admin.with_token(token).get_item("orders", order["id"])
    assert not isinstance(caught.value, NotFoundError)


def test_update_item_and_a_missing_one_with_an_admin_token(admin: DirectusClient) -> None:
    # Directus answers 204 with no body for a PATCH of a missing item (admin token).
    order = make_order(admin, status="DELIVERED")
    updated = admin.update_item("orders", order["id"], {"status": "CANCELLED"}, fields=["status"])
    assert updated == {"status": "CANCELLED"}
    missing = unique_id("missing")
    with pytest.raises(NotFoundError) as caught:
        admin.update_item("orders", missing, {"status": "CANCELLED"})
    assert caught.value.status == 204
    assert admin.find_item("orders", missing) is None


def test_update_of_a_missing_item_with_a_limited_token(admin: DirectusClient) -> None:
    # Other tokens get 403 for the same PATCH; the client confirms the item is absent.
    token = limited_user(admin, {"orders": ["read", "update"]})
    client = admin.with_token(token)
    with pytest.raises(NotFoundError) as caught:
        client.update_item("orders", unique_id("missing"), {"status": "CANCELLED"})
    assert caught.value.status == 403
    order = make_order(admin)
    assert client.update_item("orders", order["id"], {"status": "CANCELLED"}) == {"id": order["id"]}


def test_update_without_permission_is_forbidden_not_missing(admin: DirectusClient) -> None:
    order = make_order(admin, status="DELIVERED")
    client = admin.with_token(limited_user(admin, {"orders": ["read"]}))
    with pytest.raises(ForbiddenError) as caught:
        client.update_item("orders", order["id"], {"status": "CANCELLED"})
    assert not isinstance(caught.value, NotFoundError)
    assert admin.get_item("orders", order["id"], fields=["status"]) == {"status": "DELIVERED"}


@pytest.mark.parametrize("item_id", ["1/../../users", "..", ".", "%2F..%2Fusers", "a b?c#d"])
def test_an_id_never_reaches_another_route(admin: DirectusClient, item_id: str) -> None:
    # An order may carry such an id: it is read and written as that one item, nothing else.
    # (The bare dot ids are made once and deleted at the end; the others are unique.)
    tricky = item_id if item_id in (".", "..") else f"{unique_id('o')}/{item_id}"
    make_order(admin, order_id=tricky)
    loaded = admin.get_item("orders", tricky, fields=["id"])
    assert loaded == {"id": tricky}
    assert admin.update_item("orders", tricky, {"status": "CANCELLED"}) == {"id": tricky}
    assert admin.find_item("orders", tricky, fields=["status"]) == {"status": "CANCELLED"}
    admin.delete_item("orders", tricky)
    with pytest.raises(NotFoundError):
        admin.get_item("orders", tricky)


def test_an_id_too_long_for_a_url_is_not_found(admin: DirectusClient) -> None:
    with pytest.raises(NotFoundError):
        admin.get_item("orders", "x" * 20_000)


def test_a_bad_token_is_invalid_credentials(admin: DirectusClient) -> None:
    bad = "not-a-real-token-" + secrets.token_hex(8)
    with pytest.raises(InvalidCredentialsError) as caught:
        admin.with_token(bad).query_items("orders", limit=1)
    assert (caught.value.status, caught.value.code) == (401, "INVALID_CREDENTIALS")
    assert bad not in str(caught.value)


def test_bad_requests_carry_directus_code(admin: DirectusClient) -> None:
    order = make_order(admin)
    with pytest.raises(RecordNotUniqueError) as duplicate:
        admin.create_item("orders", {"id": order["id"]})
    assert (duplicate.value.status, duplicate.value.code) == (400, "RECORD_NOT_UNIQUE")
    with pytest.raises(InvalidQueryError) as query:
        admin.query_items("orders", filter={"id": {"_nonsense": 1}})
    assert (query.value.status, query.value.code) == (400, "INVALID_QUERY")
    assert query.value.method == "GET"


def test_directus_not_listening_is_unavailable(admin: DirectusClient) -> None:
    client = DirectusClient(f"http://127.0.0.1:{free_port()}", "token", retries=1)
    with pytest.raises(DirectusUnavailableError):
        client.get_item("orders", "o-1")
    assert client.ping() is False
    assert admin.ping() is True


def test_query_create_and_update_many(admin: DirectusClient) -> None:
    prefix = unique_id("batch")
    created = admin.create_items(
        "orders",
        [{"id": f"{prefix}-{n}", "status": "NEW", "amount_paid_cents": n} for n in (1, 2, 3)],
    )
    assert sorted(row["id"] for row in created) == [f"{prefix}-{n}" for n in (1, 2, 3)]
    updated = admin.update_items(
        "orders", [f"{prefix}-1", f"{prefix}-2", f"{prefix}-missing"], {"status": "ACCEPTED"}
    )
    assert sorted(row["id"] for row in updated) == [f"{prefix}-1", f"{prefix}-2"]
    admin.update_batch("orders", [{"id": f"{prefix}-3", "status": "DELIVERED"}])
    rows = admin.query_items(
        "orders",
        filter={"id": {"_starts_with": prefix}},
        fields=["id", "status"],
        sort=["-amount_paid_cents"],
        limit=-1,
    )
    assert rows == [
        {"id": f"{prefix}-3", "status": "DELIVERED"},
        {"id": f"{prefix}-2", "status": "ACCEPTED"},
        {"id": f"{prefix}-1", "status": "ACCEPTED"},
    ]


def test_users_and_admin_access(admin: DirectusClient) -> None:
    boss = make_user(admin, admin=True)
    customer = make_user(admin)
    assert admin.with_token(boss["token"]).me(fields=["id"]) == {"id": boss["id"]}
    assert admin.user_has_admin_access(boss["id"]) is True
    assert admin.user_has_admin_access(customer["id"]) is False
    emails = admin.admin_emails()
    assert boss["email"] in emails
    assert customer["email"] not in emails
    assert admin.get_user(customer["id"], fields=["email"]) == {"email": customer["email"]}


def test_permissions_me_tells_what_a_token_may_do(admin: DirectusClient) -> None:
    token = limited_user(admin, {"orders": ["read"], "refunds": ["read", "update"]})
    permissions: dict[str, Any] = admin.with_token(token).permissions_me()
    assert permissions["orders"]["read"]["access"] == "full"
    assert permissions["orders"]["update"]["access"] == "none"
    assert permissions["refunds"]["update"]["access"] == "full"
    assert admin.permissions_me()["orders"]["update"]["access"] == "full"


def test_schema_reads(admin: DirectusClient) -> None:
    assert admin.get_collection("refunds") is not None
    assert admin.get_collection(unique_id("nothing")) is None
    fields = {f["field"] for f in admin.list_fields("refunds")}
    assert {"id", "order_id", "amount_cents", "status"} <= fields
    relation = next(r for r in admin.list_relations("refunds") if r["field"] == "order_id")
    assert relation["related_collection"] == "orders"
    # A token that may not read the schema is told so, not "the collection is missing".
    reader = admin.with_token(limited_user(admin, {"orders": ["read"]}))
    with pytest.raises(ForbiddenError):
        reader.get_collection("refunds")


def test_create_item_answers_with_the_fields_asked_and_stores_them_all(
    admin: DirectusClient,
) -> None:
    order_id = unique_id("fields")
    created = admin.create_item(
        "orders", {"id": order_id, "status": "NEW", "amount_paid_cents": 1550}, fields=["id"]
    )
    assert created == {"id": order_id}
    stored = admin.get_item("orders", order_id, fields=["status", "amount_paid_cents"])
    assert stored == {"status": "NEW", "amount_paid_cents": 1550}
    whole = admin.create_item("orders", {"id": unique_id("fields"), "status": "NEW"})
    assert whole["status"] == "NEW" and "amount_paid_cents" in whole
