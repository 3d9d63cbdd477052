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
        # cast-json: Directus hands the value back as JSON, not as the stored string.
        "meta": {
            "interface": "input-code",
            "special": ["cast-json"],
            "options": {"language": "JSON"},
            **meta,
        },
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


def _decimal(name: str, **meta: Any) -> dict[str, Any]:
    return {
        "field": name,
        # Scale 3: every ISO 4217 currency's minor units fit (KWD has 3, EUR 2, JPY 0).
        "type": "decimal",
        "schema": {"numeric_precision": 18, "numeric_scale": 3},
        "meta": {"interface": "input", **meta},
    }


def _label(text: str) -> list[dict[str, str]]:
    """A field's or collection's name as people read it (Directus's field translations)."""
    return [{"language": "en-US", "translation": text}]


_DATETIME_DISPLAY: dict[str, Any] = {
    "display": "datetime",
    "display_options": {"format": "short", "relative": False},
}
_STATUS_DISPLAY_OPTIONS: dict[str, Any] = {
    "choices": [
        {
            "text": "Requested",
            "value": "REQUESTED",
            "foreground": "#FFFFFF",
            "background": "#3399FF",
        },
        {"text": "Pending", "value": "PENDING", "foreground": "#FFFFFF", "background": "#FFA439"},
        {"text": "Refunded", "value": "REFUNDED", "foreground": "#FFFFFF", "background": "#2ECDA7"},
        {"text": "Failed", "value": "FAILED", "foreground": "#FFFFFF", "background": "#E35169"},
        {"text": "Denied", "value": "DENIED", "foreground": "#FFFFFF", "background": "#A2B5CD"},
    ]
}

# Every field of the refunds item but the primary key and the relation to the order. `sort`
# orders the item page: what a person needs first, the bridge's bookkeeping last. The cents
# fields are the source of truth but hidden in the app: people read `amount` ("15.00 EUR").
REFUND_FIELDS: list[dict[str, Any]] = [
    _choices(
        "status",
        ["REQUESTED", "PENDING", "REFUNDED", "FAILED", "DENIED"],
        readonly=True,
        sort=1,
        translations=_label("Status"),
        display_options=_STATUS_DISPLAY_OPTIONS,
        note="REQUESTED while waiting for an admin (refund policy), DENIED if refused; "
        "PENDING until RideNDine answers, then REFUNDED or FAILED",
    ),
    _string(
        "amount",
        readonly=True,
        sort=3,
        translations=_label("Amount"),
        note="The amount asked for, as money (e.g. 15.00 EUR)",
    ),
    _string(
        "refunded_amount",
        readonly=True,
        sort=4,
        translations=_label("Refunded"),
        note="What RideNDine refunded, as money (empty until it answers)",
    ),
    _string("reason", readonly=True, sort=5, translations=_label("Reason")),
    _text("reason_comments", readonly=True, sort=6, translations=_label("Comments")),
    _choices(
        "requested_by",
        ["customer", "admin", "ridendine"],
        readonly=True,
        sort=7,
        translations=_label("Requested by"),
        note="Who asked for the refund: the customer, an admin, or RideNDine",
    ),
    _string(
        "requested_by_user",
        readonly=True,
        sort=8,
        translations=_label("Requested by (user id)"),
        note="The Directus user who asked, when one did",
    ),
    {
        "field": "needs_review",
        "type": "boolean",
        "schema": {"default_value": False},
        # cast-boolean: true/false rather than SQLite's 1/0.
        "meta": {
            "interface": "boolean",
            "special": ["cast-boolean"],
            "readonly": True,
            "sort": 9,
            "translations": _label("Needs review"),
            "note": "A person must look at this refund (see the review reason)",
        },
    },
    _text("review_reason", readonly=True, sort=10, translations=_label("Review reason")),
    _text("failure_reason", readonly=True, sort=11, translations=_label("Failure reason")),
    # An admin's approve or deny of a REQUESTED refund (docs/refunds.md, "The refund policy").
    _string(
        "decided_by",
        readonly=True,
        sort=12,
        translations=_label("Decided by (user id)"),
        note="The admin who approved or denied (user id)",
    ),
    _timestamp("decided_at", sort=13, translations=_label("Decided at"), **_DATETIME_DISPLAY),
    _text("decision_comment", readonly=True, sort=14, translations=_label("Decision comment")),
    _timestamp(
        "created_at",
        sort=15,
        translations=_label("Requested at"),
        **_DATETIME_DISPLAY,
    ),
    _timestamp("updated_at", sort=16, translations=_label("Updated at"), **_DATETIME_DISPLAY),
    _choices(
        "source",
        ["cooco", "ridendine"],
        readonly=True,
        sort=17,
        translations=_label("Source"),
        note="cooco: asked through COOCO; ridendine: started by RideNDine",
    ),
    _string("ridendine_order_id", readonly=True, sort=18, translations=_label("RideNDine order")),
    _string("ridendine_refund_id", readonly=True, sort=19, translations=_label("RideNDine refund")),
    _json("items", readonly=True, sort=20, translations=_label("Items")),
    _json("status_history", readonly=True, sort=21, translations=_label("Status history")),
    _string("currency", readonly=True, sort=22, translations=_label("Currency")),
    _integer(
        "amount_cents",
        readonly=True,
        hidden=True,
        sort=23,
        translations=_label("Amount (cents)"),
        note="The amount in integer cents: the source of truth, shown as Amount",
    ),
    _integer(
        "refunded_amount_cents",
        readonly=True,
        hidden=True,
        sort=24,
        translations=_label("Refunded (cents)"),
        note="What RideNDine refunded in integer cents, shown as Refunded",
    ),
    _decimal(
        "amount_value",
        readonly=True,
        hidden=True,
        sort=25,
        translations=_label("Amount (number)"),
        note="The amount in the currency's units, for the Insights dashboard's sums",
    ),
]


