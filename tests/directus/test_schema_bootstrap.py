"""The demo orders collection and the refunds schema, as the other tests rely on them."""

from __future__ import annotations

from directus_client import DirectusClient
from tests.support.helpers import make_order, make_user


def test_refund_item_links_to_its_order(
    cooco_directus: object, directus_admin: DirectusClient
) -> None:
    customer = make_user(directus_admin)
    order = make_order(directus_admin, customer=customer["id"])
    directus_admin.create_item(
        "refunds",
        {
            "id": "rf_" + order["id"],
            "order_id": order["id"],
            "amount_cents": 500,
            "status": "PENDING",
        },
    )
    loaded = directus_admin.get_item(
        "orders", order["id"], fields=["id", "customer.email", "refunds.id", "refunds.amount_cents"]
    )
    assert loaded["customer"]["email"] == customer["email"]
    assert loaded["refunds"] == [{"id": "rf_" + order["id"], "amount_cents": 500}]


def test_json_and_boolean_fields_read_back_typed(
    cooco_directus: object, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin)
    refund_id = "rf_typed_" + order["id"]
    directus_admin.create_item(
        "refunds",
        {
            "id": refund_id,
            "order_id": order["id"],
            "amount_cents": 100,
            "needs_review": True,
            "status_history": [{"to_status": "PENDING"}],
            "items": [{"name": "Soup"}],
        },
    )
    item = directus_admin.get_item("refunds", refund_id)
    assert item["needs_review"] is True
    assert item["status_history"] == [{"to_status": "PENDING"}]
    assert item["items"] == [{"name": "Soup"}]
