"""The "Refunds" Insights dashboard in Directus, as data, and its idempotent sync.

Admins see refunds per day, amount per day, refunds by reason and by status, what is pending,
the list of refunds that need review and the customers' requests waiting for approval, without
leaving the Directus app; the sync also keeps the refunds list's "Waiting for approval"
bookmark. All panels read the `refunds` collection (the bridge's projection of its ledger);
amounts are shown as money
(`15.00 EUR`), per currency. The app loads every panel in one GraphQL query, which Directus
refuses whole if one panel's query is invalid: tests/directus/test_dashboard.py sends it
the same way.

The dashboard and each panel carry a marker in their `note` (`[refund-bridge:<key>]`), the
stable key the sync finds them by: `sync_dashboard` creates what is missing, updates what
differs, deletes panels with our marker that the definition no longer has (and duplicates),
and leaves panels an admin added by hand alone. Running it twice changes nothing the second
time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.directus.schema import REFUNDS_LIST_FIELDS
from bridge.ledger.money import currency_exponent
from directus_client import DirectusClient

DASHBOARD_KEY = "refunds-dashboard"
REFUNDS = "refunds"
DASHBOARD_FIELDS = ("name", "icon", "color", "note")
PANEL_FIELDS = (
    "name",
    "icon",
    "color",
    "show_header",
    "note",
    "type",
    "position_x",
    "position_y",
    "width",
    "height",
    "options",
)
_MARKER = re.compile(r"\[refund-bridge:([a-z0-9_.-]+)\]")

Item = dict[str, Any]


def marker(key: str) -> str:
    return f"[refund-bridge:{key}]"


def marker_key(note: Any) -> str | None:
    found = _MARKER.search(note) if isinstance(note, str) else None
    return found.group(1) if found else None


@dataclass(frozen=True)
class Panel:
    key: str
    name: str
    type: str
    icon: str
    position: tuple[int, int, int, int]  # x, y, width, height (Directus grid units)
    options: Mapping[str, Any]
    note: str = ""
    color: str | None = None

    def values(self) -> Item:
        x, y, width, height = self.position
        return {
            "name": self.name,
            "icon": self.icon,
            "color": self.color,
            "show_header": True,
            "note": f"{self.note} {marker(self.key)}".strip(),
            "type": self.type,
            "position_x": x,
            "position_y": y,
            "width": width,
            "height": height,
            "options": dict(self.options),
        }


REVIEW = {"needs_review": {"_eq": True}}
REFUNDED = {"status": {"_eq": "REFUNDED"}}
PENDING = {"status": {"_eq": "PENDING"}}
WAITING = {"status": {"_eq": "REQUESTED"}}  # the refund policy: waiting for an admin
LAST_30_DAYS = {"created_at": {"_gte": "$NOW(-30 days)"}}
# The list panel's line; `order_id.id` names the order's key (a many-to-one needs sub-fields
# in Directus's GraphQL, which the app uses for every panel).
REVIEW_LIST_TEMPLATE = (
    "{{id}} · order {{order_id.id}} · {{amount}} · {{status}} · {{review_reason}}"
)


def refund_panels(currency: str = "EUR") -> tuple[Panel, ...]:
    """The panels; `currency` (BRIDGE_DEFAULT_CURRENCY) is the one whose totals are shown as
    money in a figure and a daily chart; the bar chart has every currency side by side.

    Sums read `amount_value` (the amount in the currency's units, a decimal): Directus 11.3.5's
    GraphQL offers no `sum` over the bigInteger cents (docs/directus.md, "The dashboard").
    """
    currency = currency.upper()
    digits = currency_exponent(currency)
    in_currency = {"currency": {"_eq": currency}}
    return (
        Panel(
            key="pending",
            name="Pending",
            type="metric",
            icon="hourglass_top",
            position=(1, 1, 12, 8),
            note="Refunds waiting for RideNDine's result.",
            options={
                "collection": REFUNDS,
                "field": "id",
                "function": "count",
                "filter": PENDING,
                "numberStyle": "decimal",
                "notation": "standard",
            },
        ),
        Panel(
            key="needs_review_count",
            name="Need review",
            type="metric",
            icon="flag",
            position=(13, 1, 12, 8),
            note="Refunds flagged for a person (see the list below).",
            color="#E35169",
            options={
                "collection": REFUNDS,
                "field": "id",
                "function": "count",
                "filter": REVIEW,
                "numberStyle": "decimal",
                "notation": "standard",
            },
        ),
        Panel(
            key="refunded_30_days",
            name=f"Refunded, last 30 days ({currency})",
            type="metric",
            icon="payments",
            position=(25, 1, 16, 8),
            note=f"REFUNDED refunds in {currency} requested in the last 30 days (other "
            "currencies: the chart beside).",
            options={
                "collection": REFUNDS,
                "field": "amount_value",
                "function": "sum",
                "filter": {"_and": [REFUNDED, in_currency, LAST_30_DAYS]},
                "numberStyle": "decimal",
                "notation": "standard",
                "suffix": f" {currency}",
                "minimumFractionDigits": digits,
                "maximumFractionDigits": digits,
            },
        ),
        Panel(
            key="refunded_by_currency",
            name="Refunded by currency, last 30 days",
            type="bar-chart",
            icon="currency_exchange",
            position=(41, 1, 20, 8),
            note="REFUNDED refunds requested in the last 30 days, summed per currency, in each "
            "currency's units.",
            options={
                "collection": REFUNDS,
                "xAxis": "currency",
                "yAxis": "amount_value",
                "function": "sum",
                "filter": {"_and": [REFUNDED, LAST_30_DAYS]},
                "decimals": 2,
                "showAxisLabels": "both",
                "showDataLabel": True,
            },
        ),
        Panel(
            key="refunds_per_day",
            name="Refunds per day",
            type="time-series",
            icon="show_chart",
            position=(1, 9, 30, 16),
            note="Refunds requested per day (all statuses), last 30 days.",
            options={
                "collection": REFUNDS,
                "function": "count",
                "precision": "day",
                "dateField": "created_at",
                "valueField": "id",
                "range": "1 month",
                "decimals": 0,
                "curveType": "straight",
                "fillType": "gradient",
                "showXAxis": True,
                "showYAxis": True,
            },
        ),
        Panel(
            key="amount_per_day",
            name=f"Amount refunded per day ({currency})",
            type="time-series",
            icon="stacked_line_chart",
            position=(31, 9, 30, 16),
            note=f"REFUNDED refunds in {currency} per day they were requested, last 30 days.",
            options={
                "collection": REFUNDS,
                "function": "sum",
                "precision": "day",
                "dateField": "created_at",
                "valueField": "amount_value",
                "range": "1 month",
                "filter": {"_and": [REFUNDED, in_currency]},
                "decimals": digits,
                "curveType": "straight",
                "fillType": "gradient",
                "showXAxis": True,
                "showYAxis": True,
            },
        ),
        Panel(
            key="by_reason",
            name="By reason",
            type="pie-chart",
            icon="pie_chart",
            position=(1, 25, 30, 16),
            note="All refunds by reason.",
            options={
                "collection": REFUNDS,
                "column": "reason",
                "function": "count",
                "donut": True,
                "showLabels": True,
                "legend": "right",
            },
        ),
        Panel(
            key="by_status",
            name="By status",
            type="bar-chart",
            icon="bar_chart",
            position=(31, 25, 30, 16),
            note="All refunds by status.",
            options={
                "collection": REFUNDS,
                "xAxis": "status",
                "yAxis": "id",
                "function": "count",
                "decimals": 0,
                "showAxisLabels": "both",
                "showDataLabel": True,
            },
        ),
        Panel(
            key="needs_review_list",
            name="Refunds that need review",
            type="list",
            icon="rule",
            position=(1, 41, 60, 20),
            note="Most recently changed first; open one to see its history and review reason.",
            color="#E35169",
            options={
                "collection": REFUNDS,
                "limit": 50,
                "sortField": "updated_at",
                "sortDirection": "desc",
                "displayTemplate": REVIEW_LIST_TEMPLATE,
                "linkToItem": True,
                "filter": REVIEW,
            },
        ),
        Panel(
            key="waiting_for_approval",
            name="Waiting for approval",
            type="list",
            icon="pending_actions",
            position=(1, 61, 60, 20),
            note="Customers' requests waiting for an admin, oldest first; open one and run "
            '"approve or deny".',
            color="#3399FF",
            options={
                "collection": REFUNDS,
                "limit": 50,
                "sortField": "created_at",
                "sortDirection": "asc",
                "displayTemplate": "{{id}} · {{amount}} · {{reason}} · {{created_at}}",
                "linkToItem": True,
                "filter": WAITING,
            },
        ),
    )


PANELS: tuple[Panel, ...] = refund_panels()

# The refunds list's saved view (a global bookmark) of the requests waiting for an admin.
WAITING_PRESET: Item = {
    "bookmark": "Waiting for approval",
    "collection": REFUNDS,
    "user": None,
    "role": None,
    "icon": "pending_actions",
    "color": "#3399FF",
    "layout": "tabular",
    "filter": WAITING,
    "layout_query": {"tabular": {"fields": REFUNDS_LIST_FIELDS, "sort": ["created_at"], "page": 1}},
}


def sync_waiting_preset(client: DirectusClient, *, dry_run: bool = False) -> list[str]:
    """Create or update the "Waiting for approval" bookmark (found by its name on `refunds`,
    global); return what changed."""
    found = client.list_system(
        "presets",
        filter={
            "_and": [
                {"collection": {"_eq": REFUNDS}},
                {"bookmark": {"_eq": WAITING_PRESET["bookmark"]}},
                {"user": {"_null": True}},
                {"role": {"_null": True}},
            ]
        },
    )
    if not found:
        if not dry_run:
            client.create_system("presets", WAITING_PRESET)
        return [f"create bookmark {WAITING_PRESET['bookmark']!r}"]
    differing = _differs(found[0], WAITING_PRESET)
    if not differing:
        return []
    if not dry_run:
        client.update_system("presets", found[0]["id"], WAITING_PRESET)
    return [f"update bookmark {WAITING_PRESET['bookmark']!r} ({', '.join(differing)})"]


@dataclass(frozen=True)
class Dashboard:
    key: str
    name: str
    icon: str
    note: str
    panels: tuple[Panel, ...]
    color: str | None = None

    def values(self) -> Item:
        return {
            "name": self.name,
            "icon": self.icon,
            "color": self.color,
            "note": f"{self.note} {marker(self.key)}".strip(),
        }


def refunds_dashboard(currency: str = "EUR") -> Dashboard:
    """The "Refunds" dashboard, its money figures in `currency` (BRIDGE_DEFAULT_CURRENCY)."""
    return Dashboard(
        key=DASHBOARD_KEY,
        name="Refunds",
        icon="currency_exchange",
        note="Refunds through RideNDine, kept up to date by refund-bridge (`refund-bridge "
        "dashboard sync`); panels added by hand are kept.",
        panels=refund_panels(currency),
    )


REFUNDS_DASHBOARD = refunds_dashboard()


@dataclass
class DashboardSyncResult:
    dashboard_id: str | None = None
    changes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def _differs(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    return [name for name, value in wanted.items() if current.get(name) != value]


def find_dashboards(client: DirectusClient, key: str = DASHBOARD_KEY) -> list[Item]:
    """Our dashboards by marker, oldest first (more than one only after a manual copy)."""
    found = client.list_system("dashboards", filter={"note": {"_contains": marker(key)}})
    ours = [item for item in found if marker_key(item.get("note")) == key]
    return sorted(ours, key=lambda item: str(item.get("date_created") or ""))


def sync_dashboard(
    client: DirectusClient, dashboard: Dashboard = REFUNDS_DASHBOARD, *, dry_run: bool = False
) -> DashboardSyncResult:
    """Create or update the dashboard and its panels so that Directus matches `dashboard`."""
    result = DashboardSyncResult()
    wanted = dashboard.values()
    existing = find_dashboards(client, dashboard.key)
    if not existing:
        result.changes.append(f"create dashboard {dashboard.name!r}")
        if dry_run:
            result.changes += [f"create panel {p.key}" for p in dashboard.panels]
            result.changes += sync_waiting_preset(client, dry_run=True)
            return result
        created = client.create_system("dashboards", wanted)
        dashboard_id = str(created["id"])
    else:
        current = existing[0]
        dashboard_id = str(current["id"])
        differing = _differs(current, wanted)
        if differing:
            result.changes.append(f"update dashboard {dashboard.name!r} ({', '.join(differing)})")
            if not dry_run:
                client.update_system("dashboards", dashboard_id, wanted)
    result.dashboard_id = dashboard_id
    _sync_panels(client, dashboard, dashboard_id, result, dry_run=dry_run)
    result.changes += sync_waiting_preset(client, dry_run=dry_run)
    return result


def _sync_panels(
    client: DirectusClient,
    dashboard: Dashboard,
    dashboard_id: str,
    result: DashboardSyncResult,
    *,
    dry_run: bool,
) -> None:
    current: dict[str, Item] = {}
    extra: list[Item] = []
    for item in client.list_system("panels", filter={"dashboard": {"_eq": dashboard_id}}):
        key = marker_key(item.get("note"))
        if key is None:
            continue  # an admin's own panel
        if key in current:
            extra.append(item)  # a duplicate (e.g. two syncs at once): keep one
        else:
            current[key] = item
    wanted_keys = {panel.key for panel in dashboard.panels}
    for panel in dashboard.panels:
        values = panel.values()
        found = current.get(panel.key)
        if found is None:
            result.changes.append(f"create panel {panel.key}")
            if not dry_run:
                client.create_system("panels", {"dashboard": dashboard_id, **values})
            continue
        differing = _differs(found, values)
        if differing:
            result.changes.append(f"update panel {panel.key} ({', '.join(differing)})")
            if not dry_run:
                client.update_system("panels", found["id"], values)
    stale = [item for key, item in current.items() if key not in wanted_keys] + extra
    for item in stale:
        result.changes.append(f"delete panel {marker_key(item.get('note'))} ({item['id']})")
        if not dry_run:
            client.delete_system("panels", item["id"])