class SchemaError(Exception):
    """The schema cannot be applied (e.g. COOCO's orders collection is missing)."""


@dataclass
class SchemaPlan:
    """What `apply_schema` did or (dry run) would do, one line per change; `conflicts` are
    differences it will not fix by itself (they would need a column rewritten)."""

    changes: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.changes.append(line)

    def conflict(self, line: str) -> None:
        self.conflicts.append(line)

    @property
    def in_place(self) -> bool:
        """True when Directus already has the schema: nothing to change, nothing in conflict."""
        return not self.changes and not self.conflicts


REFUNDS_COLLECTION_META: dict[str, Any] = {
    "icon": "currency_exchange",
    "note": "Refunds through RideNDine, written by refund-bridge (read-only here)",
    "display_template": "{{id}} · {{amount}} · {{status}}",
    "sort_field": None,
    "translations": [
        {"language": "en-US", "translation": "Refunds", "singular": "Refund", "plural": "Refunds"}
    ],
}
ORDER_REFUNDS_ALIAS_META: dict[str, Any] = {
    "special": ["o2m"],
    "interface": "list-o2m",
    "readonly": True,
    "note": "Refunds of this order (refund-bridge); request one with the Request refund button",
    "translations": _label("Refunds"),
    "options": {
        "enableCreate": False,
        "enableSelect": False,
        "template": "{{status}} · {{amount}} · {{reason}} · {{created_at}}",
    },
}
ORDER_ID_META: dict[str, Any] = {
    "interface": "select-dropdown-m2o",
    "special": ["m2o"],
    "readonly": True,
    "sort": 2,
    "translations": _label("Order"),
    "options": {"template": "{{id}}"},
    "display": "related-values",
    "display_options": {"template": "{{id}}"},
}


def _order_pk(fields: list[dict[str, Any]], orders: str) -> dict[str, Any]:
    for item in fields:
        if (item.get("schema") or {}).get("is_primary_key"):
            return item
    raise SchemaError(f"collection {orders!r} has no primary key field")


def _meta_differences(current: dict[str, Any] | None, wanted: dict[str, Any]) -> dict[str, Any]:
    """The keys of `wanted` whose value differs in `current` (keys we do not set are the
    admins', and left alone). Translations: ours (`en-US`) are put back, the admins' other
    languages are kept."""
    current = current or {}
    differences = {key: value for key, value in wanted.items() if current.get(key) != value}
    if "translations" in differences:
        theirs = [
            entry
            for entry in current.get("translations") or []
            if entry.get("language") not in {ours["language"] for ours in wanted["translations"]}
        ]
        merged = theirs + list(wanted["translations"])
        if sorted(map(repr, merged)) == sorted(map(repr, current.get("translations") or [])):
            del differences["translations"]
        else:
            differences["translations"] = merged
    return differences


