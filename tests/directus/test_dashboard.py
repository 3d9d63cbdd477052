"""The "Refunds" Insights dashboard: the sync against the real Directus, run twice."""

from __future__ import annotations

import json
import random
import re
import string
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from bridge.cli import load_commands
from bridge.directus.dashboard import (
    DASHBOARD_KEY,
    PANELS,
    Panel,
    find_dashboards,
    marker,
    marker_key,
    refund_panels,
    sync_dashboard,
)
from bridge.directus.projection import refund_item
from devstack.directus import DirectusServer
from directus_client import DirectusClient
from tests.support.helpers import make_order, make_settings, new_refund, settings_env, unique_id


def _panels(client: DirectusClient, dashboard_id: str) -> list[dict[str, Any]]:
    return client.list_system("panels", filter={"dashboard": {"_eq": dashboard_id}})


@pytest.fixture
def synced(cooco_directus: DirectusServer, directus_admin: DirectusClient) -> str:
    """The dashboard synced once; its id."""
    result = sync_dashboard(directus_admin)
    assert result.dashboard_id
    return result.dashboard_id


def test_definition_is_consistent() -> None:
    keys = [panel.key for panel in PANELS]
    assert len(keys) == len(set(keys))
    assert {p.type for p in PANELS} >= {"time-series", "pie-chart", "bar-chart", "list"}
    assert all(p.options["collection"] == "refunds" for p in PANELS)
    assert marker_key(f"text {marker('by_reason')}") == "by_reason"
    assert marker_key("no marker") is None and marker_key(None) is None


def test_sync_twice_leaves_one_dashboard_with_its_panels(
    cooco_directus: DirectusServer, directus_admin: DirectusClient
) -> None:
    first = sync_dashboard(directus_admin)
    second = sync_dashboard(directus_admin)
    assert second.changes == []
    assert second.dashboard_id == first.dashboard_id
    dashboards = find_dashboards(directus_admin)
    assert [d["id"] for d in dashboards] == [first.dashboard_id]
    assert dashboards[0]["name"] == "Refunds"
    panels = _panels(directus_admin, str(first.dashboard_id))
    assert sorted(marker_key(p["note"]) for p in panels) == sorted(p.key for p in PANELS)
    by_key = {marker_key(p["note"]): p for p in panels}
    review = by_key["needs_review_list"]
    assert review["type"] == "list"
    assert review["options"]["filter"] == {"needs_review": {"_eq": True}}
    per_day = by_key["refunds_per_day"]
    assert (per_day["type"], per_day["options"]["precision"]) == ("time-series", "day")
    assert by_key["by_reason"]["options"]["column"] == "reason"
    assert by_key["by_status"]["options"]["xAxis"] == "status"
    assert by_key["amount_per_day"]["options"]["valueField"] == "amount_value"
    waiting = by_key["waiting_for_approval"]
    assert (waiting["type"], waiting["options"]["filter"]) == (
        "list",
        {"status": {"_eq": "REQUESTED"}},
    )
    # The refunds list's saved view of the waiting requests: one, global.
    (preset,) = directus_admin.list_system(
        "presets",
        filter={"collection": {"_eq": "refunds"}, "bookmark": {"_eq": "Waiting for approval"}},
    )
    assert preset["filter"] == {"status": {"_eq": "REQUESTED"}}
    assert (preset["user"], preset["role"], preset["layout"]) == (None, None, "tabular")


def test_sync_repairs_drift_and_keeps_admins_own_panels(
    synced: str, directus_admin: DirectusClient
) -> None:
    panels = {marker_key(p["note"]): p for p in _panels(directus_admin, synced)}
    # An admin moved one panel and deleted another, and added one of their own.
    directus_admin.update_system("panels", panels["by_status"]["id"], {"position_x": 40})
    directus_admin.delete_system("panels", panels["pending"]["id"])
    own = directus_admin.create_system(
        "panels",
        {
            "dashboard": synced,
            "name": "Mine",
            "type": "label",
            "position_x": 1,
            "position_y": 70,
            "width": 10,
            "height": 4,
            "options": {"text": "hello"},
        },
    )
    # A panel an older definition had.
    directus_admin.create_system(
        "panels",
        {
            "dashboard": synced,
            "name": "Old",
            "type": "label",
            "note": marker("old_panel"),
            "position_x": 1,
            "position_y": 80,
            "width": 10,
            "height": 4,
            "options": {"text": "old"},
        },
    )
    plan = sync_dashboard(directus_admin, dry_run=True)
    assert sorted(c.split(" (")[0] for c in plan.changes) == [
        "create panel pending",
        "delete panel old_panel",
        "update panel by_status",
    ]
    assert len(_panels(directus_admin, synced)) == len(PANELS) + 1  # dry run changed nothing

    result = sync_dashboard(directus_admin)
    assert result.changes and result.dashboard_id == synced
    after = _panels(directus_admin, synced)
    keys = sorted(str(marker_key(p["note"])) for p in after if marker_key(p["note"]))
    assert keys == sorted(p.key for p in PANELS)
    assert own["id"] in {p["id"] for p in after}
    moved = next(p for p in after if marker_key(p["note"]) == "by_status")
    assert moved["position_x"] == 31
    assert sync_dashboard(directus_admin).changes == []
    directus_admin.delete_system("panels", own["id"])


