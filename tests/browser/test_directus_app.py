"""What COOCO's admins see in the Directus app, in Chromium: the "request refund" button on an
order's page and the refund there as money, the refunds list's columns, and the Insights
dashboard loading without a GraphQL error."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from playwright.sync_api import Page, expect

from bridge.directus.dashboard import PANELS, sync_dashboard
from bridge.directus.projection import refund_item
from tests.browser.conftest import Shots
from tests.support.helpers import make_order, new_refund, unique_id
from tests.system.test_end_to_end import Stack, people

WAIT_SECONDS = 60


def refund_in_directus(stack: Stack, cents: int, **values: Any) -> dict[str, Any]:
    """A refund item as the bridge projects it, requested now."""
    order = make_order(stack.admin, amount_paid_cents=cents)
    item = refund_item(new_refund(order["id"], cents))
    now = datetime.now(UTC).isoformat()
    item.update(id=unique_id("rf"), created_at=now, updated_at=now, **values)
    stack.admin.create_item("refunds", item)
    return item


def test_an_admin_requests_a_refund_on_the_order_page_and_sees_it_as_money(
    stack: Stack, admin_page: tuple[Page, Shots]
) -> None:
    page, shots = admin_page
    who = people(stack.admin)
    order_id = stack.order(who["customer"], who["chef"], 6400)
    page.goto(f"{stack.directus.url}/admin/content/orders/{order_id}")
    page.get_by_text("Flows", exact=True).click()
    page.get_by_role("button", name="request refund").click()
    dialog = page.locator("#dialog-outlet")
    dialog.get_by_placeholder("e.g. 25.00").fill("15.00")
    # Directus's select: its input lets the wrapper take the click.
    dialog.get_by_placeholder("Select an item").locator("xpath=..").click()
    page.locator(".v-menu-content").last.get_by_text("chef rejected").click()
    dialog.locator("textarea").fill("asked in the browser test")
    shots.take("dialog")
    page.get_by_role("button", name="Run Flow on Current Item").click()

    # The order's refunds list (the o2m field), once RideNDine's result is in.
    refunds = page.locator(".field").filter(has_text="Refunds of this order")
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        page.reload()
        refunds.scroll_into_view_if_needed()
        text = refunds.inner_text()
        if "Refunded" in text or time.monotonic() > deadline:
            break
        page.wait_for_timeout(1000)
    shots.take("order-refunds")
    assert "Refunded · 15.00 EUR · chef_rejected · " in " ".join(text.split()), text
    assert "1500" not in text


def test_the_refunds_list_shows_the_columns_a_person_needs_newest_first(
    stack: Stack, admin_page: tuple[Page, Shots]
) -> None:
    page, shots = admin_page
    newest = refund_in_directus(stack, 2550, status="PENDING", needs_review=True)
    page.goto(f"{stack.directus.url}/admin/content/refunds")
    header = page.locator("table thead")
    assert header.inner_text().split("\n") == [
        "Status",
        "Order",
        "Amount",
        "Reason",
        "Requested by",
        "Requested at",
        "Needs review",
    ]
    first_row = page.locator("table tbody tr").first
    shots.take("refunds-list")
    row = first_row.inner_text()
    assert "25.50 EUR" in row and newest["order_id"] in row, row
    assert "Pending" in row and "2550" not in row

    # The saved views, in the navigation under Refunds.
    page.get_by_role("link", name="Needs review").click()
    page.wait_for_url("**/admin/content/refunds?bookmark=*")
    assert "25.50 EUR" in page.locator("table tbody tr").first.inner_text()
    shots.take("needs-review")


def test_the_dashboard_loads_without_a_graphql_error(
    stack: Stack, admin_page: tuple[Page, Shots]
) -> None:
    page, shots = admin_page
    refund_in_directus(stack, 1999, status="REFUNDED")
    dashboard_id = sync_dashboard(stack.admin).dashboard_id
    answers: list[tuple[int, dict[str, Any]]] = []
    page.on(
        "response",
        lambda response: (
            answers.append((response.status, response.json()))
            if response.url.endswith("/graphql")
            else None
        ),
    )
    with page.expect_response(lambda response: response.url.endswith("/graphql")):
        page.goto(f"{stack.directus.url}/admin/insights/{dashboard_id}")
    tile = page.locator(".v-workspace-tile").filter(has_text="Refunded, last 30 days (EUR)")

    errors = [body.get("errors") for status, body in answers if status != 200 or "errors" in body]
    assert errors == [], errors
    (_status, body) = answers[0]
    assert len(body["data"]) == len(PANELS)  # every panel answered, in one query
    expected = stack.admin.query_items(
        "refunds",
        aggregate={"sum": ["amount_value"]},
        filter={
            "_and": [
                {"status": {"_eq": "REFUNDED"}},
                {"currency": {"_eq": "EUR"}},
                {"created_at": {"_gte": "$NOW(-30 days)"}},
            ]
        },
    )[0]["sum"]["amount_value"]
    # The figure as the metric panel formats it (en-US grouping), once rendered.
    expect(tile.locator(".metric-text")).to_have_text(f"{float(expected):,.2f} EUR")
    shots.take("dashboard")
