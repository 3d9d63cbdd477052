"""`refund-bridge schema apply`, `flows sync` and `check`: COOCO's Directus, set up and checked.

`schema apply` creates or updates the `refunds` collection, its relation to the orders and the
list of refunds on the order's page; `flows sync` creates or updates the project's Flows;
`check` says in plain words, one line per check, whether the bridge can work with this
Directus and this token, without changing anything. docs/directus.md tells how COOCO uses them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import click

from bridge.cli.base import CommandFailed, one_line_errors, settings_from_env
from bridge.config import ConfigError, Settings
from bridge.directus.policy import apply_policy, bridge_grants, grants_for, policy_table
from bridge.directus.schema import SchemaError, apply_schema, create_demo_orders
from bridge.services import make_directus
from directus_client import (
    DirectusClient,
    DirectusError,
    ForbiddenError,
    InvalidCredentialsError,
    MissingPermissionError,
)
from flows import REFUND_RESULT
from flows.sync import FlowParams, FlowRefused, FlowSyncResult, ping_refund_result, sync_flows


def flow_params(settings: Settings) -> FlowParams:
    """The Flows' settings, from the bridge's."""
    return FlowParams(
        flow_secret=settings.flow_secret,
        bridge_url=settings.public_url,
        service_token=settings.flow_service_token or settings.api_tokens[0],
        orders_collection=settings.order_fields.collection,
        refund_reasons=settings.refund_reasons,
    )


# -- schema apply ----------------------------------------------------------------------------


@click.group()
def schema() -> None:
    """The refunds schema in COOCO's Directus."""


@schema.command("apply")
@click.option("--dry-run", is_flag=True, help="print what would change, change nothing")
@click.option(
    "--with-demo-orders",
    is_flag=True,
    help="first create a minimal orders collection like COOCO's (tests, local dev) if missing",
)
@one_line_errors
def schema_apply(dry_run: bool, with_demo_orders: bool) -> None:
    """Create or update the refunds collection, its relation to the orders and the list of
    refunds on the order's page (idempotent; COOCO's own fields are never touched)."""
    settings = settings_from_env()
    client = make_directus(settings)
    orders = settings.order_fields.collection
    try:
        if with_demo_orders:
            if dry_run:
                if client.get_collection(orders) is None:
                    click.echo(f"would: create demo collection {orders}")
            elif create_demo_orders(client, settings.order_fields):
                click.echo(f"created demo collection {orders}")
        try:
            plan = apply_schema(
                client, settings.order_fields, dry_run=dry_run, demo_orders_planned=with_demo_orders
            )
        except SchemaError as exc:
            raise CommandFailed(f"schema: {exc}") from None
    finally:
        client.close()
    prefix = "would: " if dry_run else ""
    for line in plan.changes:
        click.echo(f"{prefix}{line}")
    for line in plan.conflicts:
        click.echo(f"conflict: {line}")
    if plan.conflicts:
        raise CommandFailed(
            f"schema: {len(plan.conflicts)} conflict(s) need a person (listed above)"
        )
    if not plan.changes:
        click.echo("schema is up to date: nothing to change")
    elif dry_run:
        click.echo(f"dry run: {len(plan.changes)} change(s) to make, nothing changed")
    else:
        click.echo(f"schema applied: {len(plan.changes)} change(s)")


# -- policy apply ----------------------------------------------------------------------------


@click.group()
def policy() -> None:
    """The bridge's own Directus policy (the permissions of BRIDGE_DIRECTUS_TOKEN's user)."""


@policy.command("apply")
@click.option("--dry-run", is_flag=True, help="print what would change, change nothing")
@click.option(
    "--user",
    "users",
    multiple=True,
    metavar="ID|EMAIL",
    help="give the policy to this Directus user (the bridge's); repeatable",
)
@click.option(
    "--role",
    "roles",
    multiple=True,
    metavar="ID|NAME",
    help="give the policy to this Directus role; repeatable",
)
@one_line_errors
def policy_apply(dry_run: bool, users: tuple[str, ...], roles: tuple[str, ...]) -> None:
    """Create or update the "refund-bridge" policy: exactly the permissions the bridge needs
    (docs/directus.md), nothing more (idempotent; needs an admin's token)."""
    settings = settings_from_env()
    client = make_directus(settings)
    try:
        user_ids = [_holder_id(client, "users", "email", user) for user in users]
        role_ids = [_holder_id(client, "roles", "name", role) for role in roles]
        plan = apply_policy(
            client, grants_for(settings), dry_run=dry_run, users=user_ids, roles=role_ids
        )
    except ForbiddenError:
        raise CommandFailed(
            "policy: Directus refused; run it with an admin's token (BRIDGE_DIRECTUS_TOKEN)"
        ) from None
    finally:
        client.close()
    for line in plan.changes:
        click.echo(line)
    if not plan.changes:
        click.echo(f"policy is up to date ({plan.policy_id}): nothing to change")
    elif dry_run:
        click.echo(f"dry run: {len(plan.changes)} change(s) to make, nothing changed")
    else:
        click.echo(f"policy applied ({plan.policy_id}): {len(plan.changes)} change(s)")


