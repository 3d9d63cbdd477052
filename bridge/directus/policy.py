"""The bridge's Directus policy as data: every permission its token needs, with its fields and
the feature that needs it, and nothing more (docs/directus.md, "The bridge's policy").

`bridge_grants` is the one source: `refund-bridge policy apply` creates or updates the
"refund-bridge" policy from it, `check` compares the token's permissions with it, and
docs/directus.md's table is `policy_table` of it (a test fails when the two drift).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.config import OrderFields, Settings
from bridge.directus.projection import REFUND_ITEM_FIELDS, REFUNDS_COLLECTION
from directus_client import DirectusClient
from flows.sync import FLOW_FIELDS, OPERATION_FIELDS

POLICY_KEY = "policy"
DEFAULT_REPORT_DATE_FIELD = Settings.report_order_date_field
POLICY_NAME = "refund-bridge"
POLICY_ICON = "currency_exchange"
# The marker in the policy's description by which `policy apply` finds it again.
MARKER_PREFIX = "[refund-bridge:"
ADMIN_LOOKUP = (
    "tell admins from customers (user tokens, the extension's acting user, approve/deny, "
    "stats) and find the admins' e-mails"
)


@dataclass(frozen=True)
class Grant:
    """One permission of the policy: `action` on `collection`, limited to `fields`."""

    collection: str
    action: str
    fields: tuple[str, ...]
    why: str

    @property
    def name(self) -> str:
        """How people call it: "read directus_access"."""
        return f"{self.action} {self.collection}"


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for name in names if name))


def grants_for(settings: Settings) -> tuple[Grant, ...]:
    """The grants for a running configuration."""
    return bridge_grants(settings.order_fields, settings.report_order_date_field)


def bridge_grants(
    names: OrderFields | None = None, report_date_field: str = DEFAULT_REPORT_DATE_FIELD
) -> tuple[Grant, ...]:
    """Every permission the bridge's token needs (the orders' field names are configuration;
    the defaults give docs/directus.md's table), in the order the docs list them."""
    names = names or OrderFields()
    # The e-mail paths ("customer.email") start with a field of the order and end with a
    # field of the related user.
    email_paths = (names.customer_email, names.chef_email)
    user_fields = _unique([path.rsplit(".", 1)[-1] for path in email_paths])
    refund_fields = _unique(["id", *REFUND_ITEM_FIELDS])
    return (
        Grant(
            names.collection,
            "read",
            _unique(
                [
                    "id",
                    "ridendine_order_id",
                    "status",
                    "payment_status",
                    names.amount_paid,
                    names.currency,
                    names.customer,
                    names.chef,
                    *(path.split(".", 1)[0] for path in email_paths),
                    report_date_field,
                    "refunds",
                ]
            ),
            "check an order before refunding it (refundable, how much was paid, whose), "
            "apply a result to it, e-mail its customer and chef, count paid orders by "
            f"`{report_date_field}` for the monthly report, and (`check`) see its `refunds` list",
        ),
        Grant(
            names.collection,
            "update",
            ("status", "payment_status"),
            "set the two fields the bridge owns when a refund's result comes (contract section 3)",
        ),
        Grant(
            REFUNDS_COLLECTION,
            "read",
            refund_fields,
            "project the ledger into Directus (admins see refunds on the order's page) and "
            "compare it (`reconcile`)",
        ),
        Grant(
            REFUNDS_COLLECTION,
            "create",
            refund_fields,
            "project each new refund",
        ),
        Grant(
            REFUNDS_COLLECTION,
            "update",
            refund_fields,
            "project each change of a refund",
        ),
        Grant(
            "directus_users",
            "read",
            _unique(["id", *user_fields, "status", "role"]),
            "read customers' and chefs' e-mails through the order, know who a user token or "
            "the extension's acting user is (active? which role?), and find the admins' e-mails",
        ),
        Grant(
            "directus_roles", "read", ("id", "parent"), ADMIN_LOOKUP + " (roles and their parents)"
        ),
        Grant(
            "directus_access",
            "read",
            ("user", "role", "policy"),
            ADMIN_LOOKUP + " (which policies users and roles hold)",
        ),
        Grant(
            "directus_policies",
            "read",
            ("id", "admin_access"),
            ADMIN_LOOKUP + " (which policies give admin access)",
        ),
        Grant(
            "directus_notifications",
            "create",
            ("recipient", "subject", "message", "collection", "item"),
            "tell admins in the Directus app of a refund waiting for their decision "
            "(contract section 1a) or needing review",
        ),
        Grant(
            "directus_notifications",
            "read",
            ("recipient", "subject", "collection", "item"),
            "tell each admin only once of a refund needing review when the notice is retried",
        ),
        Grant(
            "directus_flows",
            "read",
            _unique(["id", *FLOW_FIELDS, "options", "operation", "date_created"]),
            "find the refund-result Flow that sends the e-mails (`id`, `description`, "
            "`status`) and (`check`) compare the Flows with their definitions",
        ),
        Grant(
            "directus_operations",
            "read",
            _unique(["id", "key", "flow", *OPERATION_FIELDS, "resolve", "reject"]),
            "(`check`) compare the Flows' operations with their definitions",
        ),
        Grant(
            "directus_collections",
            "read",
            ("*",),
            "(`check`) verify the schema (Directus's schema metadata, no data)",
        ),
        Grant("directus_fields", "read", ("*",), "(`check`) verify the schema"),
        Grant("directus_relations", "read", ("*",), "(`check`) verify the schema"),
        Grant(
            "directus_presets",
            "read",
            ("*",),
            "(`check`) verify the refunds list's shared layout and bookmarks",
        ),
    )