def test_dashboard_sync_command(
    cooco_directus: DirectusServer, directus_admin: DirectusClient
) -> None:
    settings = make_settings(cooco_directus.url, cooco_directus.admin_token)
    runner = CliRunner()
    sync_dashboard(directus_admin)
    result = runner.invoke(load_commands(), ["dashboard", "sync"], env=settings_env(settings))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "dashboard is up to date"
    assert len(find_dashboards(directus_admin, DASHBOARD_KEY)) == 1

    refused = runner.invoke(
        load_commands(),
        ["dashboard", "sync"],
        env=settings_env(make_settings(cooco_directus.url, "not-a-valid-token-000")),
    )
    assert refused.exit_code == 1
    assert refused.output.startswith("refund-bridge: Directus: 401")
    assert "not-a-valid-token-000" not in refused.output


# -- the panels as the Directus app loads them ----------------------------------------------
#
# The Insights app (Directus 11.3.5, @directus/app's insights store) asks each panel type for a
# `{collection, query}` and turns all of a dashboard's queries into ONE GraphQL document
# (json-to-graphql-query), posted to /graphql: one invalid panel fails them all. The functions
# below port that code (panel types metric, time-series, pie-chart, bar-chart, list).


def app_panel_query(panel: Panel) -> dict[str, Any]:
    """A panel type's `query(options)`, as the app's panel extensions define it."""
    options = panel.options
    if panel.type == "metric":
        return {
            "limit": 1,
            "filter": options["filter"],
            "aggregate": {options["function"]: [options["field"]]},
        }
    if panel.type == "time-series":
        date = options["dateField"]
        window = [{date: {"_gte": f"$NOW(-{options['range']})"}}, {date: {"_lte": "$NOW"}}]
        return {
            "group": [f"{unit}({date})" for unit in ("year", "month", "day")],
            "aggregate": {options["function"]: [options["valueField"]]},
            "filter": {"_and": [options.get("filter") or {}, *window]},
            "limit": -1,
        }
    if panel.type == "pie-chart":
        column = options["column"]
        return {
            "group": [column],
            "aggregate": {options.get("function", "count"): [column]},
            "filter": options.get("filter") or {},
            "limit": -1,
        }
    if panel.type == "bar-chart":
        return {
            "group": [options["xAxis"]],
            "aggregate": {options.get("function", "max"): [options["yAxis"]]},
            "filter": options.get("filter") or {},
            "limit": -1,
        }
    assert panel.type == "list", panel.type
    template_fields = re.findall(r"{{\s*(.*?)\s*}}", options.get("displayTemplate", ""))
    sort_field = options.get("sortField", "id")
    return {
        "filter": options.get("filter") or {},
        "fields": ["id", *template_fields],
        "sort": sort_field if options.get("sortDirection") == "asc" else f"-{sort_field}",
        "limit": options.get("limit", 5),
    }


def _graphql_value(value: Any) -> str:
    """json-to-graphql-query's argument syntax: unquoted keys, JSON scalars."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_graphql_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_graphql_value(v) for v in value) + "]"
    return json.dumps(value)


def _selection(fields: dict[str, Any]) -> str:
    parts = [
        name if sub is True else f"{name} {{ {_selection(sub)} }}" for name, sub in fields.items()
    ]
    return " ".join(parts)


def app_graphql_document(collection: str, queries: dict[str, dict[str, Any]]) -> str:
    """The one GraphQL document the app posts for a dashboard's panels, keyed `query_<key>`."""
    lines = []
    for key, query in queries.items():
        args = {name: query[name] for name in ("limit", "sort", "filter") if name in query}
        selection: dict[str, Any] = {}
        name = collection
        if query.get("aggregate"):
            name = f"{collection}_aggregated"
            for function, fields in query["aggregate"].items():
                selection[function] = dict.fromkeys(fields, True)
            if query.get("group"):
                selection["group"] = True
                args["groupBy"] = query["group"]
        else:
            for field_path in query["fields"]:
                node = selection
                *parents, leaf = field_path.split(".")
                for parent in parents:
                    node = node.setdefault(parent, {})
                node[leaf] = True
        lines.append(
            f"query_{key}: {name}({_graphql_value(args)[1:-1]}) {{ {_selection(selection)} }}"
        )
    return "query { " + " ".join(lines) + " }"