@policy.command("show")
def policy_show() -> None:
    """Print the policy's permissions as the Markdown table of docs/directus.md (with the
    orders' field names of the current environment, or the defaults)."""
    try:
        grants = grants_for(settings_from_env())
    except ConfigError as exc:
        click.echo(f"refund-bridge: policy show: {exc}; showing the defaults", err=True)
        grants = bridge_grants()
    click.echo(policy_table(grants))


def _holder_id(client: DirectusClient, endpoint: str, by: str, given: str) -> str:
    """A user's or role's id from its id, e-mail or name."""
    rows = client.list_system(
        endpoint,
        filter={"_or": [{"id": {"_eq": given}}, {by: {"_eq": given}}]}
        if _is_uuid(given)
        else {by: {"_eq": given}},
        fields=["id"],
        limit=2,
    )
    if len(rows) != 1:
        kind = endpoint.removesuffix("s")
        found = "no" if not rows else "more than one"
        raise CommandFailed(f"policy: {found} Directus {kind} {given!r}")
    return str(rows[0]["id"])


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# -- flows sync ------------------------------------------------------------------------------


@click.group()
def flows() -> None:
    """The project's Directus Flows."""


@flows.command("sync")
@click.option("--dry-run", is_flag=True, help="print what would change, change nothing")
@one_line_errors
def flows_sync(dry_run: bool) -> None:
    """Create or update the project's Flows by their stable key (idempotent) and print their
    ids; then call the "refund result" Flow once (kind ping, no e-mail) to prove it works."""
    settings = settings_from_env()
    if not settings.flow_secret:
        raise ConfigError("BRIDGE_FLOW_SECRET", "is required to sync the Flows")
    try:
        params = flow_params(settings)
        params.values()
    except ValueError as exc:
        raise CommandFailed(f"flows: {exc}") from None
    client = make_directus(settings)
    try:
        results = sync_flows(client, params, dry_run=dry_run)
        for result in results:
            _echo_sync_result(result)
        if dry_run:
            return
        flow_id = next(r.flow_id for r in results if r.key == REFUND_RESULT)
        try:
            ping_refund_result(client, settings.flow_secret, flow_id)
        except FlowRefused as exc:
            raise CommandFailed(
                f"flows: the refund-result Flow was synced but refuses a test call ({exc.error}); "
                "can this Directus run 'Run Script' operations?"
            ) from None
        click.echo("refund-result accepts BRIDGE_FLOW_SECRET")
    finally:
        client.close()


def _echo_sync_result(result: FlowSyncResult) -> None:
    click.echo(f"{result.key}  {result.flow_id or '-'}  {result.action}")
    for change in result.changes:
        click.echo(f"  {change}")
    if result.note:
        click.echo(f"  {result.note}")
    for duplicate in result.duplicates:
        click.echo(f"  warning: Flow {duplicate} carries the same key; delete it in Directus")


# -- check -----------------------------------------------------------------------------------


@dataclass
class CheckReport:
    lines: list[tuple[bool, str]]

    def ok(self, text: str) -> None:
        self.lines.append((True, text))

    def fail(self, text: str) -> None:
        self.lines.append((False, text))

    @property
    def failures(self) -> int:
        return sum(1 for ok, _ in self.lines if not ok)


def _check_permissions(client: DirectusClient, settings: Settings, report: CheckReport) -> None:
    """Each permission of the bridge's policy (bridge/directus/policy.py), as the token has
    it: one line per permission, naming what is missing and what needs it."""
    try:
        permissions = client.permissions_me()
    except DirectusError as exc:
        report.fail(f"permissions: Directus would not list them ({_reason(exc)})")
        return
    for grant in grants_for(settings):
        have = (permissions.get(grant.collection) or {}).get(grant.action) or {}
        access = have.get("access", "none")
        problem = caveat = ""
        if access == "none":
            problem = "no such permission"
        elif access != "full":
            # "partial": one of the token's permissions has a filter, maybe alongside one
            # without (Directus does not say). The bridge's own collections need none; on
            # system collections app access adds one ("your own user"), so only warn.
            if grant.collection.startswith("directus_"):
                caveat = "a permission filter applies: it must not hide what the bridge reads"
            else:
                problem = "limited to some items by a permission filter"
        if not problem and grant.fields != ("*",):
            allowed = have.get("fields") or []
            missing = [f for f in grant.fields if "*" not in allowed and f not in allowed]
            if missing:
                problem = f"lacks fields {', '.join(missing)}"
        if problem:
            report.fail(f"cannot {grant.name} ({problem}): needed to {grant.why}")
        elif caveat:
            report.ok(f"can {grant.name}; {caveat}")
        else:
            report.ok(f"can {grant.name}")