def policy_table(grants: Sequence[Grant]) -> str:
    """The grants as the Markdown table of docs/directus.md."""
    rows = [
        "| collection | action | fields | needed to |",
        "|---|---|---|---|",
    ]
    read = {g.collection: g.fields for g in grants if g.action == "read"}
    for grant in grants:
        if grant.fields == ("*",):
            fields = "all (`*`)"
        elif grant.action != "read" and read.get(grant.collection) == grant.fields:
            fields = "the same as read"
        else:
            fields = ", ".join(f"`{f}`" for f in grant.fields)
        rows.append(f"| `{grant.collection}` | {grant.action} | {fields} | {grant.why} |")
    return "\n".join(rows)


# -- applying it ------------------------------------------------------------------------------


@dataclass
class PolicyPlan:
    """What `apply_policy` did (or would do): one line per change."""

    policy_id: str | None = None
    changes: list[str] = field(default_factory=list)


def marker(key: str) -> str:
    return f"{MARKER_PREFIX}{key}]"


def find_policy(client: DirectusClient, key: str = POLICY_KEY) -> dict[str, Any] | None:
    """The policy carrying the key's marker (the oldest, if an admin duplicated it)."""
    rows = client.list_system(
        "policies",
        filter={"description": {"_contains": marker(key)}},
        fields=["id", "name", "icon", "description", "admin_access", "app_access"],
        sort=["id"],
    )
    found = [row for row in rows if marker(key) in str(row.get("description") or "")]
    return found[0] if found else None


def _permission_values(grant: Grant) -> dict[str, Any]:
    # No item filter, validation or presets: the bridge must see and write every order and
    # refund (a filter would hide some from it).
    return {
        "collection": grant.collection,
        "action": grant.action,
        "fields": list(grant.fields),
        "permissions": None,
        "validation": None,
        "presets": None,
    }


