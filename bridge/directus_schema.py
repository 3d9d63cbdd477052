"""The Directus schema the bridge needs: the `refunds` collection (contract section 5), its
relation to COOCO's `orders`, and the alias field that lists an order's refunds on its page.

`apply_schema` creates what is missing and never drops or rewrites COOCO's own fields.
`create_demo_orders` makes a minimal `orders` collection like COOCO's, for tests and `make dev`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.config import OrderFields
from directus_client import DirectusClient

REFUNDS = "refunds"
ORDER_REFUNDS_ALIAS = "refunds"


def _string(name: str, **meta: Any) -> dict[str, Any]:
    return {
        "field": name,
        "type": "string",
        "schema": {"max_length": 255},
        "meta": {"interface": "input", **meta},
    }


def _text(name: str, **meta: Any) -> dict[str, Any]:
    return {
        "field": name,
        "type": "text",
        "schema": {},
        "meta": {"interface": "input-multiline", **meta},
    }


def _integer(name: str, **meta: Any) -> dict[str, Any]:
    return {
        "field": name,
        "type": "bigInteger",
        "schema": {},
        "meta": {"interface": "input", **meta},
    }


def _json(name: str, **meta: Any) -> dict[str, Any]:
    return {
        "field": name,
        "type": "json",
        "schema": {},
        "meta": {"interface": "input-code", "options": {"language": "JSON"}, **meta},
    }


def _timestamp(name: str, **meta: Any) -> dict[str, Any]:
    return {
        "field": name,
        "type": "timestamp",
        "schema": {},
        "meta": {"interface": "datetime", "readonly": True, **meta},
    }


def _choices(name: str, values: list[str], **meta: Any) -> dict[str, Any]:
    return {
        "field": name,
        "type": "string",
        "schema": {"max_length": 32},
        "meta": {
            "interface": "select-dropdown",
            "display": "labels",
            "options": {"choices": [{"text": v, "value": v} for v in values]},
            **meta,
        },
    }


# Every field of the refunds item but the primary key and the relation to the order.
REFUND_FIELDS: list[dict[str, Any]] = [
    _string("ridendine_order_id", readonly=True),
    _integer("amount_cents", readonly=True, note="integer cents"),
    _integer("refunded_amount_cents", readonly=True, note="what RideNDine refunded, cents"),
    _string("currency", readonly=True),
    _string("reason", readonly=True),
    _text("reason_comments", readonly=True),
    _choices("requested_by", ["customer", "admin", "ridendine"], readonly=True),
    _string("requested_by_user", readonly=True),
    _json("items", readonly=True),
    _choices("status", ["PENDING", "REFUNDED", "FAILED"], readonly=True),
    _string("ridendine_refund_id", readonly=True),
    _choices("source", ["cooco", "ridendine"], readonly=True),
    {
        "field": "needs_review",
        "type": "boolean",
        "schema": {"default_value": False},
        "meta": {"interface": "boolean", "readonly": True},
    },
    _text("review_reason", readonly=True),
    _text("failure_reason", readonly=True),
    _json("status_history", readonly=True),
    _timestamp("created_at"),
    _timestamp("updated_at"),
]


@dataclass
class SchemaPlan:
    """What `apply_schema` did or (dry run) would do, one line per change."""

    changes: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.changes.append(line)


def _order_pk(client: DirectusClient, orders: str) -> dict[str, Any]:
    for item in client.list_fields(orders):
        if (item.get("schema") or {}).get("is_primary_key"):
            return item
    raise RuntimeError(f"collection {orders!r} has no primary key field")


def apply_schema(
    client: DirectusClient, order_fields: OrderFields | None = None, *, dry_run: bool = False
) -> SchemaPlan:
    """Create the refunds collection, its fields, the relation and the alias (what is missing)."""
    orders = (order_fields or OrderFields()).collection
    plan = SchemaPlan()
    if client.get_collection(orders) is None:
        raise RuntimeError(f"the {orders!r} collection does not exist in Directus")
    pk = _order_pk(client, orders)
    pk_type = pk.get("type") or "string"

    if client.get_collection(REFUNDS) is None:
        plan.add(f"create collection {REFUNDS}")
        if not dry_run:
            client.create_collection(
                {
                    "collection": REFUNDS,
                    "meta": {
                        "icon": "currency_exchange",
                        "note": "Refunds, written by refund-bridge (read-only here)",
                        "sort_field": None,
                    },
                    "schema": {},
                    "fields": [
                        {
                            "field": "id",
                            "type": "string",
                            "schema": {"is_primary_key": True, "max_length": 40},
                            "meta": {"readonly": True},
                        },
                    ],
                }
            )
    existing = (
        set()
        if dry_run and client.get_collection(REFUNDS) is None
        else {f["field"] for f in client.list_fields(REFUNDS)}
    )
    for definition in REFUND_FIELDS:
        if definition["field"] not in existing:
            plan.add(f"create field {REFUNDS}.{definition['field']}")
            if not dry_run:
                client.create_field(REFUNDS, definition)

    if "order_id" not in existing:
        plan.add(f"create field {REFUNDS}.order_id ({pk_type}, many-to-one to {orders})")
        if not dry_run:
            client.create_field(
                REFUNDS,
                {
                    "field": "order_id",
                    "type": pk_type,
                    "schema": {},
                    "meta": {
                        "interface": "select-dropdown-m2o",
                        "special": ["m2o"],
                        "readonly": True,
                    },
                },
            )
    relations = [] if dry_run and "order_id" not in existing else client.list_relations(REFUNDS)
    if not any(r.get("field") == "order_id" for r in relations):
        plan.add(f"create relation {REFUNDS}.order_id -> {orders} (alias {orders}.refunds)")
        if not dry_run:
            order_fields_now = {f["field"] for f in client.list_fields(orders)}
            if ORDER_REFUNDS_ALIAS not in order_fields_now:
                client.create_field(
                    orders,
                    {
                        "field": ORDER_REFUNDS_ALIAS,
                        "type": "alias",
                        "meta": {
                            "special": ["o2m"],
                            "interface": "list-o2m",
                            "readonly": True,
                            "note": "Refunds of this order (refund-bridge)",
                        },
                    },
                )
            client.create_relation(
                {
                    "collection": REFUNDS,
                    "field": "order_id",
                    "related_collection": orders,
                    "meta": {"one_field": ORDER_REFUNDS_ALIAS},
                    "schema": {"on_delete": "SET NULL"},
                }
            )
    return plan


def create_demo_orders(client: DirectusClient, order_fields: OrderFields | None = None) -> bool:
    """A minimal `orders` collection like COOCO's (tests and `make dev`); False if it exists."""
    names = order_fields or OrderFields()
    if client.get_collection(names.collection) is not None:
        return False
    client.create_collection(
        {
            "collection": names.collection,
            "meta": {"icon": "receipt_long"},
            "schema": {},
            "fields": [
                {
                    "field": "id",
                    "type": "string",
                    "schema": {"is_primary_key": True, "max_length": 255},
                    "meta": {"interface": "input"},
                },
                _string("ridendine_order_id"),
                _choices("status", ["NEW", "ACCEPTED", "DELIVERED", "CANCELLED"]),
                _choices("payment_status", ["UNPAID", "PAID", "PARTIALLY_REFUNDED", "REFUNDED"]),
                _integer(names.amount_paid, note="integer cents"),
                _string(names.currency),
            ],
        }
    )
    for relation_field in (names.customer, names.chef):
        client.create_field(
            names.collection,
            {
                "field": relation_field,
                "type": "uuid",
                "schema": {},
                "meta": {"interface": "select-dropdown-m2o", "special": ["m2o"]},
            },
        )
        client.create_relation(
            {
                "collection": names.collection,
                "field": relation_field,
                "related_collection": "directus_users",
                "schema": {"on_delete": "SET NULL"},
            }
        )
    return True