def _check_people(client: DirectusClient, settings: Settings, report: CheckReport) -> None:
    """Prove the lookups of people, as the bridge makes them: the admins (and their e-mails
    when BRIDGE_ADMIN_EMAILS is empty), one admin's and one non-admin's admin access."""
    try:
        admins = client.admin_users()
    except MissingPermissionError as exc:
        report.fail(f"cannot find the admins: {exc.message}")
        admins = None
    except DirectusError as exc:
        report.fail(f"cannot find the admins: {_reason(exc)}")
        admins = None
    if settings.admin_emails:
        report.ok(f"admin e-mails: BRIDGE_ADMIN_EMAILS ({len(settings.admin_emails)} address(es))")
    elif admins is not None:
        emails = sorted({str(a["email"]) for a in admins if a.get("email")})
        if emails:
            shown = ", ".join(emails[:5]) + (" ..." if len(emails) > 5 else "")
            report.ok(f"admin e-mails from Directus (BRIDGE_ADMIN_EMAILS is empty): {shown}")
        else:
            report.fail(
                "no active Directus user with admin access has an e-mail, and "
                "BRIDGE_ADMIN_EMAILS is empty: admin e-mails would go nowhere"
            )
    if admins is None:
        return
    if not admins:
        report.fail("no active Directus user has admin access: nobody could approve refunds")
        return
    try:
        me = client.me(fields=["id"])
        others = client.list_system(
            "users",
            filter={"id": {"_nin": [a["id"] for a in admins]}},
            fields=["id"],
            limit=1,
        )
    except DirectusError as exc:
        report.fail(f"cannot tell admins from customers: {_reason(exc)}")
        return
    admin_id = str(admins[0]["id"])
    me_id = str(me.get("id") or "")
    non_admin = me_id if me_id and me_id not in {a["id"] for a in admins} else None
    if non_admin is None and others:
        non_admin = str(others[0]["id"])
    try:
        wrong = []
        if client.user_has_admin_access(admin_id) is not True:
            wrong.append(f"admin {admin_id} seen as a customer")
        if non_admin and client.user_has_admin_access(non_admin) is not False:
            wrong.append(f"user {non_admin} seen as an admin")
    except MissingPermissionError as exc:
        report.fail(f"cannot tell admins from customers: {exc.message}")
        return
    except DirectusError as exc:
        report.fail(f"cannot tell admins from customers: {_reason(exc)}")
        return
    if wrong:
        report.fail(f"cannot tell admins from customers: {'; '.join(wrong)}")
        return
    tried = f"admin {admin_id}: yes" + (f"; user {non_admin}: no" if non_admin else "")
    report.ok(f"can tell admins from customers ({tried})")


def _check_order_read(client: DirectusClient, settings: Settings, report: CheckReport) -> None:
    """Read one order as the bridge does, with the customer's and chef's e-mail paths."""
    names = settings.order_fields
    grant = grants_for(settings)[0]
    paths = (names.customer_email, names.chef_email)
    what = f"can read an order with its people's e-mails ({', '.join(paths)})"
    try:
        rows = client.query_items(
            names.collection,
            fields=[f for f in grant.fields if f != "refunds"] + list(paths),
            filter={names.customer: {"_nnull": True}},
            limit=1,
        )
    except DirectusError as exc:
        report.fail(
            f"cannot {what.removeprefix('can ')}: {_reason(exc)} (read {names.collection} "
            f"with {', '.join(grant.fields)} and directus_users with email are needed)"
        )
        return
    if not rows:
        report.ok(f"{what}: no order with a customer yet, the fields are allowed")
        return
    order = rows[0]
    unread = [
        path
        for path in paths
        if order.get(path.split(".", 1)[0]) is not None
        and not isinstance(order.get(path.split(".", 1)[0]), dict)
    ]
    dropped = [path for path in paths if path.split(".", 1)[0] not in order]
    if dropped or unread:
        report.fail(
            f"cannot {what.removeprefix('can ')}: Directus leaves out "
            f"{', '.join(dropped + unread)} (cannot read directus_users: needed to e-mail "
            "customers and chefs)"
        )
        return
    report.ok(f"{what}, e.g. order {order.get('id')}")