def _differs(current: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    out = []
    if sorted(current.get("fields") or []) != sorted(wanted["fields"]):
        out.append("fields")
    for name in ("permissions", "validation", "presets"):
        if current.get(name) not in (None, {}):
            out.append(name)
    return out


def apply_policy(
    client: DirectusClient,
    grants: Sequence[Grant],
    *,
    key: str = POLICY_KEY,
    name: str = POLICY_NAME,
    dry_run: bool = False,
    users: Sequence[str] = (),
    roles: Sequence[str] = (),
) -> PolicyPlan:
    """Create or update the policy so that it grants exactly `grants` (permissions it has
    beyond them are deleted: the policy is the bridge's), and give it to `users` and `roles`
    (ids) that do not hold it yet. Idempotent; `dry_run` only reads. Needs an admin's token."""
    plan = PolicyPlan()
    prefix = "would " if dry_run else ""
    wanted_policy = {
        "name": name,
        "icon": POLICY_ICON,
        "description": f"refund-bridge's Directus token (docs/directus.md) {marker(key)}",
        # Neither is needed: app access would add permissions the bridge must not rely on.
        "admin_access": False,
        "app_access": False,
    }
    policy = find_policy(client, key)
    if policy is None:
        plan.changes.append(f"{prefix}create policy {name!r}")
        if dry_run:
            plan.changes.extend(f"{prefix}grant {_shown(g)}" for g in grants)
            plan.changes.extend(f"{prefix}give it to user {u}" for u in users)
            plan.changes.extend(f"{prefix}give it to role {r}" for r in roles)
            return plan
        policy = client.create_system("policies", wanted_policy)
    else:
        changed = {k: v for k, v in wanted_policy.items() if policy.get(k) != v}
        if changed:
            plan.changes.append(f"{prefix}set {', '.join(sorted(changed))} of policy {name!r}")
            if not dry_run:
                client.update_system("policies", policy["id"], changed)
    policy_id = str(policy["id"])
    plan.policy_id = policy_id

    existing = client.list_system(
        "permissions",
        filter={"policy": {"_eq": policy_id}},
        fields=["id", "collection", "action", "fields", "permissions", "validation", "presets"],
        sort=["id"],
    )
    by_name: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in existing:
        by_name.setdefault((str(row.get("collection")), str(row.get("action"))), []).append(row)
    for grant in grants:
        wanted = _permission_values(grant)
        rows = by_name.pop((grant.collection, grant.action), [])
        if not rows:
            plan.changes.append(f"{prefix}grant {_shown(grant)}")
            if not dry_run:
                client.create_system("permissions", {"policy": policy_id, **wanted})
            continue
        first, *extra = rows
        differs = _differs(first, wanted)
        if differs:
            plan.changes.append(f"{prefix}set {', '.join(differs)} of {_shown(grant)}")
            if not dry_run:
                client.update_system("permissions", first["id"], wanted)
        for row in extra:
            plan.changes.append(f"{prefix}delete a duplicate permission {grant.name}")
            if not dry_run:
                client.delete_system("permissions", row["id"])
    for (collection, action), rows in sorted(by_name.items()):
        for row in rows:
            plan.changes.append(f"{prefix}revoke {action} {collection} (not needed)")
            if not dry_run:
                client.delete_system("permissions", row["id"])

    _assign(client, plan, policy_id, "user", users, dry_run=dry_run)
    _assign(client, plan, policy_id, "role", roles, dry_run=dry_run)
    return plan


def _assign(
    client: DirectusClient,
    plan: PolicyPlan,
    policy_id: str,
    kind: str,
    holders: Sequence[str],
    *,
    dry_run: bool,
) -> None:
    prefix = "would " if dry_run else ""
    for holder in holders:
        held = client.list_system(
            "access",
            filter={"_and": [{"policy": {"_eq": policy_id}}, {kind: {"_eq": holder}}]},
            fields=["id"],
            limit=1,
        )
        if held:
            continue
        plan.changes.append(f"{prefix}give it to {kind} {holder}")
        if not dry_run:
            client.create_system("access", {"policy": policy_id, kind: holder})


def _shown(grant: Grant) -> str:
    return f"{grant.name} ({', '.join(grant.fields)})"