# Directus on SQLite reads a decimal column's type back as float (SQLite has no decimal type).
_SAME_TYPES = {"decimal": {"decimal", "float"}}


def _apply_field(
    client: DirectusClient,
    plan: SchemaPlan,
    collection: str,
    definition: dict[str, Any],
    existing: dict[str, Any] | None,
    *,
    dry_run: bool,
) -> None:
    name = f"{collection}.{definition['field']}"
    if existing is None:
        plan.add(f"create field {name} ({definition['type']})")
        if not dry_run:
            client.create_field(collection, definition)
        return
    if existing.get("type") not in _SAME_TYPES.get(definition["type"], {definition["type"]}):
        plan.conflict(
            f"field {name} is {existing.get('type')}, expected {definition['type']} "
            "(not changed: converting a column is for a person to decide)"
        )
        return
    differences = _meta_differences(existing.get("meta"), definition.get("meta") or {})
    if differences:
        plan.add(f"update field {name}: {', '.join(sorted(differences))}")
        if not dry_run:
            client.update_field(collection, definition["field"], {"meta": differences})


def apply_schema(
    client: DirectusClient,
    order_fields: OrderFields | None = None,
    *,
    dry_run: bool = False,
    refunds_collection: str = REFUNDS,
    demo_orders_planned: bool = False,
) -> SchemaPlan:
    """Bring Directus to the schema the bridge needs: create what is missing, set the
    settings of our own fields that differ, never touch a field we do not define.

    Idempotent: a second run has nothing to do. With `dry_run`, only reads: the plan says
    what a real run would change. `refunds_collection` exists for tests (the contract's name
    is `refunds`). `demo_orders_planned`: a dry run before `create_demo_orders`, planning for
    the demo orders collection (string primary key) when it does not exist yet.
    """
    orders = (order_fields or OrderFields()).collection
    refunds = refunds_collection
    plan = SchemaPlan()
    if client.get_collection(orders) is not None:
        order_field_list = client.list_fields(orders)
        pk_type = str(_order_pk(order_field_list, orders).get("type") or "string")
    elif dry_run and demo_orders_planned:
        order_field_list, pk_type = [], "string"
    else:
        raise SchemaError(
            f"the {orders!r} collection does not exist in Directus "
            "(BRIDGE_ORDERS_COLLECTION names COOCO's orders collection)"
        )

    refunds_item = client.get_collection(refunds)
    refunds_exists = refunds_item is not None
    if refunds_item is not None:
        differences = _meta_differences(refunds_item.get("meta"), REFUNDS_COLLECTION_META)
        if differences:
            plan.add(f"update collection {refunds}: {', '.join(sorted(differences))}")
            if not dry_run:
                client.update_collection(refunds, {"meta": differences})
    else:
        plan.add(f"create collection {refunds} (primary key id: string)")
        if not dry_run:
            client.create_collection(
                {
                    "collection": refunds,
                    "meta": REFUNDS_COLLECTION_META,
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
    existing: dict[str, dict[str, Any]] = (
        {f["field"]: f for f in client.list_fields(refunds)}
        if refunds_exists or not dry_run
        else {}
    )
    refunds_pk = existing.get("id")
    if refunds_pk is not None and (
        refunds_pk.get("type") != "string"
        or not (refunds_pk.get("schema") or {}).get("is_primary_key")
    ):
        plan.conflict(f"field {refunds}.id must be the string primary key")

    for definition in REFUND_FIELDS:
        _apply_field(
            client, plan, refunds, definition, existing.get(definition["field"]), dry_run=dry_run
        )
    _apply_field(
        client,
        plan,
        refunds,
        {"field": "order_id", "type": pk_type, "schema": {}, "meta": ORDER_ID_META},
        existing.get("order_id"),
        dry_run=dry_run,
    )

    _apply_order_alias(client, plan, orders, order_field_list, dry_run=dry_run)
    _apply_relation(client, plan, refunds, orders, refunds_exists, dry_run=dry_run)
    _apply_presets(client, plan, refunds, refunds_exists, dry_run=dry_run)
    return plan


# The refunds list as admins first see it: a Directus preset with no user and no role (every
# user's default until they change their own view), and two shared bookmarks.
REFUNDS_LIST_FIELDS = [
    "status",
    "order_id",
    "amount",
    "reason",
    "requested_by",
    "created_at",
    "needs_review",
]


def refunds_presets(refunds: str = REFUNDS) -> list[dict[str, Any]]:
    """The default layout (bookmark None) and the saved views, as `POST /presets` values."""

    def preset(bookmark: str | None, icon: str, filter: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "bookmark": bookmark,
            "collection": refunds,
            "user": None,
            "role": None,
            "icon": icon,
            "layout": "tabular",
            "layout_query": {
                "tabular": {"fields": REFUNDS_LIST_FIELDS, "sort": ["-created_at"], "page": 1}
            },
            "layout_options": {"tabular": {"spacing": "cozy"}},
            "filter": filter,
        }

    return [
        preset(None, "bookmark", None),
        preset("Needs review", "flag", {"needs_review": {"_eq": True}}),
        preset("Pending", "hourglass_top", {"status": {"_eq": "PENDING"}}),
    ]


def _apply_presets(
    client: DirectusClient, plan: SchemaPlan, refunds: str, refunds_exists: bool, *, dry_run: bool
) -> None:
    """Create the shared presets that are missing and put back the settings we define;
    users' and roles' own presets, and other shared bookmarks, are left alone."""
    current = (
        client.list_system(
            "presets",
            filter={
                "_and": [
                    {"collection": {"_eq": refunds}},
                    {"user": {"_null": True}},
                    {"role": {"_null": True}},
                ]
            },
            sort=["id"],
        )
        if refunds_exists or not dry_run
        else []
    )
    for wanted in refunds_presets(refunds):
        name = f"bookmark {wanted['bookmark']!r}" if wanted["bookmark"] else "default layout"
        found = next((p for p in current if p.get("bookmark") == wanted["bookmark"]), None)
        if found is None:
            plan.add(f"create preset {refunds}: {name}")
            if not dry_run:
                client.create_system("presets", wanted)
            continue
        differences = _meta_differences(found, wanted)
        if differences:
            plan.add(f"update preset {refunds}: {name} ({', '.join(sorted(differences))})")
            if not dry_run:
                client.update_system("presets", found["id"], differences)


def _apply_order_alias(
    client: DirectusClient,
    plan: SchemaPlan,
    orders: str,
    order_field_list: list[dict[str, Any]],
    *,
    dry_run: bool,
) -> None:
    alias = next((f for f in order_field_list if f.get("field") == ORDER_REFUNDS_ALIAS), None)
    if alias is not None and alias.get("type") != "alias":
        plan.conflict(
            f"field {orders}.{ORDER_REFUNDS_ALIAS} exists but is not the list of refunds "
            f"(type {alias.get('type')}); rename it so the order's refunds can be shown"
        )
        return
    _apply_field(
        client,
        plan,
        orders,
        {"field": ORDER_REFUNDS_ALIAS, "type": "alias", "meta": ORDER_REFUNDS_ALIAS_META},
        alias,
        dry_run=dry_run,
    )


def _apply_relation(
    client: DirectusClient,
    plan: SchemaPlan,
    refunds: str,
    orders: str,
    refunds_exists: bool,
    *,
    dry_run: bool,
) -> None:
    relations = client.list_relations(refunds) if refunds_exists or not dry_run else []
    relation = next((r for r in relations if r.get("field") == "order_id"), None)
    if relation is None:
        plan.add(f"create relation {refunds}.order_id -> {orders} (listed as {orders}.refunds)")
        if not dry_run:
            client.create_relation(
                {
                    "collection": refunds,
                    "field": "order_id",
                    "related_collection": orders,
                    "meta": {"one_field": ORDER_REFUNDS_ALIAS, "one_deselect_action": "nullify"},
                    "schema": {"on_delete": "SET NULL"},
                }
            )
        return
    if relation.get("related_collection") != orders:
        plan.conflict(
            f"relation {refunds}.order_id points to {relation.get('related_collection')}, "
            f"expected {orders}"
        )
        return
    if (relation.get("meta") or {}).get("one_field") != ORDER_REFUNDS_ALIAS:
        plan.add(f"update relation {refunds}.order_id: list it as {orders}.refunds")
        if not dry_run:
            client.update_relation(
                refunds, "order_id", {"meta": {"one_field": ORDER_REFUNDS_ALIAS}}
            )


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
                # The monthly report dates paid orders by it (BRIDGE_REPORT_ORDER_DATE_FIELD).
                _timestamp("date_created", special=["date-created"]),
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
