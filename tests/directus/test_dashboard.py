"""The "Refunds" Insights dashboard: the sync against the real Directus, run twice."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from bridge.cli import load_commands
from bridge.directus.dashboard import (
    DASHBOARD_KEY,
    PANELS,
    find_dashboards,
    marker,
    marker_key,
    sync_dashboard,
)
from devstack.directus import DirectusServer
from directus_client import DirectusClient
from tests.support.helpers import make_settings, settings_env


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
    assert by_key["amount_per_day"]["options"]["valueField"] == "amount_cents"
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


def _panel_query(panel: Any) -> dict[str, Any]:
    """The query the Directus app sends for a panel (as its panel types build them)."""
    options = panel.options
    if panel.type == "metric":
        return {"aggregate": {options["function"]: [options["field"]]}, "filter": options["filter"]}
    if panel.type == "time-series":
        date = options["dateField"]
        window = [{date: {"_gte": f"$NOW(-{options['range']})"}}, {date: {"_lte": "$NOW"}}]
        return {
            "group_by": [f"year({date})", f"month({date})", f"day({date})"],
            "aggregate": {options["function"]: [options["valueField"]]},
            "filter": {"_and": [options.get("filter", {}), *window]},
            "limit": -1,
        }
    if panel.type == "pie-chart":
        return {
            "group_by": [options["column"]],
            "aggregate": {options["function"]: [options["column"]]},
            "limit": -1,
        }
    if panel.type == "bar-chart":
        return {
            "group_by": [options["xAxis"]],
            "aggregate": {options["function"]: [options["yAxis"]]},
            "limit": -1,
        }
    assert panel.type == "list"
    return {
        "fields": ["id", "order_id", "amount_cents", "currency", "status", "review_reason"],
        "filter": options["filter"],
        "sort": [f"-{options['sortField']}"],
        "limit": options["limit"],
    }


def test_every_panel_query_answers_with_our_refunds(
    cooco_directus: DirectusServer, directus_admin: DirectusClient
) -> None:
    from datetime import UTC, datetime

    from tests.support.helpers import make_order, unique_id

    order = make_order(directus_admin)
    now = datetime.now(UTC).isoformat()
    flagged = unique_id("rf")
    waiting = unique_id("rf")
    for refund_id, status, review in (
        (unique_id("rf"), "REFUNDED", False),
        (flagged, "PENDING", True),
        (waiting, "REQUESTED", False),
    ):
        directus_admin.create_item(
            "refunds",
            {
                "id": refund_id,
                "order_id": order["id"],
                "amount_cents": 1234,
                "currency": "EUR",
                "reason": "chef_rejected",
                "requested_by": "admin",
                "status": status,
                "source": "cooco",
                "needs_review": review,
                "review_reason": "test" if review else None,
                "created_at": now,
                "updated_at": now,
            },
        )
    answers = {
        panel.key: directus_admin.query_items("refunds", **_panel_query(panel)) for panel in PANELS
    }
    assert int(answers["pending"][0]["count"]["id"]) >= 1
    assert int(answers["needs_review_count"][0]["count"]["id"]) >= 1
    assert int(answers["refunded_30_days"][0]["sum"]["amount_cents"]) >= 1234
    assert sum(int(row["count"]["id"]) for row in answers["refunds_per_day"]) >= 2
    assert sum(int(row["sum"]["amount_cents"]) for row in answers["amount_per_day"]) >= 1234
    assert any(row["reason"] == "chef_rejected" for row in answers["by_reason"])
    assert {"REFUNDED", "PENDING"} <= {row["status"] for row in answers["by_status"]}
    assert flagged in {row["id"] for row in answers["needs_review_list"]}
    assert waiting in {row["id"] for row in answers["waiting_for_approval"]}
    assert flagged not in {row["id"] for row in answers["waiting_for_approval"]}