def _check_schema(client: DirectusClient, settings: Settings, report: CheckReport) -> None:
    try:
        plan = apply_schema(client, settings.order_fields, dry_run=True)
    except SchemaError as exc:
        report.fail(f"schema: {exc}")
        return
    except ForbiddenError:
        report.fail(
            "schema: the token may not read Directus's schema (directus_collections, "
            "directus_fields, directus_relations)"
        )
        return
    except DirectusError as exc:
        report.fail(f"schema: {_reason(exc)}")
        return
    if plan.in_place:
        orders = settings.order_fields.collection
        report.ok(f"schema is in place (refunds, refunds.order_id -> {orders}, {orders}.refunds)")
        return
    for line in plan.conflicts:
        report.fail(f"schema conflict: {line}")
    if plan.changes:
        shown = "; ".join(plan.changes[:3]) + (" ..." if len(plan.changes) > 3 else "")
        report.fail(
            f"schema is not in place, {len(plan.changes)} change(s) to make ({shown}): "
            "run `refund-bridge schema apply`"
        )


def _check_flows(client: DirectusClient, settings: Settings, report: CheckReport) -> None:
    if not settings.flow_secret:
        report.fail("BRIDGE_FLOW_SECRET is not set: the refund-result Flow cannot be called")
        return
    try:
        results = sync_flows(client, flow_params(settings), dry_run=True)
    except ValueError as exc:
        report.fail(f"flows: {exc}")
        return
    except ForbiddenError:
        report.fail("flows: the token may not read directus_flows and directus_operations")
        return
    except DirectusError as exc:
        report.fail(f"flows: {_reason(exc)}")
        return
    refund_result_id = None
    for result in results:
        if result.action == "would create":
            report.fail(f"flow {result.key} is missing: run `refund-bridge flows sync`")
            continue
        if result.changes:
            shown = "; ".join(result.changes[:3]) + (" ..." if len(result.changes) > 3 else "")
            report.fail(
                f"flow {result.key} ({result.flow_id}) differs from its definition ({shown}): "
                "run `refund-bridge flows sync`"
            )
        elif result.duplicates:
            report.fail(
                f"flow {result.key} ({result.flow_id}) has duplicates with its key: "
                f"{', '.join(result.duplicates)} (delete them in Directus)"
            )
        else:
            report.ok(f"flow {result.key} is in place ({result.flow_id})")
        if result.key == REFUND_RESULT:
            refund_result_id = result.flow_id
    if refund_result_id is None:
        return
    try:
        ping_refund_result(client, settings.flow_secret, refund_result_id)
    except FlowRefused as exc:
        report.fail(f"the refund-result Flow refuses a test call: {exc.error}")
    except DirectusError as exc:
        report.fail(f"the refund-result Flow cannot be called: {_reason(exc)}")
    else:
        report.ok("the refund-result Flow accepts BRIDGE_FLOW_SECRET (test call, no e-mail)")


def _reason(exc: DirectusError) -> str:
    # Status, Directus's code and message; never the token (the client never puts it there).
    parts = [str(exc.status) if exc.status else None, exc.code, exc.message]
    return " ".join(p for p in parts if p)


def run_checks(settings: Settings, report: CheckReport) -> None:
    client = make_directus(settings)
    try:
        if not client.ping():
            report.fail(f"Directus does not answer at {settings.directus_url}")
            return
        report.ok(f"Directus answers at {settings.directus_url}")
        try:
            me = client.me(fields=["id"])
        except InvalidCredentialsError:
            report.fail("the token is not valid: Directus refuses it (BRIDGE_DIRECTUS_TOKEN)")
            return
        report.ok(f"the token is valid (Directus user {me.get('id')})")
        steps: Iterable[Callable[[DirectusClient, Settings, CheckReport], None]] = (
            _check_permissions,
            _check_people,
            _check_order_read,
            _check_schema,
            _check_flows,
        )
        for step in steps:
            step(client, settings, report)
    finally:
        client.close()


@click.command()
@one_line_errors
def check() -> None:
    """Tell, one line per check, whether the configuration, Directus, the token's
    permissions, the schema and the Flows are as the bridge needs them (changes nothing).
    Exit code 0 only when every check passes."""
    report = CheckReport(lines=[])
    try:
        settings = settings_from_env()
    except ConfigError as exc:
        report.fail(f"configuration: {exc}")
    else:
        report.ok("configuration")
        try:
            run_checks(settings, report)
        except DirectusError as exc:
            report.fail(f"Directus: {_reason(exc)}")
    for ok, text in report.lines:
        click.echo(f"{'OK  ' if ok else 'FAIL'}  {text}")
    if report.failures:
        raise CommandFailed(f"check: {report.failures} of {len(report.lines)} checks failed")


COMMANDS = (schema, policy, flows, check)
