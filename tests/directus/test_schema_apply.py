"""`schema apply`: the refunds schema created once, idempotent, and respectful of the admins'
own fields. `apply_schema` runs on fresh collection names in the session Directus; the command
runs on a second, empty Directus (`spare_directus`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from bridge.cli import load_commands
from bridge.config import OrderFields
from bridge.directus.schema import (
    REFUNDS_LIST_FIELDS,
    SchemaError,
    apply_schema,
    create_demo_orders,
)
from devstack.directus import DirectusServer
from directus_client import DirectusClient
from tests.support.helpers import make_settings, settings_env, unique_id


@pytest.fixture
def names(
    cooco_directus: DirectusServer, directus_admin: DirectusClient
) -> tuple[OrderFields, str]:
    """A fresh demo orders collection and a fresh name for its refunds collection."""
    suffix = unique_id("s").replace("-", "_")
    orders = OrderFields(collection=f"orders_{suffix}")
    create_demo_orders(directus_admin, orders)
    return orders, f"refunds_{suffix}"


def fields_of(client: DirectusClient, collection: str) -> dict[str, dict[str, object]]:
    return {f["field"]: f for f in client.list_fields(collection)}


def test_apply_creates_the_schema_then_has_nothing_to_do(
    directus_admin: DirectusClient, names: tuple[OrderFields, str]
) -> None:
    orders, refunds = names
    planned = apply_schema(directus_admin, orders, refunds_collection=refunds, dry_run=True)
    assert planned.changes[0] == f"create collection {refunds} (primary key id: string)"
    assert f"create field {refunds}.order_id (string)" in planned.changes
    assert directus_admin.get_collection(refunds) is None  # a dry run changes nothing

    applied = apply_schema(directus_admin, orders, refunds_collection=refunds)
    assert applied.changes == planned.changes
    assert apply_schema(directus_admin, orders, refunds_collection=refunds).in_place
    assert apply_schema(directus_admin, orders, refunds_collection=refunds, dry_run=True).in_place

    # The refunds show on their order.
    order_id = unique_id("ord")
    directus_admin.create_item(orders.collection, {"id": order_id, "status": "PAID"})
    directus_admin.create_item(
        refunds, {"id": f"rf_{order_id}", "order_id": order_id, "amount_cents": 700}
    )
    loaded = directus_admin.get_item(
        orders.collection, order_id, fields=["refunds.id", "refunds.amount_cents"]
    )
    assert loaded == {"refunds": [{"id": f"rf_{order_id}", "amount_cents": 700}]}


def test_admins_own_fields_and_settings_are_kept(
    directus_admin: DirectusClient, names: tuple[OrderFields, str]
) -> None:
    orders, refunds = names
    apply_schema(directus_admin, orders, refunds_collection=refunds)
    directus_admin.create_field(
        refunds, {"field": "admin_note", "type": "text", "meta": {"interface": "input"}}
    )
    directus_admin.create_field(
        orders.collection, {"field": "loyalty_points", "type": "integer", "meta": {}}
    )
    directus_admin.update_field(refunds, "status", {"meta": {"width": "half"}})

    plan = apply_schema(directus_admin, orders, refunds_collection=refunds)
    assert plan.in_place, plan
    assert "admin_note" in fields_of(directus_admin, refunds)
    assert "loyalty_points" in fields_of(directus_admin, orders.collection)
    assert fields_of(directus_admin, refunds)["status"]["meta"]["width"] == "half"  # type: ignore[index]


def test_our_fields_settings_are_put_back(
    directus_admin: DirectusClient, names: tuple[OrderFields, str]
) -> None:
    orders, refunds = names
    apply_schema(directus_admin, orders, refunds_collection=refunds)
    directus_admin.update_field(
        refunds, "amount_cents", {"meta": {"readonly": False, "note": "edit me"}}
    )
    plan = apply_schema(directus_admin, orders, refunds_collection=refunds)
    assert plan.changes == [f"update field {refunds}.amount_cents: note, readonly"]
    meta = fields_of(directus_admin, refunds)["amount_cents"]["meta"]
    assert meta["readonly"] is True  # type: ignore[index]
    assert meta["note"].startswith("The amount in integer cents")  # type: ignore[index]
    assert apply_schema(directus_admin, orders, refunds_collection=refunds).in_place


def test_a_field_of_the_wrong_type_is_a_conflict_left_alone(
    directus_admin: DirectusClient, names: tuple[OrderFields, str]
) -> None:
    orders, refunds = names
    directus_admin.create_collection(
        {
            "collection": refunds,
            "schema": {},
            "fields": [
                {"field": "id", "type": "string", "schema": {"is_primary_key": True}},
                {"field": "amount_cents", "type": "string", "schema": {}},
            ],
        }
    )
    plan = apply_schema(directus_admin, orders, refunds_collection=refunds)
    assert plan.conflicts == [
        f"field {refunds}.amount_cents is string, expected bigInteger "
        "(not changed: converting a column is for a person to decide)"
    ]
    assert fields_of(directus_admin, refunds)["amount_cents"]["type"] == "string"
    assert "ridendine_order_id" in fields_of(directus_admin, refunds)  # the rest was applied


def test_order_id_has_the_type_of_the_orders_key(
    cooco_directus: DirectusServer, directus_admin: DirectusClient
) -> None:
    suffix = unique_id("i").replace("-", "_")
    orders = OrderFields(collection=f"orders_{suffix}")
    directus_admin.create_collection(
        {
            "collection": orders.collection,
            "schema": {},
            "fields": [
                {
                    "field": "id",
                    "type": "integer",
                    "schema": {"is_primary_key": True, "has_auto_increment": True},
                }
            ],
        }
    )
    apply_schema(directus_admin, orders, refunds_collection=f"refunds_{suffix}")
    assert fields_of(directus_admin, f"refunds_{suffix}")["order_id"]["type"] == "integer"


def test_without_the_orders_collection_nothing_is_done(
    cooco_directus: DirectusServer, directus_admin: DirectusClient
) -> None:
    refunds = f"refunds_{unique_id('m').replace('-', '_')}"
    with pytest.raises(SchemaError, match="does not exist"):
        apply_schema(
            directus_admin, OrderFields(collection="no_such_orders"), refunds_collection=refunds
        )
    assert directus_admin.get_collection(refunds) is None


# -- the command, on an empty Directus -------------------------------------------------------


@pytest.fixture
def spare_admin(spare_directus: DirectusServer) -> Iterator[DirectusClient]:
    client = DirectusClient(spare_directus.url, spare_directus.admin_token)
    yield client
    client.close()


def test_schema_apply_command_on_a_directus_without_refunds(
    spare_directus: DirectusServer, spare_admin: DirectusClient, runner: CliRunner
) -> None:
    env = settings_env(make_settings(spare_directus.url, spare_directus.admin_token))
    commands = load_commands()
    assert spare_admin.get_collection("orders") is None
    assert spare_admin.get_collection("refunds") is None

    missing = runner.invoke(commands, ["schema", "apply"], env=env)
    assert missing.exit_code == 1
    assert missing.stderr.strip().splitlines() == [
        "refund-bridge: schema: the 'orders' collection does not exist in Directus "
        "(BRIDGE_ORDERS_COLLECTION names COOCO's orders collection)"
    ]

    dry = runner.invoke(commands, ["schema", "apply", "--dry-run", "--with-demo-orders"], env=env)
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines()[0] == "would: create demo collection orders"
    assert "would: create collection refunds (primary key id: string)" in dry.stdout.splitlines()
    assert dry.stdout.splitlines()[-1].startswith("dry run: ")
    assert spare_admin.get_collection("orders") is None

    created = runner.invoke(commands, ["schema", "apply", "--with-demo-orders"], env=env)
    assert created.exit_code == 0, created.output
    lines = created.stdout.splitlines()
    assert lines[0] == "created demo collection orders"
    assert "create collection refunds (primary key id: string)" in lines
    assert "create relation refunds.order_id -> orders (listed as orders.refunds)" in lines
    assert lines[-1].startswith("schema applied: ")

    again = runner.invoke(commands, ["schema", "apply"], env=env)
    assert again.exit_code == 0
    assert again.stdout.splitlines() == ["schema is up to date: nothing to change"]

    spare_admin.create_field("refunds", {"field": "admin_note", "type": "text", "meta": {}})
    spare_admin.create_field("orders", {"field": "table_number", "type": "integer", "meta": {}})
    kept = runner.invoke(commands, ["schema", "apply"], env=env)
    assert kept.stdout.splitlines() == ["schema is up to date: nothing to change"]
    assert "admin_note" in fields_of(spare_admin, "refunds")
    assert "table_number" in fields_of(spare_admin, "orders")
    dry_after = runner.invoke(commands, ["schema", "apply", "--dry-run"], env=env)
    assert dry_after.stdout.splitlines() == ["schema is up to date: nothing to change"]


def test_schema_apply_with_a_bad_token_fails_with_one_line(
    spare_directus: DirectusServer, runner: CliRunner
) -> None:
    env = settings_env(make_settings(spare_directus.url, "not-a-token-0123456789"))
    result = runner.invoke(load_commands(), ["schema", "apply"], env=env)
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("refund-bridge: Directus: 401 INVALID_CREDENTIALS")
    assert "not-a-token" not in line


def test_the_refunds_list_bookmarks_and_names_are_put_in_place(
    directus_admin: DirectusClient, names: tuple[OrderFields, str]
) -> None:
    orders, refunds = names
    apply_schema(directus_admin, orders, refunds_collection=refunds)

    def shared_presets() -> dict[str | None, dict[str, Any]]:
        found = directus_admin.list_system(
            "presets", filter={"collection": {"_eq": refunds}, "user": {"_null": True}}
        )
        return {p["bookmark"]: p for p in found}

    presets = shared_presets()
    assert set(presets) == {None, "Needs review", "Pending"}
    default = presets[None]
    assert (default["layout"], default["role"], default["filter"]) == ("tabular", None, None)
    assert default["layout_query"]["tabular"] == {
        "fields": REFUNDS_LIST_FIELDS,
        "sort": ["-created_at"],
        "page": 1,
    }
    assert REFUNDS_LIST_FIELDS == [
        "status",
        "order_id",
        "amount",
        "reason",
        "requested_by",
        "created_at",
        "needs_review",
    ]
    assert presets["Needs review"]["filter"] == {"needs_review": {"_eq": True}}
    assert presets["Pending"]["filter"] == {"status": {"_eq": "PENDING"}}
    fields = fields_of(directus_admin, refunds)
    assert fields["amount_cents"]["meta"]["hidden"] is True  # type: ignore[index]
    assert fields["amount"]["meta"]["translations"] == [  # type: ignore[index]
        {"language": "en-US", "translation": "Amount"}
    ]

    # An admin re-sorted the default list, renamed a field in English, named it in German,
    # and saved a bookmark of their own: ours are put back, theirs kept.
    directus_admin.update_system(
        "presets", default["id"], {"layout_query": {"tabular": {"sort": ["amount"]}}}
    )
    directus_admin.update_field(
        refunds,
        "status",
        {
            "meta": {
                "translations": [
                    {"language": "en-US", "translation": "State"},
                    {"language": "de-DE", "translation": "Status (de)"},
                ]
            }
        },
    )
    own = directus_admin.create_system(
        "presets",
        {"collection": refunds, "bookmark": "Mine", "layout": "tabular", "filter": None},
    )
    plan = apply_schema(directus_admin, orders, refunds_collection=refunds)
    assert sorted(plan.changes) == [
        f"update field {refunds}.status: translations",
        f"update preset {refunds}: default layout (layout_query)",
    ]
    translations = fields_of(directus_admin, refunds)["status"]["meta"]["translations"]  # type: ignore[index]
    assert sorted(t["translation"] for t in translations) == ["Status", "Status (de)"]
    assert shared_presets()[None]["layout_query"]["tabular"]["sort"] == ["-created_at"]
    assert own["id"] in {p["id"] for p in shared_presets().values()}
    assert apply_schema(directus_admin, orders, refunds_collection=refunds).in_place