def post_graphql(directus: DirectusServer, document: str) -> dict[str, Any]:
    """POST /graphql as the app does; any error in the answer fails the test."""
    answer = requests.post(
        f"{directus.url}/graphql",
        json={"query": document},
        headers={"Authorization": f"Bearer {directus.admin_token}"},
        timeout=30,
    )
    body = answer.json()
    assert answer.status_code == 200 and "errors" not in body, body.get("errors")
    return dict(body["data"])


def test_the_dashboard_loads_through_graphql_as_the_app_sends_it(
    cooco_directus: DirectusServer, directus_admin: DirectusClient
) -> None:
    # A currency of this test's own, so that the money figures are exactly its refunds'.
    currency = "X" + "".join(random.choice(string.ascii_uppercase) for _ in range(2))
    order = make_order(directus_admin, currency=currency)
    now = datetime.now(UTC).isoformat()
    flagged = unique_id("rf")
    waiting = unique_id("rf")
    for refund_id, cents, status, review in (
        (unique_id("rf"), 1234, "REFUNDED", False),
        (unique_id("rf"), 500, "REFUNDED", False),
        (flagged, 999, "PENDING", True),
        (waiting, 777, "REQUESTED", False),
    ):
        refund = new_refund(order["id"], cents, currency=currency)
        item = refund_item(refund)
        item.update(
            id=refund_id,
            status=status,
            needs_review=review,
            review_reason="test" if review else None,
            created_at=now,
            updated_at=now,
        )
        directus_admin.create_item("refunds", item)
    panels = refund_panels(currency)
    document = app_graphql_document("refunds", {p.key: app_panel_query(p) for p in panels})
    data = post_graphql(cooco_directus, document)
    answers = {key.removeprefix("query_"): rows for key, rows in data.items()}
    assert set(answers) == {p.key for p in panels}
    assert int(answers["pending"][0]["count"]["id"]) >= 1
    assert int(answers["needs_review_count"][0]["count"]["id"]) >= 1
    assert answers["refunded_30_days"][0]["sum"]["amount_value"] == pytest.approx(17.34)
    per_currency = {
        r["group"]["currency"]: r["sum"]["amount_value"] for r in answers["refunded_by_currency"]
    }
    assert per_currency[currency] == pytest.approx(17.34)
    assert sum(r["sum"]["amount_value"] for r in answers["amount_per_day"]) == pytest.approx(17.34)
    assert sum(int(r["count"]["id"]) for r in answers["refunds_per_day"]) >= 3
    assert any(r["group"]["reason"] == "chef_rejected" for r in answers["by_reason"])
    assert {"REFUNDED", "PENDING"} <= {r["group"]["status"] for r in answers["by_status"]}
    listed = {r["id"]: r for r in answers["needs_review_list"]}
    assert listed[flagged]["amount"] == f"9.99 {currency}"
    assert listed[flagged]["order_id"] == {"id": order["id"]}
    assert waiting in {r["id"] for r in answers["waiting_for_approval"]}
    assert flagged not in {r["id"] for r in answers["waiting_for_approval"]}
    assert {r["id"]: r["amount"] for r in answers["waiting_for_approval"]}[waiting] == (
        f"7.77 {currency}"
    )


def test_an_invalid_panel_fails_the_whole_graphql_query(
    cooco_directus: DirectusServer,
) -> None:
    """What the app met before: a many-to-one listed without sub-fields makes Directus refuse
    the whole document, the valid panel's query with it (so the check above can fail)."""
    document = app_graphql_document(
        "refunds",
        {
            "count": {"limit": 1, "filter": {}, "aggregate": {"count": ["id"]}},
            "order": {"fields": ["id", "order_id"], "filter": {}, "limit": 1},
        },
    )
    answer = requests.post(
        f"{cooco_directus.url}/graphql",
        json={"query": document},
        headers={"Authorization": f"Bearer {cooco_directus.admin_token}"},
        timeout=30,
    )
    errors = answer.json()["errors"]
    assert "data" not in answer.json()
    messages = " ".join(e["message"] for error in errors for e in error["extensions"]["errors"])
    assert 'Field "order_id" of type "orders" must have a selection of subfields' in messages
